"""`ketch mirror`: push, read in place, pull, verify; against a directory store and
a real S3 server (SeaweedFS, the `s3_server` fixture)."""

from __future__ import annotations

import hashlib
import io
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from ketch import reportlog
from ketch.errors import CorruptObject, KetchError
from ketch.git.idx import write_idx_v2
from ketch.localrepo import LocalRepository
from ketch.offsite.encrypt import EncryptedStore
from ketch.offsite.keyfile import load_key
from ketch.offsite.manifest import (
    FileEntry,
    Manifest,
    ManifestError,
    PackEntry,
    manifest_key,
    pack_key,
    read_manifest,
)
from ketch.offsite.pull import MARKER, pull
from ketch.offsite.push import push
from ketch.offsite.s3repo import StoreRepository
from ketch.offsite.store import Advance, DirStore, ObjectStore, Stat
from ketch.offsite.verify import verify
from ketch.progress import NullProgress
from ketch.repo import ReadOnlyRepository
from ketch.restore import restore
from ketch.vfs import VFS
from tests.conftest import SRC_DIR, RunBup, RunKetch
from tests.gitutil import git

ONE_MB = 1 << 20


# -- source repositories, built once per module ----------------------------------------


def _ketch(*args: str | os.PathLike[str]) -> None:
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR))
    subprocess.run([sys.executable, "-m", "ketch", *map(os.fspath, args)], check=True,
                   capture_output=True, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture(scope="module")
def small_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with three saves of a small tree (three packs)."""
    base = tmp_path_factory.mktemp("small")
    repo, data = base / "small", base / "data"
    (data / "sub").mkdir(parents=True)
    _ketch("init", "-d", repo)
    for i in range(3):
        (data / f"f{i}.txt").write_bytes(b"file %d\n" % i * 1000)
        (data / "sub" / f"r{i}").write_bytes(os.urandom(300_000))
        _ketch("save", "-d", repo, "-n", "host", data)
    return repo


@pytest.fixture(scope="module")
def big_src(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """~50 MB in 4 MB packs, with one 1 MB file to restore: (repository, data dir)."""
    base = tmp_path_factory.mktemp("big")
    repo, data = base / "big", base / "data"
    (data / "bulk").mkdir(parents=True)
    for i in range(6):
        (data / "bulk" / f"b{i}").write_bytes(os.urandom(8 * ONE_MB))
    (data / "docs").mkdir()
    (data / "docs" / "one").write_bytes(os.urandom(ONE_MB))
    (data / "docs" / "note.txt").write_bytes(b"hello\n")
    _ketch("init", "-d", repo)
    git(repo, "config", "pack.packSizeLimit", "4000000")
    _ketch("save", "-d", repo, "-n", "host", data)
    return repo, data


@pytest.fixture
def small_repo(small_src: Path, tmp_path: Path) -> Path:
    dst = tmp_path / "server" / "small"
    shutil.copytree(small_src, dst, symlinks=True)
    return dst


# -- the two kinds of store -------------------------------------------------------------


@dataclass
class Mirror:
    kind: str
    store: ObjectStore
    url: str | None = None  # s3://bucket/prefix, for the CLI
    env: dict[str, str] = field(default_factory=dict)
    server: Any = None  # the s3_server fixture's value
    bucket: str = ""

    def repo_url(self, name: str) -> str:
        assert self.url is not None
        return f"{self.url}/{name}"


def _s3_mirror(request: pytest.FixtureRequest) -> Mirror:
    try:
        server = request.getfixturevalue("s3_server")
    except pytest.FixtureLookupError:
        pytest.skip("no s3_server fixture (tests/offsite/conftest.py)")
    from ketch.offsite.s3 import S3Store

    bucket = server["make_bucket"]()
    env = {"KETCH_S3_ENDPOINT": server["endpoint"], "AWS_ACCESS_KEY_ID": server["access_key"],
           "AWS_SECRET_ACCESS_KEY": server["secret_key"], "AWS_DEFAULT_REGION": server["region"]}
    mp = request.getfixturevalue("monkeypatch")
    for k, v in env.items():
        mp.setenv(k, v)
    url = f"s3://{bucket}/mirror"
    return Mirror("s3", S3Store(url, endpoint_url=server["endpoint"]), url, env, server, bucket)


@pytest.fixture(params=["dir", "s3"])
def mirror(request: pytest.FixtureRequest, tmp_path: Path) -> Mirror:
    if request.param == "dir":
        return Mirror("dir", DirStore(str(tmp_path / "bucket")))
    return _s3_mirror(request)


@pytest.fixture
def s3_mirror(request: pytest.FixtureRequest) -> Mirror:
    return _s3_mirror(request)


@pytest.fixture(autouse=True)
def _cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # StoreRepository's idx and tree cache, per test.
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))


def _pack_files(repo: Path) -> set[str]:
    return {n for n in os.listdir(repo / "objects" / "pack") if n.endswith((".pack", ".idx"))}


def _local_refs(repo: Path) -> dict[str, str]:
    with LocalRepository(str(repo)) as r:
        return {n.decode(): o.hex() for n, o in r.iter_refs()}


class Stop(Exception):
    """Stands in for a crash mid-push."""


class _StopAfter(NullProgress):
    """Raises once `files` files are up and the next one has started."""

    def __init__(self, files: int) -> None:
        super().__init__()
        self.limit = files

    def advance(self, nbytes: int = 0, nfiles: int = 0) -> None:
        super().advance(nbytes, nfiles)
        if self.files >= self.limit and nbytes:
            raise Stop


class _Recording(ObjectStore):
    """A store that logs every write and delete, in order."""

    def __init__(self, inner: ObjectStore) -> None:
        self.inner = inner
        self.log: list[tuple[str, str]] = []

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        return self.inner.get(key, start, end)

    def flush(self) -> None:
        self.inner.flush()

    def put_file(self, key: str, path: str, *, sha256: str, storage_class: str | None = None,
                 advance: Advance | None = None) -> None:
        self.log.append(("put", key))
        self.inner.put_file(key, path, sha256=sha256, storage_class=storage_class,
                            advance=advance)

    def put(self, key: str, data: bytes) -> None:
        self.log.append(("put", key))
        self.inner.put(key, data)

    def stat(self, key: str) -> Stat | None:
        return self.inner.stat(key)

    def list(self, prefix: str) -> Iterator[tuple[str, int]]:
        return self.inner.list(prefix)

    def delete(self, key: str) -> None:
        self.log.append(("delete", key))
        self.inner.delete(key)


# -- push ---------------------------------------------------------------------------------


def test_push_uploads_only_what_is_new(mirror: Mirror, small_repo: Path, tmp_path: Path,
                                       run_ketch: RunKetch) -> None:
    files = _pack_files(small_repo)
    r = push([str(small_repo)], mirror.store).repos[0]
    assert r.error is None
    assert (r.uploaded_files, r.skipped_files, r.manifest_written) == (len(files), 0, True)
    m = read_manifest(mirror.store, "small")
    assert m is not None and m.generation == 1
    # The repository's files, and the locator that finds their objects.
    assert m.refs == _local_refs(small_repo) and m.locator is not None
    assert m.file_names() == files | {m.locator.name}
    assert m.head == "ref: refs/heads/master" and "[core]" in m.config

    again = push([str(small_repo)], mirror.store).repos[0]
    assert (again.uploaded_files, again.skipped_files, again.manifest_written) == (
        0, len(files), False)

    data = tmp_path / "more"
    data.mkdir()
    (data / "new").write_bytes(os.urandom(50_000))
    run_ketch("save", "-d", small_repo, "-n", "other", data, check=True)
    new_files = _pack_files(small_repo) - files
    third = push([str(small_repo)], mirror.store).repos[0]
    assert third.uploaded_files == len(new_files) == 2
    assert third.skipped_files == len(files) and third.generation == 2
    m = read_manifest(mirror.store, "small")
    assert m is not None and "refs/heads/other" in m.refs


def test_dry_run_uploads_nothing(tmp_path: Path, small_repo: Path) -> None:
    store = DirStore(str(tmp_path / "bucket"))
    before = _local_refs(small_repo)
    report = push([str(small_repo)], store, dry_run=True, record_as="s3://bucket/mirror")
    assert report.repos[0].uploaded_files == len(_pack_files(small_repo))
    assert "would upload" in report.text()
    assert list(store.list("")) == []
    assert _local_refs(small_repo) == before  # no record of a push that did not happen


def test_each_push_is_recorded_in_its_repository(tmp_path: Path, small_repo: Path) -> None:
    """Pushed, failed, or pushed with a record that could not be kept (a ref
    lock a crashed writer left behind): the push's own result stands."""
    store = DirStore(str(tmp_path / "bucket"))
    borrowing = small_repo.parent / "borrowing"
    shutil.copytree(small_repo, borrowing, symlinks=True)
    (borrowing / "objects" / "info" / "alternates").write_text(f"{small_repo}/objects\n")
    report = push([str(borrowing), str(small_repo)], store,
                  record_as="s3://user:secret@bucket/mirror/")
    assert report.exit_code == 2 and report.repos[1].warnings == []
    with LocalRepository(str(borrowing)) as r:
        [failed] = reportlog.history(r, "mirror")
    assert failed.data["ok"] is False and "alternates" in failed.data["error"]
    assert failed.data["store"] == "s3://bucket/mirror" and failed.data["uploaded_files"] == 0
    with LocalRepository(str(small_repo)) as r:
        [pushed] = reportlog.history(r, "mirror")
    assert pushed.data["ok"] is True and pushed.data["error"] is None
    assert pushed.data["uploaded_files"] == report.repos[1].uploaded_files > 0
    assert pushed.data["manifest_written"] is True and pushed.data["generation"] == 1

    lock = small_repo / "refs" / "ketch" / "mirror.lock"
    lock.write_text("")
    stuck = push([str(small_repo)], store, record_as="s3://bucket/mirror")
    [warning] = stuck.repos[0].warnings
    assert stuck.exit_code == 1 and stuck.repos[0].error is None
    assert warning.startswith("mirror report not stored: cannot lock ref refs/ketch/mirror")
    assert "  warning: mirror report not stored" in stuck.text()
    assert read_manifest(store, "small") is not None
    lock.unlink()
    with LocalRepository(str(small_repo)) as r:
        assert len(reportlog.history(r, "mirror")) == 1
    git(small_repo, "fsck", "--strict", "--no-dangling")


def test_run_as_root_the_record_stays_the_owners(tmp_path: Path, small_repo: Path) -> None:
    """A push runs as root on the backup server; a repository belongs to its
    machine's user, whose forced-command server must go on writing it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give a repository to another user")
    nobody = pwd.getpwnam("nobody")
    for p in [small_repo, *small_repo.rglob("*")]:
        os.lchown(p, nobody.pw_uid, nobody.pw_gid)
    report = push([str(small_repo)], DirStore(str(tmp_path / "bucket")),
                  record_as="s3://bucket/mirror")
    assert report.exit_code == 0, report.text()
    assert (small_repo / "refs" / "ketch" / "mirror").exists()
    assert {p.stat().st_uid for p in small_repo.rglob("*")} == {nobody.pw_uid}


def test_interrupted_push_resumes(mirror: Mirror, small_repo: Path) -> None:
    files = _pack_files(small_repo)
    with pytest.raises(Stop):
        push([str(small_repo)], mirror.store, progress=_StopAfter(files=2))
    assert read_manifest(mirror.store, "small") is None  # nothing published yet
    r = push([str(small_repo)], mirror.store).repos[0]
    assert r.error is None and r.manifest_written
    assert r.skipped_files >= 2 and r.uploaded_files == len(files) - r.skipped_files
    assert verify(mirror.store, ["small"]).ok


def test_killed_cli_push_resumes(s3_mirror: Mirror, big_src: tuple[Path, Path],
                                 tmp_path: Path) -> None:
    repo, _ = big_src
    files = _pack_files(repo)
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR), **s3_mirror.env)
    proc = subprocess.Popen([sys.executable, "-m", "ketch", "mirror", "push", str(repo),
                             str(s3_mirror.url)], env=env, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 60
    up: list[str] = []
    # The push runs in short steps and is stopped while we look, so however
    # slowly this process is scheduled it cannot finish between two looks:
    # ~50 MB in 26 files is far more than one step uploads.
    while proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.002)
        proc.send_signal(signal.SIGSTOP)
        up = [k for k, _ in s3_mirror.store.list("big/objects/pack/")]
        if len(up) >= 2:
            proc.send_signal(signal.SIGKILL)
            break
        proc.send_signal(signal.SIGCONT)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, f"the push ended on its own ({proc.returncode})"
    assert read_manifest(s3_mirror.store, "big") is None
    r = push([str(repo)], s3_mirror.store).repos[0]
    assert r.error is None and r.manifest_written
    assert r.skipped_files >= 2 and r.uploaded_files < len(files)
    assert verify(s3_mirror.store, ["big"]).ok


# -- reading in place -------------------------------------------------------------------------


def test_restore_one_file_from_the_mirror(mirror: Mirror, big_src: tuple[Path, Path],
                                          tmp_path: Path, run_ketch: RunKetch) -> None:
    repo, data = big_src
    push([str(repo)], mirror.store)
    path = os.fsencode(data) + b"/docs/one"
    # Read idx files piecemeal, as for packs of a big mirror (these are small).
    with StoreRepository(mirror.store, "big", url=mirror.url, whole_idx_bytes=0) as sr:
        assert isinstance(sr, StoreRepository)
        result = restore(VFS(sr), [b"/host/latest" + path], str(tmp_path / "out"))
        _, got = sr.traffic()
    assert result.files == 1
    assert (tmp_path / "out" / "one").read_bytes() == (data / "docs" / "one").read_bytes()
    total = sum(os.path.getsize(repo / "objects" / "pack" / f) for f in _pack_files(repo))
    assert total > 45 * ONE_MB
    print(f"{mirror.kind}: restoring 1 MiB from a {total / 1e6:.0f} MB mirror downloaded "
          f"{got / 1e6:.2f} MB")
    assert got < 3 * ONE_MB

    # The idx pieces and trees are cached: listing again costs no object traffic.
    with StoreRepository(mirror.store, "big", url=mirror.url, whole_idx_bytes=0) as sr:
        names = [i.name for i in VFS(sr).contents(
            VFS(sr).resolve(b"/host/latest" + os.fsencode(data) + b"/docs"))]
        assert sorted(names) == [b"note.txt", b"one"]
        assert sr.requests == 1  # the manifest

    if mirror.url is None:
        return
    loc = mirror.repo_url("big")
    ls = run_ketch("-r", loc, "ls", b"host/latest" + os.fsencode(data) + b"/docs", check=True)
    assert ls.stdout.split() == [b"note.txt", b"one"]
    cat = run_ketch("-r", loc, "cat-file", b"host/latest" + path, check=True)
    assert cat.stdout == (data / "docs" / "one").read_bytes()
    run_ketch("restore", "-r", loc, "-C", tmp_path / "cli", b"host/latest" + path, check=True)
    assert (tmp_path / "cli" / "one").read_bytes() == (data / "docs" / "one").read_bytes()
    save = run_ketch("save", "-r", loc, "-n", "x", data / "docs")
    assert save.returncode == 2
    assert b"read-only" in save.stderr and b"Traceback" not in save.stderr


def test_store_repository_errors(tmp_path: Path, small_repo: Path) -> None:
    store = DirStore(str(tmp_path / "bucket"))
    with pytest.raises(ManifestError, match="no repository 'small'"):
        StoreRepository(store, "small")
    push([str(small_repo)], store)
    with StoreRepository(store, "small") as sr:
        with pytest.raises(ReadOnlyRepository, match="read-only"):
            sr.writable()
        head = sr.read_ref(b"refs/heads/host")
        assert head is not None and sr.read_ref(b"HEAD") is None  # master is unborn
        assert sr.expand_hex(head.hex()[:10]) == head
        assert sr.read(head)[0] == 1
    store.put(manifest_key("small"), b"{not json")
    with pytest.raises(ManifestError, match="malformed"):
        StoreRepository(store, "small")


def test_idx_read_piecemeal(tmp_path: Path) -> None:
    """Lookups read windows of a remote idx: skewed ids (the window must widen),
    offsets past 4 GiB, absent ids, and a second reader served by the cache."""
    rng = random.Random(5)
    skewed = {bytes(3) + rng.randbytes(17) for _ in range(300)}
    ids = sorted(skewed | {rng.randbytes(20) for _ in range(6000)})
    entries = [(oid, 0, (1 << 32) + 7 * i if i % 97 == 0 else 12 + 7 * i)
               for i, oid in enumerate(ids)]
    buf = io.BytesIO()
    write_idx_v2(buf, entries, b"\x11" * 20)
    data = buf.getvalue()
    store = DirStore(str(tmp_path / "bucket"))
    stem = "pack-" + "ab" * 20
    store.put(pack_key("r", stem + ".idx"), data)
    pack = PackEntry(FileEntry(stem + ".pack", 1 << 33, "0" * 64),
                     FileEntry(stem + ".idx", len(data), hashlib.sha256(data).hexdigest()))
    store.put(manifest_key("r"), Manifest("r", generation=1, packs=[pack]).to_json())
    offsets = {oid: off for oid, _, off in entries}
    want = [ids[0], ids[-1], *rng.sample(sorted(skewed), 5), *rng.sample(ids, 5)]
    absent = [rng.randbytes(20) for _ in range(5)] + [bytes(3) + b"\xff" * 17]
    cache = str(tmp_path / "cache")
    with StoreRepository(store, "r", cache_root=cache, whole_idx_bytes=0) as sr:
        ix = sr._index(stem + ".idx")
        assert ix.locate(want + absent) == {o: offsets[o] for o in want}
        assert ix.fetched < len(data) // 4
        assert sr.expand_hex(ids[7].hex()[:12]) == ids[7]
    with StoreRepository(store, "r", cache_root=cache, whole_idx_bytes=0) as sr:
        before = sr.bytes_received
        assert sr._index(stem + ".idx").locate(want) == {o: offsets[o] for o in want}
        assert sr.bytes_received == before  # all from the cache
        many = sr._index(stem + ".idx").locate(ids)  # most of it: fetched whole, checked
        assert many == offsets


# -- gc, deltas, loose objects --------------------------------------------------------------------


def test_gc_deletes_packs_after_the_manifest(mirror: Mirror, small_repo: Path) -> None:
    push([str(small_repo)], mirror.store)
    first = read_manifest(mirror.store, "small")
    assert first is not None and first.locator is not None
    # Its packs, and the locator a mirror of one pack does without.
    old = _pack_files(small_repo) | {first.locator.name}
    # A gc on the server: one pack, with deltas (ketch itself writes none).
    git(small_repo, "repack", "-a", "-d", "-f", "-q", "--depth=20", "--window=50")
    new = _pack_files(small_repo)
    assert len(new) == 2 and not new & old
    rec = _Recording(mirror.store)
    r = push([str(small_repo)], rec).repos[0]
    assert (r.uploaded_files, r.deleted_files) == (2, len(old))
    manifest_at = rec.log.index(("put", manifest_key("small")))
    deletes = [i for i, (op, _) in enumerate(rec.log) if op == "delete"]
    puts = [i for i, (op, _) in enumerate(rec.log) if op == "put"]
    assert len(deletes) == len(old) and min(deletes) > manifest_at == max(puts)
    assert {k for k, _ in mirror.store.list("small/objects/pack/")} == {
        pack_key("small", n) for n in new}
    # Every object reads back through ranged GETs, deltas included.
    with LocalRepository(str(small_repo)) as local, \
            StoreRepository(mirror.store, "small", url=mirror.url, whole_idx_bytes=0) as sr:
        oids = [bytes(o).ljust(20, b"\0") for n in local.index.idx_names
                for o in local.index._idx[n].ids]
        assert len(oids) > 20
        sr.prefetch(oids)
        for oid in oids:
            assert sr.read(oid) == local.read(oid)
        # The manifest, idx pieces and merged pack ranges: fewer requests than
        # objects. (How many exactly depends on where repack puts each object.)
        assert sr.requests < len(oids), (sr.requests, len(oids))


def test_a_reader_during_a_push_after_gc_never_fails(mirror: Mirror, small_repo: Path) -> None:
    """A reader that took the manifest before a push deleted the packs it names
    (their objects rewritten into new packs by a gc) finds them in the new ones."""
    push([str(small_repo)], mirror.store)
    with LocalRepository(str(small_repo)) as local:
        oids = [bytes(o).ljust(20, b"\0") for n in local.index.idx_names
                for o in local.index._idx[n].ids]
    with StoreRepository(mirror.store, "small", url=mirror.url, whole_idx_bytes=0) as sr:
        head = sr.read_ref(b"refs/heads/host")
        assert sr.exists(oids[0])  # the reader has its manifest, and some idx pieces
        git(small_repo, "repack", "-a", "-d", "-f", "-q")
        r = push([str(small_repo)], mirror.store).repos[0]
        assert r.error is None and r.deleted_files > 0
        assert all(sr.has_many(oids))
        with LocalRepository(str(small_repo)) as local:
            for oid in oids:
                assert sr.read(oid) == local.read(oid)
        assert sr.read_ref(b"refs/heads/host") == head


def test_damaged_pack_entries_are_corrupt_objects(small_repo: Path, tmp_path: Path) -> None:
    """Bytes of a mirror's pack that do not decode (a flipped bit, an entry
    whose header declares terabytes) read as CorruptObject naming the pack and
    the entry, never as another error; the other objects still read."""
    git(small_repo, "repack", "-a", "-d", "-f", "-q", "--depth=20", "--window=50")
    store = DirStore(str(tmp_path / "bucket"))
    push([str(small_repo)], store)
    with LocalRepository(str(small_repo)) as local:
        [name] = local.index.idx_names
        ix = local.index._idx[name]
        entries = sorted((off, oid) for oid, _, off in ix.iter_entries())
        expected = {oid: local.read(oid) for _, oid in entries}
    key = pack_key("small", os.path.basename(name)[:-4] + ".pack")
    pack = bytearray(store.get(key))
    damaged = {}
    for i, (off, oid) in enumerate(entries[3::7]):
        if i % 2:
            pack[off + 12] ^= 0x10  # somewhere in its zlib data (or delta offset)
        else:
            pack[off] |= 0x80  # a header that runs on: a size far beyond any limit
            pack[off + 1 : off + 12] = b"\xff" * 11
        damaged[oid] = off
    store.put(key, bytes(pack))
    with StoreRepository(store, "small", url="dir://bucket", whole_idx_bytes=0) as sr:
        hurt = 0
        for oid, (t, data) in expected.items():
            try:
                got = sr.read(oid)
            except CorruptObject as e:
                assert str(e).startswith("dir://bucket/small: "), str(e)
                hurt += 1
                continue
            assert got == (t, data)
        assert hurt >= len(damaged)


def test_pull_rebuilds_repositories(mirror: Mirror, small_repo: Path, tmp_path: Path,
                                    run_ketch: RunKetch, bup: RunBup) -> None:
    # A loose object, as git would leave it, reachable from a tag.
    blob = git(small_repo, "hash-object", "-w", "--stdin", input=b"loose\n").strip().decode()
    git(small_repo, "tag", "loose", blob)
    r = push([str(small_repo)], mirror.store).repos[0]
    assert r.loose_objects == 1 and r.packs == 4
    again = push([str(small_repo)], mirror.store).repos[0]
    assert again.uploaded_files == 0  # the loose-object pack comes out the same

    dest = tmp_path / "restored"
    report = pull(mirror.store, None, str(dest))
    assert report.exit_code == 0 and [x.name for x in report.repos] == ["small"]
    pulled = dest / "small"
    assert not (pulled / MARKER).exists()
    git(pulled, "fsck", "--strict", "--no-dangling")
    assert git(pulled, "cat-file", "-p", blob) == b"loose\n"
    assert _local_refs(pulled) == _local_refs(small_repo)
    assert run_ketch("ls", "-d", pulled, "host", check=True).stdout.count(b"\n") == 4
    assert bup(pulled, "ls", "host/latest").returncode == 0
    refused = pull(mirror.store, ["small"], str(dest))  # never over a repository
    assert refused.exit_code == 2 and "already exists" in str(refused.repos[0].error)


# -- verify ---------------------------------------------------------------------------------------


def test_verify_detects_missing_and_corrupted(mirror: Mirror, small_repo: Path) -> None:
    push([str(small_repo)], mirror.store)
    clean = verify(mirror.store, None, read_data_percent=100)
    assert clean.ok and clean.exit_code == 0 and clean.repos[0].objects_checked > 0
    packs = sorted(n for n in _pack_files(small_repo) if n.endswith(".pack"))
    gone, bad = pack_key("small", packs[0]), pack_key("small", packs[1])
    mirror.store.delete(gone)
    data = bytearray(mirror.store.get(bad))
    data[len(data) // 2] ^= 0x40
    mirror.store.put(bad, bytes(data))
    mirror.store.put("small/objects/pack/stray.pack", b"x")

    quick = verify(mirror.store, ["small"])
    assert quick.repos[0].missing == [gone]
    assert quick.repos[0].extra == ["small/objects/pack/stray.pack"]
    deep = verify(mirror.store, ["small"], read_data_percent=100)
    assert not deep.ok and deep.exit_code == 2
    assert deep.repos[0].missing == [gone]
    assert [c.split(":")[0] for c in deep.repos[0].corrupted] == [bad]
    assert "missing: " + gone in deep.text()
    with pytest.raises(KetchError, match="percentage"):
        verify(mirror.store, None, read_data_percent=150)


# -- the command line against S3 ----------------------------------------------------------------------


def test_cli_push_verify_pull(s3_mirror: Mirror, small_repo: Path, tmp_path: Path,
                              run_ketch: RunKetch) -> None:
    url = str(s3_mirror.url)
    server = small_repo.parent
    shutil.copytree(small_repo, server / "second", symlinks=True)
    dry = run_ketch("mirror", "push", "--all", server, url, "--dry-run", "--json", check=True)
    assert json.loads(dry.stdout)["uploaded_files"] == 2 * len(_pack_files(small_repo))
    assert list(s3_mirror.store.list("")) == []
    out = run_ketch("mirror", "push", "--all", server, url, "--json",
                    "--storage-class", "STANDARD_IA", check=True)
    doc = json.loads(out.stdout)
    assert [r["name"] for r in doc["repositories"]] == ["second", "small"]
    assert doc["failed"] == 0 and doc["skipped_files"] == 0
    client = s3_mirror.server.client()
    for key, _ in s3_mirror.store.list("small/"):
        head = client.head_object(Bucket=s3_mirror.bucket, Key=f"mirror/{key}")
        assert head.get("StorageClass", "STANDARD") == (
            "STANDARD_IA" if key.endswith(".pack") else "STANDARD"), key
    # Each repository keeps a record of its push, which the dashboard reads.
    for name in ("second", "small"):
        with LocalRepository(str(server / name)) as local:
            [rec] = reportlog.history(local, "mirror")
        pushed = next(r for r in doc["repositories"] if r["name"] == name)
        assert rec.data["action"] == "push" and rec.data["ok"] is True
        assert rec.data["store"] == url and rec.data["name"] == name
        assert rec.data["error"] is None and abs(rec.data["time"] - time.time()) < 600
        assert [rec.data[k] for k in ("uploaded_files", "uploaded_bytes", "packs")] == [
            pushed[k] for k in ("uploaded_files", "uploaded_bytes", "packs")]
    # The record is new in the repository: the next push carries it to the mirror.
    partly = run_ketch("mirror", "push", small_repo, tmp_path / "nope", url)
    text = partly.stdout.decode()
    assert partly.returncode == 2 and "nope: FAILED: " in text
    assert "manifest generation 2" in text and "small: uploaded 2 files" in text
    assert not (tmp_path / "nope").exists()  # a path that is no repository gets no record
    with LocalRepository(str(small_repo)) as local:
        records = reportlog.history(local, "mirror")
    assert [r.data["generation"] for r in records] == [2, 1]
    with StoreRepository(s3_mirror.store, "small", url=s3_mirror.repo_url("small")) as sr:
        carried = reportlog.latest(sr, "mirror")
    assert carried is not None and carried.commit == records[1].commit
    git(small_repo, "fsck", "--strict", "--no-dangling")

    v = run_ketch("mirror", "verify", url, "--read-data=50", "--json", check=True)
    assert all(r["ok"] and r["packs_read"] >= 2 for r in json.loads(v.stdout)["repositories"])
    p = run_ketch("mirror", "pull", url, tmp_path / "pulled", "second", check=True)
    assert b"second: " in p.stdout
    git(tmp_path / "pulled" / "second", "fsck", "--strict", "--no-dangling")

    s3_mirror.store.delete(manifest_key("second"))
    bad = run_ketch("mirror", "verify", url, "second")
    assert bad.returncode == 2 and b"no repository 'second'" in bad.stdout
    assert b"Traceback" not in partly.stderr + bad.stderr


# -- encryption ------------------------------------------------------------------------------------------


def test_encrypted_mirror(mirror: Mirror, small_repo: Path, tmp_path: Path,
                          run_ketch: RunKetch) -> None:
    key_file = tmp_path / "mirror.key"
    run_ketch("mirror", "keygen", key_file, check=True)
    assert key_file.stat().st_mode & 0o077 == 0
    assert run_ketch("mirror", "keygen", key_file).returncode == 2  # never overwritten
    enc = EncryptedStore(mirror.store, load_key(str(key_file)))
    push([str(small_repo)], enc)
    keys = [k for k, _ in mirror.store.list("")]
    assert keys and not any("small" in k or "pack-" in k for k in keys)
    with pytest.raises(KetchError, match="is encrypted: give its key"):
        StoreRepository(mirror.store, "small")
    with StoreRepository(enc, "small", url=mirror.url) as sr:
        head = sr.read_ref(b"refs/heads/host")
        assert head is not None and sr.read(head)[0] == 1
    assert verify(enc, None, read_data_percent=100).ok
    if mirror.url is None:
        return
    loc = mirror.repo_url("small")
    denied = run_ketch("-r", loc, "ls", "host")
    assert denied.returncode == 2 and denied.stderr.count(b"\n") == 1
    assert b"is encrypted" in denied.stderr
    ok = run_ketch("-r", loc, "ls", "host", env={"KETCH_ENCRYPT_KEY": str(key_file)}, check=True)
    assert ok.stdout.count(b"\n") == 4
    again = run_ketch("mirror", "push", small_repo, mirror.url, "--encrypt-key", key_file,
                      check=True)
    assert b"small: uploaded 0 files" in again.stdout
    blind = run_ketch("mirror", "verify", mirror.url)
    assert blind.returncode == 2 and b"is encrypted: give its key" in blind.stderr


def test_push_without_the_key_into_an_encrypted_mirror_is_refused(
        mirror: Mirror, small_repo: Path, tmp_path: Path, run_ketch: RunKetch) -> None:
    # E.g. a rebuilt backup server whose push job has no key yet: the push must not
    # upload the repositories in the clear beside the encrypted mirror.
    key_file = tmp_path / "mirror.key"
    run_ketch("mirror", "keygen", key_file, check=True)
    push([str(small_repo)], EncryptedStore(mirror.store, load_key(str(key_file))))
    before = sorted(mirror.store.list(""))
    with pytest.raises(KetchError, match="is encrypted: give its key.*where its readers"):
        push([str(small_repo)], mirror.store)
    assert sorted(mirror.store.list("")) == before
    if mirror.url is None:
        return
    blind = run_ketch("mirror", "push", small_repo, mirror.url)
    assert blind.returncode == 2 and b"is encrypted: give its key" in blind.stderr
    assert blind.stderr.count(b"\n") == 1, blind.stderr
    assert sorted(mirror.store.list("")) == before


def test_push_with_a_key_into_a_plain_mirror_is_refused(
        mirror: Mirror, small_repo: Path, tmp_path: Path, run_ketch: RunKetch) -> None:
    # The reverse: encrypted objects beside a plain mirror, which its readers
    # (without a key) would never see, nor readers with the key the old saves.
    key_file = tmp_path / "mirror.key"
    run_ketch("mirror", "keygen", key_file, check=True)
    push([str(small_repo)], mirror.store)
    before = sorted(mirror.store.list(""))
    enc = EncryptedStore(mirror.store, load_key(str(key_file)))
    with pytest.raises(KetchError, match="is not encrypted: leave out the key"):
        push([str(small_repo)], enc)
    assert sorted(mirror.store.list("")) == before
    with pytest.raises(KetchError, match="is not encrypted: leave out the key"):
        StoreRepository(enc, "small")  # a read with the key says why, too
    if mirror.url is None:
        return
    keyed = run_ketch("mirror", "push", small_repo, mirror.url, "--encrypt-key", key_file)
    assert keyed.returncode == 2 and b"is not encrypted" in keyed.stderr, keyed.stderr
    assert keyed.stderr.count(b"\n") == 1, keyed.stderr
    assert sorted(mirror.store.list("")) == before
