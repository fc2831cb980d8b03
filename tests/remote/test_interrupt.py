"""Ctrl-C (SIGINT to the client's process group, as a terminal sends it) and
SIGTERM during a remote save over a real sshd: both sides end promptly, the
server keeps the complete objects it received, and a re-run sends only the rest."""

from __future__ import annotations

import json
import os
import random
import shlex
import signal
import statistics
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SRC_DIR, RunKetch
from tests.gitutil import git
from tests.remote.test_remote import Machine
from tests.services.sshd import SshServer
from tests.test_restore import assert_same_tree

ROUNDS = 20
FILES = 24
FILE_SIZE = 1_000_000


def _server_command(repo: Path) -> str:
    # The repository path in the server's argv tells its processes apart from
    # other tests'; PYTHONPATH makes the far side run this checkout's code.
    return shlex.join(["env", f"PYTHONPATH={SRC_DIR}", sys.executable, "-m", "ketch",
                       "server", "--restrict-to", str(repo)])


def _servers_for(repo: Path) -> list[int]:
    """Pids of `ketch server` processes serving `repo`."""
    mark = os.fsencode(repo)
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                argv = f.read().split(b"\0")
        except OSError:
            continue
        if b"server" in argv and mark in argv and b"ketch" in argv:
            pids.append(int(entry))
    return pids


def _wait_servers_gone(repo: Path, timeout: float) -> float | None:
    """Seconds until no server for `repo` is left, None after `timeout`."""
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if not _servers_for(repo):
            return time.monotonic() - t0
        time.sleep(0.02)
    return None


def _tree(root: Path) -> int:
    rng = random.Random(17)
    root.mkdir()
    for i in range(FILES):
        (root / f"f{i:02d}").write_bytes(rng.randbytes(FILE_SIZE))
    return FILES * FILE_SIZE


def _env(m: Machine, repo: Path) -> dict[str, str]:
    return {**os.environ, **m.env, "KETCH_REMOTE_COMMAND": _server_command(repo),
            "PYTHONPATH": str(SRC_DIR)}


def _interrupt(argv: list[str], env: dict[str, str], delay: float, sig: int,
               repo: Path) -> tuple[float, float, bool]:
    """Start a save, signal it `delay` seconds after its server started; (seconds
    to the client's exit, seconds to the last server's exit, whether it had
    finished first). Counting from the server's start keeps the signal out of
    the interpreter's start-up, which a loaded machine stretches past any fixed
    delay (a Python importing its modules dies of SIGINT like any program)."""
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while proc.poll() is None and not _servers_for(repo) and time.monotonic() < deadline:
        time.sleep(0.005)
    time.sleep(delay)
    if proc.poll() is not None:
        err = proc.stderr.read() if proc.stderr else b""
        assert proc.returncode == 0, err.decode()
        return 0.0, 0.0, True
    t0 = time.monotonic()
    if sig == signal.SIGINT:
        os.killpg(proc.pid, sig)  # what a terminal's Ctrl-C does
    else:
        proc.send_signal(sig)
    try:
        _, err = proc.communicate(timeout=30)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        raise AssertionError(f"client still running 30 s after {signal.Signals(sig).name}"
                             ) from None
    client_s = time.monotonic() - t0
    text = err.decode(errors="replace")
    branch = repo / "refs" / "heads" / argv[argv.index("-n") + 1]
    if proc.returncode == 0 or (branch.exists() and not text):
        # It finished just as the signal came (a process winding down dies of it quietly).
        return client_s, client_s, True
    assert proc.returncode == 2, text
    assert "ketch: error: interrupted" in text, text
    assert "Traceback" not in text, text
    left = _wait_servers_gone(repo, 30)
    assert left is not None, f"ketch server still running for {repo}: {_servers_for(repo)}"
    return client_s, time.monotonic() - t0, False


def _cut_and_resume(m: Machine, run_ketch: RunKetch, tree: Path, tmp_path: Path,
                    full_sent: int) -> None:
    """A save cut once a quarter of the data has arrived resumes: a re-run sends
    only what had not arrived."""
    total = FILES * FILE_SIZE
    repo = tmp_path / "resume"
    run_ketch("init", "-d", repo, check=True)
    env = _env(m, repo)
    proc = subprocess.Popen([sys.executable, "-m", "ketch", "save", "-r", m.url(repo), "-n", "i",
                             "-q", str(tree)], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        tmp = list((repo / "objects").glob("pack-tmp-*/pack"))
        if tmp and tmp[0].stat().st_size > total // 4:
            break
        time.sleep(0.01)
    assert proc.poll() is None, "the save finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode == 2 and b"ketch: error: interrupted" in err, err.decode()
    assert _wait_servers_gone(repo, 30) is not None
    git(repo, "fsck", "--strict", "--no-dangling")
    assert git(repo, "for-each-ref") == b""
    arrived = sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))
    assert arrived > total // 5
    res = run_ketch("save", "-r", m.url(repo), "-n", "i", "--json", tree, env=env, check=True)
    sent = json.loads(res.stdout)["bytes_sent"]
    print(f"re-run after the cut sent {sent} bytes, a full save {full_sent} "
          f"({arrived} had arrived)")
    assert sent < full_sent - arrived * 0.9, (sent, full_sent, arrived)
    out = tmp_path / "out"
    run_ketch("restore", "-r", m.url(repo), "-C", out, f"i/latest{tree}", env=env, check=True)
    assert_same_tree(tree, out / "tree")
    git(repo, "fsck", "--strict", "--no-dangling")


