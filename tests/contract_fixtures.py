"""Backends and operations for the Repository contract suite (tests/test_repo_contract.py).

A backend is one entry in ``BACKENDS``: how to open a repository that holds the
known content (``Known``), and whether it takes writes. A fourth backend gets
every contract test by adding its entry here.

Each Repository operation the suite uses goes through one small function below
(``op_*``), so that a rename in the interface is a one-line change here, not an
edit of every test.
"""

from __future__ import annotations

import shlex
import shutil
import subprocess
import sys
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path

import pytest

from ketch.git import objects as gobj
from ketch.localrepo import LocalRepository
from ketch.repo import ObjectWriter, Repository
from ketch.snapshot import advance_branch
from tests.conftest import SRC_DIR, _subprocess_env
from tests.remote.test_remote import Machine

# -- the operations, one function each: reading (every backend) ----------------------


def op_read(repo: Repository, oid: bytes) -> tuple[int, bytes]:
    return repo.read(oid)


def op_read_typed(repo: Repository, oid: bytes, want: int) -> bytes:
    return repo.read_typed(oid, want)


def op_has_many(repo: Repository, oids: Sequence[bytes]) -> list[bool]:
    return [bool(x) for x in repo.has_many(oids)]


def op_exists(repo: Repository, oid: bytes) -> bool:
    return repo.exists(oid)


def op_expand_hex(repo: Repository, hexid: str) -> bytes | None:
    return repo.expand_hex(hexid)


def op_resolve_ref(repo: Repository, spec: bytes) -> bytes:
    return repo.resolve_ref(spec)


def op_read_ref(repo: Repository, name: bytes) -> bytes | None:
    return repo.read_ref(name)


def op_iter_refs(repo: Repository, prefix: bytes | None = None) -> list[tuple[bytes, bytes]]:
    return list(repo.iter_refs() if prefix is None else repo.iter_refs(prefix))


def op_prefetch(repo: Repository, oids: Sequence[bytes]) -> None:
    repo.prefetch(oids)


def op_read_many(repo: Repository, oids: Sequence[bytes]) -> list[tuple[bytes, int, bytes]]:
    return [(oid, t, bytes(data)) for oid, t, data in repo.read_many(oids)]


def op_close(repo: Repository) -> None:
    repo.close()


# -- writing (writable backends; a read-only one refuses these) -----------------------


def op_update_ref(repo: Repository, name: bytes, new: bytes, old: bytes | None) -> None:
    repo.writable().update_ref(name, new, old, b"contract test")


def op_advance_branch(repo: Repository, name: bytes, commit: bytes, old: bytes | None,
                      rebuild: Callable[[bytes | None], bytes]) -> bytes:
    return advance_branch(repo.writable(), name, commit, old, rebuild, message=b"contract test")


def op_writer(repo: Repository) -> ObjectWriter:
    return repo.writable().writer()


def op_write(w: ObjectWriter, type_num: int, data: bytes) -> bytes:
    return w.write(type_num, data)


def op_write_many(w: ObjectWriter, type_num: int, datas: Sequence[bytes]) -> list[bytes]:
    return w.write_many(type_num, datas)


def op_writer_exists(w: ObjectWriter, oid: bytes) -> bool:
    return w.exists(oid)


def op_close_writer(w: ObjectWriter) -> list[str]:
    return w.close()


def op_abort_writer(w: ObjectWriter) -> None:
    w.abort()


# -- the content every backend's repository holds ---------------------------------------

AUTHOR = b"Contract Test <contract@example.invalid>"
BRANCH = b"refs/heads/contract"
TAG = b"refs/tags/v1"


def commit_bytes(tree: bytes, parents: Sequence[bytes], message: bytes) -> bytes:
    return gobj.encode_commit(tree, parents, AUTHOR, 1_700_000_000, b"+0000", message)


class Known:
    """What `prepare` writes, with the ids git gives it: the same on every backend."""

    blob_data = b"contract blob\n"
    many_data = (b"one\n", b"two\n", b"three\n")
    # Big enough to take several reads to inflate, and not compressible to nothing.
    big_data = bytes((i * 2654435761 >> 13) & 0xFF for i in range(300_000))

    @cached_property
    def blob(self) -> bytes:
        return gobj.object_id(gobj.BLOB, self.blob_data)

    @cached_property
    def many(self) -> list[bytes]:
        return [gobj.object_id(gobj.BLOB, d) for d in self.many_data]

    @cached_property
    def big(self) -> bytes:
        return gobj.object_id(gobj.BLOB, self.big_data)

    @cached_property
    def tree_data(self) -> bytes:
        entries = [gobj.TreeEntry(gobj.MODE_FILE, b"blob", self.blob),
                   gobj.TreeEntry(gobj.MODE_FILE, b"big", self.big)]
        entries += [gobj.TreeEntry(gobj.MODE_FILE, b"m%d" % i, o) for i, o in enumerate(self.many)]
        return gobj.encode_tree(entries)

    @cached_property
    def tree(self) -> bytes:
        return gobj.object_id(gobj.TREE, self.tree_data)

    @cached_property
    def commit_data(self) -> bytes:
        return commit_bytes(self.tree, [], b"contract\n")

    @cached_property
    def commit(self) -> bytes:
        return gobj.object_id(gobj.COMMIT, self.commit_data)

    @cached_property
    def missing(self) -> bytes:
        """A well-formed id that no backend holds."""
        return gobj.object_id(gobj.BLOB, b"never written anywhere\n")

    def objects(self) -> dict[bytes, tuple[int, bytes]]:
        out = {self.blob: (gobj.BLOB, self.blob_data), self.big: (gobj.BLOB, self.big_data),
               self.tree: (gobj.TREE, self.tree_data), self.commit: (gobj.COMMIT, self.commit_data)}
        out.update({o: (gobj.BLOB, d) for o, d in zip(self.many, self.many_data, strict=True)})
        return out


