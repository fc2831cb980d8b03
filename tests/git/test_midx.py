"""midx v4 against bup 0.33.7: byte-identical files from the same inputs (forced,
automatic and explicit merges, duplicates included), our reader on bup's files,
bup's --check on ours, and a round trip over random id sets."""

from __future__ import annotations

import glob
import hashlib
import os
import random
import shutil
import struct
import subprocess
import tempfile
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.errors import CorruptObject
from ketch.git.idx import PackIndex, write_idx_v2
from ketch.git.midx import MidxReader, auto_midx, midx_bits, write_midx
from tests.buputil import bup_run

# -- helpers shared with test_bloom.py and test_objindex.py -------------------


def run_bup(repo: Path, *args: str, input: bytes | None = None
            ) -> subprocess.CompletedProcess[bytes]:
    return bup_run(repo, *args, input=input)


def make_bup_repo(repo: Path, seeds: Iterable[int], size: int, max_pack_objects: int) -> Path:
    """A bup repository holding one `bup split` per seed, cut into many small packs.

    bup itself runs `midx --auto` and `bloom` after each pack, so the result
    also has bup-made midx and bloom files.
    """
    run_bup(repo, "init")
    for s in seeds:
        data = random.Random(s).randbytes(size)
        run_bup(repo, "split", "-n", f"x{s}", f"--max-pack-objects={max_pack_objects}", input=data)
    return repo / "objects" / "pack"


def copy_repo(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst, copy_function=shutil.copy2)
    return dst / "objects" / "pack"


def write_fake_idx(path: Path | str, ids: Iterable[bytes]) -> str:
    """An idx over ``ids`` with made-up offsets and CRCs (enough for midx and bloom)."""
    with open(path, "wb") as f:
        write_idx_v2(
            f, [(oid, 0, 12 + 30 * i) for i, oid in enumerate(sorted(set(ids)))], bytes(20)
        )
    return str(path)


def idx_ids(path: str) -> list[bytes]:
    ix = PackIndex(path)
    try:
        return [oid for oid, _, _ in ix.iter_entries()]
    finally:
        ix.close()


def random_ids(n: int, seed: int) -> list[bytes]:
    r = random.Random(seed)
    return [r.randbytes(20) for _ in range(n)]


def snapshot(pack_dir: Path, pattern: str) -> dict[str, tuple[bytes, int]]:
    """Contents and mtimes of the matching files, to compare and to restore."""
    out = {}
    for p in glob.glob(f"{pack_dir}/{pattern}"):
        out[os.path.basename(p)] = (Path(p).read_bytes(), os.stat(p).st_mtime_ns)
    return out


def restore(pack_dir: Path, pattern: str, snap: dict[str, tuple[bytes, int]]) -> None:
    for p in glob.glob(f"{pack_dir}/{pattern}"):
        os.unlink(p)
    for name, (data, mtime) in snap.items():
        dst = pack_dir / name
        dst.write_bytes(data)
        os.utime(dst, ns=(mtime, mtime))


def contents(snap: dict[str, tuple[bytes, int]]) -> dict[str, bytes]:
    return {n: d for n, (d, _) in snap.items()}


# -- fixtures -------------------------------------------------------------------


@pytest.fixture(scope="module")
def bup_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """~22 packs, ~1100 objects, with bup's own midx and bloom files."""
    repo = tmp_path_factory.mktemp("midx") / "bup"
    make_bup_repo(repo, seeds=[1, 2, 3, 4], size=2_000_000, max_pack_objects=60)
    return repo


@pytest.fixture
def repo(bup_repo: Path, tmp_path: Path) -> Path:
    """A private copy of the module's repository, to modify."""
    copy_repo(bup_repo, tmp_path / "repo")
    return tmp_path / "repo"


def pack_dir_of(repo: Path) -> Path:
    return repo / "objects" / "pack"


# -- bup produces the same bytes ------------------------------------------------


