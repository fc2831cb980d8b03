"""Reports kept in the repository they are about, so that whoever holds the
repositories (the backup server, an S3 mirror) knows how each machine's jobs
went without anything else set up on the machines.

Each kind of report is a chain of commits on its own ref, `refs/ketch/KIND`:
a commit's tree holds `report.json`, its parent is the previous report of
that kind, its committer time is when it was stored. The refs are not
branches: `ketch ls` does not list them, prune leaves them alone, gc keeps
what they reach (every ref is a root), and a mirror push copies them.

    refs/ketch/run      ketch run: exit code, per-set and per-dump results
    refs/ketch/drill    ketch drill: what was restored and checked
    refs/ketch/mirror   ketch mirror push / verify, stored on the server
                        (record shape: ketch.offsite.mirrorlog)
    refs/ketch/fsck     ketch fsck (record shape: ketch.integrity.fsckrecord)

A reader asks only for the newest few: the chain is walked from its head.
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ketch.commits import commit_bytes
from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.repo import Repository

KINDS = ("run", "drill", "mirror", "fsck")
REPORT_NAME = b"report.json"
# A report is a page of JSON: past this it is not one of ours.
MAX_REPORT_BYTES = 16 << 20


def ref_for(kind: str) -> bytes:
    if kind not in KINDS:
        raise ValueError(f"unknown report kind {kind!r}")
    return b"refs/ketch/" + kind.encode()


@dataclass(frozen=True)
class StoredReport:
    kind: str
    commit: str  # the commit holding it
    time: int  # when it was stored (the commit's time, seconds since the epoch)
    data: dict[str, Any]


def store(repo: Repository, kind: str, data: Mapping[str, Any], summary: str, *,
          when: float | None = None) -> str:
    """Commit `data` as the newest report of `kind`; the commit's id (hex).

    `when` (seconds since the epoch) dates the report; default now.
    Raises ReadOnlyRepository where the repository may not be written (a
    read-only mirror), and what the writer raises; the caller decides whether
    a report that could not be kept is a warning."""
    ref = ref_for(kind)
    w_repo = repo.writable()
    payload = json.dumps(data, indent=2, sort_keys=True, default=str).encode() + b"\n"
    # Held as a save holds it: a gc waits rather than delete what the writer
    # found stored and so did not write again.
    with w_repo.writing():
        old = repo.read_ref(ref)
        w = w_repo.writer()
        try:
            blob = w.write(gobj.BLOB, payload, metadata=True)
            tree = w.write(gobj.TREE, gobj.encode_tree([gobj.TreeEntry(gobj.MODE_FILE,
                                                                       REPORT_NAME, blob)]))
            message = f"ketch {kind}: {summary}\n".encode()
            commit = w.write(gobj.COMMIT, commit_bytes(tree, old, when, message))
        except BaseException:
            w.abort()
            raise
        w.close()
        w_repo.update_ref(ref, commit, old, f"ketch {kind}".encode())
    return commit.hex()


def _read_one(repo: Repository, kind: str, oid: bytes) -> tuple[StoredReport, bytes | None]:
    commit = gobj.decode_commit(repo.read_typed(oid, gobj.COMMIT))
    entries = {e.name: e for e in gobj.decode_tree(repo.read_typed(commit.tree, gobj.TREE))}
    if REPORT_NAME not in entries:
        raise KetchError(f"{kind} report {oid.hex()}: no {REPORT_NAME.decode()} in its tree")
    raw = repo.read_typed(entries[REPORT_NAME].oid, gobj.BLOB)
    if len(raw) > MAX_REPORT_BYTES:
        raise KetchError(f"{kind} report {oid.hex()}: {len(raw)} bytes, not a report")
    try:
        data = json.loads(raw)
    except ValueError as e:
        raise KetchError(f"{kind} report {oid.hex()}: not JSON ({e})") from None
    if not isinstance(data, dict):
        raise KetchError(f"{kind} report {oid.hex()}: not a JSON object")
    return (StoredReport(kind, oid.hex(), commit.committer_time, data),
            commit.parents[0] if commit.parents else None)


def history(repo: Repository, kind: str, limit: int = 10,
            head: bytes | None = None) -> list[StoredReport]:
    """The newest `limit` reports of `kind`, newest first (from `head`, the
    ref's value when the caller has read it already)."""
    out: list[StoredReport] = []
    oid = head if head is not None else repo.read_ref(ref_for(kind))
    while oid is not None and len(out) < limit:
        report, oid = _read_one(repo, kind, oid)
        out.append(report)
    return out


def latest(repo: Repository, kind: str, head: bytes | None = None) -> StoredReport | None:
    found = history(repo, kind, 1, head)
    return found[0] if found else None


def now() -> int:
    return int(time.time())
