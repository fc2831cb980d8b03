"""gc over ssh (the `gc` command of ketch's server protocol) and `ketch run`'s
retention against a backup server, over a real sshd on 127.0.0.1: a normal key
prunes and reclaims; an append-only key is refused in one line, nothing is
deleted, and the run says the server owns retention (exit code unaffected)."""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.jobs.retention import SERVER_OWNS_IT
from ketch.lifecycle.gc import GcRun
from ketch.localrepo import LocalRepository, init_repository
from ketch.remote.location import open_location
from ketch.remote.protocol import Conn
from ketch.remote.server import Server, ServerOptions
from ketch.repo import AppendOnlyRepository
from tests.conftest import RunKetch
from tests.gitutil import git
from tests.remote.test_remote import KETCH_SERVER, Machine, build_small_tree, fsck
from tests.services.sshd import SshServer
from tests.test_restore import assert_same_tree


def _packs(repo: Path) -> dict[str, int]:
    return {p.name: p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack")}


def _with_garbage(repo: Path, tree: Path, run_ketch: RunKetch) -> None:
    """A repository holding a save of `tree` and 3 MB that nothing refers to."""
    init_repository(str(repo))
    run_ketch("save", "-d", repo, "-n", "t", tree, check=True)
    with LocalRepository(str(repo)) as r:
        w = r.writer()
        for _ in range(3):
            w.write(gobj.BLOB, os.urandom(1_000_000))
        w.close()


def _append_only(sshd: SshServer, name: str, repo: Path) -> Machine:
    """A machine whose key runs the server confined to `repo`, append-only (as
    `ketch server setup-client` writes it)."""
    forced = f"{KETCH_SERVER} --restrict-to {shlex.quote(str(repo))} --append-only"
    return Machine(sshd, sshd.new_key(name, forced_command=forced), remote_command="ignored")


def _use(m: Machine, monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in m.env.items():
        monkeypatch.setenv(name, value)


def test_gc_over_ssh_reclaims_with_a_normal_key(sshd: SshServer, run_ketch: RunKetch,
                                                tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    m = Machine.new(sshd, "gc_normal")
    tree = tmp_path / "tree"
    build_small_tree(tree)
    repo = tmp_path / "srv" / "repo"
    _with_garbage(repo, tree, run_ketch)
    before = sum(_packs(repo).values())
    _use(m, monkeypatch)
    with open_location(m.url(repo)) as remote:
        report = remote.writable().collect_garbage(GcRun.from_options({"threshold": 10.0, "dry_run": False}))
        # The same connection goes on working, with the server's new packs.
        assert remote.read_ref(b"refs/heads/t") is not None
    assert report["bytes_reclaimed"] >= 2_900_000, report
    assert sum(_packs(repo).values()) <= before - 2_900_000
    fsck(repo)
    out = tmp_path / "out"
    run_ketch("restore", "-r", m.url(repo), "-C", out, f"t/latest{tree}", env=m.env, check=True)
    assert_same_tree(tree, out / "tree")


def test_gc_over_ssh_is_refused_for_an_append_only_key(sshd: SshServer, run_ketch: RunKetch,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    root = tmp_path / "repos"
    repo = root / "web"
    tree = tmp_path / "tree"
    build_small_tree(tree)
    _with_garbage(repo, tree, run_ketch)
    packs = _packs(repo)
    m = _append_only(sshd, "gc_append_only", repo)
    _use(m, monkeypatch)
    with open_location(m.url(repo)) as remote, pytest.raises(AppendOnlyRepository) as e:
        remote.writable().collect_garbage(GcRun.from_options({"threshold": 0.0, "dry_run": False}))
    assert str(e.value) == "server: append-only: gc is the server's job"
    # What a user of any client sees: one error line, and the session goes on.
    proc = subprocess.run([*sshd.ssh_argv(m.key), sshd.host, "ketch server"], timeout=60,
                          input=b'gc\n{"threshold": 0}\nread-ref refs/heads/t\nquit\n',
                          capture_output=True)
    lines = proc.stdout.decode().splitlines()
    assert [ln for ln in lines if ln.startswith("error")] == [
        "error append-only: gc is the server's job"], lines
    head = git(repo, "rev-parse", "refs/heads/t").decode().strip()
    assert lines[-3:] == [head, "", "ok"]  # read-ref still answered
    assert _packs(repo) == packs  # nothing deleted, nothing rewritten
    fsck(repo)


def test_gc_refuses_options_that_are_not_a_json_object(sshd: SshServer, tmp_path: Path,
                                                       run_ketch: RunKetch) -> None:
    m = Machine.new(sshd, "gc_bad_options")
    repo = tmp_path / "repo"
    init_repository(str(repo))
    proc = subprocess.run([*sshd.ssh_argv(m.key), sshd.host, KETCH_SERVER], timeout=60,
                          input=f"set-dir {repo}\ngc\n[1, 2]\nquit\n".encode(),
                          capture_output=True)
    assert b"error gc: expected one line of JSON options (an object)\n" in proc.stdout
    assert proc.returncode == 0 and b"Traceback" not in proc.stderr


_FAKE_SERVER = r'''
import sys
out = sys.stdout.buffer
for line in sys.stdin.buffer:
    if line == b"help\n":
        out.write(b"Commands:\n    gc\n    set-dir\n\nok\n")
    elif line.startswith(b"set-dir "):
        out.write(b"\nok\n")
    elif line == b"gc\n":
        sys.stdin.buffer.readline()
        out.write(REPLY)
    out.flush()
'''


def test_server_says_it_is_alive_while_gc_runs(tmp_path: Path, run_ketch: RunKetch) -> None:
    """A long gc sends keepalive lines (every 30 s; here every millisecond), then
    its report: a firewall that drops idle connections does not cut it off."""
    repo = tmp_path / "repo"
    tree = tmp_path / "tree"
    build_small_tree(tree)
    _with_garbage(repo, tree, run_ketch)
    c_read, s_write = os.pipe()
    s_read, c_write = os.pipe()
    server = Server(Conn(s_read, s_write), ServerOptions())
    server.GC_KEEPALIVE = 0.001
    thread = threading.Thread(target=server.run)
    thread.start()
    os.write(c_write, f'set-dir {repo}\ngc\n{{"threshold": 10}}\nquit\n'.encode())
    thread.join(60)
    os.close(s_write)
    with os.fdopen(c_read, "rb") as f:
        lines = f.read().split(b"\n")
    for fd in (s_read, c_write):
        os.close(fd)
    assert lines[:2] == [b"", b"ok"]  # set-dir
    alive = lines[2:].index(next(ln for ln in lines[2:] if ln != b"."))
    assert alive >= 1, lines[:5]
    report = json.loads(lines[2 + alive])
    assert report["bytes_reclaimed"] >= 2_900_000 and lines[-3:] == [b"", b"ok", b""]


@pytest.mark.parametrize("reply,message", [
    (b'"a string"\n\nok\n', "gc: the report is not a JSON object"),
    (b"{" + b" " * (2 << 20) + b"}\n\nok\n", "longer than 1048576 bytes"),
    (b'.\n.\n{"bytes_reclaimed": 7}\n\nok\n', None),
])
def test_client_bounds_the_gc_reply(sshd: SshServer, tmp_path: Path, reply: bytes,
                                    message: str | None,
                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """A server that answers gc with something else than a small JSON object (or
    with keepalive lines first, which are skipped)."""
    fake = tmp_path / "fake_server.py"
    fake.write_text(f"REPLY = {reply!r}\n{_FAKE_SERVER}")
    m = Machine.new(sshd, f"gc_fake_{len(reply)}",
                    remote_command=shlex.join([sys.executable, str(fake)]))
    _use(m, monkeypatch)
    remote = open_location(m.url(tmp_path))
    try:
        if message is None:
            got = remote.writable().collect_garbage(GcRun.from_options({"threshold": 10.0, "dry_run": False}))
            assert got == {"bytes_reclaimed": 7}
        else:
            with pytest.raises(KetchError, match=message):
                remote.writable().collect_garbage(GcRun.from_options({"threshold": 10.0,
                                                       "dry_run": False}))
    finally:
        remote.client.abandon()


# -- ketch run against a backup server -------------------------------------------------


def _run_config(tmp_path: Path, url: str, data: Path) -> Path:
    config = tmp_path / "ketch.toml"
    config.write_text(f'repository = "{url}"\nlock_file = "{tmp_path}/run.lock"\n'
                      f'log_file = "{tmp_path}/run.log"\n'
                      f'[retention]\nkeep-last = 1\n'
                      f'[[set]]\nname = "data"\npaths = ["{data}"]\n')
    return config


def _run(run_ketch: RunKetch, config: Path, data: Path, m: Machine) -> tuple[int, dict]:
    (data / "big").write_bytes(os.urandom(2_000_000))
    proc = run_ketch("run", "--config", config, "--json", "--no-notify", env=m.env)
    return proc.returncode, json.loads(proc.stdout)


def test_run_prunes_and_collects_on_a_server_with_a_normal_key(
        sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> None:
    m = Machine.new(sshd, "run_normal")
    repo = tmp_path / "srv" / "web1"
    run_ketch("init", "-r", m.url(repo), env=m.env, check=True)
    data = tmp_path / "data"
    data.mkdir()
    config = _run_config(tmp_path, m.url(repo), data)
    for _ in range(2):
        code, report = _run(run_ketch, config, data, m)
    assert code == 0, report
    # The config's own save (every run's) is pruned by the same [retention].
    assert report["retention"] == [{"kind": "set", "name": n, "kept": 1, "removed": 1,
                                    "error": None} for n in ("ketch-config", "data")]
    assert report["gc"]["bytes_reclaimed"] >= 1_900_000, report["gc"]
    assert report["notes"] == []
    assert len(git(repo, "rev-list", "refs/heads/data").split()) == 1
    fsck(repo)


def test_run_with_an_append_only_key_leaves_retention_to_the_server(
        sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> None:
    root = tmp_path / "repos"
    repo = root / "web1"
    init_repository(str(repo))
    m = _append_only(sshd, "run_append_only", repo)
    data = tmp_path / "data"
    data.mkdir()
    config = _run_config(tmp_path, m.url(repo), data)
    for _ in range(2):
        code, report = _run(run_ketch, config, data, m)
    assert code == 0, report  # a note, not a warning
    assert report["notes"] == [SERVER_OWNS_IT]
    assert report["retention"] == [] and report["gc"] is None
    assert len(git(repo, "rev-list", "refs/heads/data").split()) == 2  # nothing removed
    log = (tmp_path / "run.log").read_text()
    assert f"note: {SERVER_OWNS_IT}" in log
    fsck(repo)
