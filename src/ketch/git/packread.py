"""Reading objects out of pack files (v2/v3), with git's deltas.

An entry is a header (type in bits 4-6 of the first byte, size as a little-endian
base-128 varint starting with the low 4 bits), then for OFS_DELTA a backwards
offset to the base and for REF_DELTA the base's 20-byte id, then a zlib stream of
``size`` inflated bytes. A delta inflates to: source size, target size (varints),
then copy-from-base and insert-literal opcodes. Decoding an entry is
ketch.git.entry's (shared with the S3 reader and the server), applying a delta
ketch.git.delta's.

Delta chains are walked down to a full object (or a cached base) and then applied
back up in a loop, so chain depth costs no Python stack. Materialised bases go to
a small LRU cache bounded by bytes, because readers such as restore fetch many
objects that share the same bases.
"""

from __future__ import annotations

import mmap
import os
import struct
import threading
from collections.abc import Callable, Iterator

from cachetools import LRUCache

from ketch.errors import CorruptObject
from ketch.git import entry as codec
from ketch.git.delta import BadDelta, apply_delta, delta_sizes
from ketch.git.entry import FULL_TYPES, OFS_DELTA, REF_DELTA, CorruptPack
from ketch.git.idx import PackIndex
from ketch.git.objects import object_id

PACK_MAGIC = b"PACK"
DEFAULT_CACHE_BYTES = 32 * 1024 * 1024
# git gc uses depth 50 and aggressive repacks 250; anything far beyond that is a
# REF_DELTA cycle inside a corrupt pack, not a real chain.
MAX_CHAIN = 10_000

ResolveBase = Callable[[bytes], tuple[int, bytes]]


class MissingDeltaBase(CorruptPack):
    """A REF_DELTA names a base that is neither in the pack nor resolvable."""


class ObjectIdMismatch(CorruptObject):
    """An object's contents do not hash to the id it was read under."""


def _size_of(item: tuple[int, bytes]) -> int:
    return len(item[1])


