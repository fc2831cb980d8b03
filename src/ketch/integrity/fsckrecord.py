"""`ketch fsck`'s result kept in the repository it checked, on `refs/ketch/fsck`
(ketch.reportlog): the backup server's dashboard then knows when each
repository was last proven intact, and what was wrong when it was not.

Only a repository that may be written keeps one: a read-only one (an S3
mirror, a directory this user may only read) is checked and says nothing of
it. Any other failure to keep the record is a warning of the check.

A record (report.json on refs/ketch/fsck):

    ok, exit_code     as the check's report: ok only when exit_code is 0
    time              when the record was made, seconds since the epoch
    seconds           how long the check took
    quick, read_data  the options it ran with (read_data: the percentage, 0-100)
    packs, packs_read, objects, objects_read, objects_reachable, refs,
    bytes_read, parity_generated
                      counts, as the check's report (--json) has them
    problems, damaged how many problems it found, and how many of them damage
    repairs           how many repairs it attempted (--repair)
    errors            the first ERRORS_KEPT problems, "SEVERITY: message"
    summary           one line for a person
"""

from __future__ import annotations

import errno
from typing import Any

from ketch import reportlog
from ketch.errors import EXIT_WARNINGS, KetchError
from ketch.integrity.protect import protect_new_packs
from ketch.repo import ReadOnlyRepository, Repository
from ketch.text import plural

# A record names the first few problems; the check's own output has them all.
ERRORS_KEPT = 10
# What says "not yours to write" rather than "something went wrong".
_NOT_WRITABLE = (errno.EACCES, errno.EPERM, errno.EROFS)
COUNTS = ("packs", "packs_read", "objects", "objects_read", "objects_reachable", "refs",
          "bytes_read", "parity_generated")


def fsck_record(report: dict[str, Any], options: dict[str, Any]) -> dict[str, Any]:
    """What refs/ketch/fsck keeps of a check (`report`: FsckReport.as_dict, or
    its shape from a server or a bucket; `options`: FsckRun.options). The shape
    is in the module's docstring."""
    problems = report.get("problems") or []
    damaged = sum(p.get("severity") == "damaged" for p in problems)
    if problems:
        worst = "DAMAGED" if report["exit_code"] >= 2 else "WARNINGS"
        summary = f"{worst}: {plural(len(problems), 'problem')}; {problems[0]['message']}"
    else:
        summary = (f"ok: {plural(int(report.get('packs', 0)), 'pack')}, "
                   f"{plural(int(report.get('objects', 0)), 'object', grouped=True)}")
    return {"ok": bool(report["ok"]), "exit_code": int(report["exit_code"]),
            "time": reportlog.now(), "seconds": report.get("seconds", 0.0),
            "quick": bool(options.get("quick")), "read_data": float(options.get("read_data") or 0),
            **{k: int(report.get(k) or 0) for k in COUNTS},
            "problems": len(problems), "damaged": damaged,
            "repairs": len(report.get("repairs") or []),
            "errors": [f"{p['severity']}: {p['message']}" for p in problems[:ERRORS_KEPT]],
            "summary": summary}


def store_fsck_report(repo: Repository, report: dict[str, Any],
                      options: dict[str, Any]) -> str | None:
    """Commit the check's record onto refs/ketch/fsck; its id. None where the
    repository may not be written; another failure is added to `report` as a
    warning (exit code 1 at least), for the check itself went as it went."""
    def warn(message: str) -> None:
        report["problems"].append({"severity": "warning", "what": "report", "message": message})
        report["exit_code"] = max(int(report["exit_code"]), EXIT_WARNINGS)
        report["ok"] = False

    record = fsck_record(report, options)
    protect = bool(options.get("generate"))  # -g leaves every pack with parity: the record's too
    try:
        if protect:
            protect_new_packs(repo.writable(), warn)
        commit = reportlog.store(repo, "fsck", record,
                                 "ok" if record["ok"] else f"exit {record['exit_code']}")
    except ReadOnlyRepository:
        return None
    except (KetchError, OSError) as e:
        if isinstance(e, OSError) and e.errno in _NOT_WRITABLE:
            return None
        warn(f"fsck report not stored: {_why(e)}")
        return None
    if protect:
        try:
            repo.writable().maintain()  # where a local repository makes the parity
        except (KetchError, OSError) as e:
            warn(f"no parity for the fsck report's pack: {_why(e)}")
    return commit


def _why(e: KetchError | OSError) -> str:
    if isinstance(e, OSError) and not isinstance(e, KetchError):
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
    return str(e)
