"""bup's bloom filter over pack indexes (``bup.bloom``, version 2).

Layout (bup-format.md 4.5): ``BLOM``, u32 BE version 2, u16 BE ``bits``,
u16 BE ``k``, u32 BE entry count; a table of 2**bits bytes; the basenames of
the idx files it covers joined by NUL.

Each id sets (or tests) k bits: for k=5, one per 4-byte window of the id, for
k=4 one per 5-byte window; the top ``bits`` bits of a window pick the byte and
the next 3 bits the bit. Lookups assemble the windows for a whole batch of ids
with numpy and gather from the mmap'd table, so the filter is never copied.

A negative answer is final for the idx files the filter names; a positive one
must be confirmed in the idx or midx.
"""

from __future__ import annotations

import glob
import math
import mmap
import os
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
import numpy.typing as npt

from ketch.errors import CorruptObject, UsageError
from ketch.git.durable import AtomicFile
from ketch.git.idx import PackIndex
from ketch.git.midx import BoolArray, IdArray, coerce_ids

BLOOM_MAGIC = b"BLOM"
BLOOM_VERSION = 2
BLOOM_NAME = "bup.bloom"
_HEADER = struct.Struct(">4sIHHI")
_HEADER_LEN = _HEADER.size
MAX_BITS_EACH = 32
# The windows give 32 (k=5) or 40 (k=4) address bits, 3 of them pick the bit.
MAX_BLOOM_BITS = {4: 37, 5: 29}
# bup's threshold, in percent, for rebuilding rather than adding in place.
MAX_PFALSE_POSITIVE = 1.0
# Ids addressed per numpy pass: about 100 bytes of temporaries per id.
_BATCH = 1 << 16


