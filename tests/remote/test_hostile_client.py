"""The client against a hostile server: a real process (tests/remote/hostile_peer.py)
run through the client's own transport (the ssh command, $KETCH_RSH), that is
not a server at all or lies in one answer. The client must say so in one line,
exit 2, and write nothing outside its cache directory."""

from __future__ import annotations

import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from ketch.errors import KetchError, ObjectNotFound
from ketch.remote.client import RemoteRepository
from ketch.remote.spec import parse_remote
from tests.conftest import RunKetch, _subprocess_env
from tests.gitutil import git

PEER = Path(__file__).with_name("hostile_peer.py")


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository with one save, for the hostile server to serve (read only)."""
    base = tmp_path_factory.mktemp("hostile-client")
    tree = base / "tree"
    tree.mkdir()
    (tree / "a.txt").write_bytes(b"hello\n")
    repo = base / "repo"
    for args in (["init", "-d", str(repo)], ["save", "-d", str(repo), "-n", "host", "-q",
                                              str(tree)]):
        subprocess.run([sys.executable, "-m", "ketch", *args], check=True,
                       env=_subprocess_env(None), capture_output=True)
    return repo


def against(run_ketch: RunKetch, tmp_path: Path, mode: str, *args: str) -> str:
    """Run `ketch ARGS` with the hostile server in `mode` as its ssh; its one error line."""
    cache = tmp_path / "cache"
    res = run_ketch(*args, env={"KETCH_RSH": shlex.join([sys.executable, str(PEER), mode]),
                                "XDG_CACHE_HOME": str(cache)}, timeout=60)
    err = res.stderr.decode(errors="replace")
    assert res.returncode == 2, (res.returncode, err)
    lines = err.splitlines()
    assert "Traceback" not in err and "internal error" not in err, err
    assert lines[-1].startswith("ketch: error: "), err
    assert all(ln.startswith(("ketch: error: ", "server: ")) for ln in lines), err
    assert "b'" not in err and 'b"' not in err, err  # no Python reprs
    # Nothing outside the cache's own directory for this remote.
    written = [p for p in tmp_path.rglob("*") if p.is_file() and p.parent.name != "tree"]
    assert all(p.is_relative_to(cache / "ketch" / "remote") for p in written), written
    assert not Path("/tmp/escaped.idx").exists()
    return lines[-1]


@pytest.mark.parametrize(("mode", "says"), [
    ("hello", "not a bup/ketch server (it said: hello)"),
    ("garbage", "longer than 65536 bytes"),
    ("help-then-garbage", "unexpected"),
])
def test_a_peer_that_is_not_a_server(run_ketch: RunKetch, tmp_path: Path, mode: str,
                                     says: str) -> None:
    line = against(run_ketch, tmp_path, mode, "ls", "-r", f"host:{tmp_path}/repo")
    assert says in line, line


def test_echo_hello_as_the_remote_command(run_ketch: RunKetch, tmp_path: Path) -> None:
    res = run_ketch("ls", "-r", f"host:{tmp_path}/repo", env={"KETCH_RSH": "echo hello"})
    assert res.returncode == 2
    lines = res.stderr.decode().splitlines()
    assert lines == [f"ketch: error: host:{tmp_path}/repo: not a bup/ketch server "
                     "(it said: hello host -- ketch server)"], lines


def test_an_index_name_that_would_escape_the_cache(run_ketch: RunKetch, tmp_path: Path,
                                                   served: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"new data\n")
    line = against(run_ketch, tmp_path, "index-name:0", "save", "-r", f"host:{served}",
                   "-n", "x", "-q", str(tree))
    assert line == (f"ketch: error: host:{served}: bad index name from the server: "
                    "../../../escaped.idx"), line


@pytest.fixture
def peer(monkeypatch: pytest.MonkeyPatch,
         tmp_path: Path) -> Iterator[Callable[[str, Path], RemoteRepository]]:
    """In-process clients (no CLI start-up) of the hostile peer process."""
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
    assert not Path("/tmp/escaped.idx").exists()
    assert all(p.is_relative_to(tmp_path / "cache") for p in tmp_path.rglob("*") if p.is_file())


@pytest.mark.parametrize("which", range(1, 6))
def test_index_names_that_would_escape_the_cache(peer: Callable[[str, Path], RemoteRepository],
                                                 served: Path, which: int) -> None:
    repo = peer(f"index-name:{which}", served)
    with pytest.raises(KetchError) as e:
        repo.writer()
    assert str(e.value).startswith(f"host:{served}: bad index name from the server: "), e.value
    assert "b'" not in str(e.value) and "\0" not in str(e.value)


def test_an_index_announced_bigger_than_sent(run_ketch: RunKetch, tmp_path: Path,
                                             served: Path) -> None:
    tree = tmp_path / "tree"
    tree.mkdir()
    (tree / "f").write_bytes(b"new data\n")
    line = against(run_ketch, tmp_path, "index-huge", "save", "-r", f"host:{served}",
                   "-n", "x", "-q", str(tree))
    assert "lost" in line, line
    assert not list((tmp_path / "cache").rglob("*.idx*"))  # no half index left


def test_an_object_that_does_not_match_its_id(run_ketch: RunKetch, tmp_path: Path,
                                              served: Path) -> None:
    line = against(run_ketch, tmp_path, "cat:wrong-content", "ls", "-r", f"host:{served}",
                   "host/latest/")
    assert line.endswith(f" from host:{served} does not match its id"), line


@pytest.mark.parametrize(("how", "says"), [
    ("wrong-content", "does not match its id"),
    ("wrong-id", "does not match its id"),
    ("non-numeric", "bad cat-batch reply"),
    ("negative", "bad cat-batch reply"),
    ("huge", "bad cat-batch reply"),
    ("unknown-type", "bad cat-batch reply"),
    ("short-line", "bad cat-batch reply"),
    ("binary-line", "bad cat-batch reply"),
    ("truncated", "lost"),
])
def test_malformed_cat_batch_replies(peer: Callable[[str, Path], RemoteRepository],
                                     served: Path, how: str, says: str) -> None:
    head = git(served, "rev-parse", "refs/heads/host").strip().decode()
    repo = peer(f"cat:{how}", served)
    with pytest.raises(KetchError) as e:
        repo.read(bytes.fromhex(head))
    msg = str(e.value)
    assert says in msg and "b'" not in msg, msg
    assert not isinstance(e.value, ObjectNotFound)


def test_refs_that_are_not_hex(run_ketch: RunKetch, tmp_path: Path, served: Path) -> None:
    line = against(run_ketch, tmp_path, "bad-ref", "ls", "-r", f"host:{served}", "host/latest/")
    assert "bad" in line, line
