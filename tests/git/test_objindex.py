"""ObjectIndex over real bup repositories: every object found at the offset its
idx gives, absent ids rejected, new packs picked up by refresh(), stale midx and
bloom files ignored; and the 2-million-id scaling check."""

from __future__ import annotations

import fnmatch
import glob
import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from ketch.git.bloom import BloomReader, write_bloom
from ketch.git.idx import PackIndex, write_idx_v2
from ketch.git.midx import MidxReader, write_midx
from ketch.git.objindex import ObjectIndex
from tests.git.test_midx import (
    copy_repo,
    idx_ids,
    make_bup_repo,
    random_ids,
    run_bup,
    write_fake_idx,
)

SRC = Path(__file__).resolve().parents[2] / "src"


@pytest.fixture(scope="module")
def bup_repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = tmp_path_factory.mktemp("objindex") / "bup"
    make_bup_repo(repo, seeds=[21, 22, 23], size=2_000_000, max_pack_objects=60)
    return repo


@pytest.fixture
def repo(bup_repo: Path, tmp_path: Path) -> Path:
    copy_repo(bup_repo, tmp_path / "repo")
    return tmp_path / "repo"


def pd_of(repo: Path) -> Path:
    return repo / "objects" / "pack"


def git_object_ids(repo: Path) -> list[bytes]:
    out = subprocess.run(
        [
            "git",
            "--git-dir",
            str(repo),
            "cat-file",
            "--batch-all-objects",
            "--batch-check=%(objectname)",
        ],
        check=True,
        capture_output=True,
    ).stdout
    return [bytes.fromhex(h.decode()) for h in out.split()]


def holders(pack_dir: Path) -> dict[bytes, dict[str, int]]:
    out: dict[bytes, dict[str, int]] = {}
    for p in glob.glob(f"{pack_dir}/*.idx"):
        ix = PackIndex(p)
        for oid, _, off in ix.iter_entries():
            out.setdefault(oid, {})[ix.name] = off
        ix.close()
    return out


def test_finds_every_object_of_a_bup_repo(bup_repo: Path) -> None:
    pd = pd_of(bup_repo)
    every = git_object_ids(bup_repo)
    where = holders(pd)
    assert set(every) == set(where)
    absent = random_ids(10_000, seed=5)
    with ObjectIndex(pd) as oi:
        assert oi.using_bloom and oi.midx_names, "bup should have made both"
        assert len(oi) == len(every)
        assert oi.contains_many(np.array(every, dtype="S20")).all()
        assert not oi.contains_many(np.array(absent, dtype="S20")).any()
        for oid in every:
            found = oi.find(oid)
            assert found is not None and where[oid].get(found[0]) == found[1]
        assert oi.find(absent[0]) is None
        assert every[0] in oi and absent[0] not in oi
        assert oi.contains_many(np.zeros(0, dtype="S20")).shape == (0,)


def test_each_layout_gives_the_same_answers(repo: Path) -> None:
    """No midx/bloom, bloom only, midx only: same answers as with both."""
    pd = pd_of(repo)
    every = np.array(git_object_ids(repo), dtype="S20")
    q = np.concatenate([every, np.array(random_ids(5000, seed=8), dtype="S20")])
    rng = np.random.default_rng(0)
    rng.shuffle(q)
    with ObjectIndex(pd) as oi:
        want = oi.contains_many(q)
    assert want.sum() == len(every)
    for keep in ("bup.bloom", "*.midx", None):
        for p in glob.glob(f"{pd}/*.midx") + glob.glob(f"{pd}/bup.bloom"):
            if keep is None or not fnmatch.fnmatch(os.path.basename(p), keep):
                os.unlink(p)
        with ObjectIndex(pd) as oi:
            assert (oi.contains_many(q) == want).all()


