"""The locator (ketch.offsite.locator): one file of a bucket repository that
finds any object of the packs it covers. Built from real packs; read through a
real S3 server (SeaweedFS); what one file's restore costs with it and without;
and a locator that is gone, damaged or stale never costs a restore its bytes."""

from __future__ import annotations

import bisect
import glob
import json
import os
import random
import struct
import subprocess
from pathlib import Path

import boto3  # type: ignore[import-untyped]
import pytest

from ketch.errors import CorruptObject
from ketch.git.idx import PackIndex
from ketch.offsite import locator
from ketch.offsite.bucket import BucketRepository
from ketch.offsite.manifest import FileEntry, manifest_key, pack_key, read_manifest
from ketch.offsite.retry import RetryingStore
from ketch.offsite.s3 import S3Store
from ketch.restore import restore
from ketch.vfs import VFS
from tests.conftest import RunKetch
from tests.offsite.conftest import S3Server


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _tree(root: Path, seed: int, files: int = 300) -> Path:
    """Directories three deep, small files: many trees, .bupm and blobs."""
    rng = random.Random(seed)
    for i in range(files):
        d = root / f"d{i % 7}" / f"e{i % 5}" / f"f{i % 3}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"file{i}.txt").write_bytes(rng.randbytes(rng.randrange(100, 6000)))
    return root


def _same(a: Path, b: Path) -> None:
    p = subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[:2000] + p.stderr[:2000]


def _local_packs(run_ketch: RunKetch, tmp: Path, saves: int) -> list[tuple[str, str, int]]:
    repo = tmp / "repo"
    run_ketch("init", "-d", repo, check=True)
    for k in range(saves):
        run_ketch("save", "-d", repo, "-n", "m", _tree(tmp / f"data{k}", k), check=True)
    idxs = sorted(glob.glob(str(repo / "objects" / "pack" / "*.idx")))
    assert len(idxs) >= saves
    return [(os.path.basename(i)[:-4] + ".pack", i, os.path.getsize(i[:-4] + ".pack"))
            for i in idxs]


def _remote(path: Path, cache: Path, requests: list[int] | None = None) -> locator.RemoteLocator:
    data = path.read_bytes()
    name, digest = locator.locator_name(str(path))

    def get_many(ranges: list[tuple[str, int, int]]) -> list[bytes]:
        if requests is not None:
            requests[0] += len(ranges)
        return [data[a:z] for _, a, z in ranges]

    return locator.RemoteLocator(FileEntry(name, len(data), digest), "k", get_many=get_many,
                                 cache_dir=str(cache), where="test", packs_hint=3)


def test_every_object_is_found_where_its_pack_has_it(run_ketch: RunKetch,
                                                     tmp_path: Path) -> None:
    packs = _local_packs(run_ketch, tmp_path, 3)
    out = tmp_path / "loc"
    n = locator.build(packs, str(out))
    loc = _remote(out, tmp_path / "cache")
    want: dict[bytes, tuple[str, int, int, list[int]]] = {}
    for pack_name, idx, size in packs:
        ix = PackIndex(idx)
        entries = [(ix.offset_at(i), bytes(ix.ids[i]).ljust(20, b"\0")) for i in range(ix.count)]
        ix.close()
        starts = sorted(off for off, _ in entries)
        for off, oid in entries:
            j = bisect.bisect_right(starts, off)
            end = starts[j] if j < len(starts) else size - 20
            want[oid] = (pack_name, off, end - off, starts)
    assert n == len(want)
    got = loc.locate(list(want))
    assert set(got) == set(want)
    for oid, (pack_name, off, length, first) in got.items():
        w_pack, w_off, w_len, starts = want[oid]
        assert (pack_name, off, length) == (w_pack, w_off, w_len)
        # `first` starts an entry of the same pack, at most BEHIND before it.
        assert first in starts and off - locator.BEHIND <= first <= off
    absent = [random.Random(5).randbytes(20) for _ in range(50)]
    assert loc.locate(absent) == {}


