"""What a reader of a repository in an object store holds of what it fetched.

Four places, looked in in this order:

- the objects read ahead for a walk (`Repository.read_ahead`: a restore's
  trees and metadata), in memory up to a bound, for the walk that follows;
- objects fetched before they were asked for (prefetch hints, and what lay
  beside an object in the same GET), the oldest dropped past a bound;
- a memory LRU of small decoded objects (and delta bases, by idx and offset);
- the disk cache: trees, commits and small blobs read without a hint (the
  VFS's `.bupm`), so browsing again costs no traffic.

Not thread-safe: StoreRepository calls it under its lock.
"""

from __future__ import annotations

import os
from collections import OrderedDict

from cachetools import LRUCache
from isal import isal_zlib

from ketch.git import objects as gobj
from ketch.git.deflate import InflateError, deflate
from ketch.offsite.s3index import write_cache

Item = tuple[int, bytes]  # (type, content)

DISK_TYPES = frozenset((gobj.COMMIT, gobj.TREE, gobj.TAG))
_MEM_BYTES = 32 << 20  # memory LRU of decoded small objects and delta bases
_MEM_MAX_ITEM = 1 << 20
# Objects fetched before they are asked for: the oldest are dropped beyond this.
_HELD_BYTES = 32 << 20
_DISK_BLOB_MAX = 64 << 10  # small unhinted blobs kept on disk (see keep)
# Read ahead for a walk, in memory; beyond this on disk, as any tree: written
# to the cache one file each, the 17,000 trees and .bupm of the benchmark's
# corpus took 15 s of a 60 s restore.
_WALKED_BYTES = 256 << 20


def _size_of(item: Item) -> int:
    return len(item[1])


class Held:
    def __init__(self, cache_dir: str) -> None:
        self.cache_dir = cache_dir
        self._walked: dict[bytes, Item] = {}
        self._walked_bytes = 0
        self._fetched: OrderedDict[bytes, Item] = OrderedDict()
        self._fetched_bytes = 0
        self._mem: LRUCache[object, Item] = LRUCache(_MEM_BYTES, getsizeof=_size_of)

    def has(self, oid: bytes) -> bool:
        """In memory (not looking on disk)."""
        return oid in self._walked or oid in self._fetched or self._mem.get(oid) is not None

    def remembered(self, key: object) -> Item | None:
        return self._mem.get(key)

    def take(self, oid: bytes, *, ahead: bool = False) -> Item | None:
        """An object held in memory, for read_many: no longer held as fetched
        ahead of time (its reader has it now); `ahead`: kept for a walk."""
        got = self._walked.get(oid)
        if got is not None:
            return got
        got = self._fetched.pop(oid, None)
        if got is not None:
            self._fetched_bytes -= len(got[1])
        else:
            got = self._mem.get(oid)
        if got is not None and ahead:
            self.hold_walked(oid, *got)
        return got

    def get(self, oid: bytes) -> Item | None:
        """An object held anywhere, for a read of it alone."""
        got = self._walked.get(oid)
        if got is not None:
            return got
        got = self._fetched.pop(oid, None)
        if got is not None:
            self._fetched_bytes -= len(got[1])
            if oid not in self._mem:
                # Fetched beside what was asked (not kept then), asked for now.
                self.keep(oid, got[0], got[1], True)
            return got
        got = self._mem.get(oid)
        if got is not None:
            return got
        try:
            with open(self._disk_path(oid), "rb") as f:
                raw = f.read()
            t, data = raw[0], isal_zlib.decompress(raw[1:])
        except (OSError, IndexError):
            return None
        except InflateError:
            return None
        if gobj.object_id(t, data) != oid:
            return None  # a damaged cache file: fetch the object again
        self.remember(oid, (t, data))
        return t, data

    def hold(self, oid: bytes, item: Item) -> None:
        """Fetched before it was asked for."""
        if oid in self._fetched or oid in self._mem:
            return
        self._fetched[oid] = item
        self._fetched_bytes += len(item[1])
        while self._fetched_bytes > _HELD_BYTES:
            self._fetched_bytes -= len(self._fetched.popitem(last=False)[1][1])

    def hold_walked(self, oid: bytes, t: int, data: bytes) -> None:
        """Read ahead for a walk."""
        if self._walked_bytes + len(data) <= _WALKED_BYTES:
            if oid not in self._walked:
                self._walked[oid] = (t, data)
                self._walked_bytes += len(data)
        else:
            self.keep(oid, t, data, True)

    def remember(self, key: object, item: Item) -> None:
        if len(item[1]) <= _MEM_MAX_ITEM and key not in self._mem:
            self._mem[key] = item

    def keep(self, oid: bytes, t: int, data: bytes, asked: bool) -> None:
        """Remember a fetched object. On disk go trees and commits, and small blobs
        read without a prefetch hint: those are the VFS's metadata (.bupm), read
        again by every `ls`; file contents come through hints (restore announces
        them), and copying them into the cache would only fill the disk."""
        self.remember(oid, (t, data))
        if t in DISK_TYPES or (asked and len(data) <= _DISK_BLOB_MAX):
            write_cache(self._disk_path(oid), bytes([t]) + deflate(data, 1))

    def _disk_path(self, oid: bytes) -> str:
        h = oid.hex()
        return os.path.join(self.cache_dir, "objects", h[:2], h[2:])