KNOWN = Known()


def prepare(repo: Repository) -> None:
    """Write KNOWN through the repository's own writer and refs."""
    w = op_writer(repo)
    try:
        op_write(w, gobj.BLOB, KNOWN.blob_data)
        op_write_many(w, gobj.BLOB, list(KNOWN.many_data))
        op_write(w, gobj.BLOB, KNOWN.big_data)
        op_write(w, gobj.TREE, KNOWN.tree_data)
        op_write(w, gobj.COMMIT, KNOWN.commit_data)
    except BaseException:
        op_abort_writer(w)
        raise
    op_close_writer(w)
    op_update_ref(repo, BRANCH, KNOWN.commit, None)
    op_update_ref(repo, TAG, KNOWN.tree, None)


# -- backends ----------------------------------------------------------------------------------


@dataclass
class Backend:
    """A repository under test holding KNOWN; `open()` gives another handle on it,
    and `cli` (with `env`) names it to the command line (`-d PATH`, `-r URL`)."""

    name: str
    open: Callable[[], Repository]
    cli: list[str]
    env: dict[str, str] = field(default_factory=dict)
    repo: Repository = field(init=False)

    def __post_init__(self) -> None:
        self.repo = self.open()


Factory = Callable[[pytest.FixtureRequest, Path], Backend]


