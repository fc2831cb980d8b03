"""The overview's colours and the size figures, from the stored facts: the
rules a person reads off the page (README "The fleet at a glance")."""

from __future__ import annotations

import pytest

from ketch.web.summary import BAD, DAY, OK, WARN, Facts, ReportHead, SetState, judge

NOW = 1_800_000_000.0


def head(ok: bool = True, code: int = 0, age_h: float = 1) -> ReportHead:
    return ReportHead(int(NOW - age_h * 3600), ok, code, "OK" if ok else "FAILED", 0, "", "c")


def facts(*ages_h: float, **heads: ReportHead) -> Facts:
    f = Facts("m", sets=[SetState(f"s{i}", int(NOW - a * 3600), "c")
                         for i, a in enumerate(ages_h)])
    for k, v in heads.items():
        setattr(f, k, v)
    return f


@pytest.mark.parametrize(("age_h", "want"), [(1, OK), (25.9, OK), (26.1, WARN), (49.9, WARN),
                                            (50.1, BAD), (72, BAD)])
def test_a_save_s_age_sets_the_colour(age_h: float, want: int) -> None:
    assert judge(facts(age_h), NOW).status == want


def test_the_worst_set_and_report_win() -> None:
    assert judge(facts(1, 30), NOW).status == WARN
    assert judge(facts(1, run=head(False, 2)), NOW).status == BAD
    assert judge(facts(1, run=head(True, 1)), NOW).status == WARN
    assert judge(facts(1, drill=head(False, 2)), NOW).status == BAD
    assert judge(facts(1, fsck=head(False, 2)), NOW).status == BAD
    assert judge(facts(1, fsck=head(True, 1)), NOW).status == WARN
    assert judge(facts(1, push=head(False, 2)), NOW).status == WARN
    assert judge(facts(1, push=head(True, 0, age_h=72)), NOW).status == WARN
    assert judge(facts(), NOW).status == BAD  # no saves at all
    assert judge(Facts("m", error="gone"), NOW).status == BAD


def test_growth_leaves_out_the_first_day_and_counts_a_day_s_packs() -> None:
    f = Facts("m", packs=[(1000, NOW - 10 * DAY)] + [(100, NOW - d * DAY - 60) for d in range(9)])
    assert f.growth_per_day(NOW) == pytest.approx(900 / 9, rel=0.01)
    series = f.size_series(NOW)
    assert len(series) == 12  # from the first pack's day, not 30 days of nothing
    assert series[-1][1] == 1900 and series[0][1] == 0
    assert Facts("m", packs=[(5, NOW - 3600)]).growth_per_day(NOW) is None
