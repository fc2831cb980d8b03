"""bup.bloom v2 against bup 0.33.7: byte-identical filters (k=5 and k=4, fresh and
updated in place or rebuilt), our reader on bup's filters, `bup bloom -c` on ours,
and the vectorised addressing against a one-id-at-a-time reference."""

from __future__ import annotations

import glob
import os
import shutil
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ketch.errors import CorruptObject
from ketch.git.bloom import (
    MAX_BLOOM_BITS,
    BloomReader,
    _addresses,
    _write_new,
    bloom_params,
    update_bloom,
    write_bloom,
)
from tests.git.test_midx import (
    copy_repo,
    idx_ids,
    make_bup_repo,
    random_ids,
    run_bup,
    write_fake_idx,
)


@pytest.fixture(scope="module")
def bup_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("bloom") / "bup"
    make_bup_repo(repo, seeds=[11, 12, 13], size=1_500_000, max_pack_objects=50)
    return repo


@pytest.fixture
def repo(bup_repo: Path, tmp_path: Path) -> Path:
    copy_repo(bup_repo, tmp_path / "repo")
    return tmp_path / "repo"


def pd_of(repo: Path) -> Path:
    return repo / "objects" / "pack"


# -- reference addressing, one id at a time, straight from bup-format.md 4.5 --


def ref_addresses(oid: bytes, bits: int, k: int) -> list[tuple[int, int]]:
    out = []
    if k == 5:
        for off in range(0, 20, 4):
            raw = int.from_bytes(oid[off : off + 4], "big")
            out.append((raw >> (32 - bits), (raw >> (29 - bits)) & 7))
    else:
        for off in range(0, 20, 5):
            raw = int.from_bytes(oid[off : off + 5], "big")
            out.append(((raw >> (40 - bits)) & ((1 << bits) - 1), (raw >> (37 - bits)) & 7))
    return out


def ref_contains(table: bytes, oid: bytes, bits: int, k: int) -> bool:
    return all(table[b] & (1 << t) for b, t in ref_addresses(oid, bits, k))


@settings(max_examples=200, deadline=None)
@given(
    ids=st.lists(st.binary(min_size=20, max_size=20), min_size=1, max_size=20),
    k=st.sampled_from([4, 5]),
    data=st.data(),
)
def test_addresses_match_reference(ids: list[bytes], k: int, data: st.DataObject) -> None:
    bits = data.draw(st.integers(1, MAX_BLOOM_BITS[k]))
    byte, bit = _addresses(np.array(ids, dtype="S20"), bits, k)
    for row, oid in enumerate(ids):
        assert [
            (int(b), int(t)) for b, t in zip(byte[row], bit[row], strict=True)
        ] == ref_addresses(oid, bits, k)


def test_params() -> None:
    assert bloom_params(419) == (10, 5)  # bup-format.md 4.5
    assert bloom_params(419, k=4) == (10, 4)
    assert bloom_params(2**27) == (29, 5)
    assert bloom_params(2**28) == (30, 4)
    assert bloom_params(2**40) == (37, 4)
    assert bloom_params(2**40, k=5) == (29, 5)


# -- identical bytes ------------------------------------------------------------


@pytest.mark.parametrize("k", [None, 4, 5])
def test_force_matches_bup(repo: Path, k: int | None) -> None:
    pd = pd_of(repo)
    kargs = ["-k", str(k)] if k else []
    run_bup(repo, "bloom", "-f", "-o", str(repo / "bup.out.bloom"), *kargs)
    theirs = (repo / "bup.out.bloom").read_bytes()
    # bup records idx names in glob's (directory) order.
    write_bloom(pd, glob.glob(f"{pd}/*.idx"), repo / "a.bloom", k=k)
    assert (repo / "a.bloom").read_bytes() == theirs
    res = update_bloom(pd, repo / "b.bloom", k=k, force=True)
    assert res.action == "created"
    assert (repo / "b.bloom").read_bytes() == theirs
    with BloomReader(repo / "a.bloom") as b:
        assert b.k == (k or 5)
        assert b.entries == sum(len(idx_ids(p)) for p in glob.glob(f"{pd}/*.idx"))
        assert sorted(b.idx_names) == sorted(os.path.basename(p) for p in glob.glob(f"{pd}/*.idx"))


def _compare_update(repo: Path, *kargs: str, expect: str) -> None:
    """Run `bup bloom` and update_bloom from the same bup.bloom; same result."""
    pd = pd_of(repo)
    bloom = pd / "bup.bloom"
    start = bloom.read_bytes() if bloom.exists() else None
    run_bup(repo, "bloom", *kargs)
    theirs = bloom.read_bytes()
    if start is None:
        bloom.unlink()
    else:
        bloom.write_bytes(start)
    k = int(kargs[1]) if kargs else None
    res = update_bloom(pd, k=k)
    assert res.action == expect
    assert bloom.read_bytes() == theirs
    if expect == "none":
        assert theirs == start


def _hide_idx(repo: Path, keep: float) -> list[Path]:
    """Move most idx files aside, leaving a fraction ``keep`` in place."""
    pd = pd_of(repo)
    aside = repo / "aside"
    aside.mkdir()
    paths = sorted(pd.glob("*.idx"))
    moved = []
    for p in paths[int(len(paths) * keep) :]:
        moved.append(Path(shutil.move(str(p), aside / p.name)))
    return moved


def _unhide(repo: Path, moved: list[Path]) -> None:
    for p in moved:
        shutil.move(str(p), pd_of(repo) / p.name)


