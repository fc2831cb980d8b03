"""Pack index (.idx v2) files: the writer, and an mmap'd reader with batch lookups.

Layout (git's v2): magic ff744f63, version 2, 256 cumulative fan-out counts, the N
sorted 20-byte ids, N CRC32s of the encoded pack entries, N 31-bit offsets (MSB set:
an index into the table of 64-bit offsets that follows), the pack's SHA-1 and the
SHA-1 of everything before it.

The reader never copies the id table: it is viewed in place as a numpy 'S20'
array, so lookups are binary searches over the mmap and memory stays small even
for millions of objects.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import struct
from collections.abc import Iterator, Sequence
from typing import BinaryIO

import numpy as np
import numpy.typing as npt

from ketch.errors import CorruptObject

IDX_MAGIC = b"\xfftOc"
_HEADER = IDX_MAGIC + struct.pack(">I", 2)


def search_ids(buf: bytes | memoryview | mmap.mmap, oid: bytes, lo: int, hi: int,
               base: int = 0) -> int:
    """Index of `oid` among sorted 20-byte ids at `base` in `buf`, searched in
    [lo, hi); -1 if absent. Plain Python: for one id numpy's call overhead
    costs more."""
    while lo < hi:
        mid = (lo + hi) >> 1
        v = bytes(buf[base + 20 * mid : base + 20 * mid + 20])
        if v < oid:
            lo = mid + 1
        elif v == oid:
            return mid
        else:
            hi = mid
    return -1


def write_idx_v2(
    out: BinaryIO, entries: Sequence[tuple[bytes, int, int]], pack_sha: bytes
) -> bytes:
    """Write an idx for (oid, crc32, offset) entries; returns the idx's own SHA-1.

    The bytes equal what `git index-pack` writes for the same pack.
    """
    return write_idx_v2_flat(
        out,
        b"".join(e[0] for e in entries),
        np.array([e[1] for e in entries], dtype=np.uint32),
        np.array([e[2] for e in entries], dtype=np.uint64),
        pack_sha,
    )


def write_idx_v2_flat(
    out: BinaryIO,
    oids: bytes | bytearray,
    crcs: npt.ArrayLike,
    offsets: npt.ArrayLike,
    pack_sha: bytes,
) -> bytes:
    """`write_idx_v2` for ids given back to back and parallel crc/offset arrays."""
    n = len(oids) // 20
    ids = np.frombuffer(bytes(oids), dtype="S20") if n else np.empty(0, "S20")
    order = np.argsort(ids, kind="stable")
    ids_raw = np.frombuffer(ids[order].tobytes(), dtype=np.uint8).reshape(n, 20)
    counts = np.bincount(ids_raw[:, 0], minlength=256) if n else np.zeros(256, np.int64)
    fanout = np.cumsum(counts).astype(">u4")
    crc_arr = np.asarray(crcs, dtype=np.uint32)[order].astype(">u4")
    offs = np.asarray(offsets, dtype=np.uint64)[order]
    big = offs >= 0x80000000
    small = offs.astype(">u4")
    large = offs[big]
    small[big] = 0x80000000 | np.arange(len(large), dtype=np.uint32)
    parts = [
        _HEADER,
        fanout.tobytes(),
        ids_raw.tobytes(),
        crc_arr.tobytes(),
        small.tobytes(),
        large.astype(">u8").tobytes(),
        pack_sha,
    ]
    h = hashlib.sha1()
    for p in parts:
        h.update(p)
        out.write(p)
    digest = h.digest()
    out.write(digest)
    return digest


class PackIndex:
    """A read-only, mmap'd .idx v2 file."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < 8 + 1024 + 40:
                raise CorruptObject(f"{self.path}: idx file too short")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        if self._map[:8] != _HEADER:
            self._map.close()
            raise CorruptObject(f"{self.path}: not a version 2 idx file")
        self.fanout: npt.NDArray[np.uint32] = np.frombuffer(
            self._map, dtype=">u4", count=256, offset=8
        )
        self.count = int(self.fanout[255])
        self._fan: list[int] = self.fanout.tolist()
        n = self.count
        self._ids_off = 8 + 1024
        self._crc_off = self._ids_off + 20 * n
        self._ofs_off = self._crc_off + 4 * n
        self._big_off = self._ofs_off + 4 * n
        try:
            if size < self._big_off + 40:
                raise CorruptObject(f"{self.path}: idx file truncated")
            # Lookups trust the fan-out as bounds into the id table.
            if bool((np.diff(self.fanout.astype(np.int64)) < 0).any()):
                raise CorruptObject(f"{self.path}: idx fan-out not monotonic")
        except CorruptObject:
            self.close()
            raise
        # 64-bit offsets fill what lies between the small offsets and the trailer.
        self._n_big = (size - 40 - self._big_off) // 8
        self.ids: npt.NDArray[np.bytes_] = np.frombuffer(
            self._map, dtype="S20", count=n, offset=self._ids_off
        )
        self._offsets: npt.NDArray[np.uint32] = np.frombuffer(
            self._map, dtype=">u4", count=n, offset=self._ofs_off
        )
        self.pack_sha = bytes(self._map[size - 40 : size - 20])

    def __len__(self) -> int:
        return self.count

    def close(self) -> None:
        # numpy views pin the buffer; drop them before closing the map.
        for attr in ("ids", "_offsets", "fanout"):
            self.__dict__.pop(attr, None)
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a view; the map closes when it is collected

    def _pos(self, oid: bytes) -> int:
        # A plain binary search: for one id numpy's call overhead costs more.
        b = oid[0]
        fan = self._fan
        lo = fan[b - 1] if b else 0
        hi = fan[b]
        return search_ids(self._map, oid, lo, hi, self._ids_off)

    def __contains__(self, oid: object) -> bool:
        return isinstance(oid, bytes) and self._pos(oid) >= 0

    def find_offset(self, oid: bytes) -> int | None:
        i = self._pos(oid)
        return None if i < 0 else self._offset_at(i)

    def offset_at(self, i: int) -> int:
        """The pack offset of the ``i``-th entry in id order."""
        return self._offset_at(i)

    def _offset_at(self, i: int) -> int:
        off = int(self._offsets[i])
        if off & 0x80000000:
            j = off & 0x7FFFFFFF
            if j >= self._n_big:
                raise CorruptObject(f"{self.path}: idx entry {i} names a missing 64-bit offset")
            (off,) = struct.unpack_from(">Q", self._map, self._big_off + 8 * j)
        return off

    def contains_many(self, oids: npt.NDArray[np.bytes_]) -> npt.NDArray[np.bool_]:
        """Membership of each id of an 'S20' array, in one vectorised search."""
        if self.count == 0 or len(oids) == 0:
            return np.zeros(len(oids), dtype=bool)
        pos = np.searchsorted(self.ids, oids)
        pos[pos >= self.count] = self.count - 1
        found: npt.NDArray[np.bool_] = self.ids[pos] == oids
        return found

    def crc_at(self, i: int) -> int:
        (crc,) = struct.unpack_from(">I", self._map, self._crc_off + 4 * i)
        return int(crc)

    def offsets(self) -> npt.NDArray[np.uint64]:
        """Every entry's pack offset, in id order (vectorised: gc reads millions)."""
        small = self._offsets.astype(np.uint64)
        big = (small & 0x80000000) != 0
        if big.any():
            n_big = (self.count and int((small[big] & 0x7FFFFFFF).max()) + 1) or 0
            if n_big > self._n_big:
                raise CorruptObject(f"{self.path}: idx names a missing 64-bit offset")
            table = np.frombuffer(self._map, dtype=">u8", count=n_big, offset=self._big_off)
            small[big] = table[(small[big] & 0x7FFFFFFF).astype(np.int64)]
        return small

    def crcs(self) -> npt.NDArray[np.uint32]:
        """Every entry's CRC32, in id order."""
        return np.frombuffer(self._map, dtype=">u4", count=self.count,
                             offset=self._crc_off).astype(np.uint32)

    def iter_entries(self) -> Iterator[tuple[bytes, int, int]]:
        """(oid, crc32, offset) in id order."""
        for i in range(self.count):
            oid = bytes(self._map[self._ids_off + 20 * i : self._ids_off + 20 * i + 20])
            yield oid, self.crc_at(i), self._offset_at(i)

    def offsets_sorted(self) -> list[tuple[int, bytes]]:
        """(offset, oid) pairs in pack order: how a pack is walked front to back."""
        return sorted((off, oid) for oid, _, off in self.iter_entries())
