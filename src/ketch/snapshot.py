"""One snapshot, written the one way every command writes it (`save`, `split -n`,
a dump): open a write session, build the tree, commit, close the session (the
packs are durable), move the branch by compare-and-swap, tidy the repository.

A failure before the branch moves aborts the session, which keeps the complete
objects (a re-run does not write them again); the branch stays where it was.
"""

from __future__ import annotations

import errno
import os
import random
import time
from collections.abc import Callable
from dataclasses import dataclass

from ketch.commits import commit_bytes
from ketch.errors import KetchError, RefConflict
from ketch.git import objects as gobj
from ketch.git.pack import DEFAULT_LEVEL
from ketch.git.refs import validate_branch_name
from ketch.interrupt import held
from ketch.progress import NullProgress, Progress
from ketch.repo import ObjectWriter, Repository, WritableRepository


def save_index_path(repo: Repository) -> str:
    """Where the save index (a cache of what saves into `repo` stored) lives."""
    os.makedirs(repo.cache_dir, exist_ok=True)
    return os.path.join(repo.cache_dir, "ketch-index.sqlite")


@dataclass
class SnapshotResult:
    tree: bytes | None = None
    commit: bytes | None = None  # None: nothing to commit (or not asked to)
    ref: bytes | None = None  # the branch moved, if any
    objects_new: int = 0
    bytes_new: int = 0


def write_snapshot(
    repo: WritableRepository,
    branch: str | None,
    build_tree: Callable[[ObjectWriter], bytes | None],
    *,
    message: bytes,
    reflog: bytes,
    date: float | None = None,
    commit: bool = True,
    progress: Progress | None = None,
    level: int = DEFAULT_LEVEL,
    max_pack_size: int | None = None,
    max_pack_objects: int | None = None,
) -> SnapshotResult:
    """Build a tree with `build_tree(writer)` (None: nothing to commit), commit it
    with `message` when `commit` (always when `branch` is given) and move
    `refs/heads/BRANCH` to the commit, `reflog` saying who did."""
    progress = progress or NullProgress()
    # From the first "already stored?" to the moved branch: what gc waits for.
    with repo.writing():
        refname = None
        old = None
        if branch is not None:
            validate_branch_name(branch.encode())
            refname = b"refs/heads/" + branch.encode()
            old = repo.read_ref(refname)
        result = SnapshotResult()
        w = repo.writer(level=level, max_pack_size=max_pack_size, max_pack_objects=max_pack_objects)
        try:
            result.tree = build_tree(w)
            if result.tree is not None and (commit or refname is not None):
                result.commit = w.write(gobj.COMMIT, commit_bytes(result.tree, old, date, message))
            w.close()
        except BaseException:
            w.abort()  # keeps the complete objects written so far
            raise
        progress.finish()
        result.objects_new, result.bytes_new = w.objects_written, w.bytes_written
        if refname is not None and result.commit is not None:
            tree = result.tree
            assert tree is not None
            try:
                # Not cut half-way: a stale lock would block every later save of this name.
                with held():
                    result.commit = advance_branch(
                        repo, refname, result.commit, old,
                        lambda parent: commit_bytes(tree, parent, date, message), message=reflog)
            except KetchError:
                raise
            except OSError as e:
                if e.errno == errno.ENOSPC:
                    raise KetchError("no space left on device while updating the branch") from None
                raise
            result.ref = refname
        repo.maintain()
        return result


def advance_branch(
    repo: WritableRepository,
    refname: bytes,
    commit: bytes,
    old: bytes | None,
    rebuild: Callable[[bytes | None], bytes],
    *,
    message: bytes = b"",
    attempts: int = 20,
) -> bytes:
    """Move `refname` from `old` to `commit`. When another writer moved it first
    (two saves into one branch at once), the commit is rebuilt on top of the new
    head with `rebuild(parent) -> commit bytes` and the swap retried, so neither
    save is lost. Returns the commit the branch now points at."""
    for attempt in range(attempts):
        try:
            repo.update_ref(refname, commit, old, message)
            return commit
        except RefConflict:
            # Writers that collided once collide again unless they spread out.
            time.sleep(random.uniform(0, min(2.0, 0.01 * 2 ** attempt)))
            old = repo.read_ref(refname)
            w = repo.writer()
            try:
                commit = w.write(gobj.COMMIT, rebuild(old))
            except BaseException:
                w.abort()
                raise
            w.close()
    raise RefConflict(f"{refname.decode(errors='replace')} kept moving under this save; "
                      f"gave up after {attempts} attempts")
