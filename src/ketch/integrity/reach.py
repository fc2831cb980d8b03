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
from ketch.git.loose import loose_exists, read_loose
from ketch.lifecycle.liveset import LiveSet, ids_to_bytes
from ketch.lifecycle.walkread import Damaged, LiveReader, children

_READ_BATCH = 512
_BLOB_BATCH = 1 << 14
# fsck reads many small objects: the kernel maps 64 KiB around each fault,
# so each read counts that much towards the remap.
_REMAP_BYTES = 4 << 20
_FAULT_AROUND = 64 << 10

BoolArray = npt.NDArray[np.bool_]


@dataclass
class Trouble:
    """A reachable object that cannot be read: `where` says why, in a few words."""

    oid: bytes
    kind: str  # what its parent said it is: "blob", "tree", "commit", "object"
    where: str  # "missing", "pack-X.pack damaged at offset N", ...


class Reach(LiveReader):
    """The walk; `trouble` collects each bad object once."""

    def __init__(self, objects_dir: str, live: LiveSet, bad: list[BoolArray],
                 damage_note: Callable[[int, int], str],
                 on_objects: Callable[[int], None] | None = None) -> None:
        super().__init__(objects_dir, live, remap_bytes=_REMAP_BYTES,
                         fault_around=_FAULT_AROUND)
        self.bad = bad
        self.damage_note = damage_note  # (idx number, position) -> "pack-X damaged at..."
        self.on_objects = on_objects
        self.trouble: dict[bytes, Trouble] = {}
        self.loose: set[bytes] = set()
        self.found = 0

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
                        type_num, data = self.read_at(k, pos)
                    else:
                        got = read_loose(self.objects_dir, oid)
                        assert got is not None
                        type_num, data = got
                    children(type_num, data, to_read, blobs)
                except Damaged as e:
                    self.trouble[oid] = Trouble(oid, kind, str(e))
                except CorruptObject as e:
                    self.trouble[oid] = Trouble(oid, kind, f"unreadable: {e}")
                except KetchError as e:
                    self.trouble[oid] = Trouble(oid, kind, str(e))