def test_bits_rule() -> None:
    # bup-format.md 4.4: N = 388 gives one fan-out entry, N = 460 two.
    assert midx_bits(0) == 0
    assert midx_bits(388) == 0
    assert midx_bits(460) == 1
    assert midx_bits(10_000_000) == 16
    # bup's float log rounds 2**29 up; we follow it, not the exact value.
    assert midx_bits(int(2**29 * 4096 / 20) + 1) == 30


@pytest.mark.parametrize("existing", ["none", "bups"])
def test_force_matches_bup(repo: Path, existing: str) -> None:
    pd = pack_dir_of(repo)
    if existing == "none":
        restore(pd, "*.midx", {})
    before = snapshot(pd, "*.midx")
    run_bup(repo, "midx", "-f")
    theirs = snapshot(pd, "*.midx")
    assert len(theirs) == len(before) + 1
    restore(pd, "*.midx", before)

    res = auto_midx(str(pd), force=True)
    ours = snapshot(pd, "*.midx")
    assert contents(ours) == contents(theirs)
    assert len(res.created) == 1 and res.removed == []

    # The same file from write_midx, given the inputs in bup's order
    # (ascending object count, then path) and as full paths.
    (new,) = set(theirs) - set(before)
    paths = sorted(glob.glob(f"{pd}/*.idx"), key=lambda p: (PackIndex(p).count, p))
    out = write_midx(str(pd), paths)
    assert os.path.basename(out) == new
    digest = hashlib.sha1(b"\0".join(p.encode() for p in paths)).hexdigest()
    assert new == f"midx-{digest}.midx"
    assert Path(out).read_bytes() == theirs[new][0]


def _compare_auto(repo: Path) -> None:
    pd = pack_dir_of(repo)
    before = snapshot(pd, "*.midx")
    run_bup(repo, "midx", "--auto")
    theirs = snapshot(pd, "*.midx")
    restore(pd, "*.midx", before)
    res = auto_midx(str(pd))
    ours = snapshot(pd, "*.midx")
    assert contents(ours) == contents(theirs)
    assert {os.path.basename(p) for p in res.created} == set(theirs) - set(before)
    assert {os.path.basename(p) for p in res.removed} == set(before) - set(theirs)


def test_auto_matches_bup_from_scratch(repo: Path) -> None:
    pd = pack_dir_of(repo)
    restore(pd, "*.midx", {})
    _compare_auto(repo)
    assert glob.glob(f"{pd}/*.midx")


def test_auto_matches_bup_merging_midx_files(repo: Path) -> None:
    # bup's own state has at most 5 idx/midx files; extra idx push it over,
    # so existing midx files become inputs of the new one.
    pd = pack_dir_of(repo)
    for i in range(5):
        write_fake_idx(pd / f"pack-{i:040x}.idx", random_ids(300, seed=100 + i))
    _compare_auto(repo)


def test_auto_matches_bup_stale_and_redundant(repo: Path) -> None:
    pd = pack_dir_of(repo)
    sizes = {}
    for p in glob.glob(f"{pd}/*.midx"):
        with MidxReader(p) as m:
            sizes[p] = (len(m), m.idx_names)
    big = max(sizes, key=lambda p: sizes[p][0])
    names = sizes[big][1]
    # A smaller midx whose idx files the big one already covers: redundant.
    write_midx(str(pd), [str(pd / n) for n in names[:3]])
    # A midx naming an idx file that is about to disappear: stale (so is the big one).
    stale = write_midx(str(pd), [str(pd / n) for n in names[-2:]])
    (pd / names[-1]).unlink()
    _compare_auto(repo)
    assert not os.path.exists(stale)
    assert not os.path.exists(big)