class _BaseCache:
    """An LRU of materialised objects keyed by pack offset, bounded by total bytes."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: LRUCache[int, tuple[int, bytes]] = LRUCache(max_bytes, getsizeof=_size_of)
        # Readers may share a PackFile across threads; the LRU's reordering is
        # not atomic.
        self._lock = threading.Lock()

    def get(self, offset: int) -> tuple[int, bytes] | None:
        # A miss is the common case (most objects are nobody's base) and a plain
        # membership test is atomic, so only a hit pays for the lock.
        if offset not in self._items:
            return None
        with self._lock:
            return self._items.get(offset)

    def put(self, offset: int, type_num: int, data: bytes) -> None:
        if len(data) > self.max_bytes // 2:
            return  # one huge base would evict everything useful
        with self._lock:
            self._items[offset] = (type_num, data)

    def clear(self) -> None:
        with self._lock:
            self._items.clear()


class PackFile:
    """A read-only, mmap'd ``pack-X.pack`` together with its idx.

    ``index`` is an open PackIndex (the caller keeps ownership), a path to the idx,
    or None for the ``.idx`` beside the pack; an idx opened here is closed by
    close().

    ``resolve_base(oid) -> (type, data)`` supplies REF_DELTA bases that are not in
    this pack (another pack, a loose object); it should raise (e.g.
    ObjectNotFound) when it cannot. It can be given here or per read. Without
    one, such deltas raise MissingDeltaBase.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        index: PackIndex | str | os.PathLike[str] | None = None,
        resolve_base: ResolveBase | None = None,
        cache_bytes: int = DEFAULT_CACHE_BYTES,
    ) -> None:
        self.path = os.fspath(path)
        self._owns_index = not isinstance(index, PackIndex)
        if index is None:
            stem = self.path[:-5] if self.path.endswith(".pack") else self.path
            index = stem + ".idx"
        self.index = index if isinstance(index, PackIndex) else PackIndex(index)
        self.resolve_base = resolve_base
        self._cache = _BaseCache(cache_bytes)
        try:
            with open(self.path, "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size < 12 + 20:
                    raise CorruptPack(f"{self.path}: pack file too short")
                self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        except (OSError, ValueError, CorruptPack):
            if self._owns_index:
                self.index.close()
            raise
        self._view = memoryview(self._map)
        try:
            self._check_header(size)
        except CorruptPack:
            self.close()
            raise
        # Entries end before the trailing pack checksum.
        self._end = size - 20

    def _check_header(self, size: int) -> None:
        magic, version, count = struct.unpack_from(">4sII", self._map, 0)
        if magic != PACK_MAGIC:
            raise CorruptPack(f"{self.path}: not a pack file (bad magic)")
        if version not in (2, 3):
            raise CorruptPack(f"{self.path}: unsupported pack version {version}")
        if count != self.index.count:
            raise CorruptPack(
                f"{self.path}: pack holds {count} objects but its idx lists {self.index.count}"
            )
        if self._map[size - 20 : size] != self.index.pack_sha:
            raise CorruptPack(f"{self.path}: pack checksum does not match its idx")

    @property
    def count(self) -> int:
        return self.index.count

    @property
    def pack_sha(self) -> bytes:
        return self.index.pack_sha

    def close(self) -> None:
        self._cache.clear()
        try:
            self._view.release()
            self._map.close()
        except BufferError:
            # A slice of the map is still alive (a read's frame kept by an
            # exception in flight): the map closes when the slice is collected.
            pass
        if self._owns_index:
            self.index.close()

    def __enter__(self) -> PackFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def __contains__(self, oid: object) -> bool:
        return oid in self.index

    # -- entry decoding -------------------------------------------------------

    def _entry_header(self, offset: int) -> tuple[int, int, int]:
        """(type, size, offset just past the type/size header)."""
        if not 12 <= offset < self._end:
            raise CorruptPack(f"{self.path}: entry offset {offset} is outside the pack")
        try:
            return codec.read_header(self._map, offset, self._end)
        except CorruptPack as e:
            raise CorruptPack(f"{self.path}: entry at {offset}: {e}") from None

    def _ofs_base(self, offset: int, pos: int) -> tuple[int, int]:
        """(base offset, offset of the zlib data) for an OFS_DELTA entry."""
        try:
            dist, pos = codec.read_ofs_distance(self._map, pos, self._end)
        except CorruptPack as e:
            raise CorruptPack(f"{self.path}: entry at {offset}: {e}") from None
        base = offset - dist
        if dist <= 0 or base < 12:
            raise CorruptPack(f"{self.path}: bad delta base offset at {offset}")
        return base, pos

    def _ref_base(self, offset: int, pos: int) -> bytes:
        try:
            return codec.read_ref_base(self._view, pos, self._end)
        except CorruptPack as e:
            raise CorruptPack(f"{self.path}: entry at {offset}: {e}") from None

    def _read(self, pos: int, n: int) -> memoryview:
        """Up to ``n`` bytes of the entries at ``pos`` (the codec's Reader)."""
        return self._view[pos : min(pos + n, self._end)]

    def _inflate(self, pos: int, size: int, entry: int) -> bytes:
        try:
            return codec.inflate(self._read, pos, size)[0]
        except CorruptPack as e:
            raise CorruptPack(f"{self.path}: entry at {entry}: {e}") from None

    def _delta_target_size(self, pos: int, size: int, entry: int) -> int:
        # Only the delta's two leading varints are needed: 20 bytes always holds them.
        try:
            return delta_sizes(codec.inflate_head(self._read, pos, min(size, 20)))[1]
        except CorruptPack as e:
            raise CorruptPack(f"{self.path}: bad delta header in entry at {entry}: {e}") from None

    def _external_base(
        self, oid: bytes, entry: int, resolve: ResolveBase | None
    ) -> tuple[int, bytes]:
        resolve = resolve or self.resolve_base
        if resolve is None:
            raise MissingDeltaBase(
                f"{self.path}: delta at {entry} needs base {oid.hex()}, which is not in this pack"
            )
        return resolve(oid)

    # -- public reads ---------------------------------------------------------

    def _base_of(self, pos: int, type_num: int, data_pos: int) -> tuple[int, bytes | None, int]:
        """For the delta entry at ``pos``: (base offset, or -1 with the base id when
        the base is outside this pack; offset of the delta's zlib data)."""
        if type_num == OFS_DELTA:
            base_pos, zpos = self._ofs_base(pos, data_pos)
            return base_pos, None, zpos
        if type_num == REF_DELTA:
            base_oid = self._ref_base(pos, data_pos)
            found = self.index.find_offset(base_oid)
            if found is None:
                return -1, base_oid, data_pos + 20
            return found, None, data_pos + 20
        raise CorruptPack(f"{self.path}: entry at {pos} has invalid type {type_num}")

    def read_at(self, offset: int, resolve_base: ResolveBase | None = None) -> tuple[int, bytes]:
        """(type, data) of the entry at ``offset``, with deltas resolved."""
        # Walk down the chain, remembering each delta, until a full object.
        chain: list[tuple[int, int, int]] = []
        pos = offset
        fresh = False
        while True:
            cached = self._cache.get(pos)
            if cached is not None:
                base_type, base = cached
                break
            type_num, size, data_pos = self._entry_header(pos)
            if type_num in FULL_TYPES:
                base_type, base = type_num, self._inflate(data_pos, size, pos)
                fresh = True
                break
            base_pos, external, zpos = self._base_of(pos, type_num, data_pos)
            chain.append((pos, zpos, size))
            if external is not None:
                base_type, base = self._external_base(external, pos, resolve_base)
                break
            if len(chain) > MAX_CHAIN:
                raise CorruptPack(f"{self.path}: delta chain from {offset} does not end")
            pos = base_pos
        if not chain:
            return base_type, base
        if fresh:
            self._cache.put(pos, base_type, base)
        # Apply back up; every intermediate result is some delta's base.
        for i in range(len(chain) - 1, -1, -1):
            entry, zpos, size = chain[i]
            delta = self._inflate(zpos, size, entry)
            try:
                base = apply_delta(base, delta)
            except BadDelta as e:
                raise BadDelta(f"{self.path}: entry at {entry}: {e}") from e
            if i:
                self._cache.put(entry, base_type, base)
        return base_type, base

    def read(
        self, oid: bytes, verify: bool = False, resolve_base: ResolveBase | None = None
    ) -> tuple[int, bytes] | None:
        """(type, data) of ``oid``, or None if this pack does not hold it.

        With ``verify`` the data is hashed and must give ``oid`` back.
        """
        offset = self.index.find_offset(oid)
        if offset is None:
            return None
        type_num, data = self.read_at(offset, resolve_base)
        if verify:
            self._verify(oid, offset, type_num, data)
        return type_num, data

    def _verify(self, oid: bytes, offset: int, type_num: int, data: bytes) -> None:
        actual = object_id(type_num, data)
        if actual != oid:
            raise ObjectIdMismatch(
                f"{self.path}: object {oid.hex()} at {offset} hashes to {actual.hex()}"
            )

    def header_at(self, offset: int, resolve_base: ResolveBase | None = None) -> tuple[int, int]:
        """(type, size) of the object at ``offset``, inflating as little as possible.

        A full object needs no inflating. A delta's size comes from the start of
        its own data and its type from the end of its chain.
        """
        cached = self._cache.get(offset)
        if cached is not None:
            return cached[0], len(cached[1])
        type_num, size, data_pos = self._entry_header(offset)
        if type_num in FULL_TYPES:
            return type_num, size
        target_size = -1
        pos = offset
        for _ in range(MAX_CHAIN + 1):
            if type_num in FULL_TYPES:
                return type_num, target_size
            base_pos, external, zpos = self._base_of(pos, type_num, data_pos)
            if target_size < 0:
                target_size = self._delta_target_size(zpos, size, pos)
            if external is not None:
                return self._external_base(external, pos, resolve_base)[0], target_size
            cached = self._cache.get(base_pos)
            if cached is not None:
                return cached[0], target_size
            pos = base_pos
            type_num, size, data_pos = self._entry_header(pos)
        raise CorruptPack(f"{self.path}: delta chain from {offset} does not end")

    def header(self, oid: bytes, resolve_base: ResolveBase | None = None) -> tuple[int, int] | None:
        offset = self.index.find_offset(oid)
        return None if offset is None else self.header_at(offset, resolve_base)

    def iter_objects(self, verify: bool = False) -> Iterator[tuple[bytes, int, bytes]]:
        """(oid, type, data) for every object, in pack order.

        Bases come before their OFS_DELTAs in a pack, so the base cache usually
        holds what each delta needs.
        """
        for offset, oid in self.index.offsets_sorted():
            type_num, data = self.read_at(offset)
            if verify:
                self._verify(oid, offset, type_num, data)
            yield oid, type_num, data
