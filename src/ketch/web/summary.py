"""One machine's state at a glance: its sets' last saves, its repository's
size and growth, and its last run, drill, fsck and mirror reports.

A summary is built from the refs and a few objects (each branch's head
commit, each report chain's head), never from whole histories, and is kept
until the repository's refs or packs change: the overview of 200 machines
then costs a directory listing per repository. Ages and colours are worked
out at each request from the stored times, since they change without the
repository changing.
"""

from __future__ import annotations

import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ketch import reportlog
from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.jobs.configsave import CONFIG_SET
from ketch.repo import Repository

DAY = 86400
GREEN_HOURS = 26.0  # a nightly backup a little late is still green
RED_HOURS = 50.0  # two nights missed
OK, WARN, BAD = 0, 1, 2
STATUS_NAMES = ("ok", "warn", "bad")
GROWTH_DAYS = 30
# How far back the reports are walked for the latest push and the latest
# verify of the mirror (they share one chain).
_MIRROR_WALK = 20


@dataclass(frozen=True)
class SetState:
    name: str
    last_save: int  # author time of the branch head, seconds since the epoch
    commit: str


@dataclass(frozen=True)
class ReportHead:
    """What the overview shows of one stored report."""

    time: int
    ok: bool
    exit_code: int
    status: str
    warnings: int
    summary: str
    commit: str


@dataclass
class Facts:
    """What a repository says, independent of the time it is looked at."""

    machine: str
    sets: list[SetState] = field(default_factory=list)
    repo_bytes: int = 0
    packs: list[tuple[int, float]] = field(default_factory=list)
    run: ReportHead | None = None
    drill: ReportHead | None = None
    fsck: ReportHead | None = None
    push: ReportHead | None = None
    verify: ReportHead | None = None
    error: str | None = None  # the repository could not be read

    def size_series(self, now: float, days: int = GROWTH_DAYS) -> list[tuple[int, int]]:
        """(end of day, bytes of the packs written by then), oldest first, from
        the first pack's day when that is nearer than `days`. A pack rewritten
        by gc counts from the day of the gc."""
        out = []
        if self.packs:
            age = (now - min(t for _, t in self.packs)) / DAY
            days = max(2, min(days, int(age) + 2))
        for d in range(days - 1, -1, -1):
            end = now - d * DAY
            out.append((int(end), sum(s for s, t in self.packs if t <= end)))
        return out

    def growth_per_day(self, now: float) -> float | None:
        """Bytes a day over the last 30 days, leaving out the repository's first
        day (its first full save is not growth); None while it is younger than
        a day."""
        if not self.packs:
            return None
        first = min(t for _, t in self.packs)
        start = max(now - GROWTH_DAYS * DAY, first + DAY)
        if now <= start:
            return None
        return sum(s for s, t in self.packs if t > start) / ((now - start) / DAY)


@dataclass(frozen=True)
class Cell:
    """A value shown with a colour and a reason."""

    status: int
    text: str
    why: str = ""


@dataclass
class Verdict:
    status: int
    problems: list[str]
    sets: list[tuple[SetState, Cell]]

    @property
    def name(self) -> str:
        return STATUS_NAMES[self.status]


def _age_status(age_hours: float) -> int:
    return OK if age_hours < GREEN_HOURS else WARN if age_hours < RED_HOURS else BAD


def ago(seconds: float) -> str:
    """"3 h ago"; a time ahead of this machine's clock (another machine's) says so."""
    if seconds < -60:
        return f"{age_text(-seconds)} ahead"
    return f"{age_text(max(seconds, 0))} ago"


def age_text(seconds: float) -> str:
    if seconds < 3600:
        return f"{int(seconds // 60)} min"
    if seconds < 2 * DAY:
        return f"{seconds / 3600:.0f} h"
    return f"{seconds / DAY:.0f} d"


