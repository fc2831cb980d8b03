"""A repository straight in a bucket (`-r s3://BUCKET/PREFIX/NAME`), on a real S3
server (SeaweedFS): init, save, ls, restore, fsck and pull as a user runs them;
what it refuses; and many writers at once, some into one branch."""

from __future__ import annotations

import hashlib
import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.git import objects as gobj
from ketch.offsite.bucketinit import NoCompareAndSwap, probe_conditional_writes
from ketch.offsite.manifest import manifest_key, read_manifest
from ketch.offsite.retry import RetryingStore
from ketch.offsite.s3 import S3Store
from ketch.offsite.store import ObjectStore
from tests.conftest import SRC_DIR, RunKetch
from tests.offsite.conftest import S3Server
from tests.test_savefork import _atimes_ahead


@pytest.fixture(autouse=True)
def _own_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _tree(root: Path, seed: int, big: int = 0) -> Path:
    rng = random.Random(seed)
    (root / "etc").mkdir(parents=True, exist_ok=True)
    for i in range(20):
        (root / "etc" / f"f{i}.conf").write_bytes(rng.randbytes(rng.randrange(10, 20_000)))
    (root / "notes.txt").write_text(f"tree {seed}\n")
    if big:
        (root / "disk.img").write_bytes(rng.randbytes(big))
    return root


def _git(repo: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["git", "--git-dir", os.fspath(repo), *args], capture_output=True,
                          text=True)


def _same(a: Path, b: Path) -> None:
    p = subprocess.run(["diff", "-r", "--no-dereference", a, b], capture_output=True, text=True)
    assert p.returncode == 0, p.stdout[:2000] + p.stderr[:2000]


def test_init_save_ls_restore_pull(run_ketch: RunKetch, s3_url: str, tmp_path: Path) -> None:
    url = f"{s3_url}/fleet/web1"
    data = _tree(tmp_path / "data", 1, big=12 << 20)
    init = run_ketch("init", "-r", url)
    assert init.returncode == 0 and b"Initialized ketch repository at" in init.stderr
    first = run_ketch("save", "-r", url, "-n", "web1", "--strip", "--json", data, check=True)
    # As git says of a second init: the repository and its saves stay.
    again = run_ketch("init", "-r", url)
    assert again.returncode == 0
    assert b"Reinitialized existing ketch repository at" in again.stderr, again.stderr
    stats = json.loads(first.stdout)
    (data / "notes.txt").write_text("changed\n")
    second = json.loads(run_ketch("save", "-r", url, "-n", "web1", "--strip", "--json", data,
                                  check=True).stdout)
    # The second save finds everything but the changed file already in the bucket.
    assert second["bytes_new"] < stats["bytes_new"] / 100, (second, stats)

    saves = run_ketch("ls", "-r", url, "web1", check=True).stdout.decode().split()
    assert len(saves) == 3 and saves[-1] == "latest", saves
    out = tmp_path / "out"
    run_ketch("restore", "-r", url, "-C", out, "web1/latest/", check=True)
    _same(data, out)
    assert run_ketch("fsck", "-r", url).returncode == 0

    pulled = tmp_path / "pulled"
    run_ketch("mirror", "pull", s3_url + "/fleet", pulled, check=True)
    fsck = _git(pulled / "web1", "fsck", "--strict")
    assert fsck.returncode == 0, fsck.stderr
    count = _git(pulled / "web1", "rev-list", "--count", "refs/heads/web1")
    assert count.stdout.strip() == "2"


def test_refusals(run_ketch: RunKetch, s3_url: str, tmp_path: Path) -> None:
    data = _tree(tmp_path / "data", 2)
    # No repository there yet: one line, no traceback.
    r = run_ketch("save", "-r", f"{s3_url}/nothing", "-n", "x", data)
    err = r.stderr.decode()
    assert r.returncode == 2 and "Traceback" not in err and len(err.splitlines()) == 1, err
    # A mirror takes no saves, and a push does not overwrite a primary repository.
    local = tmp_path / "mirrored"
    run_ketch("init", "-d", local, check=True)
    run_ketch("save", "-d", local, "-n", "x", data, check=True)
    run_ketch("mirror", "push", local, s3_url, check=True)
    r = run_ketch("save", "-r", f"{s3_url}/mirrored", "-n", "x", data)
    assert r.returncode == 2 and "read-only" in r.stderr.decode() and b"Traceback" not in r.stderr
    r = run_ketch("init", "-r", f"{s3_url}/mirrored")
    assert r.returncode == 2 and "mirror" in r.stderr.decode() and b"Traceback" not in r.stderr
    run_ketch("init", "-r", f"{s3_url}/primary", check=True)
    run_ketch("save", "-r", f"{s3_url}/primary", "-n", "x", data, check=True)
    primary = tmp_path / "primary"
    run_ketch("init", "-d", primary, check=True)
    r = run_ketch("mirror", "push", primary, s3_url)
    assert r.returncode == 2 and b"saved into directly" in r.stdout + r.stderr, r.stdout
    assert run_ketch("ls", "-r", f"{s3_url}/primary", "x", check=True).stdout.decode().split()[-1] == "latest"


