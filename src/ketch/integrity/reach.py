"""Which objects reachable from the refs are missing or damaged: gc's mark walk
(ketch.lifecycle.gcwalk), collecting problems instead of stopping at one.

Marks live in a LiveSet (one byte per stored object); `bad` says which stored
entries the pack checks found damaged (one array per idx of the LiveSet). An
object counts as damaged only when no intact copy of it exists in another
pack. Commits, tags and trees are read; blobs are only looked up, in batches.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ketch.errors import CorruptObject, KetchError
from ketch.git import objects as gobj
from ketch.git.loose import loose_exists, read_loose
from ketch.git.packread import PackFile
from ketch.lifecycle.liveset import LiveSet, ids_to_bytes

_READ_BATCH = 512
_BLOB_BATCH = 1 << 14
# Mapped pages count towards RSS once touched, and the kernel maps 64 KiB
# around each fault however small the object: each read counts that much.
_REMAP_BYTES = 4 << 20
_FAULT_AROUND = 64 << 10

BoolArray = npt.NDArray[np.bool_]


@dataclass
class Trouble:
    """A reachable object that cannot be read: `where` says why, in a few words."""

    oid: bytes
    kind: str  # what its parent said it is: "blob", "tree", "commit", "object"
    where: str  # "missing", "pack-X.pack damaged at offset N", ...


class Reach:
    """The walk; `trouble` collects each bad object once."""

    def __init__(self, objects_dir: str, live: LiveSet, bad: list[BoolArray],
                 damage_note: Callable[[int, int], str],
                 on_objects: Callable[[int], None] | None = None) -> None:
        self.objects_dir = objects_dir
        self.live = live
        self.bad = bad
        self.damage_note = damage_note  # (idx number, position) -> "pack-X damaged at..."
        self.on_objects = on_objects
        self.trouble: dict[bytes, Trouble] = {}
        self.loose: set[bytes] = set()
        self.found = 0
        self._packs: dict[int, PackFile] = {}
        self._mapped = 0

    def close(self) -> None:
        for p in self._packs.values():
            p.close()
        self._packs.clear()

    # -- reading ---------------------------------------------------------------

    def _pack(self, k: int) -> PackFile:
        p = self._packs.get(k)
        if p is None:
            p = PackFile(self.live.pack_path(k), self.live.idx[k], resolve_base=self.read,
                         cache_bytes=8 << 20)
            self._packs[k] = p
        return p

    def _read_at(self, k: int, pos: int) -> tuple[int, bytes]:
        got = self._pack(k).read_at(self.live.idx[k].offset_at(pos))
        self._mapped += len(got[1]) + _FAULT_AROUND
        if self._mapped >= _REMAP_BYTES:
            self._mapped = 0
            self.close()
        return got

    def read(self, oid: bytes) -> tuple[int, bytes]:
        """Any stored object (delta bases outside their pack come here)."""
        which, pos = self.live.locate(np.array([oid], dtype="S20"))
        if which[0] >= 0:
            return self._read_at(int(which[0]), int(pos[0]))
        got = read_loose(self.objects_dir, oid)
        if got is None:
            raise CorruptObject(f"object {oid.hex()} not found")
        return got

    def intact_copy(self, oid: bytes, k: int) -> tuple[int, int] | None:
        """Another idx's undamaged copy of `oid` (duplicates across packs)."""
        for j, ix in enumerate(self.live.idx):
            if j == k or oid not in ix:
                continue
            p = int(np.searchsorted(ix.ids, np.array([oid], dtype="S20"))[0])
            if not self.bad[j][p]:
                return j, p
        return None

    # -- walking ---------------------------------------------------------------

    def _visit(self, batch: list[bytes], kind: str) -> list[tuple[bytes, int, int]]:
        """Mark a batch; (id, idx number, position) of those to read, not seen
        before and readable (idx number -1: a loose object)."""
        ids = np.unique(np.array(batch, dtype="S20"))
        which, pos, fresh = self.live.mark(ids)
        out: list[tuple[bytes, int, int]] = []
        sel = np.flatnonzero(fresh | (which < 0))
        for oid, k, p in zip(ids_to_bytes(ids[sel]), which[sel].tolist(), pos[sel].tolist(),
                             strict=True):
            if k < 0:
                if oid in self.loose or oid in self.trouble:
                    continue
                if not loose_exists(self.objects_dir, oid):
                    self.trouble[oid] = Trouble(oid, kind, "missing")
                    continue
                self.loose.add(oid)
            elif self.bad[k][p]:
                other = self.intact_copy(oid, k)
                if other is None:
                    self.trouble[oid] = Trouble(oid, kind, self.damage_note(k, p))
                    continue
                k, p = other
            out.append((oid, k, p))
        self.found += len(out)
        if self.on_objects is not None and out:
            self.on_objects(len(out))
        return out

    def walk(self, tips: list[bytes]) -> None:
        """Mark everything reachable from `tips`, noting what is not there."""
        to_read: list[tuple[bytes, str]] = [(t, "commit") for t in tips]
        blobs: list[bytes] = []
        while to_read or blobs:
            if blobs and (len(blobs) >= _BLOB_BATCH or not to_read):
                batch = blobs[-_BLOB_BATCH:]
                del blobs[-_BLOB_BATCH:]
                self._visit(batch, "blob")
                continue
            kinds = dict(to_read[-_READ_BATCH:])
            del to_read[-_READ_BATCH:]
            todo = self._visit(list(kinds), "object")
            for oid, kind in kinds.items():
                t = self.trouble.get(oid)
                if t is not None and t.kind == "object":
                    t.kind = kind
            for oid, k, pos in todo:
                kind = kinds[oid]
                try:
                    if k >= 0:
                        type_num, data = self._read_at(k, pos)
                    else:
                        got = read_loose(self.objects_dir, oid)
                        assert got is not None
                        type_num, data = got
                    children(type_num, data, to_read, blobs)
                except CorruptObject as e:
                    self.trouble[oid] = Trouble(oid, kind, f"unreadable: {e}")
                except KetchError as e:
                    self.trouble[oid] = Trouble(oid, kind, str(e))


def children(type_num: int, data: bytes, to_read: list[tuple[bytes, str]],
             blobs: list[bytes]) -> None:
    if type_num == gobj.TREE:
        pos, n = 0, len(data)
        find = data.find
        while pos < n:
            sp = find(b" ", pos)
            nul = find(b"\0", sp)
            if sp < 0 or nul < 0 or nul + 21 > n:
                raise KetchError("damaged: a tree entry is cut short")
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
                    raise KetchError("damaged: a bad object id in a commit") from None
