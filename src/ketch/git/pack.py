"""The pack writer: objects go straight into a pack v2 file, never loose.

Per object: the id is hashed on the caller's thread (hashlib drops the GIL), the
zlib work runs on a small thread pool, and encoded entries are appended to the
pack in submission order. At close the object count is patched into the header,
the pack's SHA-1 computed, the v2 idx written, both fsync'd and renamed into
objects/pack/ (pack first, idx last: git and bup only see a pack once its idx is
there). A crash leaves at most a stray temp directory, never a pack without idx.

Incompressible data (random, already compressed) would cost zlib level 1 about
30 MB/s for nothing, so the writer predicts per stream: after a run of chunks
that did not shrink, it stores (level 0) and re-probes every few chunks.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import struct
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from ketch.git.idx import write_idx_v2
from ketch.git.objects import header

DEFAULT_MAX_PACK_SIZE = 1_000_000_000
DEFAULT_LEVEL = 1

# Prediction of incompressible streams (see module docstring).
_STORE_RATIO = 0.98  # compressed/raw at or above this: compression did not pay
_STORE_AFTER = 2  # consecutive non-shrinking chunks before storing
_PROBE_EVERY = 16  # while storing, compress every Nth chunk to notice a change
_MIN_PREDICT = 1024  # below this size just compress: it's cheap


def entry_header(type_num: int, size: int) -> bytes:
    """Pack entry header: type in bits 4-6, size as a little-endian varint."""
    out = bytearray()
    c = (type_num << 4) | (size & 0x0F)
    size >>= 4
    while size:
        out.append(c | 0x80)
        c = size & 0x7F
        size >>= 7
    out.append(c)
    return bytes(out)


def encode_entry(type_num: int, data: bytes | memoryview, level: int) -> tuple[bytes, int, bool]:
    """(encoded entry, crc32, shrank) for one object."""
    z = zlib.compress(data, level)
    enc = entry_header(type_num, len(data)) + z
    return enc, zlib.crc32(enc), len(z) < _STORE_RATIO * len(data)


class _Predictor:
    def __init__(self) -> None:
        self.run = 0
        self.n = 0

    def level_for(self, size: int, level: int) -> tuple[int, bool]:
        """(level to use, whether this is a probe whose outcome should be recorded)."""
        if level == 0 or size < _MIN_PREDICT:
            return level, False
        self.n += 1
        if self.run >= _STORE_AFTER and self.n % _PROBE_EVERY:
            return 0, False
        return level, True

    def record(self, shrank: bool) -> None:
        self.run = 0 if shrank else self.run + 1


class PackWriter:
    """Writes objects into packs under `objects/pack`, closing one at the size limits.

    `exists(oid)` tells whether the repository already has an object; such objects
    (and objects already written in this session) are never written again.
    `on_pack(idx_path)` runs after each pack is durable and visible.
    """

    def __init__(
        self,
        objects_dir: str,
        *,
        level: int = DEFAULT_LEVEL,
        max_pack_size: int = DEFAULT_MAX_PACK_SIZE,
        max_pack_objects: int | None = None,
        exists: Callable[[bytes], bool] | None = None,
        on_pack: Callable[[str], None] | None = None,
        threads: int | None = None,
        fsync: bool = True,
    ) -> None:
        self.objects_dir = objects_dir
        self.pack_dir = os.path.join(objects_dir, "pack")
        self.level = level
        self.max_pack_size = max_pack_size
        self.max_pack_objects = max_pack_objects or max(1, max_pack_size // 5000)
        self._exists = exists
        self._on_pack = on_pack
        self._fsync = fsync
        nthreads = threads if threads is not None else min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, nthreads))
        self._pending: deque[tuple[bytes, Future[tuple[bytes, int, bool]], bool]] = deque()
        self._pending_bytes = 0
        self._max_pending_bytes = 32 << 20
        self._predictor = _Predictor()
        # Ids written in this session, including packs already closed: their idx
        # may not be in the caller's index yet.
        self._written: set[bytes] = set()
        self._tmpdir: str | None = None
        self._file: BinaryIO | None = None
        self._entries: list[tuple[bytes, int, int]] = []
        self._offset = 0
        self.closed_idx: list[str] = []
        self.objects_written = 0
        self.bytes_written = 0

    # -- writing ------------------------------------------------------------

    def exists(self, oid: bytes) -> bool:
        if oid in self._written:
            return True
        return self._exists is not None and self._exists(oid)

    def write(self, type_num: int, data: bytes | memoryview) -> bytes:
        """Store one object unless it is already there; returns its raw id."""
        h = hashlib.sha1(header(type_num, len(data)))
        h.update(data)
        oid = h.digest()
        if not self.exists(oid):
            self.write_new(oid, type_num, data)
        return oid

    def write_new(self, oid: bytes, type_num: int, data: bytes | memoryview) -> None:
        """Store an object the caller has checked is new; `oid` must be its id."""
        self._written.add(oid)
        level, probe = self._predictor.level_for(len(data), self.level)
        if isinstance(data, memoryview):
            data = bytes(data)  # the caller may reuse its buffer before the pool runs
        fut = self._pool.submit(encode_entry, type_num, data, level)
        self._pending.append((oid, fut, probe))
        self._pending_bytes += len(data)
        while self._pending_bytes > self._max_pending_bytes or len(self._pending) > 1024:
            self._drain_one()

    def write_raw(self, oid: bytes, encoded: bytes, crc: int) -> None:
        """Append an already-encoded pack entry (from a client or another pack)."""
        if self.exists(oid):
            return
        self._written.add(oid)
        fut: Future[tuple[bytes, int, bool]] = Future()
        fut.set_result((encoded, crc, True))
        self._pending.append((oid, fut, False))
        self._drain_all()

    def _drain_one(self) -> None:
        oid, fut, probe = self._pending.popleft()
        enc, crc, shrank = fut.result()
        if probe:
            self._predictor.record(shrank)
        self._pending_bytes -= max(0, len(enc) - 30)
        self._append(oid, enc, crc)

    def _drain_all(self) -> None:
        while self._pending:
            self._drain_one()
        self._pending_bytes = 0

    def _append(self, oid: bytes, enc: bytes, crc: int) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(enc)
        self._entries.append((oid, crc, self._offset))
        self._offset += len(enc)
        self.objects_written += 1
        self.bytes_written += len(enc)
        if self._offset >= self.max_pack_size or len(self._entries) >= self.max_pack_objects:
            self._finish_pack()

    def _open(self) -> None:
        os.makedirs(self.pack_dir, exist_ok=True)
        self._tmpdir = tempfile.mkdtemp(prefix="pack-tmp-", dir=self.objects_dir)
        self._file = open(os.path.join(self._tmpdir, "pack"), "w+b")  # noqa: SIM115
        self._file.write(b"PACK" + struct.pack(">II", 2, 0))
        self._offset = 12
        self._entries = []

    # -- closing ------------------------------------------------------------

    def _finish_pack(self) -> None:
        f, tmpdir = self._file, self._tmpdir
        assert f is not None and tmpdir is not None
        self._file = None
        self._tmpdir = None
        f.seek(8)
        f.write(struct.pack(">I", len(self._entries)))
        f.flush()
        f.seek(0)
        h = hashlib.sha1()
        while block := f.read(8 << 20):
            h.update(block)
        pack_sha = h.digest()
        f.seek(0, os.SEEK_END)
        f.write(pack_sha)
        f.flush()
        if self._fsync:
            os.fsync(f.fileno())
        f.close()
        idx_tmp = os.path.join(tmpdir, "idx")
        with open(idx_tmp, "wb") as xf:
            write_idx_v2(xf, self._entries, pack_sha)
            xf.flush()
            if self._fsync:
                os.fsync(xf.fileno())
        base = os.path.join(self.pack_dir, "pack-" + pack_sha.hex())
        os.rename(os.path.join(tmpdir, "pack"), base + ".pack")
        os.rename(idx_tmp, base + ".idx")
        if self._fsync:
            _fsync_dir(self.pack_dir)
        os.rmdir(tmpdir)
        self._entries = []
        self.closed_idx.append(base + ".idx")
        if self._on_pack is not None:
            self._on_pack(base + ".idx")

    def flush(self) -> list[str]:
        """Finish the current pack (if any); returns the idx paths closed so far."""
        self._drain_all()
        if self._file is not None:
            if self._entries:
                self._finish_pack()
            else:
                self.abort_current()
        return list(self.closed_idx)

    def close(self) -> list[str]:
        try:
            return self.flush()
        finally:
            self._pool.shutdown(wait=True)

    def abort_current(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None
        if self._tmpdir is not None:
            shutil.rmtree(self._tmpdir, ignore_errors=True)
            self._tmpdir = None
        self._entries = []

    def abort(self) -> None:
        """Drop everything not yet in a closed pack."""
        for _, fut, _ in self._pending:
            fut.cancel()
        self._pending.clear()
        self.abort_current()
        self._pool.shutdown(wait=True)

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()

    def written_ids(self) -> Iterable[bytes]:
        return self._written


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
