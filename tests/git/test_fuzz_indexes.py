"""Property: a damaged idx, midx or bloom file in a pack directory is refused
with a KetchError (CorruptObject) or, for the midx and bloom accelerators,
ignored; nothing else escapes the readers or ObjectIndex, and no allocation
follows a count the file declares.

The valid files come from the real writers (PackWriter, write_midx,
write_bloom) and are damaged by tests/fuzzutil.py's mutations.
"""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ketch.git.bloom import BloomReader, update_bloom, write_bloom
from ketch.git.idx import PackIndex
from ketch.git.midx import IdTable, MidxReader, write_midx
from ketch.git.objects import BLOB
from ketch.git.objindex import ObjectIndex
from ketch.git.pack import PackWriter
from ketch.git.packread import PackFile
from tests.fuzzutil import bounded_allocation, fuzz_settings, mutated, only_ketch_errors

FUZZ = fuzz_settings(20)


def _make_packs(objects: Path) -> list[bytes]:
    """Two packs of small blobs; returns every id written."""
    r = random.Random(12)
    ids: list[bytes] = []
    for n in (40, 30):
        with PackWriter(str(objects), fsync=False) as w:
            ids += [w.write(BLOB, r.randbytes(r.randrange(1, 200))) for _ in range(n)]
    return ids


class Valid:
    def __init__(self, root: Path) -> None:
        self.objects = root / "objects"
        self.pack_dir = self.objects / "pack"
        self.pack_dir.mkdir(parents=True)
        self.ids = _make_packs(self.objects)
        self.idx = sorted(str(p) for p in self.pack_dir.glob("*.idx"))
        self.midx = write_midx(self.pack_dir, self.idx)
        self.bloom = write_bloom(self.pack_dir, self.idx)
        self.bytes = {p: Path(p).read_bytes() for p in [*self.idx, self.midx, self.bloom]}


@pytest.fixture(scope="module")
def valid(tmp_path_factory: pytest.TempPathFactory) -> Valid:
    return Valid(tmp_path_factory.mktemp("valid"))


def _scratch(valid: Valid, path: str, data: bytes) -> tuple[Path, Path]:
    """The pack directory with ``path``'s file replaced by ``data`` (the
    other files stay valid: each example rewrites only its own)."""
    scratch = valid.objects.parent / "scratch" / "objects"
    if not scratch.exists():
        shutil.copytree(valid.objects, scratch)
    keep = {os.path.basename(p) for p in valid.bytes}
    for f in (scratch / "pack").iterdir():
        if f.suffix != ".pack" and f.name not in keep:
            f.unlink()  # what an earlier example's housekeeping wrote
    for p, b in valid.bytes.items():
        (scratch / "pack" / os.path.basename(p)).write_bytes(data if p == path else b)
    return scratch / "pack", scratch / "pack" / os.path.basename(path)


def _use_object_index(pack_dir: Path, ids: list[bytes], idx_intact: bool) -> None:
    probe = np.array(ids + [bytes(20), b"\xff" * 20], dtype="S20")
    with ObjectIndex(pack_dir) as oi:
        oi.contains_many(probe)
        for oid in ids[:10]:
            oi.contains_one(oid)
            oi.find(oid)
            oid in oi  # noqa: B015
        oi.find_prefix("a")
        len(oi)
        # A save's housekeeping, then the same questions again.
        oi.maintain()
        oi.contains_many(probe)
        if idx_intact:
            # What a read asks: a damaged midx or bloom never hides an object.
            assert all(oi.find(oid) or oi.find_direct(oid) for oid in ids)


def _use_idx(path: Path, ids: list[bytes]) -> None:
    ix = PackIndex(path)
    try:
        ix.contains_many(np.array(ids, dtype="S20"))
        IdTable(ix.ids, ix.fanout, 8).contains_many(np.array(ids, dtype="S20"))
        for oid in ids[:10]:
            ix.find_offset(oid)
        ix.offsets()
        ix.crcs()
        ix.offsets_sorted()
    finally:
        ix.close()
    pack = str(path)[:-4] + ".pack"
    with PackFile(pack, str(path)) as pf:
        for oid in ids:
            pf.read(oid)
            pf.header(oid)
        for _ in pf.iter_objects(verify=True):
            pass


def _use_midx(path: Path, ids: list[bytes]) -> None:
    with MidxReader(path) as m:
        m.contains_many(np.array(ids, dtype="S20"))
        m.which_many(np.array(ids, dtype="S20"))
        for oid in ids[:10]:
            m.which(oid)
            m.position_one(oid)
        m.missing_idx()


def _use_bloom(path: Path, ids: list[bytes]) -> None:
    with BloomReader(path) as b:
        b.maybe_contains_many(np.array(ids, dtype="S20"))
        for oid in ids[:10]:
            b.maybe_contains(oid)
        b.pfalse_positive(10)


def _check(valid: Valid, path: str, data: bytes) -> None:
    pack_dir, target = _scratch(valid, path, data)
    use = {".idx": _use_idx, ".midx": _use_midx}.get(target.suffix, _use_bloom)
    with bounded_allocation():
        only_ketch_errors(lambda: use(target, valid.ids))
        only_ketch_errors(lambda: _use_object_index(pack_dir, valid.ids,
                                                    target.suffix != ".idx"))


@FUZZ
@given(data=st.data())
def test_damaged_idx(valid: Valid, data: st.DataObject) -> None:
    path = valid.idx[0]
    _check(valid, path, data.draw(mutated(valid.bytes[path])))


@FUZZ
@given(data=st.data())
def test_damaged_midx(valid: Valid, data: st.DataObject) -> None:
    _check(valid, valid.midx, data.draw(mutated(valid.bytes[valid.midx])))


@FUZZ
@given(data=st.data())
def test_damaged_bloom(valid: Valid, data: st.DataObject) -> None:
    _check(valid, valid.bloom, data.draw(mutated(valid.bytes[valid.bloom])))


def test_bloom_naming_the_pack_directory_itself(valid: Valid, tmp_path: Path) -> None:
    """Found by the fuzzer: an empty name in the list made housekeeping open
    the pack directory as an idx (IsADirectoryError). With nothing new to add
    the file is left as bup leaves it, and not trusted (it names no idx here)."""
    pack_dir = tmp_path / "pack"
    shutil.copytree(valid.pack_dir, pack_dir)
    bloom = pack_dir / os.path.basename(valid.bloom)
    bloom.write_bytes(valid.bytes[valid.bloom] + b"\0\0../x")
    update_bloom(pack_dir)
    with ObjectIndex(pack_dir) as oi:
        assert not oi.using_bloom
        assert all(oi.find(oid) for oid in valid.ids)