def test_refresh_picks_up_new_packs(repo: Path) -> None:
    pd = pd_of(repo)
    with ObjectIndex(pd) as oi:
        assert oi.refresh() is False
        old = set(oi.idx_names)
        run_bup(
            repo,
            "split",
            "-n",
            "more",
            "--max-pack-objects=60",
            input=random.Random(99).randbytes(600_000),
        )
        new = [
            oid
            for p in glob.glob(f"{pd}/*.idx")
            if os.path.basename(p) not in old
            for oid in idx_ids(p)
        ]
        assert new
        assert not oi.contains_many(np.array(new, dtype="S20")).any()
        assert oi.refresh() is True
        assert oi.contains_many(np.array(new, dtype="S20")).all()
        assert oi.refresh() is False
        # bup updated its bloom and midx after the split; we trust them again.
        assert oi.using_bloom


def test_stale_midx_and_bloom_are_ignored(repo: Path) -> None:
    pd = pd_of(repo)
    (midx,) = sorted(glob.glob(f"{pd}/*.midx"), key=os.path.getsize)[-1:]
    with MidxReader(midx) as m:
        victim = m.idx_names[0]
    gone = idx_ids(str(pd / victim))
    with ObjectIndex(pd) as oi:
        assert os.path.basename(midx) in oi.midx_names
        os.unlink(pd / victim)
        os.unlink(pd / victim.replace(".idx", ".pack"))
        assert oi.refresh() is True
        assert os.path.basename(midx) not in oi.midx_names
        assert not oi.using_bloom  # it names the vanished idx too
        rest = [oid for p in glob.glob(f"{pd}/*.idx") for oid in idx_ids(p)]
        assert oi.contains_many(np.array(rest, dtype="S20")).all()
        assert not oi.contains_many(np.array(gone, dtype="S20")).any()
        assert oi.find(gone[0]) is None
    # The stale files are left for the maintenance commands, not deleted by a reader.
    assert os.path.exists(midx)


def test_idx_unknown_to_bloom_is_still_searched(repo: Path) -> None:
    pd = pd_of(repo)
    ids = random_ids(50, seed=77)
    with ObjectIndex(pd) as oi:
        assert oi.using_bloom
        write_fake_idx(pd / f"pack-{1:040x}.idx", ids)
        oi.refresh()
        assert oi.using_bloom  # still valid for the idx files it names
        with BloomReader(pd / "bup.bloom") as b:
            assert not b.maybe_contains_many(np.array(ids, dtype="S20")).all()
        assert oi.contains_many(np.array(ids, dtype="S20")).all()
        assert oi.find(ids[0]) == (f"pack-{1:040x}.idx", 12 + 30 * sorted(ids).index(ids[0]))


def test_add_idx(repo: Path) -> None:
    pd = pd_of(repo)
    ids = random_ids(30, seed=78)
    with ObjectIndex(pd) as oi:
        p = write_fake_idx(pd / f"pack-{2:040x}.idx", ids)
        oi.add_idx(p)
        assert oi.contains_many(np.array(ids, dtype="S20")).all()
        oi.add_idx(p)  # idempotent
        assert oi.find(ids[3]) is not None
        assert oi.refresh() is True  # the listing is re-read once
        assert oi.contains_many(np.array(ids, dtype="S20")).all()
        assert oi.refresh() is False


def test_inconsistent_midx_ignored(repo: Path) -> None:
    """A midx whose count disagrees with the idx files it names is not trusted."""
    pd = pd_of(repo)
    for p in glob.glob(f"{pd}/*.midx"):
        os.unlink(p)
    paths = sorted(glob.glob(f"{pd}/*.idx"))[:4]
    out = write_midx(str(pd), paths)
    every = [oid for p in paths for oid in idx_ids(p)]
    # Swap one named idx for a different one under the same name.
    os.unlink(paths[0])
    write_fake_idx(paths[0], random_ids(3, seed=1))
    with ObjectIndex(pd) as oi:
        assert os.path.basename(out) not in oi.midx_names
        assert not oi.using_bloom
        rest = [oid for p in paths[1:] for oid in idx_ids(p)]
        assert oi.contains_many(np.array(rest, dtype="S20")).all()
        assert not oi.contains_many(np.array(every[: len(idx_ids(paths[0]))], dtype="S20")).all()


