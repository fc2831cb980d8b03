"""gc of a repository in a bucket (`ketch gc -r s3://…`) on a real S3 server:
space given back after a prune, packs retired before they are deleted, and
saves running during gc losing nothing."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketch.errors import KetchError
from ketch.git.objects import BLOB
from ketch.offsite.bucket import BucketRepository
from ketch.offsite.manifest import pack_prefix, read_manifest
from ketch.offsite.retry import RetryingStore
from ketch.offsite.s3 import S3Store
from tests.conftest import SRC_DIR, RunKetch
from tests.lifecycle.gcsetup import DAY, T0, corpus, repo_bytes
from tests.offsite.conftest import S3Server


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "--git-dir", os.fspath(repo), *args], capture_output=True,
                          text=True)


def _save(run_ketch: RunKetch, url: str, tmp: Path, day: int, branch: str = "m") -> None:
    corpus(tmp / "data", day)
    run_ketch("save", "-q", "-r", url, "-n", branch, "--strip", "--date", T0 + day * DAY,
              tmp / "data", check=True)


def _restores(run_ketch: RunKetch, url: str, tmp: Path, branch: str, days: list[int]) -> None:
    """The branch holds exactly the saves of `days`, each byte-identical."""
    saves = run_ketch("ls", "-r", url, branch, check=True).stdout.decode().split()
    assert len(saves) == len(days) + 1, saves  # and "latest"
    for name, day in zip(saves[:-1], sorted(days), strict=True):
        out = tmp / f"out-{branch}-{day}"
        run_ketch("restore", "-r", url, "-C", out, f"{branch}/{name}/", check=True)
        corpus(tmp / "want", day)
        d = subprocess.run(["diff", "-r", tmp / "want", out], capture_output=True, text=True)
        assert d.returncode == 0, (branch, day, d.stdout[:1000])


def _clean(run_ketch: RunKetch, base: str, name: str, tmp: Path) -> None:
    """A pull of it passes git fsck --strict, and the bucket holds no pack file
    the manifest does not name."""
    pulled = tmp / f"pulled-{time.monotonic_ns()}"
    run_ketch("mirror", "pull", base, pulled, check=True)
    fsck = _git(pulled / name, "fsck", "--strict")
    assert fsck.returncode == 0, fsck.stderr
    store = RetryingStore(S3Store(base))
    m = read_manifest(store, name)
    assert m is not None
    named = {f"{name}/objects/pack/{n}" for n in m.file_names()}  # the locator too
    stored = {k for k, _ in store.list(pack_prefix(name))}
    assert stored == named, (stored - named, named - stored)


def _gc(run_ketch: RunKetch, url: str, *args: str) -> dict[str, object]:
    r = run_ketch("gc", "-r", url, "--json", *args)
    assert r.returncode == 0, r.stderr
    report: dict[str, object] = json.loads(r.stdout)
    return report


def test_prune_then_gc_gives_space_back(run_ketch: RunKetch, s3_env: S3Server,
                                        tmp_path: Path) -> None:
    base = f"s3://{s3_env.new_bucket()}/fleet"
    url = f"{base}/m1"
    run_ketch("init", "-r", url, check=True)
    for day in range(6):
        _save(run_ketch, url, tmp_path, day)
    run_ketch("prune", "-r", url, "m", "--keep-last", "2", check=True)
    report = _gc(run_ketch, url, "--threshold", "0", "--wait", "0")
    assert report["packs_deleted"] and report["bytes_after"] < report["bytes_before"], report
    _restores(run_ketch, url, tmp_path, "m", [4, 5])
    _clean(run_ketch, base, "m1", tmp_path)

    # About what a repository of the two kept saves alone takes.
    fresh = tmp_path / "fresh"
    run_ketch("init", "-d", fresh, check=True)
    for day in (4, 5):
        corpus(tmp_path / "data", day)
        run_ketch("save", "-q", "-d", fresh, "-n", "m", "--strip", "--date", T0 + day * DAY,
                  tmp_path / "data", check=True)
    assert int(report["bytes_after"]) <= 1.3 * repo_bytes(fresh), report  # type: ignore[call-overload]


def test_retired_packs_are_read_until_a_later_gc_deletes_them(
        run_ketch: RunKetch, s3_env: S3Server, tmp_path: Path) -> None:
    base = f"s3://{s3_env.new_bucket()}/fleet"
    url = f"{base}/m1"
    run_ketch("init", "-r", url, check=True)
    for day in range(4):
        _save(run_ketch, url, tmp_path, day)
    run_ketch("prune", "-r", url, "m", "--keep-last", "2", check=True)
    first = _gc(run_ketch, url, "--threshold", "0")  # the default --wait: retire only
    assert first["packs_deleted"] == 0 and first["packs_rewritten"], first
    m = read_manifest(RetryingStore(S3Store(base)), "m1")
    assert m is not None and any(p.retired for p in m.packs)
    _restores(run_ketch, url, tmp_path, "m", [2, 3])
    # A save now deduplicates against the copies, never the retired packs.
    _save(run_ketch, url, tmp_path, 4)
    second = _gc(run_ketch, url, "--threshold", "0", "--wait", "0")
    assert second["packs_deleted"], second
    m = read_manifest(RetryingStore(S3Store(base)), "m1")
    assert m is not None and not any(p.retired for p in m.packs)
    _restores(run_ketch, url, tmp_path, "m", [2, 3, 4])
    _clean(run_ketch, base, "m1", tmp_path)


def test_a_second_gc_at_once_is_refused(run_ketch: RunKetch, s3_env: S3Server,
                                        tmp_path: Path) -> None:
    base = f"s3://{s3_env.new_bucket()}/fleet"
    url = f"{base}/m1"
    run_ketch("init", "-r", url, check=True)
    _save(run_ketch, url, tmp_path, 0)
    RetryingStore(S3Store(base)).put_if(
        "m1/gc-lock", json.dumps({"host": "h", "pid": 1, "time": time.time()}).encode(), None)
    r = run_ketch("gc", "-r", url)
    assert r.returncode == 2 and b"another gc" in r.stderr and b"Traceback" not in r.stderr
    _restores(run_ketch, url, tmp_path, "m", [0])


def _start(*args: object) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR))
    return subprocess.Popen([sys.executable, "-m", "ketch", *map(str, args)], env=env,
                            text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_saves_during_gc_lose_nothing(run_ketch: RunKetch, s3_env: S3Server,
                                      tmp_path: Path) -> None:
    """Rounds of: prune, then gc --wait 0 and two saves at once, one saving
    exactly the content the prune made garbage. A save either lands, or fails
    with one line saying to run it again (it counted on a pack gc deleted); the
    saves that landed restore byte-identical, and the repository checks clean."""
    rng = random.Random(5)
    base = f"s3://{s3_env.new_bucket()}/fleet"
    url = f"{base}/m1"
    run_ketch("init", "-r", url, check=True)
    for day in range(3):
        _save(run_ketch, url, tmp_path, day)
    landed: dict[str, list[int]] = {"m": [0, 1, 2]}
    for r in range(6):
        gone = landed["m"][-3] if len(landed["m"]) >= 3 else landed["m"][0]
        run_ketch("prune", "-r", url, "m", "--keep-last", "2", check=True)
        landed["m"] = landed["m"][-2:]
        new_day = 3 + r
        corpus(tmp_path / f"new{r}", new_day)
        corpus(tmp_path / f"old{r}", gone)
        saves = [("m", new_day, tmp_path / f"new{r}"), (f"re{r}", gone, tmp_path / f"old{r}")]
        gc = _start("gc", "-q", "-r", url, "--threshold", "0", "--wait", "0")
        time.sleep(rng.uniform(0.0, 1.0))
        procs = [(b, d, _start("save", "-q", "-r", url, "-n", b, "--strip", "--date",
                               T0 + d * DAY, path)) for b, d, path in saves]
        for b, d, p in procs:
            _, err = p.communicate(timeout=300)
            if p.returncode == 0:
                landed.setdefault(b, []).append(d)
            else:
                assert p.returncode == 2 and "run the save again" in err, err
                assert len(err.strip().splitlines()) == 1, err
        _, err = gc.communicate(timeout=300)
        assert gc.returncode in (0, 1), err
    for branch, days in landed.items():
        _restores(run_ketch, url, tmp_path, branch, days)
    assert run_ketch("fsck", "-r", url).returncode == 0
    _clean(run_ketch, base, "m1", tmp_path)


def test_a_save_that_gc_outran_leaves_no_pack_behind(run_ketch: RunKetch, s3_env: S3Server,
                                                     tmp_path: Path) -> None:
    """A save told to run again (gc deleted a pack it deduplicated against)
    takes back the packs it had uploaded: nothing names them, and fsck would
    report them as debris of an interrupted write."""
    base = f"s3://{s3_env.new_bucket()}/fleet"
    url = f"{base}/m1"
    run_ketch("init", "-r", url, check=True)
    for day in range(3):
        _save(run_ketch, url, tmp_path, day)
    repo = BucketRepository(RetryingStore(S3Store(base)), "m1", url=base)
    try:
        w = repo.writer()
        new = w.write(BLOB, os.urandom(50_000))
        w.close()
        run_ketch("prune", "-r", url, "m", "--keep-last", "1", check=True)
        _gc(run_ketch, url, "--threshold", "0", "--wait", "0")
        with pytest.raises(KetchError, match="run the save again"):
            repo.update_ref(b"refs/heads/late", new, None)
    finally:
        repo.close()
    fsck = run_ketch("fsck", "-r", url)
    assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    _clean(run_ketch, base, "m1", tmp_path)
