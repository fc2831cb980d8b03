"""`ketch run` end to end: a config written by `config init`, checked, run; a
failing dump fails the run loudly and leaves the previous good save latest;
pings reach a real local HTTP server; an interrupted run is logged and its
report kept in the repository, on a backup server over ssh too."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from ketch import reportlog
from ketch.jobs.config import load_config
from ketch.jobs.configwrite import render_config
from ketch.jobs.model import DumpSpec
from ketch.localrepo import LocalRepository
from tests.conftest import RunKetch, _subprocess_env
from tests.gitutil import git
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import KETCH_SERVER, Machine
from tests.services.sshd import SshServer


@pytest.fixture
def pings() -> Iterator[tuple[str, list[tuple[str, str, bytes]]]]:
    got: list[tuple[str, str, bytes]] = []

    class Handler(BaseHTTPRequestHandler):
        def _record(self) -> None:
            n = int(self.headers.get("Content-Length") or 0)
            got.append((self.command, self.path, self.rfile.read(n)))
            self.send_response(200)
            self.end_headers()

        do_GET = do_POST = _record  # noqa: N815 - http.server's naming

        def log_message(self, *args: object) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/ping/abc", got
    server.shutdown()
    server.server_close()


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    path.chmod(0o600)
    return path


def test_init_check_run(run_ketch: RunKetch, tmp_path: Path,
                        pings: tuple[str, list[tuple[str, str, bytes]]]) -> None:
    url, got = pings
    etc = tmp_path / "etc"
    etc.mkdir()
    (etc / "hosts").write_bytes(b"127.0.0.1 localhost\n")
    repo = tmp_path / "repo"
    cfg = tmp_path / "ketch.toml"
    run_ketch("config", "init", "--config", cfg, "--repository", repo, "--set", f"etc={etc}",
              "--no-detect", "--yes", check=True)
    # Then the things init does not ask for, through the library's own renderer.
    conf = load_config(str(cfg))
    conf.log_file = str(tmp_path / "log" / "ketch.log")
    conf.lock_file = str(tmp_path / "run.lock")
    conf.dumps.append(DumpSpec(name="hello", type="command", command=["sh", "-c", "echo hi"]))
    conf.notify.ping_url = url
    _write(cfg, render_config(conf))
    check = run_ketch("config", "check", "--config", cfg)
    assert check.returncode in (0, 1), check.stdout.decode() + check.stderr.decode()
    run = run_ketch("run", "--config", cfg, "--json")
    assert run.returncode == 0, run.stdout.decode() + run.stderr.decode()
    report = json.loads(run.stdout)
    assert report["status"] == "OK"
    assert [(i["kind"], i["name"]) for i in report["items"]] == [("set", "etc"),
                                                                 ("dump", "hello")]
    assert run_ketch("cat-file", "-d", repo, "hello/latest/hello", check=True).stdout == b"hi\n"
    ls = run_ketch("ls", "-d", repo, f"etc/latest{etc}", check=True).stdout
    assert ls == b"hosts\n"
    assert [(m, p) for m, p, _ in got] == [("GET", "/ping/abc/start"), ("POST", "/ping/abc")]
    log = (tmp_path / "log" / "ketch.log").read_text()
    assert "dump hello: ok" in log
    git(repo, "fsck", "--strict")


def test_failing_dump_keeps_previous_latest(run_ketch: RunKetch, tmp_path: Path,
                                            pings: tuple[str, list[tuple[str, str, bytes]]]
                                            ) -> None:
    url, got = pings
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    flag = tmp_path / "broken"
    script = tmp_path / "dump.sh"
    script.write_text(f"#!/bin/sh\necho good data\nif [ -e {flag} ]; then echo partial; "
                      "exit 3; fi\n")
    script.chmod(0o755)
    cfg = _write(tmp_path / "ketch.toml", f'''repository = "{repo}"
lock_file = "{tmp_path / 'run.lock'}"
log_file = "{tmp_path / 'ketch.log'}"

[[dump]]
name = "db"
type = "command"
command = ["{script}"]
filename = "db.sql"

[notify]
ping_url = "{url}"
''')
    assert run_ketch("run", "--config", cfg, "-q").returncode == 0
    first = git(repo, "rev-parse", "refs/heads/db").strip()
    flag.touch()
    run = run_ketch("run", "--config", cfg)
    assert run.returncode == 2
    out = run.stdout.decode()
    assert "dump db: FAILED" in out and "exit" in out, out
    assert git(repo, "rev-parse", "refs/heads/db").strip() == first
    # As cron runs it: quiet, and the failure on stderr, the stream cron mails.
    quiet = run_ketch("run", "--config", cfg, "-q", "--no-notify")
    assert quiet.returncode == 2 and quiet.stdout == b""
    assert b"dump db: FAILED" in quiet.stderr
    assert run_ketch("cat-file", "-d", repo, "db/latest/db.sql",
                     check=True).stdout == b"good data\n"
    assert got[-1][:2] == ("POST", "/ping/abc/fail")
    assert b"dump db" in got[-1][2]
    git(repo, "fsck", "--strict")


def test_config_mistakes_are_one_line_each(run_ketch: RunKetch, tmp_path: Path) -> None:
    cfg = _write(tmp_path / "ketch.toml", 'repository = "/r"\n[[set]]\nname = "s"\n'
                                          'pahts = ["/etc"]\n[schedule]\ntime = "25:00"\n')
    run = run_ketch("run", "--config", cfg)
    assert run.returncode == 2
    lines = run.stderr.decode().strip().splitlines()
    assert len(lines) >= 2 and all(ln.startswith(f"ketch: error: {cfg}:") for ln in lines), lines
    assert any(":4: set[1].pahts" in ln and "paths" in ln for ln in lines), lines


def test_overlapping_run_is_refused(run_ketch: RunKetch, tmp_path: Path) -> None:
    import fcntl

    lock = tmp_path / "run.lock"
    cfg = _write(tmp_path / "ketch.toml", f'repository = "{tmp_path / "repo"}"\n'
                                          f'lock_file = "{lock}"\n')
    run_ketch("init", "-d", tmp_path / "repo", check=True)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT)
    fcntl.flock(fd, fcntl.LOCK_EX)
    try:
        run = run_ketch("run", "--config", cfg)
    finally:
        os.close(fd)
    assert run.returncode == 2 and b"in progress" in run.stderr


def _slow_run_config(tmp_path: Path) -> tuple[Path, Path, Path]:
    """A config whose one dump takes a minute: a run to interrupt. Returns
    (config, log file, lock file)."""
    repo, log, lock = tmp_path / "repo", tmp_path / "log" / "ketch.log", tmp_path / "run.lock"
    subprocess.run([sys.executable, "-m", "ketch", "init", "-d", str(repo)], check=True,
                   capture_output=True, env=_subprocess_env(None))
    started = tmp_path / "started"
    cfg = _write(tmp_path / "ketch.toml", f'''repository = "{repo}"
lock_file = "{lock}"
log_file = "{log}"

[[dump]]
name = "slow"
type = "command"
command = ["sh", "-c", "echo begun; touch {started}; exec sleep 60"]
''')
    return cfg, log, started


def _start_run(cfg: Path, started: Path,
               env: dict[str, str] | None = None) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen([sys.executable, "-m", "ketch", "run", "-c", str(cfg)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=_subprocess_env(env),
                            start_new_session=True)
    deadline = time.monotonic() + 60
    while not started.exists():  # the dump is under way
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the dump never started"
        time.sleep(0.05)
    return proc


def _log_entries(log: Path) -> list[dict[str, object]]:
    return [json.loads(ln.removeprefix("json: ")) for ln in log.read_text().splitlines()
            if ln.startswith("json: ")]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_an_interrupted_run_writes_its_log_line(tmp_path: Path, sig: signal.Signals) -> None:
    cfg, log, started = _slow_run_config(tmp_path)
    proc = _start_run(cfg, started)
    try:
        t = time.monotonic()
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
        took = time.monotonic() - t
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    print(f"{sig.name}: ended {took:.2f} s after the signal")
    assert took < 10, took
    [entry] = _log_entries(log)
    assert entry["status"] == "FAILED" and entry["exit_code"] == 2
    assert entry["errors"] == ["interrupted during dump slow: the run did not finish"]
    assert "  error: interrupted during dump slow: the run did not finish" in log.read_text()
    # And in the repository, for the dashboard: the run that did not finish.
    repo = tmp_path / "repo"
    with LocalRepository(str(repo)) as r:
        stored = reportlog.latest(r, "run")
        assert r.read_ref(b"refs/heads/slow") is None  # the dump saved nothing
    assert stored is not None and stored.data["exit_code"] == 2
    assert stored.data["errors"] == entry["errors"] and stored.data["items"] == []
    git(repo, "fsck", "--strict")


def test_a_run_interrupted_over_ssh_keeps_its_report_on_the_server(
        sshd: SshServer, tmp_path: Path) -> None:  # noqa: F811
    """SIGTERM in the middle of a dump's stream cuts the ssh session (the server
    keeps what arrived whole): the report goes to the server through a new one."""
    repo = tmp_path / "srv" / "web1"
    subprocess.run([sys.executable, "-m", "ketch", "init", "-d", str(repo)], check=True,
                   capture_output=True, env=_subprocess_env(None))
    m = Machine.new(sshd, "run-interrupted-over-ssh", forced=f"{KETCH_SERVER} --append-only")
    started, log = tmp_path / "started", tmp_path / "ketch.log"
    cfg = _write(tmp_path / "ketch.toml", f'''repository = "{m.url(repo)}"
lock_file = "{tmp_path / 'run.lock'}"
log_file = "{log}"

[[dump]]
name = "slow"
type = "command"
command = ["sh", "-c", "head -c 3000000 /dev/urandom; touch {started}; exec sleep 60"]
''')
    proc = _start_run(cfg, started, m.env)
    try:
        time.sleep(0.3)  # the dump's bytes on their way to the server
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
    assert proc.returncode == 2, err
    [entry] = _log_entries(log)
    assert entry["warnings"] == [], entry  # stored: no "run report not stored"
    with LocalRepository(str(repo)) as r:
        stored = reportlog.latest(r, "run")
        assert r.read_ref(b"refs/heads/slow") is None
    assert stored is not None and stored.data["exit_code"] == 2
    assert stored.data["errors"] == ["interrupted during dump slow: the run did not finish"]
    git(repo, "fsck", "--strict")


def test_a_refused_overlapping_run_writes_its_log_line(tmp_path: Path,
                                                       run_ketch: RunKetch) -> None:
    cfg, log, started = _slow_run_config(tmp_path)
    first = _start_run(cfg, started)
    try:
        second = run_ketch("run", "-c", cfg)
    finally:
        first.send_signal(signal.SIGTERM)
        first.communicate(timeout=30)
    assert second.returncode == 2
    assert b"another ketch run is in progress" in second.stderr
    refused, interrupted = _log_entries(log)
    assert refused["status"] == "FAILED"
    [why] = refused["errors"]  # type: ignore[misc]
    assert str(why).startswith(f"another ketch run is in progress (lock {tmp_path}/run.lock "
                               f"held by pid {first.pid})")
    assert interrupted["errors"] == ["interrupted during dump slow: the run did not finish"]