class _IgnoresConditions(ObjectStore):
    """An S3 server that ignores If-Match/If-None-Match (older gateways do):
    the real store, whose conditional writes are plain puts."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner

    def put_if(self, key: str, data: bytes, tag: str | None) -> str:
        self.inner.put(key, data)
        return self.inner.get_tagged(key)[1]

    def delete(self, key: str) -> None:
        self.inner.delete(key)

    def location(self) -> str:
        return self.inner.location()


def test_init_refuses_a_store_without_compare_and_swap(s3_url: str) -> None:
    real = RetryingStore(S3Store(s3_url))
    probe_conditional_writes(real, "ok")  # SeaweedFS enforces both
    with pytest.raises(NoCompareAndSwap, match="ignores conditional writes"):
        probe_conditional_writes(_IgnoresConditions(real), "m")


# One machine: its saves one after another, in one process (the CLI's main,
# as `ketch save` runs it): 160 interpreter starts on two cores were most of
# this test's five minutes.
_WRITER = """
import sys
from ketch.cli.main import main
url, branch, base, rounds = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
for r in range(rounds):
    try:
        main(["save", "-q", "-r", url, "-n", branch, "--strip", f"{base}-{r}"])
    except SystemExit as e:  # main ends as the command would: by exiting
        if e.code:
            sys.exit(f"round {r}: exit {e.code}")