@pytest.mark.parametrize("nfiles,per", [(5, 300), (6, 10), (9, 200), (14, 3)])
def test_auto_thresholds_match_bup(tmp_path: Path, nfiles: int, per: int) -> None:
    """At most 5 files: nothing; more: all but the biggest merged, whatever the size."""
    repo = tmp_path / "r"
    run_bup(repo, "init")
    pd = pack_dir_of(repo)
    for f in range(nfiles):
        write_fake_idx(pd / f"pack-{f:040x}.idx", random_ids(per + f, seed=f))
    _compare_auto(repo)
    made = glob.glob(f"{pd}/*.midx")
    assert len(made) == (0 if nfiles <= 5 else 1)
    # Run again: bup's state is stable, and so is ours.
    _compare_auto(repo)


def test_explicit_merge_matches_bup_with_duplicates(repo: Path, tmp_path: Path) -> None:
    """Overlapping idx files and midx inputs: bup keeps duplicate ids, and which
    input each is credited to follows its merge's tie order; ours must agree."""
    r = random.Random(5)
    d = tmp_path / "syn"
    for trial in range(30):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        # Few distinct leading bytes force equal fan-out buckets and shared prefixes.
        pool = [
            bytes([r.choice([0, 1, 2, 255])]) + r.randbytes(19) for _ in range(r.randint(2, 60))
        ]
        paths = [
            write_fake_idx(d / f"pack-{f:040x}.idx", r.sample(pool, r.randint(1, len(pool))))
            for f in range(r.randint(1, 8))
        ]
        inputs = list(paths)
        if len(paths) > 2 and trial % 2:
            sub = r.sample(paths, 2)
            run_bup(repo, "midx", "-o", str(d / "sub.midx"), *sub)
            inputs = [p for p in paths if p not in sub] + [str(d / "sub.midx")]
        r.shuffle(inputs)
        run_bup(repo, "midx", "-o", str(d / "bup.midx.out"), *inputs)
        write_midx(str(d), inputs, str(d / "ketch.midx.out"))
        theirs = (d / "bup.midx.out").read_bytes()
        assert (d / "ketch.midx.out").read_bytes() == theirs, f"trial {trial}"


def test_default_name_matches_bup(repo: Path) -> None:
    pd = pack_dir_of(repo)
    paths = sorted(glob.glob(f"{pd}/*.idx"))[:7]
    restore(pd, "*.midx", {})
    run_bup(repo, "midx", *paths)
    theirs = snapshot(pd, "*.midx")
    restore(pd, "*.midx", {})
    out = write_midx(str(pd), paths)
    assert contents(snapshot(pd, "*.midx")) == contents(theirs)
    assert os.path.basename(out) in theirs


# -- our reader on bup's files, bup's checker on ours ---------------------------


def test_reader_on_bup_midx(bup_repo: Path) -> None:
    pd = pack_dir_of(bup_repo)
    midxs = glob.glob(f"{pd}/*.midx")
    assert midxs, "bup should have made a midx for this many packs"
    absent = np.array(random_ids(10_000, seed=9), dtype="S20")
    for path in midxs:
        with MidxReader(path) as m:
            assert m.idx_names and not m.missing_idx()
            every: list[bytes] = []
            for name in m.idx_names:
                ids = idx_ids(str(pd / name))
                every += ids
                for oid in ids[:50]:
                    assert m.which(oid) == name
                    assert oid in m
            assert len(m) == len(every)
            assert m.contains_many(np.array(every, dtype="S20")).all()
            assert not m.contains_many(absent).any()
            assert m.which(bytes(20)) is None
            w = m.which_many(np.array(every[:100] + [bytes(20)], dtype="S20"))
            assert (w[:100] >= 0).all() and w[100] == -1


@pytest.mark.parametrize("how", ["all", "some"])
def test_bup_check_accepts_ours(repo: Path, how: str) -> None:
    pd = pack_dir_of(repo)
    paths = sorted(glob.glob(f"{pd}/*.idx"))
    if how == "some":
        paths = paths[::3]
    out = write_midx(str(pd), paths)
    proc = run_bup(repo, "midx", "--check", out)
    assert b"All tests passed" in proc.stderr


# -- round trip -------------------------------------------------------------------


