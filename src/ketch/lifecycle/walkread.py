"""What gc's walk and fsck's walk share: reading the objects a LiveSet knows
(packs opened lazily and dropped after a while, so mapped pages do not pile up
in RSS), and finding the ids a commit, tag or tree names.

The walks differ in what a missing or damaged object means (gc stops, fsck
notes it and goes on), so each keeps its own loop.
"""

from __future__ import annotations

import numpy as np

from ketch.errors import KetchError, ObjectNotFound
from ketch.git import objects as gobj
from ketch.git.loose import read_loose
from ketch.git.packread import PackFile
from ketch.lifecycle.liveset import LiveSet


class Damaged(KetchError):
    """A commit, tag or tree whose content cannot be parsed for its children."""


class LiveReader:
    """Objects of `live` by (idx number, position), or by id."""

    def __init__(self, objects_dir: str, live: LiveSet, *, remap_bytes: int,
                 fault_around: int = 0) -> None:
        self.objects_dir = objects_dir
        self.live = live
        # Mapped pack pages count towards RSS once touched: packs are closed
        # after this much was read (the page cache keeps the data either way);
        # `fault_around` is what the kernel maps around each read, however small.
        self._remap_bytes = remap_bytes
        self._fault_around = fault_around
        self._packs: dict[int, PackFile] = {}
        self._mapped = 0

    def close(self) -> None:
        for p in self._packs.values():
            p.close()
        self._packs.clear()

    def _pack(self, k: int) -> PackFile:
        p = self._packs.get(k)
        if p is None:
            p = PackFile(self.live.pack_path(k), self.live.idx[k], resolve_base=self.read,
                         cache_bytes=8 << 20)
            self._packs[k] = p
        return p

    def read_at(self, k: int, pos: int) -> tuple[int, bytes]:
        got = self._pack(k).read_at(self.live.idx[k].offset_at(pos))
        self._mapped += len(got[1]) + self._fault_around
        if self._mapped >= self._remap_bytes:
            self._mapped = 0
            self.close()
        return got

    def read(self, oid: bytes) -> tuple[int, bytes]:
        """Any object of the walked set (delta bases outside their pack come here)."""
        which, pos = self.live.locate(np.array([oid], dtype="S20"))
        if which[0] >= 0:
            return self.read_at(int(which[0]), int(pos[0]))
        got = read_loose(self.objects_dir, oid)
        if got is None:
            raise ObjectNotFound(f"object {oid.hex()} not found")
        return got


def children(type_num: int, data: bytes, to_read: list[tuple[bytes, str]],
             blobs: list[bytes]) -> None:
    """Append what a commit, tag or tree names: (id, "tree" | "commit") to
    `to_read`, blob ids to `blobs` (gitlinks name other repositories: skipped,
    as git's own connectivity check does). Raises Damaged."""
    if type_num == gobj.TREE:
        pos, n = 0, len(data)
        find = data.find
        while pos < n:
            sp = find(b" ", pos)
            nul = find(b"\0", sp)
            if sp < 0 or nul < 0 or nul + 21 > n:
                raise Damaged("a tree is damaged (truncated entry)")
            mode = data[pos:sp]
            oid = data[nul + 1 : nul + 21]
            if mode == b"40000":
                to_read.append((oid, "tree"))
            elif mode != b"160000":
                blobs.append(oid)
            pos = nul + 21
    elif type_num in (gobj.COMMIT, gobj.TAG):
        head = data.split(b"\n\n", 1)[0]
        for line in head.split(b"\n"):
            key, _, value = line.partition(b" ")
            if key in (b"tree", b"parent", b"object"):
                try:
                    to_read.append((bytes.fromhex(value.decode()),
                                    "tree" if key == b"tree" else "commit"))
                except ValueError:
                    raise Damaged(f"a {gobj.TYPE_NAMES[type_num].decode()} is damaged "
                                  "(bad object id)") from None
