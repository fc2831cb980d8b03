"""The reachability walk of gc: from ref tips through commits (every parent),
tags and trees, marking each object found in a LiveSet.

Commits, tags and trees are read; blobs never are, only their ids marked (a
tree entry says what it names). Gitlinks name commits of other repositories
and are skipped, as git's own connectivity check does. Ids travel in batches
(one vectorised lookup per batch); an object already marked is not walked
again, and with a `stop` set neither is anything marked there (the rescue
walks only what is new since the mark).

Objects found in no idx may be loose (git writes those; ketch never does): a
small set remembers which were walked.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

from ketch.errors import KetchError
from ketch.git.loose import loose_exists, read_loose
from ketch.lifecycle import crashpoint
from ketch.lifecycle.liveset import LiveSet, ids_to_bytes
from ketch.lifecycle.walkread import Damaged, LiveReader, children

_READ_BATCH = 512
_BLOB_BATCH = 1 << 16
_REMAP_BYTES = 32 << 20


class MissingObject(KetchError):
    """An object reachable from a ref is not in the repository."""


class Walker(LiveReader):
    """Walks into `live`; `on_objects(n)` hears how many objects each step found."""

    def __init__(self, objects_dir: str, live: LiveSet, *, stop: LiveSet | None = None,
                 on_objects: Callable[[int], None] | None = None) -> None:
        super().__init__(objects_dir, live, remap_bytes=_REMAP_BYTES)
        self.stop = stop
        self.on_objects = on_objects
        self.loose: set[bytes] = set()
        self.found = 0

    def _visit(self, batch: list[bytes], what: str) -> list[tuple[bytes, int, int]]:
        """Mark a batch; (id, idx number, position) of those not walked before
        (idx number -1: a loose object)."""
        ids = np.unique(np.array(batch, dtype="S20"))
        if self.stop is not None:
            ids = ids[~self.stop.is_marked(ids)]
        which, pos, fresh = self.live.mark(ids)
        out: list[tuple[bytes, int, int]] = []
        sel = np.flatnonzero(fresh | (which < 0))
        for oid, k, p in zip(ids_to_bytes(ids[sel]), which[sel].tolist(), pos[sel].tolist(),
                             strict=True):
            if k < 0:
                if oid in self.loose:
                    continue
                if not loose_exists(self.objects_dir, oid):
                    raise MissingObject(
                        f"{what} {oid.hex()} is reachable from the refs but missing from "
                        f"the repository; gc deletes nothing (check it with git fsck)")
                self.loose.add(oid)
            out.append((oid, k, p))
        self.found += len(out)
        if self.on_objects is not None and out:
            self.on_objects(len(out))
        return out

    def walk(self, tips: list[bytes]) -> None:
        """Mark everything reachable from `tips` (any object type)."""
        to_read: list[tuple[bytes, str]] = [(t, "object") for t in tips]
        blobs: list[bytes] = []
        while to_read or blobs:
            if blobs and (len(blobs) >= _BLOB_BATCH or not to_read):
                batch = blobs[-_BLOB_BATCH:]
                del blobs[-_BLOB_BATCH:]
                self._visit(batch, "blob")
                continue
            batch = [oid for oid, _ in to_read[-_READ_BATCH:]]
            del to_read[-_READ_BATCH:]
            for oid, k, pos in self._visit(batch, "object"):
                crashpoint.reach("mark")
                if k >= 0:
                    type_num, data = self.read_at(k, pos)
                else:
                    got = read_loose(self.objects_dir, oid)
                    assert got is not None
                    type_num, data = got
                try:
                    children(type_num, data, to_read, blobs)
                except Damaged as e:
                    raise KetchError(f"{e}; gc deletes nothing") from None
