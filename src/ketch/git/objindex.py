"""Existence checks across every pack of a repository, in batches.

``ObjectIndex`` opens every ``*.idx`` (mmap'd), the usable ``*.midx`` files
and ``bup.bloom`` in one pack directory and answers "which of these ids are
already stored?" for numpy 'S20' arrays:

1. the bloom filter, where it is trustworthy, rules out most absent ids (its
   negatives are final, but only for the idx files it names);
2. each midx then answers for the idx files it covers;
3. the idx files no midx covers are searched one by one.

A midx or bloom that names an idx file which is gone is stale (bup's gc or a
concurrent repack removed packs); it is ignored, never trusted, and left on
disk for ``auto_midx``/``update_bloom`` to clean up. Likewise a file whose
counts disagree with the idx files it names.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from types import TracebackType

import numpy as np
import numpy.typing as npt

from ketch.errors import CorruptObject
from ketch.git.bloom import BLOOM_NAME, BloomReader, update_bloom
from ketch.git.idx import PackIndex
from ketch.git.midx import BoolArray, IdTable, MidxReader, auto_midx, coerce_ids

# (inode, size, mtime_ns): enough to notice a midx or bloom replaced by rename
# or rewritten in place. idx files are immutable, so their names suffice.
_Stamp = tuple[int, int, int]
_Listing = tuple[frozenset[str], frozenset[tuple[str, _Stamp]], _Stamp | None]


@dataclass
class _Source:
    """One thing to search: a midx, or an idx no midx covers."""

    table: IdTable
    covers: frozenset[str]  # idx names it answers for
    midx: MidxReader | None
    in_bloom: bool = False  # every idx it covers is in the trusted bloom


def _stamp(st: os.stat_result) -> _Stamp:
    return st.st_ino, st.st_size, st.st_mtime_ns


class ObjectIndex:
    """Batched "already stored?" over all packs in ``pack_dir``."""

    def __init__(self, pack_dir: str | os.PathLike[str]) -> None:
        self.pack_dir = os.fspath(pack_dir)
        self._idx: dict[str, PackIndex] = {}
        self._midx: dict[str, tuple[_Stamp, MidxReader]] = {}
        self._bloom: tuple[_Stamp, BloomReader] | None = None
        self._listing: _Listing | None = None
        self._sources: list[_Source] = []
        self._trusted_bloom: BloomReader | None = None
        self.refresh()

    # -- state ------------------------------------------------------------

    def _scan(self) -> _Listing:
        idx: set[str] = set()
        midx: set[tuple[str, _Stamp]] = set()
        bloom: _Stamp | None = None
        try:
            it = os.scandir(self.pack_dir)
        except FileNotFoundError:
            return frozenset(), frozenset(), None  # no pack written yet
        with it:
            for e in it:
                name = e.name
                if name.startswith("."):
                    continue  # temp files of writers in flight
                try:
                    if name.endswith(".idx"):
                        idx.add(name)
                    elif name.endswith(".midx"):
                        midx.add((name, _stamp(e.stat())))
                    elif name == BLOOM_NAME:
                        bloom = _stamp(e.stat())
                except FileNotFoundError:
                    continue  # deleted while we looked
        return frozenset(idx), frozenset(midx), bloom

    def refresh(self) -> bool:
        """Pick up packs, midx and bloom files changed by other processes.

        Costs one directory listing when nothing changed. Returns whether
        anything did.
        """
        listing = self._scan()
        if listing == self._listing:
            return False
        idx_names, midx_stamps, bloom_stamp = listing
        vanished = False
        for name in list(self._idx):
            if name not in idx_names:
                self._idx.pop(name).close()
        for name in sorted(idx_names - self._idx.keys()):
            try:
                self._idx[name] = PackIndex(os.path.join(self.pack_dir, name))
            except FileNotFoundError:
                vanished = True
        self._refresh_midx(dict(midx_stamps))
        self._refresh_bloom(bloom_stamp)
        # A file that vanished mid-scan leaves the listing unsettled: rescan next time.
        self._listing = None if vanished else listing
        self._rebuild()
        return True

    def _refresh_midx(self, stamps: dict[str, _Stamp]) -> None:
        for name in list(self._midx):
            if stamps.get(name) != self._midx[name][0]:
                self._midx.pop(name)[1].close()
        for name, st in stamps.items():
            if name in self._midx:
                continue
            try:
                self._midx[name] = (st, MidxReader(os.path.join(self.pack_dir, name)))
            except (CorruptObject, FileNotFoundError):
                continue

    def _refresh_bloom(self, stamp: _Stamp | None) -> None:
        if self._bloom is not None and self._bloom[0] != stamp:
            self._bloom[1].close()
            self._bloom = None
        if self._bloom is None and stamp is not None:
            try:
                self._bloom = (stamp, BloomReader(os.path.join(self.pack_dir, BLOOM_NAME)))
            except (CorruptObject, FileNotFoundError):
                self._bloom = None

    def _consistent(self, names: list[str], count: int) -> bool:
        """Every named idx is present and their object counts add up to ``count``."""
        if not all(n in self._idx for n in names):
            return False
        return sum(self._idx[n].count for n in names) == count

    def _rebuild(self) -> None:
        usable = [m for _, m in self._midx.values() if self._consistent(m.idx_names, m.count)]
        # Biggest first, as bup does; a midx adds nothing once bigger ones cover its idx files.
        usable.sort(key=lambda m: (-m.count, m.name))
        covered: set[str] = set()
        sources: list[_Source] = []
        for m in usable:
            names = frozenset(m.idx_names)
            if names <= covered:
                continue
            covered |= names
            sources.append(_Source(IdTable(m.ids, m.fanout, m.bits), names, m))
        loose = sorted(
            (ix for n, ix in self._idx.items() if n not in covered), key=lambda ix: -ix.count
        )
        for ix in loose:
            sources.append(_Source(IdTable(ix.ids, ix.fanout, 8), frozenset([ix.name]), None))
        bloom = self._bloom[1] if self._bloom is not None else None
        if bloom is not None and not self._consistent(bloom.idx_names, bloom.entries):
            bloom = None
        self._trusted_bloom = bloom
        in_bloom = frozenset(bloom.idx_names) if bloom is not None else frozenset()
        for s in sources:
            s.in_bloom = s.covers <= in_bloom
        self._sources = sources

    def add_idx(self, path: str | os.PathLike[str]) -> None:
        """Make a just-finished pack visible without rescanning the directory."""
        if os.path.basename(os.fspath(path)) in self._idx:
            return  # idx files never change under one name
        ix = PackIndex(path)
        self._idx[ix.name] = ix
        # Searched on its own, as no midx or bloom on disk can name it yet.
        self._sources.append(_Source(IdTable(ix.ids, ix.fanout, 8), frozenset([ix.name]), None))
        self._listing = None

    # -- queries ----------------------------------------------------------

    @property
    def idx_names(self) -> list[str]:
        return sorted(self._idx)

    @property
    def using_bloom(self) -> bool:
        return self._trusted_bloom is not None

    @property
    def midx_names(self) -> list[str]:
        return [s.midx.name for s in self._sources if s.midx is not None]

    def __len__(self) -> int:
        return sum(ix.count for ix in self._idx.values())

    def contains_many(self, oids: npt.ArrayLike) -> BoolArray:
        """For each id of an 'S20' array, whether some idx holds it."""
        ids = coerce_ids(oids)
        found: BoolArray = np.zeros(len(ids), dtype=bool)
        if len(ids) == 0 or not self._sources:
            return found
        maybe = (
            self._trusted_bloom.maybe_contains_many(ids)
            if self._trusted_bloom is not None
            else None
        )
        for s in self._sources:
            todo = ~found
            if maybe is not None and s.in_bloom:
                todo &= maybe
            sel = np.flatnonzero(todo)
            if sel.size == 0:
                continue
            found[sel[s.table.contains_many(ids[sel])]] = True
        return found

    def __contains__(self, oid: object) -> bool:
        if not isinstance(oid, bytes) or len(oid) != 20:
            return False
        return bool(self.contains_many(np.array([oid], dtype="S20"))[0])

    def contains_one(self, oid: bytes) -> bool:
        """Whether some idx holds ``oid`` (no offset lookup: cheaper than find)."""
        maybe = self._trusted_bloom.maybe_contains(oid) if self._trusted_bloom is not None else True
        for s in self._sources:
            if s.in_bloom and not maybe:
                continue
            if s.table.position_one(oid) >= 0:
                return True
        return False

    def find(self, oid: bytes) -> tuple[str, int] | None:
        """(idx basename, pack offset) of ``oid``, or None."""
        maybe = self._trusted_bloom.maybe_contains(oid) if self._trusted_bloom is not None else True
        for s in self._sources:
            if s.in_bloom and not maybe:
                continue
            pos = s.table.position_one(oid)
            if pos < 0:
                continue
            if s.midx is None:
                (name,) = s.covers
            else:
                w = int(s.midx.which_table[pos])
                if w >= len(s.midx.idx_names):
                    continue  # a damaged which table: let the idx files answer
                name = s.midx.idx_names[w]
            ix = self._idx.get(name)
            off = ix.find_offset(oid) if ix is not None else None
            if off is not None:
                return name, off
        return None

    def find_many(self, oids: Sequence[bytes]) -> list[tuple[str, int] | None]:
        """``find`` for many ids at once, asking the idx files themselves (the
        midx and bloom only speed up misses, and a batch read expects hits),
        one vectorised search per idx file until every id is placed."""
        out: list[tuple[str, int] | None] = [None] * len(oids)
        if not oids:
            return out
        ids = coerce_ids(np.array(oids, dtype="S20"))
        todo = np.arange(len(ids))
        for name, ix in self._idx.items():
            if todo.size == 0:
                break
            if ix.count == 0:
                continue
            q = ids[todo]
            pos = np.searchsorted(ix.ids, q)
            pos[pos >= ix.count] = ix.count - 1
            hit = ix.ids[pos] == q
            for i, p in zip(todo[hit].tolist(), pos[hit].tolist(), strict=True):
                out[i] = (name, ix.offset_at(p))
            todo = todo[~hit]
        return out

    def find_direct(self, oid: bytes) -> tuple[str, int] | None:
        """``find`` asking every idx file itself, past the midx and bloom files:
        for a read that missed, so that a damaged accelerator (ids flipped in a
        midx, bits cleared in the bloom) cannot hide a stored object."""
        for name, ix in self._idx.items():
            off = ix.find_offset(oid)
            if off is not None:
                return name, off
        return None

    def find_prefix(self, hexprefix: str) -> list[bytes]:
        """Every id starting with a hex prefix (for abbreviated ids)."""
        lo = bytes.fromhex(hexprefix.ljust(40, "0"))
        hi = bytes.fromhex(hexprefix.ljust(40, "f"))
        out: set[bytes] = set()
        for ix in self._idx.values():
            a = int(np.searchsorted(ix.ids, np.array([lo], dtype="S20"))[0])
            b = int(np.searchsorted(ix.ids, np.array([hi], dtype="S20"), side="right")[0])
            # numpy's S20 drops trailing NULs: pad them back.
            out.update(bytes(ix.ids[i]).ljust(20, b"\0") for i in range(a, min(b, a + 16)))
        return sorted(out)

    def maintain(self) -> None:
        """bup's housekeeping after writing packs: merge small idx files into a
        midx, bring the bloom filter up to date, and start using both.

        A gc may move an idx away between the listing and its opening: that
        pass is dropped (what it wrote is consistent, or ignored as stale) and
        tried once more; housekeeping left undone is the next save's."""
        for attempt in (0, 1):
            try:
                auto_midx(self.pack_dir)
                update_bloom(self.pack_dir)
                break
            except FileNotFoundError:
                if attempt:
                    break
        self.refresh()

    # -- lifetime ---------------------------------------------------------

    def close(self) -> None:
        self._sources = []
        self._trusted_bloom = None
        for _, m in self._midx.values():
            m.close()
        self._midx.clear()
        if self._bloom is not None:
            self._bloom[1].close()
            self._bloom = None
        for ix in self._idx.values():
            ix.close()
        self._idx.clear()
        self._listing = None

    def __enter__(self) -> ObjectIndex:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()