def test_a_few_lookups_fetch_a_few_windows(run_ketch: RunKetch, tmp_path: Path) -> None:
    packs = _local_packs(run_ketch, tmp_path, 3)
    out = tmp_path / "loc"
    locator.build(packs, str(out))
    # This one is small enough to be fetched whole: read it as a big one is.
    requests = [0]
    loc = _remote(out, tmp_path / "cache", requests)
    loc.whole_bytes = 0
    ix = PackIndex(packs[0][1])
    some = [bytes(ix.ids[i]).ljust(20, b"\0") for i in range(0, ix.count, max(1, ix.count // 3))]
    ix.close()
    assert len(loc.locate(some[:3])) == 3
    assert requests[0] <= 1 + 3, requests  # the head, then a window each
    assert not loc.held_whole


def _corrupt(path: Path, at: int, data: bytes) -> Path:
    raw = bytearray(path.read_bytes())
    raw[at : at + len(data)] = data
    bad = path.with_name(path.name + f".bad{at}")
    bad.write_bytes(bytes(raw))
    return bad


def test_hostile_locators_are_refused_or_ignored(run_ketch: RunKetch, tmp_path: Path) -> None:
    packs = _local_packs(run_ketch, tmp_path, 2)
    out = tmp_path / "loc"
    locator.build(packs, str(out))
    good = _remote(out, tmp_path / "c0")
    ix = PackIndex(packs[0][1])
    oids = [bytes(ix.ids[i]).ljust(20, b"\0") for i in range(ix.count)]
    ix.close()
    npacks, n = struct.unpack(">II", out.read_bytes()[8:16])
    rec_at = 16 + 1024 + 20 * npacks
    cases = {
        "magic": _corrupt(out, 0, b"XLOC"),
        "count": _corrupt(out, 12, struct.pack(">I", n + 1)),
        "fanout": _corrupt(out, 16, struct.pack(">I", n + 5)),
    }
    for why, bad in cases.items():
        with pytest.raises(CorruptObject):
            _remote(bad, tmp_path / f"c-{why}").locate(oids[:1])
    # A record naming a pack beyond the list, or a first entry further back
    # than BEHIND: that record is not found; the others still are.
    first = next(iter(good.locate(oids[:1])))
    raw = out.read_bytes()
    k = next(i for i in range(n) if raw[rec_at + 40 * i : rec_at + 40 * i + 20] == first)
    bad_pack = _remote(_corrupt(out, rec_at + 40 * k + 20, struct.pack(">I", 99)),
                       tmp_path / "c-pack")
    got = bad_pack.locate(oids)
    assert first not in got and len(got) == len(oids) - 1
    bad_back = _remote(_corrupt(out, rec_at + 40 * k + 36, struct.pack(">I", 1 << 30)),
                       tmp_path / "c-back")
    assert first not in bad_back.locate(oids[:5])


# -- through a real S3 server -----------------------------------------------------------


def _saves(run_ketch: RunKetch, url: str, tmp: Path, n: int, files: int = 300) -> list[Path]:
    trees = [_tree(tmp / f"data{k}", k, files) for k in range(n)]
    run_ketch("init", "-r", url, check=True)
    for t in trees:
        run_ketch("save", "-r", url, "-n", "m", "--strip", t, check=True)
    return trees


def _store(s3_env: S3Server, url: str) -> tuple[S3Store, str]:
    base, name = url.rsplit("/", 1)
    return S3Store(base, endpoint_url=s3_env["endpoint"]), name


def _restore_one(s3_env: S3Server, url: str, path: str, out: Path, cache: Path) -> int:
    """Restore `path` with an empty cache, in this process: the GETs it made."""
    store, name = _store(s3_env, url)
    repo = BucketRepository(RetryingStore(store), name, url=url.rsplit("/", 1)[0],
                            cache_root=str(cache))
    try:
        restore(VFS(repo), [path.encode()], str(out).encode())
        return repo.requests
    finally:
        repo.close()


def test_a_bucket_repository_finds_objects_through_its_locator(
        run_ketch: RunKetch, s3_env: S3Server, s3_url: str, tmp_path: Path) -> None:
    url = f"{s3_url}/fleet/web1"
    # A pack a save: without the locator, a lookup asks each pack's idx in turn.
    trees = _saves(run_ketch, url, tmp_path, 8, files=100)
    store, name = _store(s3_env, url)
    m = read_manifest(store, name)
    assert m is not None and m.locator is not None
    live = [p for p in m.packs if not p.retired]
    total = sum(locator.objects_in(p.idx.size) for p in live)
    # Rewritten only when what it leaves out grows past a share of what it covers.
    assert m.locator_objects <= total <= (1 + locator.STALE_SHARE) * m.locator_objects

    src = trees[-1] / "d3" / "e2" / "f1"
    name_in_tree = sorted(p.name for p in src.iterdir())[0]
    deep = f"m/latest/d3/e2/f1/{name_in_tree}"
    with_loc = _restore_one(s3_env, url, deep, tmp_path / "o1", tmp_path / "k1")
    assert (tmp_path / "o1" / name_in_tree).read_bytes() == (src / name_in_tree).read_bytes()

    # The same restore without the locator: the manifest stripped of it.
    raw, tag = store.get_tagged(manifest_key(name))
    doc = json.loads(raw)
    del doc["locator"]
    store.put_if(manifest_key(name), json.dumps(doc).encode(), tag)
    without = _restore_one(s3_env, url, deep, tmp_path / "o2", tmp_path / "k2")
    assert (tmp_path / "o2" / name_in_tree).read_bytes() == (src / name_in_tree).read_bytes()
    assert with_loc < without, (with_loc, without)


def test_a_damaged_or_missing_locator_costs_a_restore_nothing(
        run_ketch: RunKetch, s3_env: S3Server, s3_url: str, tmp_path: Path) -> None:
    url = f"{s3_url}/fleet/web1"
    trees = _saves(run_ketch, url, tmp_path, 3)
    store, name = _store(s3_env, url)
    m = read_manifest(store, name)
    assert m is not None and m.locator is not None
    key = pack_key(name, m.locator.name)
    bucket = s3_url[len("s3://"):]
    s3 = boto3.client("s3", endpoint_url=s3_env["endpoint"])
    full = f"fleet/{key}"
    raw = s3.get_object(Bucket=bucket, Key=full)["Body"].read()
    # Every record after the head garbled, size kept: wrong offsets everywhere.
    rng = random.Random(3)
    garbled = raw[:1100] + rng.randbytes(len(raw) - 1100)
    s3.put_object(Bucket=bucket, Key=full, Body=garbled)
    out = tmp_path / "out1"
    run_ketch("restore", "-r", url, "-C", out, "m/latest/", check=True,
              env={"XDG_CACHE_HOME": str(tmp_path / "c1")})
    _same(trees[2], out)
    s3.delete_object(Bucket=bucket, Key=full)
    out = tmp_path / "out2"
    run_ketch("restore", "-r", url, "-C", out, "m/latest/", check=True,
              env={"XDG_CACHE_HOME": str(tmp_path / "c2")})
    _same(trees[2], out)
    # What is wrong is for fsck to say.
    fsck = run_ketch("fsck", "-r", url)
    assert fsck.returncode == 2 and m.locator.name in fsck.stdout.decode() + fsck.stderr.decode()


def test_a_small_save_keeps_the_locator_and_gc_replaces_it(
        run_ketch: RunKetch, s3_env: S3Server, s3_url: str, tmp_path: Path) -> None:
    url = f"{s3_url}/fleet/web1"
    trees = _saves(run_ketch, url, tmp_path, 3)
    store, name = _store(s3_env, url)
    before = read_manifest(store, name)
    assert before is not None and before.locator is not None
    (trees[2] / "d0" / "small.txt").write_text("one more\n")
    run_ketch("save", "-r", url, "-n", "m", "--strip", trees[2], check=True)
    after = read_manifest(store, name)
    assert after is not None and after.locator == before.locator
    assert len(after.packs) == len(before.packs) + 1

    run_ketch("prune", "-r", url, "m", "--keep-last", "1", check=True)
    pruned = read_manifest(store, name)
    assert pruned is not None and pruned.locator == before.locator
    # The locators it replaced went as it replaced them (this key may delete).
    assert [k for k, _ in store.list(f"{name}/objects/pack/") if k.endswith(".kloc")] == [
        f"{name}/objects/pack/{before.locator.name}"]
    run_ketch("gc", "-r", url, "--wait", "0", check=True)
    gced = read_manifest(store, name)
    assert gced is not None and gced.locator is not None
    assert gced.locator != before.locator
    names = {k.rsplit("/", 1)[-1] for k, _ in store.list(f"{name}/objects/pack/")}
    assert gced.locator.name in names and before.locator.name not in names
    out = tmp_path / "out"
    run_ketch("restore", "-r", url, "-C", out, "m/latest/", check=True,
              env={"XDG_CACHE_HOME": str(tmp_path / "c3")})
    _same(trees[2], out)
    assert run_ketch("fsck", "-r", url).returncode == 0


def test_a_mirror_push_names_a_locator_and_keeps_it(run_ketch: RunKetch, s3_env: S3Server,
                                                   s3_url: str, tmp_path: Path) -> None:
    repo = tmp_path / "web1"
    run_ketch("init", "-d", repo, check=True)
    trees = [_tree(tmp_path / f"data{k}", k) for k in range(3)]
    for t in trees:
        run_ketch("save", "-d", repo, "-n", "m", "--strip", t, check=True)
    base = f"{s3_url}/mirror"
    run_ketch("mirror", "push", repo, base, check=True)
    store = S3Store(base, endpoint_url=s3_env["endpoint"])
    m = read_manifest(store, "web1")
    assert m is not None and m.locator is not None and len(m.packs) >= 2
    assert m.locator_objects == sum(locator.objects_in(p.idx.size) for p in m.packs)
    # Nothing new but the first push's record (refs/ketch/mirror, a small pack):
    # the locator stays.
    run_ketch("mirror", "push", repo, base, check=True)
    again = read_manifest(store, "web1")
    assert again is not None and again.locator == m.locator
    assert again.generation == m.generation + 1 and len(again.packs) == len(m.packs) + 1
    assert "refs/ketch/mirror" in again.refs and "refs/ketch/mirror" not in m.refs
    out = tmp_path / "out"
    run_ketch("restore", "-r", f"{base}/web1", "-C", out, "m/latest/", check=True)
    _same(trees[-1], out)
    assert run_ketch("mirror", "verify", base).returncode == 0
