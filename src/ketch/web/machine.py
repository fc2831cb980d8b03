"""A machine's page: its saves per set (with what the run that made each one
reported: files, bytes read, bytes new), its repository's size over time, and
its last reports of every kind in full."""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from ketch import reportlog
from ketch.errors import KetchError
from ketch.repo import Repository
from ketch.vfs import VFS
from ketch.web.summary import report_head

SAVES_SHOWN = 60  # per set; the rest are counted
RUNS_SHOWN = 10
OTHERS_SHOWN = 5
# Run reports read to find the numbers of the saves shown.
_RUN_WALK = 120


@dataclass
class SaveRow:
    name: str  # e.g. 2026-12-03-220000
    time: int
    commit: str
    files: int | None = None
    bytes_read: int | None = None
    bytes_new: int | None = None
    seconds: float | None = None


@dataclass
class SetHistory:
    name: str
    saves: list[SaveRow] = field(default_factory=list)
    more: int = 0


@dataclass
class MachineDetail:
    sets: list[SetHistory]
    runs: list[dict[str, Any]]
    others: dict[str, list[dict[str, Any]]]  # drill, fsck, mirror
    error: str | None = None

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def _stored(r: reportlog.StoredReport) -> dict[str, Any]:
    head = report_head(r)
    return {"time": r.time, "commit": r.commit, "ok": head.ok, "exit_code": head.exit_code,
            "status": head.status, "warnings": head.warnings, "report": r.data}


def detail(repo: Repository, vfs: VFS) -> MachineDetail:
    out = MachineDetail([], [], {})
    try:
        runs = reportlog.history(repo, "run", _RUN_WALK)
        by_commit: dict[str, dict[str, Any]] = {}
        for r in runs:
            for item in r.data.get("items") or []:
                if isinstance(item, dict) and isinstance(item.get("commit"), str):
                    by_commit.setdefault(item["commit"], item)
        out.runs = [_stored(r) for r in runs[:RUNS_SHOWN]]
        for kind in ("drill", "fsck", "mirror"):
            out.others[kind] = [_stored(r) for r in reportlog.history(repo, kind, OTHERS_SHOWN)]
        for ref, _ in sorted(repo.iter_refs(b"refs/heads/")):
            branch = ref[len(b"refs/heads/"):]
            hist = SetHistory(branch.decode("utf-8", "replace"))
            saves = vfs.saves(branch)
            for name, commit, t in saves[:SAVES_SHOWN]:
                row = SaveRow(name.decode(), t, commit.hex())
                item = by_commit.get(commit.hex())
                if item is not None:
                    row.files = item.get("files")
                    row.bytes_read = item.get("bytes_read")
                    row.bytes_new = item.get("bytes_new")
                    row.seconds = item.get("seconds")
                hist.saves.append(row)
            hist.more = max(0, len(saves) - SAVES_SHOWN)
            out.sets.append(hist)
    except (KetchError, OSError, ValueError) as e:
        out.error = str(e)
    return out
