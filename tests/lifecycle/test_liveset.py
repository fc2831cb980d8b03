"""The live set: one byte per stored object, found through midx and idx files."""

from __future__ import annotations

import tracemalloc
from pathlib import Path

import numpy as np

from ketch.git.idx import write_idx_v2_flat
from ketch.git.midx import write_midx
from ketch.lifecycle.liveset import LiveSet, ids_to_bytes


def _idx(path: Path, ids: bytes) -> str:
    n = len(ids) // 20
    with open(path, "wb") as f:
        write_idx_v2_flat(f, ids, np.zeros(n, np.uint32),
                          np.arange(n, dtype=np.uint64) * 50 + 12, b"\0" * 20)
    return str(path)


def _packs(tmp_path: Path, sizes: list[int], shared: bytes = b"") -> tuple[list[str], list[bytes]]:
    rng = np.random.default_rng(5)
    paths, all_ids = [], []
    for i, n in enumerate(sizes):
        ids = rng.bytes(20 * n) + shared
        paths.append(_idx(tmp_path / f"pack-{i:040x}.idx", ids))
        all_ids += ids_to_bytes(np.frombuffer(ids, dtype="S20"))
    return paths, all_ids


def test_locate_and_mark_through_midx_and_lone_idx(tmp_path: Path) -> None:
    # An id ending in NUL bytes (numpy's S20 would drop them) in two packs at once.
    shared = b"\x01" * 18 + b"\0\0"
    paths, ids = _packs(tmp_path, [3000, 2000, 1000], shared)
    midx = write_midx(str(tmp_path), paths[:2])  # the third idx stays on its own
    live = LiveSet(paths, [midx])
    try:
        which, pos = live.locate(np.array(ids, dtype="S20"))
        assert (which >= 0).all()
        for oid, k, p in zip(ids, which.tolist(), pos.tolist(), strict=True):
            assert bytes(live.idx[k].ids[p : p + 1].tobytes()) == oid
        absent = np.array([b"\xff" * 20, b"\0" * 20], dtype="S20")
        assert (live.locate(absent)[0] == -1).all()
        some = np.unique(np.array(ids[::7], dtype="S20"))
        _, _, fresh = live.mark(some)
        assert fresh.all()
        _, _, again = live.mark(some)
        assert not again.any()
        assert live.is_marked(some).all()
        # The shared id is marked in exactly one of the packs holding it.
        assert sum(int(live.marks[k][live.idx[k].ids == shared].sum())
                   for k in range(3)) == (1 if shared in set(ids[::7]) else 0)
        assert live.marked == len(some)
        assert live.nbytes() == len(live) == 6003
    finally:
        live.close()


def test_marks_cost_a_byte_per_object(tmp_path: Path) -> None:
    """1M objects marked in batches, as the walk does: the set itself is 1 MB and
    the work on top stays small (the 10M-object figure scales from this)."""
    paths, _ = _packs(tmp_path, [125_000] * 8)
    midx = write_midx(str(tmp_path), paths)
    live = LiveSet(paths, [midx])
    try:
        tracemalloc.start()
        for ix in live.idx:
            ids = np.array(ix.ids)
            for s in range(0, len(ids), 65536):
                live.mark(ids[s : s + 65536])
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert live.marked == 1_000_000
        assert live.nbytes() == 1_000_000
        assert peak < 25_000_000, peak
    finally:
        live.close()
