"""The pack writer: objects go straight into a pack v2 file, never loose.

Per object: the id is hashed on the caller's thread (hashlib drops the GIL), the
zlib work runs on a small thread pool, and encoded entries are appended to the
pack in submission order. At close the object count is patched into the header,
the pack's SHA-1 computed, the v2 idx written, both fsync'd and renamed into
objects/pack/ (pack first, idx last: git and bup only see a pack once its idx is
there). A crash leaves at most a stray temp directory, never a pack without idx.
An abort keeps the complete objects handed over so far (see `abort`): the
writer's state changes in `held()` sections that a stop signal cannot cut.

Incompressible data (random, already compressed) would cost zlib level 1 about
30 MB/s for nothing, so the writer predicts per stream: after a run of chunks
that did not shrink, it stores (level 0) and re-probes every few chunks.
"""

from __future__ import annotations

import array
import contextlib
import hashlib
import os
import shutil
import struct
import tempfile
import zlib
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO

from ketch.git.durable import fsync_dir
from ketch.git.idx import write_idx_v2_flat
from ketch.git.objects import header
from ketch.interrupt import held

DEFAULT_MAX_PACK_SIZE = 1_000_000_000
DEFAULT_LEVEL = 1

# Prediction of incompressible streams (see module docstring).
_STORE_RATIO = 0.98  # compressed/raw at or above this: compression did not pay
_STORE_AFTER = 2  # consecutive non-shrinking chunks before storing
_PROBE_EVERY = 16  # while storing, compress every Nth chunk to notice a change
_MIN_PREDICT = 64  # below this size just compress
_SAMPLE = 2048  # bytes deflated to test a stream that is being stored
_ALPHABET_SAMPLE = 256
_ALPHABET_RANDOM = 128  # distinct bytes in 256 random ones: ~162; text: ~40


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


def zlib_stored(data: bytes | memoryview) -> bytes:
    """A zlib stream of stored blocks: byte-identical to zlib.compress(data, 0),
    without allocating a deflate state per object."""
    n = len(data)
    out = [b"\x78\x01"]
    if n == 0:
        out.append(b"\x01\x00\x00\xff\xff")
    i = 0
    while i < n:
        blk = data[i : i + 65535]
        i += len(blk)
        out.append(struct.pack("<BHH", 1 if i >= n else 0, len(blk), len(blk) ^ 0xFFFF))
        out.append(bytes(blk))
    out.append(struct.pack(">I", zlib.adler32(data)))
    return b"".join(out)


def encode_entry(type_num: int, data: bytes | memoryview, level: int) -> tuple[bytes, int, bool]:
    """(encoded entry, crc32, shrank) for one object."""
    z = zlib.compress(data, level) if level else zlib_stored(data)
    enc = entry_header(type_num, len(data)) + z
    return enc, zlib.crc32(enc), len(z) < _STORE_RATIO * len(data)


class _Predictor:
    """Guesses whether the next chunk of a stream is worth deflating.

    After a run of chunks that did not shrink it stores them, testing every
    few chunks on a small sample (deflating a whole random chunk to learn that
    it is random costs more than storing a dozen)."""

    def __init__(self) -> None:
        self.run = 0
        self.n = 0

    def compress(self, data: bytes | memoryview, level: int) -> bytes | None:
        """The deflated chunk, or None when it should be stored."""
        n = len(data)
        if n < _MIN_PREDICT:
            return zlib.compress(data, level)
        if self.run >= _STORE_AFTER:
            self.n += 1
            # A small alphabet compresses even without repeats: a few-µs check
            # catches text and low-entropy data after a run of random chunks.
            if len(set(data[:_ALPHABET_SAMPLE])) >= _ALPHABET_RANDOM:
                if self.n % _PROBE_EVERY:
                    return None
                sample = data[:_SAMPLE]
                if len(zlib.compress(sample, level)) >= _STORE_RATIO * len(sample):
                    return None
        z = zlib.compress(data, level)
        self.run = 0 if len(z) < _STORE_RATIO * n else self.run + 1
        return z


# A batch of encoded entries: their bytes back to back, and (length, crc32) each.
_Encoded = tuple[bytes, list[tuple[int, int]]]


class _Done:
    """Already-encoded entries in the pending queue (no pool round trip)."""

    __slots__ = ("value",)

    def __init__(self, value: _Encoded) -> None:
        self.value = value

    def result(self) -> _Encoded:
        return self.value

    def cancel(self) -> bool:
        return False


_Pending = Future[_Encoded] | _Done