"""


def _start_writer(url: str, branch: str, base: Path, rounds: int,
                  cache: Path) -> subprocess.Popen[str]:
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR), XDG_CACHE_HOME=str(cache))
    return subprocess.Popen([sys.executable, "-c", _WRITER, url, branch, str(base), str(rounds)],
                            env=env, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def test_eight_writers_twenty_rounds(run_ketch: RunKetch, s3_env: S3Server,
                                     tmp_path: Path) -> None:
    """8 machines save at once, 20 times each: 4 into one branch of one
    repository, 2 into their own branches of it, 2 into another repository.
    Every save is there afterwards, and both repositories check clean."""
    bucket = s3_env.new_bucket()
    shared, other = f"s3://{bucket}/fleet/shared", f"s3://{bucket}/fleet/other"
    run_ketch("init", "-r", shared, check=True)
    run_ketch("init", "-r", other, check=True)
    writers = [(shared, "common")] * 4 + [(shared, "w4"), (shared, "w5"), (other, "w6"),
                                           (other, "w7")]
    rounds = 20
    for i in range(len(writers)):
        for r in range(rounds):
            _tree(tmp_path / f"d{i}-{r}", 1000 * r + i)
    # Each machine has its own cache, as separate machines do.
    procs = [_start_writer(url, branch, tmp_path / f"d{i}", rounds, tmp_path / f"cache{i}")
             for i, (url, branch) in enumerate(writers)]
    for i, p in enumerate(procs):
        _, err = p.communicate(timeout=900)
        assert p.returncode == 0, f"writer {i}: {err}"

    store = RetryingStore(S3Store(f"s3://{bucket}/fleet"))
    for name in ("shared", "other"):
        m = read_manifest(store, name)
        assert m is not None and m.primary, manifest_key(name)
    pulled = tmp_path / "pulled"
    run_ketch("mirror", "pull", f"s3://{bucket}/fleet", pulled, check=True)
    want = {("shared", "common"): 4 * rounds, ("shared", "w4"): rounds,
            ("shared", "w5"): rounds, ("other", "w6"): rounds, ("other", "w7"): rounds}
    for (repo, branch), n in want.items():
        count = _git(pulled / repo, "rev-list", "--count", f"refs/heads/{branch}")
        assert int(count.stdout) == n, (repo, branch, count.stdout)
    # Every save's own data: each round's notes.txt of each writer is in some commit.
    notes = set()
    for repo, branch in want:
        for c in _git(pulled / repo, "rev-list", f"refs/heads/{branch}"
                     ).stdout.split():
            notes.add(_git(pulled / repo, "show", f"{c}:notes.txt").stdout.strip())
    assert notes == {f"tree {1000 * r + i}" for r in range(rounds) for i in range(8)}
    for repo in ("shared", "other"):
        fsck = _git(pulled / repo, "fsck", "--strict")
        assert fsck.returncode == 0, fsck.stderr
        assert run_ketch("fsck", "-r", f"s3://{bucket}/fleet/{repo}").returncode == 0


def test_encrypted_bucket_repository(run_ketch: RunKetch, s3_env: S3Server,
                                     tmp_path: Path) -> None:
    bucket = s3_env.new_bucket()
    url = f"s3://{bucket}/fleet/db1"
    key = tmp_path / "key"
    run_ketch("mirror", "keygen", key, check=True)
    data = _tree(tmp_path / "data", 3, big=3 << 20)
    run_ketch("init", "--encrypt-key", key, "-r", url, check=True)
    run_ketch("save", "--encrypt-key", key, "-r", url, "-n", "db1", "--strip", data, check=True)
    run_ketch("save", "--encrypt-key", key, "-r", url, "-n", "db1", "--strip", data, check=True)
    out = tmp_path / "out"
    run_ketch("restore", "--encrypt-key", key, "-r", url, "-C", out, "db1/latest/", check=True)
    _same(data, out)
    # The bucket shows hashed names only, and without the key there is nothing to read.
    keys = [o["Key"] for o in s3_env.client().list_objects_v2(Bucket=bucket)["Contents"]]
    assert not [k for k in keys if "manifest" in k or "pack-" in k], keys
    r = run_ketch("ls", "-r", url, "db1")
    assert r.returncode == 2 and b"Traceback" not in r.stderr


def test_nightly_run_into_a_bucket(run_ketch: RunKetch, s3_env: S3Server,
                                   tmp_path: Path) -> None:
    """The config names the bucket and its endpoint; cron's environment has
    credentials (here: AWS_* variables) but no endpoint."""
    url = f"s3://{s3_env.new_bucket()}/fleet/app1"
    run_ketch("init", "-r", url, check=True)
    data = _tree(tmp_path / "data", 4)
    cfg = tmp_path / "ketch.toml"
    cfg.write_text(f'repository = "{url}"\ns3_endpoint = "{s3_env["endpoint"]}"\n'
                   f'log_file = "{tmp_path}/ketch.log"\nlock_file = "{tmp_path}/ketch.lock"\n'
                   f'[[set]]\nname = "app"\npaths = ["{data}"]\n')
    env = {"KETCH_CONFIG": str(cfg), "KETCH_S3_ENDPOINT": ""}
    r = run_ketch("run", "-q", env=env)  # as the schedule runs it
    assert r.returncode == 0 and r.stdout == b"" and r.stderr == b"", r.stderr
    listed = run_ketch("ls", "-r", url, "app", check=True).stdout.decode().split()
    assert listed[-1] == "latest" and len(listed) == 2, listed
    # The run's report is in the bucket too, and fsck there (whose walk starts
    # at every ref) finds it whole, then keeps its own beside it.
    from ketch import reportlog
    from ketch.remote.location import open_location

    for _ in range(2):
        fsck = run_ketch("fsck", "-r", url, "--json")
        assert fsck.returncode == 0, fsck.stdout + fsck.stderr
    with open_location(url, endpoint_url=s3_env["endpoint"]) as repo:
        stored = reportlog.latest(repo, "run")
        assert stored is not None and stored.data["exit_code"] == 0
        [item] = stored.data["items"]
        assert item["name"] == "app" and item["commit"] == (
            repo.read_ref(b"refs/heads/app") or b"").hex()
        checks = reportlog.history(repo, "fsck")
    assert [c.data["ok"] for c in checks] == [True, True]
    assert checks[1].data["refs"] == 3  # refs/heads/app, ketch-config and refs/ketch/run
    assert checks[0].data["refs"] == 4  # and the first check's refs/ketch/fsck


def test_a_pack_is_created_once(s3_url: str, tmp_path: Path) -> None:
    """Packs go up with If-None-Match: the same bytes again are fine (a retried
    upload), other bytes under the name are refused and change nothing."""
    from ketch.offsite.store import StoreError

    store = RetryingStore(S3Store(s3_url))
    a, b = tmp_path / "a", tmp_path / "b"
    a.write_bytes(b"pack bytes")
    b.write_bytes(b"other bytes")
    digest = {p: hashlib.sha256(p.read_bytes()).hexdigest() for p in (a, b)}
    store.put_file_once("r/objects/pack/p.pack", str(a), sha256=digest[a])
    store.put_file_once("r/objects/pack/p.pack", str(a), sha256=digest[a])
    with pytest.raises(StoreError, match="other content"):
        store.put_file_once("r/objects/pack/p.pack", str(b), sha256=digest[b])
    assert store.get("r/objects/pack/p.pack") == b"pack bytes"


def test_a_forked_child_uploads_the_big_files(run_ketch: RunKetch, s3_url: str,
                                              tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    """A save's big files stored by a forked child (ketch.savefork), with its own
    S3 client and packs: the same tree as threads alone, every pack named by the
    manifest, the save restores."""
    from ketch import savefork
    from ketch.remote.location import open_location
    from ketch.save import SaveOptions, save

    data = _tree(tmp_path / "data", 5, big=6 << 20)
    (data / "log.txt").write_bytes(b"".join(b"line %d\n" % i for i in range(400_000)))
    _atimes_ahead(data)
    monkeypatch.setattr(savefork, "_FORK_AT", 0)  # a child from the first big file
    trees, packs = {}, {}
    for how in ("fork", "threads"):
        if how == "threads":
            monkeypatch.setenv("KETCH_SAVE_FORK", "0")
        url = f"{s3_url}/{how}"
        with open_location(url, create=True) as repo:
            result = save(repo.writable(), SaveOptions(name="t", paths=[str(data)],
                                                       date=1_700_000_000))
            assert result.warnings == []
            # The source's own tree (the directories above it change as tests run).
            oid = result.tree
            assert oid is not None
            for part in str(data).strip("/").split("/"):
                entries = gobj.decode_tree(repo.read_typed(oid, gobj.TREE))
                [oid] = [e.oid for e in entries if e.name == part.encode()]
            trees[how] = oid
        m = read_manifest(RetryingStore(S3Store(s3_url)), how)
        assert m is not None
        packs[how] = len(m.packs)
        out = tmp_path / f"out-{how}"
        run_ketch("restore", "-r", url, "-C", out, f"t/latest{data}/", check=True)
        _same(data, out)
    assert trees["fork"] == trees["threads"]
    assert packs["fork"] >= 2 and packs["threads"] == 1, packs


def test_fsck_walks_from_the_refs(run_ketch: RunKetch, s3_url: str, tmp_path: Path) -> None:
    """fsck -r s3:// checks every object the refs reach: a pack lost from the
    bucket (and from its manifest) is a failure, named, not an "ok"."""
    from ketch.offsite.manifest import Manifest

    url = f"{s3_url}/fleet/lost"
    data = _tree(tmp_path / "data", 6, big=1 << 20)
    run_ketch("init", "-r", url, check=True)
    run_ketch("save", "-q", "-r", url, "-n", "a", data, check=True)
    ok = json.loads(run_ketch("fsck", "-r", url, "--json", check=True).stdout)
    assert ok["objects_reachable"] > 20 and ok["refs"] == 1 and ok["problems"] == [], ok
    (data / "more").write_bytes(random.Random(9).randbytes(300_000))
    run_ketch("save", "-q", "-r", url, "-n", "a", data, check=True)

    store = RetryingStore(S3Store(f"{s3_url}/fleet"))
    raw, tag = store.get_tagged("lost/manifest.json")
    m = Manifest.from_json(raw, "m")
    newest = max(m.packs, key=lambda p: p.mtime)  # the second save's
    m.packs.remove(newest)
    store.put_if("lost/manifest.json", m.to_json(), tag)
    for f in newest.files():
        store.delete(f"lost/objects/pack/{f.name}")
    r = run_ketch("fsck", "-r", url)
    assert r.returncode == 2, r.stdout + r.stderr
    assert b"missing" in r.stdout + r.stderr and b"Traceback" not in r.stderr
