"""Are the midx files and the bloom filter consistent with the idx files they
cover? They are caches: ketch (like bup) ignores one whose names or counts
disagree with the idx files, and a broken one loses no data, so each problem
here is a warning that a rebuild (`fsck --repair`, or the next save's
housekeeping once the file is removed) cures.

Unless `quick`, every id is checked: a midx must list exactly the ids of the
idx files it names, sorted, each credited to an idx that holds it; the bloom
must answer "maybe" for every id of the idx files it names (a "no" would make
a save store an object twice, or trust a stale answer).
"""

from __future__ import annotations

import glob
import os
from dataclasses import dataclass

import numpy as np

from ketch.errors import CorruptObject
from ketch.git.bloom import BLOOM_NAME, BloomReader
from ketch.git.idx import PackIndex
from ketch.git.midx import MidxReader

_CHUNK = 1 << 16


@dataclass
class CacheProblem:
    file: str  # basename: x.midx or bup.bloom
    what: str


def check_caches(pack_dir: str, idx: dict[str, PackIndex], *, quick: bool) -> list[CacheProblem]:
    """Problems of every midx and bloom in `pack_dir`; `idx` maps readable idx
    names to their open files."""
    out: list[CacheProblem] = []
    for path in sorted(glob.glob(os.path.join(pack_dir, "*.midx"))):
        what = _check_midx(path, idx, quick)
        if what:
            out.append(CacheProblem(os.path.basename(path), what))
    path = os.path.join(pack_dir, BLOOM_NAME)
    if os.path.exists(path):
        what = _check_bloom(path, idx, quick)
        if what:
            out.append(CacheProblem(BLOOM_NAME, what))
    return out


def _stale(names: list[str], count: int, idx: dict[str, PackIndex]) -> str | None:
    gone = [n for n in names if n not in idx]
    if gone:
        return (f"stale: names {len(gone)} idx file{'s' if len(gone) != 1 else ''} that "
                f"{'are' if len(gone) != 1 else 'is'} gone or unreadable ({gone[0]})")
    total = sum(idx[n].count for n in names)
    if total != count:
        return f"counts {count} objects, the idx files it names hold {total}"
    return None


def _check_midx(path: str, idx: dict[str, PackIndex], quick: bool) -> str | None:
    try:
        m = MidxReader(path)
    except (CorruptObject, ValueError) as e:
        return f"unreadable ({str(e).removeprefix(path + ': ')})"
    try:
        what = _stale(m.idx_names, m.count, idx)
        if what or quick:
            return what
        ids = m.ids
        for a in range(0, m.count, _CHUNK):
            b = min(m.count, a + _CHUNK + 1)
            chunk = ids[a:b]
            if len(chunk) > 1 and bool((chunk[1:] < chunk[:-1]).any()):
                return "damaged: its ids are out of order"
        which = m.which_table
        if m.count and int(which.max()) >= len(m.idx_names):
            return "damaged: credits ids to idx files it does not name"
        for k, name in enumerate(m.idx_names):
            ix = idx[name]
            sel = np.flatnonzero(which == k)
            for a in range(0, len(sel), _CHUNK):
                if not bool(ix.contains_many(ids[sel[a:a + _CHUNK]]).all()):
                    return f"damaged: lists ids that {name} does not hold"
        return None
    finally:
        m.close()


def _check_bloom(path: str, idx: dict[str, PackIndex], quick: bool) -> str | None:
    try:
        bl = BloomReader(path)
    except (CorruptObject, ValueError) as e:
        return f"unreadable ({str(e).removeprefix(path + ': ')})"
    try:
        what = _stale(bl.idx_names, bl.entries, idx)
        if what or quick:
            return what
        for name in bl.idx_names:
            ids = idx[name].ids
            for a in range(0, len(ids), _CHUNK):
                if not bool(bl.maybe_contains_many(ids[a:a + _CHUNK]).all()):
                    return f"damaged: says some ids of {name} are absent"
        return None
    finally:
        bl.close()
