"""What each pack holds that is garbage, and copying a pack's live entries into
new packs.

A pack's entries lie back to back, so an entry's size is the distance from its
offset to the next one's (the last one ends at the 20-byte trailer): the
garbage share of a pack is counted in bytes, as stored, from its idx alone.

Copying keeps an entry's bytes as they are (and its CRC from the idx, checked
first) when it is a whole object; a delta (git's packs, bup repositories that
`git gc` repacked) is resolved and written whole, since its base may not come
along. The writer must not deduplicate against the repository: the old packs
still hold every object being copied.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ketch.errors import CorruptObject
from ketch.git import objects as gobj
from ketch.git.deflate import crc32
from ketch.git.entry import FULL_TYPES
from ketch.git.pack import PackWriter
from ketch.git.packread import PackFile, ResolveBase
from ketch.lifecycle import crashpoint
from ketch.lifecycle.liveset import LiveSet, ids_to_bytes

_TRAILER = 20


@dataclass
class PackUsage:
    """One pack of a LiveSet: its size and what of it is garbage."""

    k: int  # its number in the LiveSet
    idx_path: str
    pack_path: str
    objects: int
    live_objects: int
    pack_bytes: int
    idx_bytes: int
    garbage_bytes: int
    kept: bool  # a `.keep` file asks git (and gc) to leave it alone

    @property
    def share(self) -> float:
        """Garbage, in percent of the pack's bytes."""
        return 100.0 * self.garbage_bytes / self.pack_bytes if self.pack_bytes else 0.0

    @property
    def live_bytes(self) -> int:
        return self.pack_bytes - self.garbage_bytes


def entry_sizes(live: LiveSet, k: int, pack_bytes: int) -> tuple[npt.NDArray[np.int64],
                                                                npt.NDArray[np.int64]]:
    """(offsets, sizes) of the entries of pack `k`, both in id order."""
    offs = live.idx[k].offsets().astype(np.int64)
    order = np.argsort(offs)
    ends = np.empty(len(offs), dtype=np.int64)
    ends[:-1] = offs[order][1:]
    if len(offs):
        ends[-1] = pack_bytes - _TRAILER
    sizes = np.empty(len(offs), dtype=np.int64)
    sizes[order] = ends - offs[order]
    if len(offs) and int(sizes.min()) <= 0:
        raise CorruptObject(f"{live.idx[k].path}: two entries share an offset")
    return offs, sizes


def usage(live: LiveSet) -> list[PackUsage]:
    out = []
    for k, ix in enumerate(live.idx):
        pack = live.pack_path(k)
        pack_bytes = os.path.getsize(pack)
        _, sizes = entry_sizes(live, k, pack_bytes)
        marks = live.marks[k]
        # Header and trailer go with the pack: a pack of only garbage frees all of it.
        garbage = int(sizes[~marks].sum())
        if not marks.any():
            garbage = pack_bytes
        out.append(PackUsage(k, live.paths[k], pack, ix.count, int(marks.sum()), pack_bytes,
                             os.path.getsize(live.paths[k]), garbage,
                             os.path.exists(pack[: -len(".pack")] + ".keep")))
    return out


def holds_garbage_trees(live: LiveSet, u: PackUsage) -> bool:
    """Whether pack `u` holds a garbage object that is not a blob (a tree, a
    commit, a tag; a delta counts, as its type is its base's).

    Such a pack is rewritten whatever its garbage share: then every tree left in
    the repository has all it reaches, so a save that finds a tree already
    stored (its index remembers a file's chunk tree) may count on all of it.
    Garbage blobs alone may stay, below the threshold: a blob reaches nothing."""
    if u.live_objects == u.objects:
        return False
    offs = live.idx[u.k].offsets()[~live.marks[u.k]]
    fd = os.open(u.pack_path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for off in np.sort(offs).tolist():
            head = os.pread(fd, 1, int(off))
            if not head or (head[0] >> 4) & 7 != gobj.BLOB:
                return True
    finally:
        os.close(fd)
    return False


def copy_entries(live: LiveSet, k: int, positions: npt.NDArray[np.int64], writer: PackWriter,
                 resolve: ResolveBase, on_bytes: Callable[[int], None] | None = None) -> int:
    """Copy the entries at `positions` (in pack k's id table) into `writer`, in
    pack order; returns the bytes read."""
    ix = live.idx[k]
    pack = live.pack_path(k)
    pack_bytes = os.path.getsize(pack)
    offs, sizes = entry_sizes(live, k, pack_bytes)
    positions = positions[np.argsort(offs[positions])]
    crcs = ix.crcs()
    oids = ids_to_bytes(ix.ids[positions])
    done = 0
    reader: PackFile | None = None
    fd = os.open(pack, os.O_RDONLY | os.O_CLOEXEC)
    try:
        for oid, p in zip(oids, positions.tolist(), strict=True):
            crashpoint.reach("rewrite")
            off, size = int(offs[p]), int(sizes[p])
            raw = os.pread(fd, size, off)
            if len(raw) != size or crc32(raw) != int(crcs[p]):
                raise CorruptObject(f"{pack}: the entry of {oid.hex()} at {off} is damaged "
                                    "(CRC mismatch); gc deletes nothing")
            if (raw[0] >> 4) & 7 in FULL_TYPES:
                writer.write_raw(oid, raw, int(crcs[p]))
            else:
                if reader is None:
                    reader = PackFile(pack, ix, resolve_base=resolve, cache_bytes=16 << 20)
                type_num, data = reader.read_at(off)
                if writer.write(type_num, data) != oid:
                    raise CorruptObject(f"{pack}: the delta of {oid.hex()} at {off} does not "
                                        "resolve to it; gc deletes nothing")
            done += size
            if on_bytes is not None:
                on_bytes(size)
    finally:
        os.close(fd)
        if reader is not None:
            reader.close()
    return done
