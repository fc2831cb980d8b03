"""Writing one restored file: its blobs placed where they belong, zeros left as
holes, contiguous data gathered into large writes (see FileJob; what reads
and checks the blobs is restorebatch's)."""

from __future__ import annotations

import contextlib
import os
import resource
from collections.abc import Callable

# Holes are made from aligned blocks of this size: the common filesystem block,
# so a hole never saves less than it costs.
HOLE_BLOCK = 4096
ZERO_BLOCK = bytes(HOLE_BLOCK)
# Coalesce blobs into one pwritev of up to this much (or this many buffers;
# Linux's IOV_MAX is 1024): large writes, while two batches in flight stay
# within a small resident set.
FLUSH_BYTES = 1 << 20
FLUSH_BUFFERS = 512


_PROBE = bytes(16)


def has_hole(data: bytes, start: int) -> bool:
    """Whether `data`, placed at file offset `start`, holds a file-aligned
    HOLE_BLOCK of zeros (what add_with_holes leaves as a hole). Only the
    aligned blocks' first bytes are looked at first: several times faster
    than searching the whole blob, which a restore did for every blob."""
    n = len(data)
    i = (-start) % HOLE_BLOCK
    while i + HOLE_BLOCK <= n:
        if data[i : i + 16] == _PROBE and data[i : i + HOLE_BLOCK] == ZERO_BLOCK:
            return True
        i += HOLE_BLOCK
    return False


class ContentError(Exception):
    """A file's content failed verification; the message says how."""


class FileJob:
    """One file being written: its descriptor, what is still to come, and
    contiguous data waiting for one pwritev."""

    def __init__(self, fd: int, path: bytes, done: Callable[[FileJob], None],
                 failed: Callable[[FileJob, Exception], None]) -> None:
        self.fd = fd
        self.path = path
        self.done = done
        self.failed = failed
        self.seq = 0  # order of creation, set by the batch
        self.size = 0  # end of the furthest blob or hole placed so far
        self.end = 0  # end of the furthest byte written (the file is new: its size)
        self.planned = False  # every blob placed
        self.outstanding = 0  # placed blobs not yet written
        self.error: Exception | None = None
        self.closed = False
        self.buf: list[bytes | memoryview] = []
        self.buf_start = 0
        self.buf_len = 0

    def flush(self) -> None:
        if not self.buf:
            return
        bufs, off, total = self.buf, self.buf_start, self.buf_len
        self.buf = []
        self.buf_len = 0
        done = os.pwritev(self.fd, bufs, off)
        self.end = max(self.end, off + total)
        if done != total:
            rest = memoryview(b"".join(bufs))[done:]
            off += done
            while rest:
                k = os.pwrite(self.fd, rest, off)
                rest = rest[k:]
                off += k

    def add(self, start: int, data: bytes | memoryview) -> None:
        if not self.buf or start != self.buf_start + self.buf_len:
            self.flush()
            self.buf_start = start
        self.buf.append(data)
        self.buf_len += len(data)
        if self.buf_len >= FLUSH_BYTES or len(self.buf) >= FLUSH_BUFFERS:
            self.flush()

    def add_with_holes(self, start: int, data: bytes) -> None:
        # Only whole file-aligned blocks become holes, so a hole never splits
        # a block that also holds data.
        view = memoryview(data)
        n = len(data)
        i = min((-start) % HOLE_BLOCK, n)
        run_start = 0
        while i + HOLE_BLOCK <= n:
            if view[i : i + HOLE_BLOCK] == ZERO_BLOCK:
                if run_start < i:
                    self.add(start + run_start, view[run_start:i])
                j = i + HOLE_BLOCK
                while j + HOLE_BLOCK <= n and view[j : j + HOLE_BLOCK] == ZERO_BLOCK:
                    j += HOLE_BLOCK
                i = run_start = j
            else:
                i += HOLE_BLOCK
        if run_start < n:
            self.add(start + run_start, view[run_start:])

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            os.close(self.fd)


def files_allowed(want: int, least: int) -> int:
    """How many files a restore's batch may hold open (each FileJob keeps its
    descriptor): `want`, or what the descriptor limit leaves room for (a
    batch in flight and one being planned, each file once, and the restore's
    own), but not under `least`. The soft limit is raised towards the hard
    one first, as far as that needs: Debian's soft default is 1,024."""
    need = 2 * want + 256
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < need:
        to = need if hard == resource.RLIM_INFINITY else min(need, hard)
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (to, hard))
            soft = to
    if soft == resource.RLIM_INFINITY:
        return want
    return max(least, min(want, (soft - 256) // 2))