def test_interrupted_remote_saves_end_promptly_and_resume(
        sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> None:
    m = Machine.new(sshd, "interrupt")
    tree = tmp_path / "tree"
    total = _tree(tree)
    # An uninterrupted save: what a full one sends, and how long it takes here
    # (the random moments are spread over that).
    full = tmp_path / "full"
    run_ketch("init", "-d", full, check=True)
    t0 = time.monotonic()
    res = run_ketch("save", "-r", m.url(full), "-n", "i", "--json", tree, env=_env(m, full),
                    check=True)
    took = time.monotonic() - t0
    full_sent = json.loads(res.stdout)["bytes_sent"]
    assert full_sent > total
    rng = random.Random(4)
    client_times: list[float] = []
    server_times: list[float] = []
    finished = 0
    for i in range(ROUNDS):
        repo = tmp_path / f"srv{i}"
        run_ketch("init", "-d", repo, check=True)
        argv = [sys.executable, "-m", "ketch", "save", "-r", m.url(repo), "-n", "i",
                "-q", str(tree)]
        sig = signal.SIGTERM if i % 4 == 3 else signal.SIGINT
        delay = rng.uniform(0.05, 0.9) * took  # after the server started: see _interrupt
        c, s, done = _interrupt(argv, _env(m, repo), delay, sig, repo)
        if done:
            finished += 1
        else:
            client_times.append(c)
            server_times.append(s)
            assert c < 10, f"round {i}: client took {c:.1f} s to exit"
            assert s < 10, f"round {i}: server took {s:.1f} s to exit"
        assert not list((repo / "objects").glob("pack-tmp-*"))
        git(repo, "fsck", "--strict", "--no-dangling")
    print(f"client exit after signal: max {max(client_times):.2f} s, "
          f"median {statistics.median(client_times):.2f} s; server exit: "
          f"max {max(server_times):.2f} s, median {statistics.median(server_times):.2f} s; "
          f"{len(client_times)} interrupted, {finished} finished first")
    assert len(client_times) >= ROUNDS // 2

    _cut_and_resume(m, run_ketch, tree, tmp_path, full_sent)


def test_interrupted_save_to_local_server(run_ketch: RunKetch, tmp_path: Path) -> None:
    tree = tmp_path / "tree"
    _tree(tree)
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR)}
    for attempt in range(5):
        repo = tmp_path / f"srv{attempt}"
        run_ketch("init", "-d", repo, check=True)
        argv = [sys.executable, "-m", "ketch", "save", "-r", f":{repo}", "-n", "i", "-q",
                str(tree)]
        proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, start_new_session=True)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and not any(
                p.stat().st_size > 0 for p in (repo / "objects").glob("pack-tmp-*/pack")):
            time.sleep(0.005)
        os.killpg(proc.pid, signal.SIGINT)
        t0 = time.monotonic()
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t0
        if (repo / "refs" / "heads" / "i").exists():
            # The save was done (a process ending dies of the signal quietly): again.
            continue
        assert proc.returncode == 2, err.decode()
        assert b"ketch: error: interrupted" in err and b"Traceback" not in err, err.decode()
        assert took < 10
        break
    else:
        pytest.fail("every save finished before it could be interrupted")
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and list((repo / "objects").glob("pack-tmp-*")):
        time.sleep(0.05)
    assert not list((repo / "objects").glob("pack-tmp-*"))
    assert list((repo / "objects" / "pack").glob("*.pack")), "no complete objects kept"
    git(repo, "fsck", "--strict", "--no-dangling")


def test_killed_reader_ends_a_server_blocked_writing(
        sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> None:
    """A restore stopped (so the server fills the pipes and blocks writing), then
    killed: the server notices the closed connection and exits."""
    m = Machine.new(sshd, "blocked-writer")
    tree = tmp_path / "tree"
    _tree(tree)
    repo = tmp_path / "srv"
    run_ketch("init", "-d", repo, check=True)
    env = _env(m, repo)
    run_ketch("save", "-r", m.url(repo), "-n", "b", "-q", tree, env=env, check=True)
    argv = [sys.executable, "-m", "ketch", "restore", "-r", m.url(repo), "-C",
            str(tmp_path / "out"), f"b/latest{tree}"]
    proc = subprocess.Popen(argv, env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not (tmp_path / "out").exists():
        time.sleep(0.02)
    proc.send_signal(signal.SIGSTOP)
    time.sleep(1.0)
    assert _servers_for(repo), "the restore ended before it could be stopped"
    proc.kill()
    proc.wait()
    took = _wait_servers_gone(repo, 30)
    assert took is not None, f"ketch server still running for {repo}: {_servers_for(repo)}"
    print(f"server exit after the client was killed: {took:.2f} s")
    assert took < 10