def _id_strategy() -> st.SearchStrategy[bytes]:
    # Mostly random ids, some sharing their first 8 bytes (the reader compares
    # those first) and some sharing the first byte (same fan-out bucket).
    prefix = st.sampled_from(
        [bytes(8), b"\x01" * 8, b"\xff" * 8, b"\x80\x00\x00\x00\x00\x00\x00\x01"]
    )
    return st.one_of(
        st.binary(min_size=20, max_size=20),
        st.builds(lambda p, t: p + t, prefix, st.binary(min_size=12, max_size=12)),
        st.builds(lambda t: b"\x00" * 19 + t, st.binary(min_size=1, max_size=1)),
    )


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    files=st.lists(st.lists(_id_strategy(), max_size=80), min_size=1, max_size=6),
    extra=st.lists(_id_strategy(), max_size=40),
)
def test_round_trip(files: list[list[bytes]], extra: list[bytes]) -> None:
    with tempfile.TemporaryDirectory() as d:
        paths = [write_fake_idx(f"{d}/pack-{i:040x}.idx", ids) for i, ids in enumerate(files)]
        out = write_midx(d, paths)
        holders: dict[bytes, set[str]] = {}
        for p, ids in zip(paths, files, strict=True):
            for oid in set(ids):
                holders.setdefault(oid, set()).add(os.path.basename(p))
        total = sum(len(set(ids)) for ids in files)
        with MidxReader(out) as m:
            assert m.count == total
            assert m.idx_names == [os.path.basename(p) for p in paths]
            assert m.bits == midx_bits(total)
            raw = m.ids.tobytes()
            merged = [raw[i : i + 20] for i in range(0, len(raw), 20)]
            assert merged == sorted(oid for ids in files for oid in set(ids))
            for b in range(1 << m.bits):
                top = sum(
                    1
                    for oid in merged
                    if (int.from_bytes(oid[:4], "big") >> (32 - m.bits) if m.bits else 0) <= b
                )
                assert int(m.fanout[b]) == top
            queries = sorted(holders) + [q for q in extra if q not in holders]
            got = m.contains_many(np.array(queries, dtype="S20"))
            assert list(got) == [q in holders for q in queries]
            for q in queries:
                name = m.which(q)
                assert (name in holders[q]) if q in holders else name is None


# -- bad files --------------------------------------------------------------------


def _good_midx(d: Path) -> bytes:
    p = write_fake_idx(d / f"pack-{1:040x}.idx", random_ids(500, seed=3))
    return Path(write_midx(str(d), [p])).read_bytes()


@pytest.mark.parametrize(
    "mangle",
    [
        lambda b: b"XIDM" + b[4:],
        lambda b: b[:4] + struct.pack(">I", 3) + b[8:],
        lambda b: b[:8] + struct.pack(">I", 40) + b[12:],
        lambda b: b[: len(b) // 2],
        lambda b: b[:10],
    ],
    ids=["magic", "version", "bits", "truncated", "tiny"],
)
def test_corrupt_midx_rejected(tmp_path: Path, mangle: object) -> None:
    data = _good_midx(tmp_path)
    bad = tmp_path / "bad.midx"
    bad.write_bytes(mangle(data))  # type: ignore[operator]
    with pytest.raises(CorruptObject):
        MidxReader(bad)


def test_which_beyond_names_is_corrupt(tmp_path: Path) -> None:
    data = bytearray(_good_midx(tmp_path))
    m = MidxReader(next(tmp_path.glob("*.midx")))
    first = bytes(m.ids[0]).ljust(20, b"\0")
    off = m._which_off
    m.close()
    data[off : off + 4] = struct.pack(">I", 7)
    bad = tmp_path / "bad.midx"
    bad.write_bytes(bytes(data))
    with MidxReader(bad) as m2, pytest.raises(CorruptObject):
        m2.which(first)


def test_no_temp_files_left(tmp_path: Path) -> None:
    _good_midx(tmp_path)
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".")]
