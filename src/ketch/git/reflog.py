"""Reflog expiry, for gc: a reflog line naming an object that gc deletes makes
`git fsck --strict` fail, so such lines go before the object does.

The ref stays locked while its reflog is rewritten (a save moving it waits,
see `Refs._take_lock`). That lock is gc's own: it appears with its content
already in it and already flocked (a hard link from a temp file), so a gc
killed while holding it leaves a lock that anyone can recognise by content and
a free flock, and remove; an empty or hex-holding lock may be a live writer's
and is never touched.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Callable, Iterator

from ketch.git.durable import fsync_dir

# What gc writes into a ref's lock while it rewrites the reflog (never a ref value).
EXPIRY_LOCK_CONTENT = b"ketch-gc: reflog expiry\n"
# Temp files beside the ref and its log: `@{` makes the name invalid as a ref,
# and `.lock` makes git and ketch skip it when they list refs.
_TMP_SUFFIX = b"@{gc}.lock"

Gone = Callable[[bytes], bool]


def filter_reflog(data: bytes, gone: Gone) -> tuple[bytes, int]:
    """The reflog without lines whose old or new id is `gone`; and how many went."""
    kept: list[bytes] = []
    dropped = 0
    for line in data.splitlines(keepends=True):
        ids = line.split(b" ", 2)[:2]
        try:
            raw = [bytes.fromhex(h.decode()) for h in ids]
        except ValueError:
            kept.append(line)  # not ours to judge
            continue
        if len(raw) == 2 and any(len(r) == 20 and r != bytes(20) and gone(r) for r in raw):
            dropped += 1
        else:
            kept.append(line)
    return b"".join(kept), dropped


def take_expiry_lock(lock: bytes) -> int | None:
    """Create `lock` holding EXPIRY_LOCK_CONTENT and flocked by us, atomically;
    the open descriptor (keep it while the lock is held), or None if it exists."""
    tmp = lock[: -len(b".lock")] + _TMP_SUFFIX
    fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        os.write(fd, EXPIRY_LOCK_CONTENT)
        os.link(tmp, lock)
    except FileExistsError:
        os.close(fd)
        return None
    except BaseException:
        os.close(fd)
        raise
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
    return fd


def release_expiry_lock(lock: bytes, fd: int) -> None:
    # Unlinked while still flocked: nobody can find it unlocked and think it stale.
    with contextlib.suppress(FileNotFoundError):
        os.unlink(lock)
    os.close(fd)


def remove_if_stale(lock: bytes) -> bool:
    """Remove `lock` if it is an expiry lock whose gc died (its flock is free).
    A writer that finds a ref locked asks this before giving up."""
    try:
        fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    except (FileNotFoundError, IsADirectoryError):
        return False
    try:
        if os.read(fd, len(EXPIRY_LOCK_CONTENT) + 1) != EXPIRY_LOCK_CONTENT:
            return False  # a writer's lock (empty or a ref value): never ours to take
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return False  # its gc is alive and expiring
        with contextlib.suppress(FileNotFoundError):
            os.unlink(lock)
        return True
    finally:
        os.close(fd)


def replace_log(path: bytes, data: bytes) -> None:
    """Write a reflog through a temp file: a crash leaves the old or the new one."""
    tmp = path + _TMP_SUFFIX
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def _walk(root: bytes) -> Iterator[bytes]:
    for dirpath, _, filenames in os.walk(root):
        for fn in filenames:
            yield os.path.join(dirpath, fn)


def reflog_names(git_dir: bytes) -> list[bytes]:
    """Names of the refs that have a reflog (HEAD included)."""
    root = os.path.join(git_dir, b"logs")
    names = [b"HEAD"] if os.path.isfile(os.path.join(root, b"HEAD")) else []
    for p in _walk(os.path.join(root, b"refs")):
        if not p.endswith(b".lock"):
            names.append(os.path.relpath(p, root))
    return sorted(names)


def clear_stale_expiry(git_dir: bytes) -> int:
    """Remove what a killed expiry left: its ref locks and temp files."""
    removed = 0
    candidates = [os.path.join(git_dir, b"HEAD.lock"), os.path.join(git_dir, b"HEAD" + _TMP_SUFFIX)]
    candidates += [p for top in (b"refs", b"logs") for p in _walk(os.path.join(git_dir, top))]
    for p in candidates:
        if p.endswith(_TMP_SUFFIX):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                removed += 1
        elif p.endswith(b".lock"):
            removed += remove_if_stale(p)
    return removed
