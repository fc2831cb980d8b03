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

from ketch.errors import KetchError, ObjectNotFound
from ketch.git import objects as gobj
from ketch.git.loose import loose_exists, read_loose
from ketch.git.packread import PackFile
from ketch.lifecycle import crashpoint
from ketch.lifecycle.liveset import LiveSet, ids_to_bytes

_READ_BATCH = 512
_BLOB_BATCH = 1 << 16
# Mapped pack pages count towards RSS once touched: the packs are closed after
# this much has been read (the kernel's page cache keeps the data either way).
_REMAP_BYTES = 32 << 20


class MissingObject(KetchError):
    """An object reachable from a ref is not in the repository."""


class Walker:
    """Walks into `live`; `on_objects(n)` hears how many objects each step found."""

    def __init__(self, objects_dir: str, live: LiveSet, *, stop: LiveSet | None = None,
                 on_objects: Callable[[int], None] | None = None) -> None:
        self.objects_dir = objects_dir
        self.live = live
        self.stop = stop
        self.on_objects = on_objects
        self.loose: set[bytes] = set()
        self._packs: dict[int, PackFile] = {}
        self._mapped = 0
        self.found = 0

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
        self._mapped += len(got[1])
        if self._mapped >= _REMAP_BYTES:
            self._mapped = 0
            self.close()
        return got

    def read(self, oid: bytes) -> tuple[int, bytes]:
        """Any object of the walked set (delta bases outside their pack come here)."""
        which, pos = self.live.locate(np.array([oid], dtype="S20"))
        if which[0] >= 0:
            return self._read_at(int(which[0]), int(pos[0]))
        got = read_loose(self.objects_dir, oid)
        if got is None:
            raise ObjectNotFound(f"object {oid.hex()} not found")
        return got

    # -- walking ---------------------------------------------------------------

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
        to_read: list[bytes] = list(tips)
        blobs: list[bytes] = []
        while to_read or blobs:
            if blobs and (len(blobs) >= _BLOB_BATCH or not to_read):
                batch = blobs[-_BLOB_BATCH:]
                del blobs[-_BLOB_BATCH:]
                self._visit(batch, "blob")
                continue
            batch = to_read[-_READ_BATCH:]
            del to_read[-_READ_BATCH:]
            for oid, k, pos in self._visit(batch, "object"):
                crashpoint.reach("mark")
                if k >= 0:
                    type_num, data = self._read_at(k, pos)
                else:
                    got = read_loose(self.objects_dir, oid)
                    assert got is not None
                    type_num, data = got
                _children(type_num, data, to_read, blobs)


def _children(type_num: int, data: bytes, to_read: list[bytes], blobs: list[bytes]) -> None:
    if type_num == gobj.TREE:
        pos, n = 0, len(data)
        find = data.find
        while pos < n:
            sp = find(b" ", pos)
            nul = find(b"\0", sp)
            if sp < 0 or nul < 0 or nul + 21 > n:
                raise KetchError("a tree is damaged (truncated entry); gc deletes nothing")
            mode = data[pos:sp]
            oid = data[nul + 1 : nul + 21]
            if mode == b"40000":
                to_read.append(oid)
            elif mode != b"160000":
                blobs.append(oid)
            pos = nul + 21
    elif type_num in (gobj.COMMIT, gobj.TAG):
        head = data.split(b"\n\n", 1)[0]
        for line in head.split(b"\n"):
            key, _, value = line.partition(b" ")
            if key in (b"tree", b"parent", b"object"):
                try:
                    to_read.append(bytes.fromhex(value.decode()))
                except ValueError:
                    raise KetchError(f"a {gobj.TYPE_NAMES[type_num].decode()} is damaged "
                                     "(bad object id); gc deletes nothing") from None