def _ketch(*args: str | Path, env: dict[str, str] | None = None) -> None:
    proc = subprocess.run([sys.executable, "-m", "ketch", *map(str, args)],
                          capture_output=True, env=_subprocess_env(env),
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")


@pytest.fixture(scope="session")
def contract_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh `ketch init` repository."""
    path = tmp_path_factory.mktemp("contract") / "template"
    _ketch("init", "-d", path)
    return path


def _copy(src: Path, dest: Path) -> Path:
    dest.parent.mkdir(parents=True, exist_ok=True)
    shutil.copytree(src, dest, symlinks=True)
    return dest


# Writing KNOWN takes a writer session and two ref updates (over ssh, a round trip
# each), so each backend writes it once a session, through its own writer and
# refs, into a repository that every test then gets a copy of.


@pytest.fixture(scope="session")
def contract_local_prepared(contract_template: Path,
                            tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = _copy(contract_template, tmp_path_factory.mktemp("local") / "contract")
    with LocalRepository(str(path)) as repo:
        prepare(repo)
    return path


def _local(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    path = _copy(request.getfixturevalue("contract_local_prepared"), tmp_path / "repo")
    return Backend("local", lambda: LocalRepository(str(path)), ["-d", str(path)])


@pytest.fixture(scope="session")
def contract_machine(request: pytest.FixtureRequest) -> Machine:
    """A client key for the session's sshd, whose server runs this checkout's ketch."""
    sshd = request.getfixturevalue("sshd")
    server = shlex.join(["env", f"PYTHONPATH={SRC_DIR}", sys.executable, "-m", "ketch", "server"])
    return Machine.new(sshd, "contract", remote_command=server)


def _remote_repository(machine: Machine, path: Path, cache: Path) -> Repository:
    from ketch.remote.client import RemoteRepository
    from ketch.remote.spec import parse_remote

    return RemoteRepository(parse_remote(machine.url(path)), cache_root=str(cache))


@pytest.fixture(scope="session")
def contract_ssh_prepared(request: pytest.FixtureRequest, contract_template: Path,
                          tmp_path_factory: pytest.TempPathFactory) -> Path:
    machine: Machine = request.getfixturevalue("contract_machine")
    base = tmp_path_factory.mktemp("ssh")
    path = _copy(contract_template, base / "server" / "contract")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in machine.env.items():
            mp.setenv(name, value)
        with _remote_repository(machine, path, base / "cache") as repo:
            prepare(repo)
    return path


def _ssh(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    machine: Machine = request.getfixturevalue("contract_machine")
    mp: pytest.MonkeyPatch = request.getfixturevalue("monkeypatch")
    for name, value in machine.env.items():
        mp.setenv(name, value)
    path = _copy(request.getfixturevalue("contract_ssh_prepared"), tmp_path / "server" / "repo")
    return Backend("ssh", lambda: _remote_repository(machine, path, tmp_path / "cache"),
                   ["-r", machine.url(path)], dict(machine.env))


@dataclass(frozen=True)
class PushedMirror:
    url: str  # s3://bucket/prefix
    name: str  # the repository's name in the mirror
    env: dict[str, str]


@pytest.fixture(scope="session")
def contract_mirror(request: pytest.FixtureRequest,
                    tmp_path_factory: pytest.TempPathFactory) -> PushedMirror:
    """KNOWN, prepared in a local repository and pushed with `ketch mirror push`."""
    server = request.getfixturevalue("s3_server")
    # A copy: the push keeps its record in the repository it pushed
    # (refs/ketch/mirror), and the local backend's tests copy the prepared one.
    path = _copy(request.getfixturevalue("contract_local_prepared"),
                 tmp_path_factory.mktemp("pushed") / "contract")
    env = {"KETCH_S3_ENDPOINT": server["endpoint"], "AWS_ACCESS_KEY_ID": server["access_key"],
           "AWS_SECRET_ACCESS_KEY": server["secret_key"], "AWS_DEFAULT_REGION": server["region"],
           "AWS_EC2_METADATA_DISABLED": "true"}
    url = f"s3://{server.new_bucket()}/mirror"
    _ketch("mirror", "push", path, url, env=env)
    return PushedMirror(url, path.name, env)


def _s3(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    from ketch.offsite.s3 import S3Store
    from ketch.offsite.s3repo import StoreRepository

    mirror: PushedMirror = request.getfixturevalue("contract_mirror")
    request.getfixturevalue("s3_env")  # the server's credentials, the machine's AWS set aside
    cache = str(tmp_path / "cache")
    return Backend("s3", lambda: StoreRepository(S3Store(mirror.url), mirror.name,
                                                 url=mirror.url, cache_root=cache),
                   ["-r", f"{mirror.url}/{mirror.name}"], dict(mirror.env))


@pytest.fixture(scope="session")
def contract_bucket(request: pytest.FixtureRequest) -> PushedMirror:
    """A bucket for repositories saved into directly, one per test."""
    server = request.getfixturevalue("s3_server")
    env = {"KETCH_S3_ENDPOINT": server["endpoint"], "AWS_ACCESS_KEY_ID": server["access_key"],
           "AWS_SECRET_ACCESS_KEY": server["secret_key"], "AWS_DEFAULT_REGION": server["region"],
           "AWS_EC2_METADATA_DISABLED": "true"}
    return PushedMirror(f"s3://{server.new_bucket()}/repos", "", env)


def _bucket(request: pytest.FixtureRequest, tmp_path: Path) -> Backend:
    """A repository in a bucket (ketch.offsite.bucket), KNOWN written through it."""
    from ketch.offsite.bucket import BucketRepository
    from ketch.offsite.bucketinit import create_bucket_repository
    from ketch.offsite.retry import RetryingStore
    from ketch.offsite.s3 import S3Store

    bucket: PushedMirror = request.getfixturevalue("contract_bucket")
    request.getfixturevalue("s3_env")
    name = f"r{abs(hash(tmp_path)) % 10**12}"
    cache = str(tmp_path / "cache")

    def open_() -> Repository:
        return BucketRepository(RetryingStore(S3Store(bucket.url)), name, url=bucket.url,
                                cache_root=cache)

    create_bucket_repository(RetryingStore(S3Store(bucket.url)), name, bucket.url)
    with open_() as repo:
        prepare(repo)
    return Backend("bucket", open_, ["-r", f"{bucket.url}/{name}"], dict(bucket.env))


@dataclass(frozen=True)
class BackendSpec:
    make: Factory
    writable: bool
    # Where this backend knowingly departs from the contract: gap name -> why.
    # A test that meets a listed gap is an expected failure (strict: fixing the
    # backend makes the test pass and the listed gap an error, so it gets removed).
    gaps: dict[str, str] = field(default_factory=dict)


BACKENDS: dict[str, BackendSpec] = {
    "local": BackendSpec(_local, writable=True),
    "ssh": BackendSpec(_ssh, writable=True),
    "s3": BackendSpec(_s3, writable=False),
    "bucket": BackendSpec(_bucket, writable=True),
}
ALL = list(BACKENDS)
WRITABLE = [n for n, b in BACKENDS.items() if b.writable]
READ_ONLY = [n for n, b in BACKENDS.items() if not b.writable]


def expect_gap(request: pytest.FixtureRequest, backend: Backend, gap: str) -> None:
    """Mark the running test an expected failure if `backend` lists `gap`."""
    reason = BACKENDS[backend.name].gaps.get(gap)
    if reason is not None:
        request.applymarker(pytest.mark.xfail(strict=True, reason=f"{backend.name}: {reason}"))


def open_backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    backend = BACKENDS[request.param].make(request, tmp_path)
    try:
        yield backend
    finally:
        op_close(backend.repo)