def judge(f: Facts, now: float) -> Verdict:
    """The machine's colour: the worst of its sets' ages and its reports."""
    problems: list[str] = []
    worst = OK
    cells = []
    if f.error:
        return Verdict(BAD, [f"repository unreadable: {f.error}"], [])
    if not f.sets:
        worst = BAD
        problems.append("no saves")
    for s in f.sets:
        age = now - s.last_save
        st = _age_status(age / 3600)
        cells.append((s, Cell(st, age_text(age))))
        if st != OK:
            problems.append(f"{s.name}: last save {age_text(age)} ago")
        worst = max(worst, st)
    if f.run is not None:
        st = BAD if f.run.exit_code >= 2 else WARN if f.run.exit_code == 1 else OK
        if st != OK:
            problems.append(f"last run {f.run.status}")
        worst = max(worst, st)
    for what, head in (("drill", f.drill), ("fsck", f.fsck), ("mirror push", f.push),
                       ("mirror verify", f.verify)):
        if head is not None and head.exit_code:
            problems.append(f"last {what} {head.status}")
            # A drill or fsck that failed means the backups may not restore.
            failed = not head.ok and what in ("drill", "fsck")
            worst = max(worst, BAD if failed else WARN)
    if f.push is not None and _age_status((now - f.push.time) / 3600) == BAD:
        problems.append(f"mirror pushed {age_text(now - f.push.time)} ago")
        worst = max(worst, WARN)
    return Verdict(worst, problems, cells)


def _warnings_of(data: dict[str, Any]) -> int:
    n = len(data.get("warnings") or [])
    for item in data.get("items") or []:
        if isinstance(item, dict):
            n += len(item.get("warnings") or [])
    return n


def report_head(r: reportlog.StoredReport) -> ReportHead:
    """A report's result: its exit code where it has one (0 ok, 1 warnings, 2
    failed), else its `ok` (a mirror record: failed or not)."""
    d = r.data
    code = d.get("exit_code")
    if not isinstance(code, int):
        code = 0 if d.get("ok", True) else 2
    status = str(d.get("status") or ("OK" if code == 0 else "WARNINGS" if code == 1
                                     else "FAILED"))
    items = d.get("items") or []
    summary = d.get("summary") or (f"{len(items)} items" if items else "")
    return ReportHead(r.time, code < 2, code, status, _warnings_of(d), str(summary), r.commit)


def _mirror_heads(repo: Repository, head: bytes) -> tuple[ReportHead | None, ReportHead | None]:
    push = verify = None
    for r in reportlog.history(repo, "mirror", _MIRROR_WALK, head):
        action = r.data.get("action")
        if action == "push" and push is None:
            push = report_head(r)
        elif action == "verify" and verify is None:
            verify = report_head(r)
        if push is not None and verify is not None:
            break
    return push, verify


def read_facts(machine: str, repo: Repository, refs: dict[bytes, bytes],
               packs: list[tuple[int, float]]) -> Facts:
    f = Facts(machine, packs=packs, repo_bytes=sum(s for s, _ in packs))
    try:
        for name, oid in sorted(refs.items()):
            # ketch-config is saved by every run: the run's own column says its age.
            if name.startswith(b"refs/heads/") and name != b"refs/heads/" + CONFIG_SET.encode():
                c = gobj.decode_commit(repo.read_typed(oid, gobj.COMMIT))
                f.sets.append(SetState(name[len(b"refs/heads/"):].decode("utf-8", "replace"),
                                       c.author_time, oid.hex()))
        for kind in ("run", "drill", "fsck"):
            head = refs.get(reportlog.ref_for(kind))
            if head is not None:
                got = reportlog.latest(repo, kind, head)
                setattr(f, kind, report_head(got) if got else None)
        head = refs.get(reportlog.ref_for("mirror"))
        if head is not None:
            f.push, f.verify = _mirror_heads(repo, head)
    except (KetchError, OSError, ValueError) as e:
        f.error = str(e)
    return f


class SummaryCache:
    """Facts per machine, kept while its refs and packs stay the same."""

    def __init__(self) -> None:
        self._facts: dict[str, tuple[object, Facts]] = {}
        self._lock = threading.Lock()

    def facts(self, machine: str, repo: Repository) -> Facts:
        try:
            refs = dict(repo.iter_refs())
            packs = sorted(repo.pack_sizes())
        except (KetchError, OSError) as e:
            return Facts(machine, error=str(e))
        key = (tuple(sorted(refs.items())), tuple(packs))
        with self._lock:
            got = self._facts.get(machine)
        if got is not None and got[0] == key:
            return got[1]
        f = read_facts(machine, repo, refs, packs)
        with self._lock:
            self._facts[machine] = (key, f)
        return f


def facts_dict(f: Facts, now: float | None = None) -> dict[str, Any]:
    """The JSON the API gives for a machine: the facts and the verdict."""
    now = time.time() if now is None else now
    v = judge(f, now)
    d = asdict(f)
    d.pop("packs")
    d["status"] = v.name
    d["problems"] = v.problems
    d["growth_bytes_per_day"] = f.growth_per_day(now)
    d["sets"] = [dict(asdict(s), age_seconds=int(now - s.last_save), status=STATUS_NAMES[c.status])
                 for s, c in v.sets]
    return d
