"""Files that become visible only once durable: temp name, fsync, rename, and an
fsync of the directory so the rename itself survives a crash."""

from __future__ import annotations

import os
import sys
import tempfile
from collections.abc import Callable
from types import TracebackType
from typing import BinaryIO

_SYNC_FILE_RANGE_WRITE = 2
_sync_file_range: Callable[[int, int, int, int], int] | None = None
_looked_up = False


def fsync_dir(path: str | bytes) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def start_writeback(fd: int, offset: int, length: int) -> None:
    """Have the kernel start writing a range of a file to disk, without waiting
    (Linux's sync_file_range, as borg does): a big file's fsync then waits for
    its last stretch only. A hint: where it is missing or fails, nothing happens.
    (Python's os has no sync_file_range; ctypes calls libc's, without the GIL.)"""
    global _sync_file_range, _looked_up
    if not _looked_up:
        _looked_up = True
        if sys.platform == "linux":
            import ctypes

            try:
                fn = ctypes.CDLL(None, use_errno=True).sync_file_range
            except (OSError, AttributeError):
                return
            fn.argtypes = (ctypes.c_int, ctypes.c_int64, ctypes.c_int64, ctypes.c_uint)
            fn.restype = ctypes.c_int
            _sync_file_range = fn
    if _sync_file_range is not None:
        _sync_file_range(fd, offset, length, _SYNC_FILE_RANGE_WRITE)


def _umask() -> int:
    # Reading the umask by setting it would race with other threads.
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    return 0o022


class AtomicFile:
    """A temp file next to ``path`` that replaces it only on a clean exit.

    The temp name starts with a dot and ends in ``.tmp`` so neither bup's nor
    our globs (``*.idx``, ``*.midx``, ``bup.bloom``) ever pick it up.
    """

    def __init__(self, path: str) -> None:
        self.path = path
        d = os.path.dirname(path) or "."
        fd, self.tmp = tempfile.mkstemp(prefix=".ketch-", suffix=".tmp", dir=d)
        os.fchmod(fd, 0o666 & ~_umask())
        self.file: BinaryIO = os.fdopen(fd, "w+b")

    def __enter__(self) -> AtomicFile:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        if t is None:
            self.commit()
        else:
            self.abort()

    def commit(self) -> None:
        self.file.flush()
        os.fsync(self.file.fileno())
        self.file.close()
        os.replace(self.tmp, self.path)
        fsync_dir(os.path.dirname(self.path) or ".")

    def abort(self) -> None:
        self.file.close()
        try:
            os.unlink(self.tmp)
        except FileNotFoundError:
            pass