def test_update_adds_in_place_like_bup(repo: Path) -> None:
    moved = _hide_idx(repo, keep=0.9)
    run_bup(repo, "bloom", "-f")
    _unhide(repo, moved)
    _compare_update(repo, expect="added")


def test_update_rebuilds_when_too_full_like_bup(repo: Path) -> None:
    moved = _hide_idx(repo, keep=0.1)
    run_bup(repo, "bloom", "-f")
    _unhide(repo, moved)
    _compare_update(repo, expect="created")


def test_update_rebuilds_after_idx_removed_like_bup(repo: Path) -> None:
    pd = pd_of(repo)
    run_bup(repo, "bloom", "-f")
    victim = sorted(pd.glob("*.idx"))[0]
    victim.unlink()
    write_fake_idx(pd / f"pack-{7:040x}.idx", random_ids(10, seed=7))
    _compare_update(repo, expect="created")


def test_update_new_k_rebuilds_like_bup(repo: Path) -> None:
    moved = _hide_idx(repo, keep=0.9)
    run_bup(repo, "bloom", "-f")
    _unhide(repo, moved)
    _compare_update(repo, "-k", "4", expect="created")


def test_update_nothing_to_do(repo: Path) -> None:
    run_bup(repo, "bloom", "-f")
    _compare_update(repo, expect="none")


def test_update_over_invalid_file(repo: Path) -> None:
    pd = pd_of(repo)
    (pd / "bup.bloom").write_bytes(b"not a bloom at all")
    _compare_update(repo, expect="created")


# -- reading bup's, bup reading ours ----------------------------------------------


@pytest.mark.parametrize("k", [5, 4])
def test_reader_on_bup_bloom(repo: Path, k: int) -> None:
    pd = pd_of(repo)
    out = repo / "bup.out.bloom"
    run_bup(repo, "bloom", "-f", "-k", str(k), "-o", str(out))
    every = [oid for p in glob.glob(f"{pd}/*.idx") for oid in idx_ids(p)]
    absent = random_ids(10_000, seed=21)
    raw = out.read_bytes()
    with BloomReader(out) as b:
        assert b.k == k and b.entries == len(every)
        table = raw[16 : 16 + (1 << b.bits)]
        assert b.maybe_contains_many(np.array(every, dtype="S20")).all()
        got = b.maybe_contains_many(np.array(absent, dtype="S20"))
        assert list(got[:2000]) == [ref_contains(table, q, b.bits, k) for q in absent[:2000]]
        rate = got.mean()
        assert rate < 0.02, f"false-positive rate {rate:.4f}"
        assert b.maybe_contains(every[0]) and every[0] in b


@pytest.mark.parametrize("k", [None, 4])
def test_bup_check_accepts_ours(repo: Path, k: int | None) -> None:
    pd = pd_of(repo)
    ours = repo / "ours.bloom"
    write_bloom(pd, glob.glob(f"{pd}/*.idx"), ours, k=k)
    for p in glob.glob(f"{pd}/*.idx"):
        proc = run_bup(repo, "bloom", "-o", str(ours), "-c", p)
        assert b"All tests passed" in proc.stderr


# -- bad files ----------------------------------------------------------------------


@pytest.mark.parametrize(
    "header",
    [
        b"MOLB" + struct.pack(">IHHI", 2, 10, 5, 0),
        b"BLOM" + struct.pack(">IHHI", 1, 10, 5, 0),
        b"BLOM" + struct.pack(">IHHI", 2, 10, 6, 0),
        b"BLOM" + struct.pack(">IHHI", 2, 30, 5, 0),
        b"BLOM" + struct.pack(">IHHI", 2, 0, 5, 0),
        b"BLOM" + struct.pack(">IHHI", 2, 20, 5, 0),  # table missing
        b"BLO",
    ],
)
def test_corrupt_bloom_rejected(tmp_path: Path, header: bytes) -> None:
    p = tmp_path / "bad.bloom"
    p.write_bytes(header + bytes(1024))
    with pytest.raises(CorruptObject):
        BloomReader(p)


def test_empty_names_and_no_temp_files(tmp_path: Path) -> None:
    p = write_fake_idx(tmp_path / f"pack-{1:040x}.idx", random_ids(419, seed=1))
    out = write_bloom(tmp_path, [p])
    assert os.path.basename(out) == "bup.bloom"
    with BloomReader(out) as b:
        assert (b.bits, b.k, b.entries) == (10, 5, 419)
        assert b.idx_names == [os.path.basename(p)]
    assert os.path.getsize(out) == 16 + 1024 + len(os.path.basename(p))
    assert not [n for n in os.listdir(tmp_path) if n.startswith(".")]
    assert update_bloom(tmp_path).action == "none"


def test_an_idx_gone_mid_build_leaves_no_filter_and_says_so(repo: Path) -> None:
    """gc may hide an idx between the listing and its opening: the build must end
    with that FileNotFoundError (ObjectIndex.maintain retries on it), not with a
    BufferError from closing the map under a live view, and leave no filter."""
    pack_dir = repo / "objects" / "pack"
    real = sorted(glob.glob(str(pack_dir / "*.idx")))
    out = pack_dir / "bup.bloom"
    out.unlink(missing_ok=True)
    with pytest.raises(FileNotFoundError):
        _write_new(str(out), [*real, str(pack_dir / ("pack-" + "0" * 40 + ".idx"))], 1000, None)
    assert not out.exists()
