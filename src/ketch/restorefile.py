"""Writing one restored file from its blob or chunk tree: checked, sparse, deduplicated.

See FileWriter.
"""

from __future__ import annotations

import os

from ketch.git import objects as gobj
from ketch.progress import Progress
from ketch.repo import Repository

# Holes are made from aligned blocks of this size: the common filesystem block,
# so a hole never saves less than it costs.
HOLE_BLOCK = 4096
_ZERO_BLOCK = bytes(HOLE_BLOCK)
# Coalesce blobs into one pwritev of up to this much (or this many buffers;
# Linux's IOV_MAX is 1024).
FLUSH_BYTES = 4 << 20
FLUSH_BUFFERS = 512


class ContentError(Exception):
    """A file's content failed verification; the message says how."""


# Kinds of work on a FileWriter's stack.
_BLOB, _TREE, _TREE_END = 0, 1, 2
# Bounds the per-file map of blobs already written (about 100 bytes each).
_SEEN_LIMIT = 1 << 20


class FileWriter:
    """Writes one file from its blob or chunk tree, in order.

    Every object read is hashed and compared with the id its tree names
    before its bytes are used. Zeros become holes: blobs and whole subtrees
    known to be all zeros are skipped without reading, and aligned zero
    blocks inside data are seeked over. A blob or subtree seen earlier in the
    same file (deduplicated data) is copied from where it was written, with
    copy_file_range, instead of being read, inflated and hashed again. Data
    is gathered into large pwritev calls.
    """

    def __init__(self, fd: int, objects: Repository, zero_blobs: dict[bytes, int],
                 progress: Progress) -> None:
        self.fd = fd
        self.objects = objects
        self.zero_blobs = zero_blobs
        self.progress = progress
        self.seen: dict[bytes, tuple[int, int]] = {}  # oid -> (offset, size) in this file
        self.pos = 0  # logical end of what has been seen
        self.written = 0  # bytes that are data, not holes
        self.holes = 0
        self.unreported = 0  # bytes not yet passed to progress
        self.buf: list[bytes | memoryview] = []
        self.buf_start = 0
        self.buf_len = 0

    def write(self, oid: bytes, chunked: bool) -> int:
        zero_blobs = self.zero_blobs
        seen = self.seen
        read = self.objects.read
        object_id = gobj.object_id
        stack: list[tuple[bytes, int, int, int, int]] = [
            (oid, _TREE if chunked else _BLOB, 0, 0, 0)
        ]
        while stack:
            oid, kind, start, written, holes = stack.pop()
            if kind == _TREE_END:
                size = self.pos - start
                if self.written == written:
                    zero_blobs[oid] = size
                elif self.holes == holes and len(seen) < _SEEN_LIMIT:
                    seen[oid] = (start, size)
                continue
            n = zero_blobs.get(oid)
            if n is not None:
                self.hole(n)
                continue
            prev = seen.get(oid)
            if prev is not None:
                self.copy(*prev)
                continue
            want = gobj.TREE if kind == _TREE else gobj.BLOB
            t, data = read(oid)
            if t != want or object_id(t, data) != oid:
                raise ContentError(f"object {oid.hex()} does not match its id")
            if kind == _TREE:
                stack.append((oid, _TREE_END, self.pos, self.written, self.holes))
                entries = list(gobj.decode_tree(data))
                self.objects.prefetch([e.oid for e in entries
                                       if e.oid not in zero_blobs and e.oid not in seen])
                stack.extend(
                    (e.oid, _TREE if e.mode == gobj.MODE_TREE else _BLOB, 0, 0, 0)
                    for e in reversed(entries)
                )
                continue
            n = len(data)
            if n >= HOLE_BLOCK and not data[0] and data == bytes(n):
                zero_blobs[oid] = n
                self.hole(n)
            elif data.find(_ZERO_BLOCK) < 0:
                if len(seen) < _SEEN_LIMIT:
                    seen[oid] = (self.pos, n)
                self.add(data)
            else:
                self.add_with_holes(data)
        self.flush()
        os.ftruncate(self.fd, self.pos)
        self.progress.advance(self.unreported)
        return self.pos

    def add(self, data: bytes | memoryview) -> None:
        if not self.buf:
            self.buf_start = self.pos
        self.buf.append(data)
        n = len(data)
        self.buf_len += n
        self.pos += n
        self.written += n
        if self.buf_len >= FLUSH_BYTES or len(self.buf) >= FLUSH_BUFFERS:
            self.flush()

    def hole(self, n: int) -> None:
        self.flush()
        self.pos += n
        self.holes += n
        self.unreported += n

    def copy(self, src: int, n: int) -> None:
        # The buffer holds one contiguous run ending at pos: write it out before
        # the copy lands there (its source may be in the buffer, too).
        self.flush()
        dst = self.pos
        done = 0
        try:
            while done < n:
                k = os.copy_file_range(self.fd, self.fd, n - done, src + done, dst + done)
                if k <= 0:
                    break
                done += k
        except OSError:
            pass  # not supported here: copy through memory below
        while done < n:
            chunk = os.pread(self.fd, min(n - done, FLUSH_BYTES), src + done)
            if not chunk:
                raise ContentError(f"cannot re-read {n} bytes at offset {src}")
            os.pwrite(self.fd, chunk, dst + done)
            done += len(chunk)
        self.pos += n
        self.written += n
        self.unreported += n

    def add_with_holes(self, data: bytes) -> None:
        # Only whole file-aligned blocks become holes, so a hole never splits
        # a block that also holds data.
        view = memoryview(data)
        n = len(data)
        i = min((-self.pos) % HOLE_BLOCK, n)
        if i:
            self.add(view[:i])
        run_start = i
        while i + HOLE_BLOCK <= n:
            if view[i : i + HOLE_BLOCK] == _ZERO_BLOCK:
                if run_start < i:
                    self.add(view[run_start:i])
                j = i + HOLE_BLOCK
                while j + HOLE_BLOCK <= n and view[j : j + HOLE_BLOCK] == _ZERO_BLOCK:
                    j += HOLE_BLOCK
                self.hole(j - i)
                i = run_start = j
            else:
                i += HOLE_BLOCK
        if run_start < n:
            self.add(view[run_start:])

    def flush(self) -> None:
        if not self.buf:
            return
        bufs, off, total = self.buf, self.buf_start, self.buf_len
        self.buf = []
        self.buf_len = 0
        done = os.pwritev(self.fd, bufs, off)
        if done != total:
            # Short writes are rare on regular files; finish the rest plainly.
            rest = memoryview(b"".join(bufs))[done:]
            off += done
            while rest:
                k = os.pwrite(self.fd, rest, off)
                rest = rest[k:]
                off += k
        self.progress.advance(total + self.unreported)
        self.unreported = 0
