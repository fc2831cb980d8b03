"""Pack entry encoding, the hot path of every write: objects in, encoded pack
entries out, in submission order, to a sink that decides where they go (a
local pack file: `pack.PackWriter`; a server's stream: `remote.client`).

Per object: the id is hashed on the caller's thread (hashlib drops the GIL), the
zlib work runs on a small thread pool, and encoded entries are handed to the
sink in submission order. Objects already stored (`exists`) or already written
in this session are never encoded again.

Several threads may write at once (a save stores big files beside its walk):
each hashes on its own, and one lock orders what follows (the existence
check, the queue, the hand-over to the sink). Which thread's objects reach the
pack first is scheduling; what the objects are is not.

Entries go to one of two lanes, each its own pack: metadata (trees, commits,
and the blobs a caller marks: `.bupm`, symlink targets) apart from file data,
as restic and kopia keep tree packs apart. A reader that walks a save reads
its trees from a few packs in a few requests instead of picking them out from
between the data (on S3, a restore's read-ahead went from ~590 GETs to a few).
A metadata batch is handed over only after the data queued before it, so a
metadata pack never closes before the data its trees name (`PackWriter`).

Incompressible data (random, already compressed) would cost deflate for
nothing (8 KiB random chunks: ISA-L level 1 ~160 MB/s, zlib's ~30, storing
~750), so the encoder predicts per stream: after a run of chunks that did not
shrink, it stores (level 0) and re-probes every few chunks. Deflating is
git.deflate's (ISA-L for levels 1-3).
"""

from __future__ import annotations

import hashlib
import os
import struct
import threading
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor

from ketch.git.deflate import adler32, crc32, deflate
from ketch.git.objects import header
from ketch.interrupt import held

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
    out.append(struct.pack(">I", adler32(data)))
    return b"".join(out)


def encode_entry(type_num: int, data: bytes | memoryview, level: int) -> tuple[bytes, int, bool]:
    """(encoded entry, crc32, shrank) for one object."""
    z = deflate(data, level) if level else zlib_stored(data)
    enc = entry_header(type_num, len(data)) + z
    return enc, crc32(enc), len(z) < _STORE_RATIO * len(data)


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
            return deflate(data, level)
        if self.run >= _STORE_AFTER:
            self.n += 1
            # A small alphabet compresses even without repeats: a few-µs check
            # catches text and low-entropy data after a run of random chunks.
            if len(set(data[:_ALPHABET_SAMPLE])) >= _ALPHABET_RANDOM:
                if self.n % _PROBE_EVERY:
                    return None
                sample = data[:_SAMPLE]
                if len(deflate(sample, level)) >= _STORE_RATIO * len(sample):
                    return None
        z = deflate(data, level)
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


DATA, METADATA = 0, 1  # the lanes
_METADATA_TYPES = frozenset((1, 2, 4))  # commit, tree, tag


def lane_of(type_num: int, metadata: bool = False) -> int:
    return METADATA if metadata or type_num in _METADATA_TYPES else DATA


# Where encoded batches go: (ids, their entries back to back, (length, crc32)
# each, the lane).
Sink = Callable[[list[bytes], bytes, list[tuple[int, int]], int], None]


