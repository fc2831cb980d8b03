"""ketch's own `cat-stored` (remote/stored.py) against hostile peers: a server
that lies in its answers (tests/remote/hostile_peer.py, a real process run as
the client's ssh command) and a client that sends bytes no ketch client would
(raw bytes on a real `ketch server`'s stdin)."""

from __future__ import annotations

import hashlib
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.errors import KetchError, ObjectNotFound
from ketch.remote.client import RemoteRepository
from ketch.remote.spec import parse_remote
from tests.conftest import _subprocess_env
from tests.gitutil import git

PEER = Path(__file__).with_name("hostile_peer.py")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one save (read only here)."""
    base = tmp_path_factory.mktemp("hostile-stored")
    tree = base / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"hello\n")
    (tree / "b.bin").write_bytes(bytes(range(256)) * 300)
    repo = base / "repo"
    for args in (["init", "-d", str(repo)], ["save", "-d", str(repo), "-n", "host", "-q",
                                              str(tree)]):
        subprocess.run([sys.executable, "-m", "ketch", *args], check=True,
                       env=_subprocess_env(None), capture_output=True)
    return repo


@pytest.fixture
def peer(monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path) -> Iterator[Callable[[str, Path], RemoteRepository]]:
    monkeypatch.setenv("PYTHONPATH", _subprocess_env(None)["PYTHONPATH"])
    opened: list[RemoteRepository] = []

    def connect(mode: str, repo: Path) -> RemoteRepository:
        monkeypatch.setenv("KETCH_RSH", shlex.join([sys.executable, str(PEER), mode]))
        r = RemoteRepository(parse_remote(f"host:{repo}"), cache_root=str(tmp_path / "cache"))
        opened.append(r)
        return r

    yield connect
    for r in opened:
        r.client.abandon()


def head(repo: Path) -> bytes:
    return bytes.fromhex(git(repo, "rev-parse", "refs/heads/host").strip().decode())


def all_objects(repo: Path) -> list[bytes]:
    out = git(repo, "cat-file", "--batch-all-objects", "--batch-check=%(objectname)")
    return [bytes.fromhex(h) for h in out.decode().split()]


@pytest.mark.parametrize("mode", ["honest", "cat:honest"])  # ketch's cat-stored, bup's cat-batch
def test_read_many_gets_every_object_in_pipelined_batches(
        peer: Callable[[str, Path], RemoteRepository], served: Path, mode: str) -> None:
    oids = all_objects(served)
    # More requests than fit the window, with repeats: each asked-for one comes back.
    want = (oids * 700)[:3000]
    repo = peer(mode, served)
    assert repo._stored == (mode == "honest")
    got = [(oid, t, hashlib.sha1(b"%s %d\0" % (
        {1: b"commit", 2: b"tree", 3: b"blob", 4: b"tag"}[t], len(d)) + d).digest())
        for oid, t, d in repo.read_many(want)]
    assert [g[0] for g in got] == want
    assert all(oid == digest for oid, _, digest in got)
    # A read through the read-ahead path between two read_many answers stays in step.
    it = repo.read_many(oids)
    first = next(it)
    repo.prefetch(oids)
    assert repo.read(head(served))[0] == 1
    assert [first[0], *(o for o, _, _ in it)] == oids
    if mode == "honest":  # (the lying peer's cat-batch knows no "missing")
        with pytest.raises(ObjectNotFound):
            list(repo.read_many([oids[0], bytes(20)]))
        assert repo.read(oids[0])  # the session is still usable after a miss


@pytest.mark.parametrize(("how", "says"), [
    ("wrong-content", "does not match its id"),
    ("other-object", "does not match its id"),
    ("bad-kind", "bad cat-stored reply"),
    ("delta", "is not a whole object"),
    ("bomb", "does not inflate"),
    ("short", "does not inflate"),
    ("trailing", "does not inflate"),
    ("bad-zlib", "zlib error"),
    ("huge-header", "more than the"),
    ("huge", "bad cat-stored reply"),
    ("long-message", "bad cat-stored reply"),
    ("missing-with-body", "bad cat-stored reply"),
    ("message", "oops!"),
    ("refused", "no reading today"),
    ("truncated", "lost"),
])
def test_malformed_cat_stored_replies(peer: Callable[[str, Path], RemoteRepository],
                                      served: Path, how: str, says: str) -> None:
    repo = peer(f"stored:{how}", served)
    with pytest.raises(KetchError) as e:
        repo.read(head(served))
    msg = str(e.value)
    assert says in msg and "b'" not in msg and "Traceback" not in msg, msg
    assert not isinstance(e.value, ObjectNotFound)


def serve(repo: Path, data: bytes) -> tuple[int, bytes, str]:
    proc = subprocess.run([sys.executable, "-m", "ketch", "server", "-d", str(repo)],
                          input=data, capture_output=True, env=_subprocess_env(None),
                          timeout=60)
    err = proc.stderr.decode(errors="replace")
    assert "Traceback" not in err and "internal error" not in err, err
    return proc.returncode, proc.stdout, err


def test_cat_stored_answers_each_id_then_ok(served: Path) -> None:
    oid = head(served)
    rc, out, _ = serve(served, b"cat-stored 2\n" + oid + bytes(20)
                       + b"read-ref refs/heads/host\nquit\n")
    assert rc == 0
    assert out.startswith(b"E")
    n = int.from_bytes(out[1:5], "big")
    assert out[5 + n:] == b"M\0\0\0\0\nok\n" + oid.hex().encode() + b"\n\nok\n"


@pytest.mark.parametrize("request_", [
    b"cat-stored\n", b"cat-stored 0\n", b"cat-stored -1\n", b"cat-stored abc\n",
    b"cat-stored 4097\n", b"cat-stored 99999999999999999999\n", b"cat-stored 1 2\n",
])
def test_cat_stored_requests_that_break_the_stream_end_the_session(
        served: Path, request_: bytes) -> None:
    before = git(served, "for-each-ref")
    rc, out, err = serve(served, request_ + b"read-ref refs/heads/host\n")
    assert rc != 0
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ketch: error: "), err
    assert b"ok" not in out  # the read-ref after it was not answered
    assert git(served, "for-each-ref") == before


def test_cat_stored_ids_that_end_early(served: Path) -> None:
    rc, out, err = serve(served, b"cat-stored 2\n" + bytes(25))
    assert rc != 0 and out == b""
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("ketch: error: "), err
