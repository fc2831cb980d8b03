"""The retention rule (ketch.lifecycle.policy): properties checked by
hypothesis, and examples worked out by hand."""

from __future__ import annotations

import calendar
import dataclasses
import os
import time
from collections.abc import Iterator

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.errors import UsageError
from ketch.lifecycle.policy import KeepPolicy, decide, format_duration, parse_duration

DAY = 86400
FIELDS = ("last", "hourly", "daily", "weekly", "monthly", "yearly", "within")


@pytest.fixture(autouse=True, scope="module")
def local_tz() -> Iterator[None]:
    """Periods are local time; these tests' local time is one with DST."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TZ", "Europe/Berlin")
        time.tzset()
        yield
    time.tzset()


def utc(text: str) -> int:
    """Seconds since the epoch of "YYYY-MM-DD HH:MM" in UTC."""
    return calendar.timegm(time.strptime(text, "%Y-%m-%d %H:%M"))


def saves_at(times: list[int]) -> list[tuple[bytes, int]]:
    """(commit, time) head first, with made-up commit ids 1, 2, 3..."""
    return [(i.to_bytes(20, "big"), t) for i, t in enumerate(times, 1)]


def kept(saves: list[tuple[bytes, int]], policy: KeepPolicy) -> set[bytes]:
    return {d.commit for d in decide(saves, policy) if d.keep}


def kept_days(saves: list[tuple[bytes, int]], policy: KeepPolicy) -> dict[str, list[str]]:
    return {time.strftime("%Y-%m-%d", time.localtime(d.time)): d.reasons
            for d in decide(saves, policy) if d.keep}


# -- examples worked out by hand ---------------------------------------------------


def test_sixty_daily_saves_keep_7_daily_4_weekly_6_monthly() -> None:
    # 2026-10-02 .. 2026-11-30 at 20:00 (21:00 local in winter, 22:00 in summer).
    days = [utc("2026-11-30 20:00") - i * DAY for i in range(60)]
    policy = KeepPolicy(daily=7, weekly=4, monthly=6)
    # 11-30 is a Monday (ISO week 49), 11-29 the Sunday ending week 48, 11-22
    # week 47, 11-15 week 46. Only two months have saves: November's newest is
    # 11-30, October's 10-31.
    assert kept_days(saves_at(days), policy) == {
        "2026-11-30": ["newest", "daily", "weekly", "monthly"],
        "2026-11-29": ["daily", "weekly"],
        "2026-11-28": ["daily"],
        "2026-11-27": ["daily"],
        "2026-11-26": ["daily"],
        "2026-11-25": ["daily"],
        "2026-11-24": ["daily"],
        "2026-11-22": ["weekly"],
        "2026-11-15": ["weekly"],
        "2026-10-31": ["monthly"],
    }


def test_periods_without_a_save_do_not_count() -> None:
    saves = saves_at([utc("2026-06-01 10:00"), utc("2026-03-01 10:00"),
                      utc("2026-01-01 10:00"), utc("2025-12-31 10:00")])
    # Two monthly: June and March (April and May have no save to keep).
    assert kept_days(saves, KeepPolicy(monthly=2)) == {
        "2026-06-01": ["newest", "monthly"], "2026-03-01": ["monthly"]}
    assert kept_days(saves, KeepPolicy(yearly=5)) == {
        "2026-06-01": ["newest", "yearly"], "2025-12-31": ["yearly"]}


def test_days_are_local_days() -> None:
    # In Berlin (UTC+1 in March) 23:30 UTC is already the next day.
    saves = saves_at([utc("2026-03-10 23:30"), utc("2026-03-10 22:30"), utc("2026-03-10 12:00")])
    assert kept_days(saves, KeepPolicy(daily=2)) == {
        "2026-03-11": ["newest", "daily"], "2026-03-10": ["daily"]}
    assert [d.keep for d in decide(saves, KeepPolicy(daily=2))] == [True, True, False]


def test_hours_across_the_dst_change() -> None:
    # 2026-03-29: Berlin goes from 02:00 CET to 03:00 CEST (00:59 UTC -> 01:00 UTC).
    saves = saves_at([utc("2026-03-29 01:10"), utc("2026-03-29 00:50"),
                      utc("2026-03-29 00:20"), utc("2026-03-28 23:50")])
    # Local 03:10, 01:50, 01:20, 00:50: three hours with a save.
    assert [d.reasons for d in decide(saves, KeepPolicy(hourly=3))] == [
        ["newest", "hourly"], ["hourly"], [], ["hourly"]]


def test_keep_last_and_within() -> None:
    newest = utc("2026-05-10 12:00")
    # Exactly 2 days older than the newest is "not older than 2 days".
    saves = saves_at([newest, newest - 3600, newest - 2 * DAY, newest - 2 * DAY - 1,
                      newest - 40 * DAY])
    assert [d.reasons for d in decide(saves, KeepPolicy(last=2, within=2 * DAY))] == [
        ["newest", "last", "within"], ["last", "within"], ["within"], [], []]


def test_within_counts_from_the_newest_save_not_from_now() -> None:
    # A machine that stopped saving years ago keeps its last month of saves.
    newest = utc("2019-05-10 12:00")
    saves = saves_at([newest - i * DAY for i in range(60)])
    assert len(kept(saves, KeepPolicy(within=parse_duration("30d")))) == 31


def test_an_old_date_on_the_head_is_newest_but_not_newest_of_its_day() -> None:
    # The head was saved with --date of an earlier day than its parent.
    saves = saves_at([utc("2026-05-01 12:00"), utc("2026-05-03 12:00"),
                      utc("2026-05-03 08:00"), utc("2026-05-01 18:00")])
    assert [d.reasons for d in decide(saves, KeepPolicy(daily=2, last=1))] == [
        ["newest"], ["last", "daily"], [], ["daily"]]


def test_empty_policy_keeps_only_the_newest() -> None:
    saves = saves_at([utc("2026-05-03 12:00"), utc("2026-05-02 12:00")])
    assert KeepPolicy().empty and not KeepPolicy(within=60).empty
    assert [d.reasons for d in decide(saves, KeepPolicy())] == [["newest"], []]
    assert decide([], KeepPolicy(daily=3)) == []


# -- durations and the config's keys -------------------------------------------------


@pytest.mark.parametrize(("text", "seconds"), [
    ("12h", 12 * 3600), ("30d", 30 * DAY), ("2w", 14 * DAY), ("6m", 6 * 30.44 * DAY),
    ("1y", 365.25 * DAY), ("1y6m", 365.25 * DAY + 6 * 30.44 * DAY), ("1Y", 365.25 * DAY),
])
def test_durations(text: str, seconds: float) -> None:
    assert parse_duration(text) == pytest.approx(seconds)
    assert parse_duration(format_duration(parse_duration(text))) == pytest.approx(seconds)


@pytest.mark.parametrize("text", ["", "30", "d", "30x", "1.5d", "-3d", "3 d", "1y 6m", "3dd"])
def test_bad_durations(text: str) -> None:
    with pytest.raises(UsageError) as e:
        parse_duration(text)
    assert "\n" not in str(e.value) and "invalid duration" in str(e.value)


def test_from_mapping() -> None:
    p = KeepPolicy.from_mapping({"keep-daily": 7, "keep-weekly": 4, "keep-within": "2w"})
    assert p == KeepPolicy(daily=7, weekly=4, within=14 * DAY)
    assert p.describe() == "keep-daily 7, keep-weekly 4, keep-within 14d"
    assert KeepPolicy.from_mapping({}).empty


@pytest.mark.parametrize(("values", "says"), [
    ({"keep-dayly": 7}, "unknown retention key 'keep-dayly' (known: keep-last, "),
    ({"keep-daily": "7"}, "keep-daily must be a number of at least 0, not 7"),
    ({"keep-daily": -1}, "keep-daily must be a number of at least 0, not -1"),
    ({"keep-daily": True}, "keep-daily must be a number"),
    ({"keep-daily": 1.5}, "keep-daily must be a number"),
    ({"keep-within": 30}, "keep-within must be a duration such as \"30d\", not 30"),
    ({"keep-within": "30"}, "invalid duration '30'"),
])
def test_from_mapping_refuses_bad_values(values: dict[str, object], says: str) -> None:
    with pytest.raises(UsageError) as e:
        KeepPolicy.from_mapping(values)
    assert says in str(e.value) and "\n" not in str(e.value)


# -- properties -------------------------------------------------------------------------

# Ten years of saves, bunched so that hours, days and weeks hold several.
times = st.integers(utc("2020-01-01 00:00"), utc("2030-01-01 00:00"))
bunched = st.lists(times, min_size=1, max_size=6).flatmap(
    lambda bases: st.lists(st.tuples(st.sampled_from(bases), st.integers(0, 40 * DAY)),
                           max_size=40).map(lambda ts: [b + o for b, o in ts]))
counts = st.integers(0, 12)
policies = st.builds(KeepPolicy, last=counts, hourly=counts, daily=counts, weekly=counts,
                     monthly=counts, yearly=counts,
                     within=st.sampled_from([0.0, 3600.0, DAY, 30 * DAY, 400 * DAY]))


def alone(policy: KeepPolicy, name: str) -> KeepPolicy:
    return KeepPolicy(**{name: getattr(policy, name)})  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(bunched, policies)
def test_the_newest_is_always_kept_and_order_is_kept(ts: list[int], policy: KeepPolicy) -> None:
    saves = saves_at(ts)
    decisions = decide(saves, policy)
    assert [(d.commit, d.time) for d in decisions] == saves
    if saves:
        assert decisions[0].keep and decisions[0].reasons[0] == "newest"
    assert all(d.keep == bool(d.reasons) for d in decisions)


@settings(max_examples=300, deadline=None)
@given(bunched, policies, st.sampled_from(FIELDS), st.integers(1, 10))
def test_raising_a_count_never_removes_a_kept_save(ts: list[int], policy: KeepPolicy,
                                                   name: str, more: int) -> None:
    raised = dataclasses.replace(policy, **{name: getattr(policy, name) + more * (
        DAY if name == "within" else 1)})
    saves = saves_at(ts)
    assert kept(saves, policy) <= kept(saves, raised)


@settings(max_examples=300, deadline=None)
@given(bunched, policies)
def test_kept_is_the_union_of_each_policy_alone(ts: list[int], policy: KeepPolicy) -> None:
    saves = saves_at(ts)
    union: set[bytes] = set()
    for name in FIELDS:
        union |= kept(saves, alone(policy, name))
    assert kept(saves, policy) == union


@settings(max_examples=300, deadline=None)
@given(bunched, st.sampled_from(["hourly", "daily", "weekly", "monthly", "yearly"]),
       st.integers(1, 12))
def test_a_period_policy_keeps_the_newest_of_the_n_latest_periods(
        ts: list[int], name: str, n: int) -> None:
    fmt = {"hourly": "%Y-%m-%d %H", "daily": "%Y-%m-%d", "weekly": "%G-%V",
           "monthly": "%Y-%m", "yearly": "%Y"}[name]
    saves = saves_at(ts)
    period = {c: time.strftime(fmt, time.localtime(t)) for c, t in saves}
    # Each period's newest save: the latest time, the nearest the head on a tie.
    newest: dict[str, tuple[int, int]] = {}
    for i, (_, t) in enumerate(saves):
        p = time.strftime(fmt, time.localtime(t))
        newest[p] = min(newest.get(p, (-t, i)), (-t, i))
    latest = sorted(newest.values())[:n]
    want = {saves[i][0] for _, i in latest}
    got = {d.commit for d in decide(saves, KeepPolicy(**{name: n})) if name in d.reasons}
    assert got == want
    assert len({period[c] for c in got}) == len(got)


def test_hypothesis_sees_the_berlin_clock() -> None:
    assert os.environ["TZ"] == "Europe/Berlin"
    assert time.localtime(utc("2026-07-01 12:00")).tm_hour == 14
