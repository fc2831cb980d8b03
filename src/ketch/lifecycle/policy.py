"""Which saves a retention policy keeps.

The rule (restic's and borg's): the newest save is always kept; each
`keep-<period> N` keeps the newest save of each of the N most recent periods
that have a save; `keep-last N` keeps the N newest saves; `keep-within D`
keeps every save not older than D before the newest save (not before now: a
machine that stopped saving keeps its history). A save kept by any policy is
kept. Periods are in local time: hour, day, ISO week, month, year.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields

from ketch.errors import UsageError

HOUR = 3600.0
DAY = 24 * HOUR
# A calendar month or year has no fixed length; a policy is a number of
# seconds, so these are their average lengths (systemd's choice too).
MONTH = 30.44 * DAY
YEAR = 365.25 * DAY
_UNITS = {"h": HOUR, "d": DAY, "w": 7 * DAY, "m": MONTH, "y": YEAR}
_DURATION = re.compile(r"(\d+)([hdwmy])")

# The period policies, in the order their reasons are listed: name and the key
# that is equal for two times in the same period.
_PERIODS: list[tuple[str, Callable[[time.struct_time], tuple[int, ...]]]] = [
    ("hourly", lambda t: (t.tm_year, t.tm_yday, t.tm_hour)),
    ("daily", lambda t: (t.tm_year, t.tm_yday)),
    ("weekly", lambda t: _iso_week(t)),
    ("monthly", lambda t: (t.tm_year, t.tm_mon)),
    ("yearly", lambda t: (t.tm_year,)),
]


def _iso_week(t: time.struct_time) -> tuple[int, int]:
    year, week = time.strftime("%G %V", t).split()
    return int(year), int(week)


def parse_duration(text: str) -> float:
    """Seconds in "12h", "30d", "2w", "6m" (months), "1y" or a sum like "1y6m"."""
    s = text.strip().lower()
    parts = _DURATION.findall(s)
    if not s or "".join(n + u for n, u in parts) != s:
        raise UsageError(f"invalid duration '{text}': use a number and a unit, h (hours), "
                         "d (days), w (weeks), m (months) or y (years), e.g. 30d or 1y6m")
    return sum(int(n) * _UNITS[u] for n, u in parts)


def format_duration(seconds: float) -> str:
    """`seconds` in the units parse_duration reads, largest first ("1y6m")."""
    parts = []
    rest = seconds
    for unit in ("y", "m", "d", "h"):
        n = int((rest + 1) // _UNITS[unit])  # a second's slack for the float sums
        if n:
            parts.append(f"{n}{unit}")
            rest -= n * _UNITS[unit]
    return "".join(parts) or "0h"


@dataclass(frozen=True)
class KeepPolicy:
    """How many saves each policy keeps (0: that policy keeps none)."""

    last: int = 0
    hourly: int = 0
    daily: int = 0
    weekly: int = 0
    monthly: int = 0
    yearly: int = 0
    within: float = 0.0  # seconds before the newest save

    def __post_init__(self) -> None:
        for f in fields(self):
            value = getattr(self, f.name)
            if isinstance(value, bool) or value < 0:
                raise UsageError(f"keep-{f.name} must be a number of at least 0, not {value}")

    @property
    def empty(self) -> bool:
        """No policy at all: only the newest save would stay."""
        return not any(getattr(self, f.name) for f in fields(self))

    @classmethod
    def from_mapping(cls, values: Mapping[str, object]) -> KeepPolicy:
        """From the config's keys: keep-last ... keep-yearly (counts) and keep-within
        (a duration such as "30d")."""
        known = {f"keep-{f.name}": f.name for f in fields(cls)}
        kwargs: dict[str, int | float] = {}
        for key, value in values.items():
            name = known.get(key)
            if name is None:
                raise UsageError(f"unknown retention key '{key}' (known: {', '.join(known)})")
            if name == "within":
                if not isinstance(value, str):
                    raise UsageError(f"{key} must be a duration such as \"30d\", not {value}")
                kwargs[name] = parse_duration(value)
            elif isinstance(value, bool) or not isinstance(value, int) or value < 0:
                raise UsageError(f"{key} must be a number of at least 0, not {value}")
            else:
                kwargs[name] = value
        return cls(**kwargs)  # type: ignore[arg-type]

    def describe(self) -> str:
        """As the options say it: "keep-daily 7, keep-weekly 4" (or "none")."""
        parts = [f"keep-{f.name} {getattr(self, f.name)}" for f in fields(self)
                 if f.name != "within" and getattr(self, f.name)]
        if self.within:
            parts.append(f"keep-within {format_duration(self.within)}")
        return ", ".join(parts) or "none"


@dataclass
class Decision:
    """One save and what the policy does with it; `reasons` name the policies
    that keep it ("newest", "last", "hourly" ... "yearly", "within")."""

    commit: bytes
    time: int
    keep: bool
    reasons: list[str] = field(default_factory=list)


def decide(saves: list[tuple[bytes, int]], policy: KeepPolicy) -> list[Decision]:
    """A decision for each of `saves` ((commit, time), the branch's head first),
    in the same order.

    "Newest" is the head (the branch's `latest`), whatever its time says. The
    other policies order the saves by time, newest first (equal times: the
    nearer the head, the newer), so that an old date given to a save does not
    make it the newest of its day."""
    reasons: list[list[str]] = [[] for _ in saves]
    if not saves:
        return []
    reasons[0].append("newest")
    order = sorted(range(len(saves)), key=lambda i: (-saves[i][1], i))
    for i in order[: policy.last]:
        reasons[i].append("last")
    for name, key in _PERIODS:
        count = getattr(policy, name)
        if not count:
            continue
        seen: set[tuple[int, ...]] = set()
        for i in order:
            period = key(time.localtime(saves[i][1]))
            if period not in seen:
                seen.add(period)
                reasons[i].append(name)
                if len(seen) == count:
                    break
    if policy.within:
        since = saves[order[0]][1] - policy.within
        for i, (_, t) in enumerate(saves):
            if t >= since:
                reasons[i].append("within")
    return [Decision(c, t, bool(r), r) for (c, t), r in zip(saves, reasons, strict=True)]