def test_missing_pack_dir_is_empty(tmp_path: Path) -> None:
    with ObjectIndex(tmp_path / "nowhere") as oi:
        assert not oi.contains_many(np.array(random_ids(3, seed=1), dtype="S20")).any()
        assert oi.find(bytes(20)) is None and len(oi) == 0
        assert oi.refresh() is False


# -- scaling --------------------------------------------------------------------

_LOOKUP_SCRIPT = r"""
import glob, json, sys, time
import numpy as np
from ketch.git.objindex import ObjectIndex

def status():
    out = {}
    for line in open("/proc/self/status"):
        key, val = line.split(":", 1)
        if key in ("VmHWM", "VmRSS", "RssAnon", "RssFile"):
            out[key] = int(val.split()[0]) // 1024
    return out

pack_dir, qfile = sys.argv[1], sys.argv[2]
q = np.fromfile(qfile, dtype="S20")
want = np.fromfile(qfile + ".want", dtype=bool)
before = status()
oi = ObjectIndex(pack_dir)
rates = {}
for batch in (1000, 100_000):
    got = np.concatenate([oi.contains_many(q[i:i + batch]) for i in range(0, len(q), batch)])
    assert (got == want).all()
    t = time.perf_counter()
    for i in range(0, len(q), batch):
        oi.contains_many(q[i:i + batch])
    rates[batch] = len(q) / (time.perf_counter() - t)
after = status()
print(json.dumps({"rates": rates, "before": before, "after": after,
                  "sources": len(oi._sources), "bloom": oi.using_bloom}))
"""


def test_scaling_two_million_ids(tmp_path: Path) -> None:
    pd = tmp_path / "pack"
    pd.mkdir()
    rng = np.random.default_rng(2024)
    files, per = 20, 100_000
    present = []
    t0 = time.perf_counter()
    for f in range(files):
        raw = rng.bytes(20 * per)
        ids = [raw[i : i + 20] for i in range(0, len(raw), 20)]
        present += ids[:2500]
        with open(pd / f"pack-{f:040x}.idx", "wb") as fh:
            write_idx_v2(fh, [(oid, 0, 12 + i) for i, oid in enumerate(ids)], bytes(20))
    t_idx = time.perf_counter() - t0
    paths = sorted(glob.glob(f"{pd}/*.idx"))
    t0 = time.perf_counter()
    midx = write_midx(str(pd), paths)
    t_midx = time.perf_counter() - t0
    t0 = time.perf_counter()
    write_bloom(pd, paths)
    t_bloom = time.perf_counter() - t0
    with MidxReader(midx) as m:
        assert m.count == files * per

    absent = np.frombuffer(rng.bytes(20 * 50_000), dtype="S20")
    q = np.concatenate([np.array(present, dtype="S20"), absent])
    want = np.concatenate([np.ones(len(present), bool), np.zeros(len(absent), bool)])
    order = rng.permutation(len(q))
    q[order].tofile(tmp_path / "q")
    want[order].tofile(tmp_path / "q.want")
    env = dict(os.environ, PYTHONPATH=str(SRC))
    proc = subprocess.run(
        [sys.executable, "-c", _LOOKUP_SCRIPT, str(pd), str(tmp_path / "q")],
        capture_output=True,
        env=env,
        check=False,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode()
    r = json.loads(proc.stdout)
    anon_growth = r["after"]["RssAnon"] - r["before"]["RssAnon"]
    print(
        f"\nscaling: {files * per} ids; idx {t_idx:.1f}s midx {t_midx:.2f}s bloom {t_bloom:.2f}s;"
        f" lookups {r['rates']['1000'] / 1e6:.2f} M ids/s (batch 1000),"
        f" {r['rates']['100000'] / 1e6:.2f} M ids/s (batch 100k);"
        f" RSS {r['before']['VmRSS']}->{r['after']['VmRSS']} MB (peak {r['after']['VmHWM']}),"
        f" anon +{anon_growth} MB, file-backed {r['after']['RssFile']} MB"
    )
    assert r["sources"] == 1 and r["bloom"]
    assert anon_growth < 100
    # Lookup rates are printed, not asserted: timings belong to the benchmark.