def bloom_params(expected: int, k: int | None = None) -> tuple[int, int]:
    """(bits, k) for a new filter sized for ``expected`` entries, as bup picks them.

    The float expression is bup's, so sizes near powers of two round the same way.
    """
    if k not in (None, 4, 5):
        raise UsageError(f"bloom k must be 4 or 5, not {k}")
    bits = int(math.floor(math.log(max(1, expected) * MAX_BITS_EACH // 8, 2)))
    k = k or (5 if bits <= MAX_BLOOM_BITS[5] else 4)
    bits = min(bits, MAX_BLOOM_BITS[k])
    return bits, k


def _addresses(
    ids: IdArray, bits: int, k: int
) -> tuple[npt.NDArray[np.intp], npt.NDArray[np.uint8]]:
    """(byte index, bit number) of the k filter bits of each id, shaped (n, k)."""
    n = len(ids)
    if n == 0:
        return np.zeros((0, k), dtype=np.intp), np.zeros((0, k), dtype=np.uint8)
    raw: npt.NDArray[np.uint64]
    if k == 5:
        words = np.ndarray((n, 5), dtype=">u4", buffer=ids, strides=(20, 4))
        raw = words.astype(np.uint64)
        width = 32
    else:
        high = np.ndarray((n, 4), dtype=">u4", buffer=ids, strides=(20, 5))
        low = np.ndarray((n, 4), dtype=np.uint8, buffer=ids, offset=4, strides=(20, 5))
        raw = (high.astype(np.uint64) << np.uint64(8)) | low
        width = 40
    byte = (raw >> np.uint64(width - bits)).astype(np.intp)
    bit = ((raw >> np.uint64(width - 3 - bits)) & np.uint64(7)).astype(np.uint8)
    return byte, bit


def _add_ids(table: npt.NDArray[np.uint8], ids: IdArray, bits: int, k: int) -> None:
    for start in range(0, len(ids), _BATCH):
        chunk = np.ascontiguousarray(ids[start : start + _BATCH])
        byte, bit = _addresses(chunk, bits, k)
        np.bitwise_or.at(table, byte.ravel(), np.left_shift(np.uint8(1), bit.ravel()))


class BloomReader:
    """A read-only, mmap'd ``bup.bloom``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER_LEN:
                raise CorruptObject(f"{self.path}: bloom file too short")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(size)
        except BaseException:
            self.close()
            raise

    def _parse(self, size: int) -> None:
        magic, version, bits, k, entries = _HEADER.unpack_from(self._map, 0)
        if magic != BLOOM_MAGIC:
            raise CorruptObject(f"{self.path}: not a bloom file")
        if version != BLOOM_VERSION:
            raise CorruptObject(f"{self.path}: bloom version {version}, expected {BLOOM_VERSION}")
        if k not in MAX_BLOOM_BITS or not 0 < bits <= MAX_BLOOM_BITS[k]:
            raise CorruptObject(f"{self.path}: bad bloom geometry bits={bits} k={k}")
        if size < _HEADER_LEN + (1 << bits):
            raise CorruptObject(f"{self.path}: bloom file truncated")
        self.bits: int = bits
        self.k: int = k
        self.entries: int = entries
        self.table: npt.NDArray[np.uint8] = np.frombuffer(
            self._map, dtype=np.uint8, count=1 << bits, offset=_HEADER_LEN
        )
        raw = self._map[_HEADER_LEN + (1 << bits) :]
        self.idx_names: list[str] = [os.fsdecode(x) for x in raw.split(b"\0")] if raw else []

    def __len__(self) -> int:
        return self.entries

    def __enter__(self) -> BloomReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        self.__dict__.pop("table", None)
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a view; the map closes when it is collected

    def pfalse_positive(self, additional: int = 0) -> float:
        """Estimated false-positive rate in percent after ``additional`` more entries."""
        n = self.entries + additional
        m = 8 * (1 << self.bits)
        return float(100 * (1 - math.exp(-self.k * float(n) / m)) ** self.k)

    def maybe_contains_many(self, oids: npt.ArrayLike) -> BoolArray:
        """False where an id is certainly absent from the named idx files."""
        ids = coerce_ids(oids)
        out: BoolArray = np.empty(len(ids), dtype=bool)
        for start in range(0, len(ids), _BATCH):
            chunk = ids[start : start + _BATCH]
            byte, bit = _addresses(chunk, self.bits, self.k)
            hits = (self.table[byte] >> bit) & np.uint8(1)
            out[start : start + len(chunk)] = hits.all(axis=1)
        return out

    def maybe_contains(self, oid: bytes) -> bool:
        """One id, in pure Python (numpy's per-call overhead is ~50x this)."""
        table = self._map
        bits = self.bits
        if self.k == 5:
            for i in range(0, 20, 4):
                raw = int.from_bytes(oid[i : i + 4], "big")
                byte = raw >> (32 - bits)
                if not table[_HEADER_LEN + byte] >> ((raw >> (29 - bits)) & 7) & 1:
                    return False
            return True
        mask = (1 << bits) - 1
        for i in range(0, 20, 5):
            raw = int.from_bytes(oid[i : i + 5], "big")
            byte = (raw >> (40 - bits)) & mask
            if not table[_HEADER_LEN + byte] >> ((raw >> (37 - bits)) & 7) & 1:
                return False
        return True

    def __contains__(self, oid: object) -> bool:
        return isinstance(oid, bytes) and len(oid) == 20 and self.maybe_contains(oid)


@dataclass
class BloomUpdate:
    """What ``update_bloom`` did: ``action`` is "none", "added" or "created"."""

    action: str
    path: str
    added: list[str] = field(default_factory=list)
    entries: int = 0


def _count(path: str) -> int:
    ix = PackIndex(path)
    try:
        return ix.count
    finally:
        ix.close()


def _write_new(out_path: str, idx_paths: Sequence[str], expected: int, k: int | None) -> int:
    bits, k = bloom_params(expected, k)
    with AtomicFile(out_path) as out:
        out.file.write(_HEADER.pack(BLOOM_MAGIC, BLOOM_VERSION, bits, k, 0))
        out.file.truncate(_HEADER_LEN + (1 << bits))
        return _fill(out, bits, k, 0, [], idx_paths)


def _fill(
    out: AtomicFile, bits: int, k: int, entries: int, names: list[str], idx_paths: Sequence[str]
) -> int:
    """Add ``idx_paths`` to the filter in ``out`` and finish its header and names.

    The table is edited through a shared mapping of the temp file so a large
    filter lives in the page cache rather than in our heap.
    """
    f = out.file
    f.flush()
    m = mmap.mmap(f.fileno(), _HEADER_LEN + (1 << bits), access=mmap.ACCESS_WRITE)
    table = np.frombuffer(m, dtype=np.uint8, count=1 << bits, offset=_HEADER_LEN)
    try:
        for p in idx_paths:
            ix = PackIndex(p)  # FileNotFoundError (gc hid it): the caller retries
            try:
                _add_ids(table, ix.ids, bits, k)
                entries += ix.count
            finally:
                ix.close()
            names.append(os.path.basename(p))
        struct.pack_into(">I", m, 12, entries)
        m.flush()
    finally:
        # The view must go before the map closes, or closing raises BufferError
        # over whatever ended the loop (an idx gc moved away mid-listing).
        del table
        m.close()
    f.seek(_HEADER_LEN + (1 << bits))
    f.write(b"\0".join(os.fsencode(n) for n in names))
    f.truncate()
    return entries


def write_bloom(
    pack_dir: str | os.PathLike[str],
    idx_paths: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str] | None = None,
    k: int | None = None,
) -> str:
    """Build a new filter over ``idx_paths`` (names recorded in that order).

    Matches ``bup bloom -f`` byte for byte when given the idx files in the
    order bup globs them. Returns the path written (default ``pack_dir/bup.bloom``).
    """
    paths = [os.fspath(p) for p in idx_paths]
    out = os.fspath(out_path) if out_path else os.path.join(os.fspath(pack_dir), BLOOM_NAME)
    _write_new(out, paths, sum(_count(p) for p in paths), k)
    return out


def update_bloom(
    pack_dir: str | os.PathLike[str],
    out_path: str | os.PathLike[str] | None = None,
    k: int | None = None,
    force: bool = False,
) -> BloomUpdate:
    """What ``bup bloom`` does: bring the filter up to date with ``pack_dir/*.idx``.

    New idx files are added to the existing filter unless it is invalid, its
    entry count no longer matches the idx files it names that still exist,
    ``k`` differs, or the additions would push the estimated false-positive
    rate over 1 % while the table can still grow; then it is rebuilt. The
    file is always replaced atomically (bup edits it in place).
    """
    path = os.fspath(pack_dir)
    out = os.fspath(out_path) if out_path else os.path.join(path, BLOOM_NAME)
    old: BloomReader | None = None
    if not force and os.path.exists(out):
        try:
            old = BloomReader(out)
        except CorruptObject:
            old = None
        if old is not None and not _holds_a_sample(old, path):
            old.close()
            old = None
    try:
        known = set(old.idx_names) if old is not None else set()
        add: list[str] = []
        rest: list[str] = []
        add_count = rest_count = 0
        # glob's order (the directory's) decides the name order, as in bup.
        for p in glob.glob(f"{glob.escape(path)}/*.idx"):
            n = _count(p)
            if os.path.basename(p) in known:
                rest.append(p)
                rest_count += n
            else:
                add.append(p)
                add_count += n
        if not add:
            return BloomUpdate("none", out, entries=old.entries if old is not None else 0)
        if old is not None and _can_add(old, rest_count, add_count, k):
            entries = _add_in_place(old, out, add)
            return BloomUpdate("added", out, [os.path.basename(p) for p in add], entries)
    finally:
        if old is not None:
            old.close()
    add += rest
    entries = _write_new(out, add, add_count + rest_count, k)
    return BloomUpdate("created", out, [os.path.basename(p) for p in add], entries)


# Ids per named idx checked before a filter is trusted to be added to.
_SAMPLE = 256


def _holds_a_sample(bloom: BloomReader, pack_dir: str) -> bool:
    """Whether a spread of ids from each idx the filter names tests present:
    a filter with bits cleared (damage the header cannot show) would make
    every save write those objects again, so it is rebuilt instead."""
    present = {os.path.basename(p) for p in glob.glob(f"{glob.escape(pack_dir)}/*.idx")}
    # Only names of idx files here: the list is the file's, damaged or not.
    for name in present.intersection(bloom.idx_names):
        try:
            ix = PackIndex(os.path.join(pack_dir, name))
        except (FileNotFoundError, CorruptObject):
            continue  # gone or unreadable: the entry count decides
        try:
            step = max(1, ix.count // _SAMPLE)
            if not bool(bloom.maybe_contains_many(ix.ids[::step]).all()):
                return False
        finally:
            ix.close()
    return True


def _can_add(old: BloomReader, rest_count: int, add_count: int, k: int | None) -> bool:
    if old.entries != rest_count:
        return False
    if k is not None and k != old.k:
        return False
    return not (
        old.bits < MAX_BLOOM_BITS[old.k] and old.pfalse_positive(add_count) > MAX_PFALSE_POSITIVE
    )


def _add_in_place(old: BloomReader, out: str, add: list[str]) -> int:
    names = list(old.idx_names)
    with AtomicFile(out) as dst:
        # Copy from our own mapping: the path may already name a newer file.
        view = memoryview(old._map)
        try:
            for i in range(0, len(view), 1 << 20):
                dst.file.write(view[i : i + (1 << 20)])
        finally:
            view.release()
        return _fill(dst, old.bits, old.k, old.entries, names, add)
