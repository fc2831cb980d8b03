"""Leases: how a save tells gc "I may have deduplicated against what you hide".

A save decides that an object is already stored, and does not write it, long
before its commit lands on a branch. If gc deleted that object in between, the
new commit would point at nothing. So a save holds a lease from its first
existence check until its branch has moved, and gc, after hiding the packs it
is about to delete, waits for every lease that was held at that moment before
it looks at the refs one last time.

A lease is a file in `<repo>/ketch-leases/`, flocked by its holder for its
whole life. The kernel drops the lock when the holder dies, even by SIGKILL,
so a lease whose file is still there but whose lock can be taken is dead and
is removed by whoever notices. The file appears already locked (it is created
under a dot-name, locked, then renamed into place), so gc never mistakes a lease
being born for a dead one.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import secrets
import socket
import time
from collections.abc import Callable
from types import TracebackType

LEASE_DIR = "ketch-leases"
_SUFFIX = ".lease"


def lease_dir(repo_path: str) -> str:
    return os.path.join(repo_path, LEASE_DIR)


class Lease:
    """Held from `__enter__` to `__exit__` (or `release()`)."""

    def __init__(self, repo_path: str, what: str = "save") -> None:
        self.dir = lease_dir(repo_path)
        self.what = what
        self.name: str | None = None
        self._fd: int | None = None

    def acquire(self) -> None:
        os.makedirs(self.dir, exist_ok=True)
        tag = f"{time.time_ns()}-{os.getpid()}-{secrets.token_hex(4)}"
        tmp = os.path.join(self.dir, "." + tag)
        fd = os.open(tmp, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            os.write(fd, f"{self.what} pid {os.getpid()} on {socket.gethostname()}\n".encode())
            os.rename(tmp, os.path.join(self.dir, tag + _SUFFIX))
        except BaseException:
            os.close(fd)
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise
        self._fd, self.name = fd, tag + _SUFFIX

    def release(self) -> None:
        fd, name = self._fd, self.name
        self._fd = self.name = None
        if fd is None or name is None:
            return
        # Unlink while still locked: a gc that opens it now finds it held,
        # then gone; never a file that looks dead while its save still runs.
        with contextlib.suppress(OSError):
            os.unlink(os.path.join(self.dir, name))
        os.close(fd)

    def __enter__(self) -> Lease:
        self.acquire()
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.release()


def _held(path: str) -> bool | None:
    """True: its holder runs; False: dead (and now removed); None: already gone."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        return False
    finally:
        os.close(fd)


def held_leases(repo_path: str) -> list[str]:
    """Names of the leases held now (dead ones found on the way are removed)."""
    d = lease_dir(repo_path)
    try:
        names = sorted(n for n in os.listdir(d) if n.endswith(_SUFFIX))
    except FileNotFoundError:
        return []
    return [n for n in names if _held(os.path.join(d, n))]


def wait_for(
    repo_path: str,
    names: list[str],
    *,
    timeout: float,
    on_wait: Callable[[int], None] | None = None,
    poll: float = 0.2,
) -> list[str]:
    """Wait until each of `names` is released or its holder has died. Returns the
    names still held when `timeout` seconds have passed (empty: all done)."""
    d = lease_dir(repo_path)
    pending = list(names)
    deadline = time.monotonic() + timeout
    while True:
        pending = [n for n in pending if _held(os.path.join(d, n))]
        if not pending or time.monotonic() >= deadline:
            return pending
        if on_wait is not None:
            on_wait(len(pending))
        time.sleep(min(poll, max(0.0, deadline - time.monotonic())))