class _Entries:
    """(oid, crc32, offset) of the open pack, packed flat: a 1 GB pack holds
    ~130k entries, which as Python tuples would cost ~25 MB."""

    def __init__(self) -> None:
        self.oids = bytearray()
        self.crcs = array.array("L")
        self.offsets = array.array("Q")

    def __len__(self) -> int:
        return len(self.crcs)

    def add(self, oid: bytes, crc: int, offset: int) -> None:
        self.oids += oid
        self.crcs.append(crc)
        self.offsets.append(offset)

    def extend(self, oids: list[bytes], meta: list[tuple[int, int]], offset: int) -> int:
        """Append entries laid back to back from `offset`; returns the end offset."""
        for oid, (n, crc) in zip(oids, meta, strict=True):
            self.oids += oid
            self.crcs.append(crc)
            self.offsets.append(offset)
            offset += n
        return offset


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
        exists_many: Callable[[list[bytes]], Sequence[bool]] | None = None,
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
        self._exists_many = exists_many
        self._on_pack = on_pack
        self._fsync = fsync
        nthreads = threads if threads is not None else min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, nthreads))
        self._pending: deque[tuple[list[bytes], _Pending, int]] = deque()
        self._pending_bytes = 0
        self._max_pending_bytes = 16 << 20
        self._predictor = _Predictor()
        # Ids written in this session, including packs already closed: their idx
        # may not be in the caller's index yet.
        self._written: set[bytes] = set()
        self._small: list[tuple[bytes, int, bytes]] = []
        self._small_bytes = 0
        self._tmpdir: str | None = None
        self._file: BinaryIO | None = None
        self._entries = _Entries()
        self._offset = 0
        # True while an update is under way: an exception that leaves it set has
        # cut one half-way, and the open pack cannot be trusted.
        self._busy = False
        self.closed_idx: list[str] = []
        self.objects_written = 0
        self.bytes_written = 0

    # -- writing ------------------------------------------------------------

    def exists(self, oid: bytes) -> bool:
        if oid in self._written:
            return True
        return self._exists is not None and self._exists(oid)

    def _new_indices(self, oids: list[bytes]) -> list[int]:
        """Positions of ids neither stored nor written yet (first occurrence only)."""
        seen = self._written
        cand = [i for i, o in enumerate(oids) if o not in seen]
        if cand and self._exists_many is not None:
            there = self._exists_many([oids[i] for i in cand])
            cand = [i for i, t in zip(cand, there, strict=True) if not t]
        elif cand and self._exists is not None:
            cand = [i for i in cand if not self._exists(oids[i])]
        out = []
        batch: set[bytes] = set()
        for i in cand:
            if oids[i] not in batch:
                batch.add(oids[i])
                out.append(i)
        return out

    def write(self, type_num: int, data: bytes | memoryview) -> bytes:
        """Store one object unless it is already there; returns its raw id."""
        h = hashlib.sha1(header(type_num, len(data)))
        h.update(data)
        oid = h.digest()
        if oid not in self._written and not (self._exists is not None and self._exists(oid)):
            # Single objects (trees, commits, small files) are deflated in batches
            # on the pool: zlib's per-call setup is most of the cost for them.
            # Queued before it counts as written, so an interrupt between the two
            # loses no object another one may refer to.
            self._small.append((oid, type_num, bytes(data)))
            self._written.add(oid)
            self._small_bytes += len(data)
            if len(self._small) >= 256 or self._small_bytes >= 1 << 20:
                self._flush_small()
        return oid

    def _flush_small(self) -> None:
        if not self._small:
            return
        with held():
            items, size = self._small, self._small_bytes
            self._small, self._small_bytes = [], 0
            fut = self._pool.submit(self._encode_items, items)
            self._enqueue([oid for oid, _, _ in items], fut, size)

    def _encode_items(self, items: list[tuple[bytes, int, bytes]]) -> _Encoded:
        """Runs on a pool thread: whole objects, always deflated (no prediction)."""
        parts: list[bytes] = []
        meta = []
        for _, type_num, data in items:
            head = entry_header(type_num, len(data))
            z = zlib.compress(data, self.level) if self.level else zlib_stored(data)
            parts += (head, z)
            meta.append((len(head) + len(z), zlib.crc32(z, zlib.crc32(head))))
        return b"".join(parts), meta

    def write_many(self, type_num: int, datas: Sequence[bytes | memoryview]) -> list[bytes]:
        """Store several objects of one type (e.g. the chunks of one read) at once:
        one existence query and one pool task for the whole batch."""
        sha1 = hashlib.sha1
        oids = []
        for d in datas:
            h = sha1(header(type_num, len(d)))
            h.update(d)
            oids.append(h.digest())
        new = self._new_indices(oids)
        if new:
            new_ids = [oids[i] for i in new]
            payload = [datas[i] for i in new]
            size = sum(len(d) for d in payload)
            fut = self._pool.submit(self._encode_batch, type_num, payload)
            self._enqueue(new_ids, fut, size)
            self._written.update(new_ids)
        return oids

    def _encode_batch(self, type_num: int, datas: Sequence[bytes | memoryview]) -> _Encoded:
        """Runs on a pool thread (zlib and crc32 drop the GIL): the batch's entries
        back to back, and each entry's (length, crc32).

        Stored entries are assembled from pieces around the caller's buffer, so
        the data is copied once (by the final join) and checksummed twice."""
        parts: list[bytes | memoryview] = []
        meta = []
        pred = self._predictor
        level = self.level
        crc32 = zlib.crc32
        pack = struct.pack
        for d in datas:
            n = len(d)
            z = pred.compress(d, level) if level else None
            if z is not None or n > 0xFFFF:
                if z is None:
                    z = zlib_stored(d)
                head = entry_header(type_num, n)
                parts += (head, z)
                meta.append((len(head) + len(z), crc32(z, crc32(head))))
            else:
                head = entry_header(type_num, n) + b"\x78\x01" + pack("<BHH", 1, n, n ^ 0xFFFF)
                tail = pack(">I", zlib.adler32(d))
                parts += (head, d, tail)
                meta.append((len(head) + n + 4, crc32(tail, crc32(d, crc32(head)))))
        return b"".join(parts), meta

    def _enqueue(self, oids: list[bytes], fut: _Pending, size: int) -> None:
        self._pending.append((oids, fut, size))
        self._pending_bytes += size
        while self._pending and (
            self._pending_bytes > self._max_pending_bytes or len(self._pending) > 64
            or isinstance(self._pending[0][1], _Done)
        ):
            self._drain_one()

    def write_raw(self, oid: bytes, encoded: bytes, crc: int) -> None:
        """Append an already-encoded pack entry (from a client or another pack).
        The caller has looked the id up in the repository (the server must know
        which idx holds it anyway); only this session's own writes are skipped."""
        if oid in self._written:
            return
        self._written.add(oid)
        self._enqueue([oid], _Done((encoded, [(len(encoded), crc)])), len(encoded))

    def _drain_one(self) -> None:
        with held():
            self._busy = True
            self._take_one()
            self._busy = False

    def _take_one(self) -> None:
        oids, fut, size = self._pending.popleft()
        self._pending_bytes -= size
        blob, meta = fut.result()
        total = len(blob)
        if (
            self._file is not None
            and self._offset + total < self.max_pack_size
            and len(self._entries) + len(oids) < self.max_pack_objects
        ):
            # The whole batch fits in the open pack: one write.
            self._file.write(blob)
            self._offset = self._entries.extend(oids, meta, self._offset)
            self.objects_written += len(oids)
            self.bytes_written += total
            return
        pos = 0
        view = memoryview(blob)
        for oid, (n, crc) in zip(oids, meta, strict=True):
            self._append(oid, view[pos : pos + n], crc)
            pos += n

    def _drain_all(self) -> None:
        self._flush_small()
        while self._pending:
            self._drain_one()
        self._pending_bytes = 0

    def _append(self, oid: bytes, enc: bytes | memoryview, crc: int) -> None:
        if self._file is None:
            self._open()
        assert self._file is not None
        self._file.write(enc)
        self._entries.add(oid, crc, self._offset)
        self._offset += len(enc)
        self.objects_written += 1
        self.bytes_written += len(enc)
        if self._offset >= self.max_pack_size or len(self._entries) >= self.max_pack_objects:
            self._finish_pack()

    def _open(self) -> None:
        os.makedirs(self.pack_dir, exist_ok=True)
        self._tmpdir = tempfile.mkdtemp(prefix="pack-tmp-", dir=self.objects_dir)
        self._file = open(os.path.join(self._tmpdir, "pack"), "w+b", buffering=1 << 20)  # noqa: SIM115
        self._file.write(b"PACK" + struct.pack(">II", 2, 0))
        self._offset = 12
        self._entries = _Entries()

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
            write_idx_v2_flat(xf, self._entries.oids, self._entries.crcs,
                              self._entries.offsets, pack_sha)
            xf.flush()
            if self._fsync:
                os.fsync(xf.fileno())
        base = os.path.join(self.pack_dir, "pack-" + pack_sha.hex())
        os.rename(os.path.join(tmpdir, "pack"), base + ".pack")
        os.rename(idx_tmp, base + ".idx")
        if self._fsync:
            fsync_dir(self.pack_dir)
        os.rmdir(tmpdir)
        self._entries = _Entries()
        self.closed_idx.append(base + ".idx")
        if self._on_pack is not None:
            self._on_pack(base + ".idx")

    def flush(self) -> list[str]:
        """Finish the current pack (if any); returns the idx paths closed so far."""
        self._drain_all()
        with held():
            self._busy = True
            if self._file is not None:
                if self._entries:
                    self._finish_pack()
                else:
                    self.abort_current()
            self._busy = False
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
        self._entries = _Entries()

    def abort(self) -> None:
        """Stop writing, keeping the complete objects already handed over: the
        queued ones are encoded and the open pack finished, as a remote writer
        keeps what its server has, so a re-run does not write them again (an
        interrupted first backup of a big machine does not start from zero).
        If that cannot be done (an update was cut half-way, the disk is full),
        the unfinished pack is dropped; closed packs stay either way."""
        try:
            if not self._busy:
                with contextlib.suppress(Exception):
                    self.flush()
        finally:
            for _, fut, _ in self._pending:
                fut.cancel()
            self._pending.clear()
            self._small.clear()
            self.abort_current()
            self._pool.shutdown(wait=True)

    def __enter__(self) -> PackWriter:
        return self

    def __exit__(self, exc_type: object, *_: object) -> None:
        if exc_type is None:
            self.close()
        else:
            self.abort()
