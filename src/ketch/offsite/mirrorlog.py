"""A mirror push recorded in the local repository it pushed, on
`refs/ketch/mirror` (ketch.reportlog): the backup server's dashboard then tells
from the repositories alone when each machine's offsite copy was last made,
and whether that worked. The next push carries the record to the mirror too.

`mirror verify --root DIR` records its result in each repository DIR/NAME it
verified (the backup server's root): without --root it knows only the store
and the names in it, so it records nothing.

A push usually runs as root on the backup server, while each repository belongs
to its machine's user (the forced-command server runs as that user): what the
record wrote (a pack, the ref, its reflog and their directories) is given back
to the repository's owner, as after a gc (ketch.lifecycle.fleet.give_back).

A push record (report.json on refs/ketch/mirror):

    action            "push"
    ok                true when the push went through (error is null)
    store             the store's URL as given, without credentials: "s3://bucket/prefix"
    name              the repository's name in the store
    time              when the record was made, seconds since the epoch
    seconds           how long this repository's push took
    uploaded_files, uploaded_bytes, skipped_files, skipped_bytes,
    deleted_files, deleted_bytes, packs, refs, loose_objects
                      counts, as the push's report (--json) has them
    generation        the manifest's generation after the push
    manifest_written  whether the push published a new manifest
    error             why the push failed, or null
    summary           one line for a person
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from ketch import reportlog
from ketch.errors import KetchError, NotARepository
from ketch.lifecycle.fleet import give_back
from ketch.localrepo import LocalRepository

if TYPE_CHECKING:
    from ketch.offsite.push import RepoPushReport
    from ketch.offsite.verify import RepoVerifyReport

# What a push record counts, as the push's report has them.
PUSH_COUNTS = ("uploaded_files", "uploaded_bytes", "skipped_files", "skipped_bytes",
               "deleted_files", "deleted_bytes", "packs", "refs", "loose_objects")


def display_url(url: str) -> str:
    """The store's URL as users write it, without a `user:secret@` part (ketch
    takes none, but a record is read by whoever reads the repository)."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        return url
    host, slash, path = rest.partition("/")
    return f"{scheme}://{host.rpartition('@')[2]}{slash}{path}".rstrip("/")


def push_record(rep: RepoPushReport, store_url: str) -> dict[str, Any]:
    """What `refs/ketch/mirror` keeps of one repository's push (the shape is in
    the module's docstring)."""
    ok = rep.error is None
    if ok:
        state = (f"manifest generation {rep.generation}" if rep.manifest_written
                 else "manifest unchanged")
        summary = (f"pushed to {store_url}: {rep.uploaded_files} files uploaded "
                   f"({rep.uploaded_bytes / 1e6:,.1f} MB), {state}")
    else:
        summary = f"push to {store_url} FAILED: {rep.error}"
    return {"action": "push", "ok": ok, "store": store_url, "name": rep.name,
            "time": reportlog.now(), "seconds": round(rep.seconds, 3),
            **{k: int(getattr(rep, k)) for k in PUSH_COUNTS},
            "generation": rep.generation, "manifest_written": rep.manifest_written,
            "error": rep.error, "summary": summary}


def record_push(rep: RepoPushReport, store_url: str) -> None:
    """Keep the record of this push in the repository it pushed; a warning on
    `rep` where that fails (a full disk), for the push itself went as it went."""
    try:
        store_in_local(rep.path, push_record(rep, display_url(store_url)))
    except NotARepository:
        return  # nowhere to keep it: the push failed, saying so
    except (KetchError, OSError) as e:
        why = (f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
               if isinstance(e, OSError) and not isinstance(e, KetchError) else str(e))
        rep.warnings.append(f"mirror report not stored: {why}")


def store_in_local(path: str, data: dict[str, Any]) -> str:
    """Commit `data` onto refs/ketch/mirror of the local repository at `path`
    (then give its owner back what that wrote); the commit's id."""
    repo = LocalRepository(path)
    try:
        return reportlog.store(repo, "mirror", data, "ok" if data["ok"] else "FAILED")
    finally:
        repo.close()
        give_back(repo.path)


def verify_record(rep: RepoVerifyReport, store_url: str, percent: float) -> dict[str, Any]:
    """What `refs/ketch/mirror` keeps of one repository's verify: action
    "verify", ok, store, name, time, files_checked, missing, corrupted, extra
    (counts), packs_read, bytes_read, objects_checked, read_data_percent,
    error, summary."""
    bad = len(rep.missing) + len(rep.corrupted)
    summary = (f"verify of {store_url} FAILED: {rep.error}" if rep.error else
               f"verified {store_url}: {rep.files_checked} files"
               + (f", {bad} missing or damaged" if bad else ", intact"))
    return {"action": "verify", "ok": rep.ok, "store": store_url, "name": rep.name,
            "time": reportlog.now(), "files_checked": rep.files_checked,
            "missing": len(rep.missing), "corrupted": len(rep.corrupted),
            "extra": len(rep.extra), "packs_read": rep.packs_read, "bytes_read": rep.bytes_read,
            "objects_checked": rep.objects_checked, "read_data_percent": percent,
            "exit_code": 0 if rep.ok and not rep.extra else 1 if rep.ok else 2,
            "error": rep.error, "summary": summary}


def record_verify(reps: list[RepoVerifyReport], root: str, store_url: str,
                  percent: float) -> list[str]:
    """Keep each repository's verify result in ROOT/NAME; the warnings (a name
    with no repository under ROOT, a record that could not be stored)."""
    warnings = []
    for rep in reps:
        path = os.path.join(root, rep.name)
        try:
            store_in_local(path, verify_record(rep, display_url(store_url), percent))
        except NotARepository:
            warnings.append(f"{rep.name}: no repository {path} to keep the verify's record in")
        except (KetchError, OSError) as e:
            warnings.append(f"{rep.name}: mirror report not stored: {e}")
    return warnings