class PackEncoder:
    """Batches objects, deflates them on a thread pool, and hands the encoded
    batches to `sink` in the order they were written.

    `exists(oid)` / `exists_many(oids)` tell whether the repository already has
    objects; such objects (and objects already written in this session) are
    never encoded again. With `atomic`, each hand-over to the sink runs in a
    `held()` section (a stop signal waits until it is done), and `busy` tells,
    after an exception, that one was cut half-way.
    """

    def __init__(
        self,
        sink: Sink,
        *,
        level: int,
        exists: Callable[[bytes], bool] | None = None,
        exists_many: Callable[[list[bytes]], Sequence[bool]] | None = None,
        threads: int | None = None,
        atomic: bool = True,
    ) -> None:
        self._sink = sink
        self.level = level
        self._exists = exists
        self._exists_many = exists_many
        self._atomic = atomic
        nthreads = threads if threads is not None else min(4, os.cpu_count() or 1)
        self._pool = ThreadPoolExecutor(max_workers=max(1, nthreads))
        self._pending: deque[tuple[list[bytes], _Pending, int, int]] = deque()
        self._pending_bytes = 0
        self._max_pending_bytes = 16 << 20
        # One predictor per writing thread: a big file's run of random chunks
        # says nothing about the small files written beside it.
        self._predictors: dict[int, _Predictor] = {}
        self._lock = threading.RLock()
        # Ids written in this session, including packs already closed: their idx
        # may not be in the caller's index yet.
        self._written: set[bytes] = set()
        # Single objects waiting to be deflated together, per lane.
        self._small: tuple[list[tuple[bytes, int, bytes]], ...] = ([], [])
        self._small_bytes = [0, 0]
        # True while a hand-over is under way: an exception that leaves it set has
        # cut one half-way, and what the sink was writing cannot be trusted.
        self.busy = False

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

    def write(self, type_num: int, data: bytes | memoryview, *, metadata: bool = False) -> bytes:
        """Store one object unless it is already there; returns its raw id.
        `metadata`: a blob that belongs with the trees (see the module's doc)."""
        h = hashlib.sha1(header(type_num, len(data)))
        h.update(data)
        oid = h.digest()
        with self._lock:
            self._write_hashed(oid, type_num, data, lane_of(type_num, metadata))
        return oid

    def _write_hashed(self, oid: bytes, type_num: int, data: bytes | memoryview,
                      lane: int) -> None:
        if oid not in self._written and not (self._exists is not None and self._exists(oid)):
            # Single objects (trees, commits, small files) are deflated in batches
            # on the pool: zlib's per-call setup is most of the cost for them.
            # Queued before it counts as written, so an interrupt between the two
            # loses no object another one may refer to.
            self._small[lane].append((oid, type_num, bytes(data)))
            self._written.add(oid)
            self._small_bytes[lane] += len(data)
            if len(self._small[lane]) >= 256 or self._small_bytes[lane] >= 1 << 20:
                self._flush_small(lane)

    def _flush_small(self, lane: int) -> None:
        with self._lock, held():
            if lane == METADATA:
                # The data these trees name goes first (module doc).
                self._flush_small(DATA)
            items, size = list(self._small[lane]), self._small_bytes[lane]
            if not items:
                return
            self._small[lane].clear()
            self._small_bytes[lane] = 0
            fut = self._pool.submit(self._encode_items, items)
            self._enqueue([oid for oid, _, _ in items], fut, size, lane)

    def _encode_items(self, items: list[tuple[bytes, int, bytes]]) -> _Encoded:
        """Runs on a pool thread: whole objects, always deflated (no prediction)."""
        parts: list[bytes] = []
        meta = []
        for _, type_num, data in items:
            head = entry_header(type_num, len(data))
            z = deflate(data, self.level) if self.level else zlib_stored(data)
            parts += (head, z)
            meta.append((len(head) + len(z), crc32(z, crc32(head))))
        return b"".join(parts), meta

    def write_many(self, type_num: int, datas: Sequence[bytes | memoryview], *,
                   metadata: bool = False) -> list[bytes]:
        """Store several objects of one type (e.g. the chunks of one read) at once:
        one existence query and one pool task for the whole batch."""
        sha1 = hashlib.sha1
        oids = []
        for d in datas:
            h = sha1(header(type_num, len(d)))
            h.update(d)
            oids.append(h.digest())
        me = threading.get_ident()
        with self._lock:
            pred = self._predictors.get(me)
            if pred is None:
                pred = self._predictors[me] = _Predictor()
            new = self._new_indices(oids)
            if new:
                new_ids = [oids[i] for i in new]
                payload = [datas[i] for i in new]
                size = sum(len(d) for d in payload)
                lane = lane_of(type_num, metadata)
                if lane == METADATA:
                    self._flush_small(DATA)
                fut = self._pool.submit(self._encode_batch, type_num, payload, pred)
                self._enqueue(new_ids, fut, size, lane)
                self._written.update(new_ids)
        return oids

    def _encode_batch(self, type_num: int, datas: Sequence[bytes | memoryview],
                      pred: _Predictor) -> _Encoded:
        """Runs on a pool thread (zlib and crc32 drop the GIL): the batch's entries
        back to back, and each entry's (length, crc32).

        Stored entries are assembled from pieces around the caller's buffer, so
        the data is copied once (by the final join) and checksummed twice."""
        parts: list[bytes | memoryview] = []
        meta = []
        level = self.level
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
                tail = pack(">I", adler32(d))
                parts += (head, d, tail)
                meta.append((len(head) + n + 4, crc32(tail, crc32(d, crc32(head)))))
        return b"".join(parts), meta

    def _enqueue(self, oids: list[bytes], fut: _Pending, size: int, lane: int) -> None:
        self._pending.append((oids, fut, size, lane))
        self._pending_bytes += size
        while self._pending and (
            self._pending_bytes > self._max_pending_bytes or len(self._pending) > 64
            or isinstance(self._pending[0][1], _Done)
        ):
            self._drain_one()

    def write_raw(self, oid: bytes, encoded: bytes, crc: int) -> None:
        """Pass on an already-encoded pack entry (from a client or another pack).
        The caller has looked the id up in the repository (the server must know
        which idx holds it anyway); only this session's own writes are skipped."""
        with self._lock:
            if oid in self._written:
                return
            self._written.add(oid)
            lane = lane_of((encoded[0] >> 4) & 7) if encoded else DATA
            if lane == METADATA:
                self._flush_small(DATA)
            self._enqueue([oid], _Done((encoded, [(len(encoded), crc)])), len(encoded), lane)

    def _drain_one(self) -> None:
        if not self._atomic:
            self._take_one()
            return
        with held():
            self.busy = True
            self._take_one()
            self.busy = False

    def _take_one(self) -> None:
        oids, fut, size, lane = self._pending.popleft()
        self._pending_bytes -= size
        blob, meta = fut.result()
        self._sink(oids, blob, meta, lane)

    def drain(self) -> None:
        """Encode everything written so far and hand it to the sink."""
        with self._lock:
            self._flush_small(METADATA)  # and DATA before it
            while self._pending:
                self._drain_one()
            self._pending_bytes = 0

    def discard(self) -> None:
        """Drop what is queued and not handed over yet."""
        with self._lock:
            for _, fut, _, _ in self._pending:
                fut.cancel()
            self._pending.clear()
            for small in self._small:
                small.clear()

    def shutdown(self) -> None:
        self._pool.shutdown(wait=True)


class EncodingWriter:
    """What a writer built on a PackEncoder answers by asking it (the ObjectWriter
    side of PackWriter and RemoteWriter; where the entries go is theirs)."""

    _enc: PackEncoder

    def exists(self, oid: bytes) -> bool:
        return self._enc.exists(oid)

    def write(self, type_num: int, data: bytes | memoryview, *, metadata: bool = False) -> bytes:
        """Store one object unless it is already there; returns its raw id."""
        return self._enc.write(type_num, data, metadata=metadata)

    def write_many(self, type_num: int, datas: Sequence[bytes | memoryview], *,
                   metadata: bool = False) -> list[bytes]:
        """Store several objects of one type (e.g. the chunks of one read) at once."""
        return self._enc.write_many(type_num, datas, metadata=metadata)
