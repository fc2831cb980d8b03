"""Which objects gc has found reachable: one numpy bool array per idx file.

An object is named by where it sits (idx file, position in its id table), so
the live set of a repository costs one byte per stored object: 10 MB for 10
million, beside the idx and midx files themselves, which stay mmap'd. Ids are
looked up in batches, through the biggest midx files first (one vectorised
search per midx, then one in each idx it names for the hits), then in the idx
files no midx covers.

The set of idx files is fixed when the LiveSet is made: packs written later
(a concurrent save's) are not in it, and a pack moved away after (gc's own
hide) stays readable through its open maps.
"""

from __future__ import annotations

import os
from collections.abc import Collection, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from ketch.errors import CorruptObject
from ketch.git.idx import PackIndex
from ketch.git.midx import IdTable, MidxReader, coerce_ids

IntArray = npt.NDArray[np.int64]
BoolArray = npt.NDArray[np.bool_]


@dataclass
class _Source:
    table: IdTable
    idx_no: int  # the idx it is, or -1 for a midx
    midx: MidxReader | None = None
    to_idx: IntArray | None = None  # a midx's name number -> our idx number


def ids_to_bytes(ids: npt.NDArray[np.bytes_]) -> list[bytes]:
    """Raw 20-byte ids (numpy drops trailing NULs of 'S20' items; this does not)."""
    raw = np.ascontiguousarray(ids, dtype="S20").tobytes()
    return [raw[i : i + 20] for i in range(0, len(raw), 20)]


class LiveSet:
    """Marks over a fixed set of idx files (with the midx files that cover them)."""

    def __init__(self, idx_paths: Sequence[str], midx_paths: Sequence[str] = (),
                 midx_may_cover: Collection[str] | None = None) -> None:
        """`midx_may_cover`: the idx names a midx may cover to be used (default:
        any of ours); a midx naming others is left out and its idx files are
        searched in the order given."""
        self.paths = list(idx_paths)
        self.idx: list[PackIndex] = []
        try:
            for p in self.paths:
                self.idx.append(PackIndex(p))
        except BaseException:
            self.close()
            raise
        self.marks: list[BoolArray] = [np.zeros(ix.count, dtype=bool) for ix in self.idx]
        self._tables: list[IdTable | None] = [None] * len(self.idx)
        self._midx: list[MidxReader] = []
        self._sources = self._plan(midx_paths, midx_may_cover)

    def _table(self, k: int) -> IdTable:
        t = self._tables[k]
        if t is None:
            ix = self.idx[k]
            t = self._tables[k] = IdTable(ix.ids, ix.fanout, 8)
        return t

    def _plan(self, midx_paths: Sequence[str],
              may_cover: Collection[str] | None) -> list[_Source]:
        by_name: dict[str, int] = {}
        for k, ix in enumerate(self.idx):
            # A hidden pack and its rescued copy may share a name: the first wins.
            by_name.setdefault(ix.name, k)
        allowed = set(by_name if may_cover is None else may_cover)
        usable: list[MidxReader] = []
        for p in midx_paths:
            try:
                m = MidxReader(p)
            except (CorruptObject, FileNotFoundError):
                continue
            self._midx.append(m)
            names = m.idx_names
            if all(n in allowed and n in by_name for n in names) and m.count == sum(
                    self.idx[by_name[n]].count for n in names):
                usable.append(m)
        usable.sort(key=lambda m: (-m.count, m.name))
        covered: set[str] = set()
        sources: list[_Source] = []
        for m in usable:
            if set(m.idx_names) <= covered:
                continue
            covered |= set(m.idx_names)
            to_idx = np.array([by_name[n] for n in m.idx_names], dtype=np.int64)
            sources.append(_Source(IdTable(m.ids, m.fanout, m.bits), -1, m, to_idx))
        # Biggest first, but in the caller's order where it says so (the rescue
        # looks in visible packs before hidden ones).
        lone = [k for k, ix in enumerate(self.idx) if ix.name not in covered]
        if may_cover is None:
            lone.sort(key=lambda k: -self.idx[k].count)
        sources += [_Source(self._table(k), k) for k in lone]
        return sources

    def close(self) -> None:
        self._sources = []
        self._tables = []
        for m in self._midx:
            m.close()
        for ix in self.idx:
            ix.close()
        self._midx = []

    def __len__(self) -> int:
        return sum(ix.count for ix in self.idx)

    @property
    def marked(self) -> int:
        return int(sum(int(m.sum()) for m in self.marks))

    def nbytes(self) -> int:
        """Memory held by the marks themselves."""
        return sum(m.nbytes for m in self.marks)

    def locate(self, ids: npt.ArrayLike) -> tuple[IntArray, IntArray]:
        """(idx number, position in it) of each id; -1, -1 where no idx holds it."""
        q = coerce_ids(ids)
        which: IntArray = np.full(len(q), -1, dtype=np.int64)
        pos: IntArray = np.full(len(q), -1, dtype=np.int64)
        for s in self._sources:
            todo = np.flatnonzero(which < 0)
            if todo.size == 0:
                break
            p = s.table.positions(q[todo])
            hit = p >= 0
            sel = todo[hit]
            if s.midx is None:
                which[sel] = s.idx_no
                pos[sel] = p[hit]
                continue
            assert s.to_idx is not None
            w = s.midx.which_table[p[hit]].astype(np.int64)
            ok = w < len(s.to_idx)  # a damaged which table: the idx files answer
            sel, w = sel[ok], s.to_idx[w[ok]]
            for k in np.unique(w).tolist():
                mine = sel[w == k]
                pk = self._table(k).positions(q[mine])
                found = pk >= 0
                which[mine[found]] = k
                pos[mine[found]] = pk[found]
        return which, pos

    def mark(self, ids: npt.ArrayLike) -> tuple[IntArray, IntArray, BoolArray]:
        """Mark unique ids; (idx number, position, newly marked) of each."""
        which, pos = self.locate(ids)
        fresh: BoolArray = np.zeros(len(which), dtype=bool)
        for k in np.unique(which[which >= 0]).tolist():
            sel = np.flatnonzero(which == k)
            m = self.marks[k]
            p = pos[sel]
            new = ~m[p]
            m[p] = True
            fresh[sel[new]] = True
        return which, pos, fresh

    def is_marked(self, ids: npt.ArrayLike) -> BoolArray:
        which, pos = self.locate(ids)
        out: BoolArray = np.zeros(len(which), dtype=bool)
        for k in np.unique(which[which >= 0]).tolist():
            sel = np.flatnonzero(which == k)
            out[sel] = self.marks[k][pos[sel]]
        return out

    def holders(self, oid: bytes) -> list[int]:
        """Every idx holding ``oid`` (duplicates across packs included)."""
        return [k for k, ix in enumerate(self.idx) if oid in ix]

    def pack_path(self, k: int) -> str:
        return os.path.splitext(self.paths[k])[0] + ".pack"
