"""Habits users have (issue 17, item 12): a closed pipe is not an error, typos get
suggestions, messages have no Python reprs and right plurals, save's meter has a
total, shells complete, and `ketch help config` documents the config file."""

from __future__ import annotations

import os
import re
import select
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import RunKetch, _subprocess_env


def ketch_bin(tmp_path: Path) -> Path:
    """A directory holding a `ketch` that runs this worktree's code."""
    bindir = tmp_path / "bin"
    bindir.mkdir(exist_ok=True)
    exe = bindir / "ketch"
    exe.write_text(f'#!/bin/sh\nexec {sys.executable} -m ketch "$@"\n')
    exe.chmod(0o755)
    return bindir


def on_terminal(argv: list[str], env: dict[str, str] | None = None) -> tuple[int, bytes]:
    """Run ketch with stderr on a pseudo-terminal: (exit code, what it drew there)."""
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ketch", *argv],
                                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=slave, env=_subprocess_env(env))
        os.close(slave)
        said = b""
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: every writer of the terminal is gone
                break
            if not chunk:
                break
            said += chunk
        return proc.wait(timeout=120), said
    finally:
        os.close(master)


def random_files(data: Path, count: int, size: int) -> Path:
    """`data` made, holding f0, f1... of `size` random bytes each."""
    data.mkdir()
    for i in range(count):
        (data / f"f{i}").write_bytes(os.urandom(size))
    return data


@pytest.mark.parametrize("cmd", ["cat-file", "join", "ls"])
def test_closed_pipe_ends_quietly(cmd: str, repo_dir: Path, tmp_path: Path,
                                  run_ketch: RunKetch) -> None:
    data = tmp_path / "d"
    data.mkdir()
    (data / "big").write_bytes(os.urandom(6_000_000))
    for i in range(3000):
        (data / f"name-{i:05d}").write_bytes(b"")
    run_ketch("save", "-q", "-d", repo_dir, "-n", "s", data, check=True)
    run_ketch("split", "-q", "-d", repo_dir, "-n", "b", data / "big", check=True)
    args = {"cat-file": [f"s/latest{data}/big"], "join": ["b"], "ls": ["-l", f"s/latest{data}"]}
    proc = subprocess.Popen([sys.executable, "-m", "ketch", cmd, "-d", str(repo_dir),
                             *args[cmd]], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            stdin=subprocess.DEVNULL, env=_subprocess_env(None))
    assert proc.stdout is not None and proc.stderr is not None
    head = subprocess.run(["head", "-c", "10"], stdin=proc.stdout, capture_output=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert (proc.wait(timeout=60), err, len(head.stdout)) == (0, b"", 10)


def test_mistyped_command_gets_a_suggestion(run_ketch: RunKetch) -> None:
    r = run_ketch("sav")
    assert r.returncode == 2
    assert r.stderr == b"ketch: error: No such command 'sav'. Did you mean 'save'?\n"


def test_no_python_reprs_in_messages(repo_dir: Path, tmp_path: Path,
                                     run_ketch: RunKetch) -> None:
    r = run_ketch("save", "-d", repo_dir, "-n", "bad name", tmp_path)
    assert r.returncode == 2
    assert r.stderr == b"ketch: error: invalid branch name 'bad name': it contains ' '\n"
    r = run_ketch("save", "-d", repo_dir, "-n", "x", "--graft", "nope", tmp_path)
    assert r.stderr == b"ketch: error: --graft needs OLD=NEW, got nope\n"


def test_plurals_in_summaries(repo_dir: Path, tmp_path: Path, run_ketch: RunKetch) -> None:
    one = tmp_path / "one"
    one.write_text("x\n")
    r = run_ketch("save", "-d", repo_dir, "-n", "one", one, check=True)
    assert re.match(rb"Saved one: 1 file, \d+ dirs, ", r.stderr), r.stderr
    r = run_ketch("index", "-d", repo_dir, one, check=True)
    assert r.stderr.startswith(b"Indexed 1 path ("), r.stderr
    r = run_ketch("restore", "-d", repo_dir, "-C", tmp_path / "out", "one/latest/", check=True)
    assert re.search(rb"restored 1 file, \d+ dirs?, ", r.stderr), r.stderr
    config = tmp_path / "ketch.toml"
    config.write_text(f'repository = "{repo_dir}"\n[schedule]\nenabled = false\n'
                      f'[[set]]\nname = "one"\npaths = ["{one}"]\n')
    r = run_ketch("run", "-c", config, "--no-notify")
    assert b"(1 item, " in r.stdout and b"ok, 1 file, " in r.stdout, r.stdout
    r = run_ketch("config", "check", "-c", config)
    assert re.search(rb": \d+ ok, 1 warning, 0 failed", r.stdout), r.stdout


def test_save_meter_has_a_total_on_a_terminal_only(repo_dir: Path, tmp_path: Path,
                                                   run_ketch: RunKetch) -> None:
    data = random_files(tmp_path / "d", 4, 4_000_000)
    (data / "skip.tmp").write_bytes(os.urandom(4_000_000))
    # A first save: the index knows no sizes, so the total comes from a scan.
    code, said = on_terminal(["save", "-d", str(repo_dir), "-n", "s", "--exclude", "*.tmp",
                              str(data)])
    assert code == 0, said
    assert re.search(rb"Saving: 4 files, 16\.0 MB, [\d.,]+ MB/s, 100\.0%, ETA 0:00", said), said
    r = run_ketch("save", "-d", repo_dir, "-n", "s", "--no-index", data, check=True)
    assert b"Saving" not in r.stderr and r.stderr.count(b"\n") == 1


def test_no_eta_before_there_is_a_rate(repo_dir: Path, tmp_path: Path) -> None:
    """A few tiny files before a big one: the first line once said "0.0 MB,
    0.0 MB/s, 0.0%, ETA 28086:09" (minutes, from the tiny files' rate)."""
    data = tmp_path / "d"
    data.mkdir()
    for i in range(20):
        (data / f"a{i:02d}").write_bytes(b"%d\n" % i)
    (data / "z-big").write_bytes(os.urandom(60_000_000))
    code, said = on_terminal(["save", "-d", str(repo_dir), "-n", "s", str(data)])
    assert code == 0, said
    assert b"100.0%, ETA 0:00" in said, said
    assert not re.search(rb"ETA [1-9]\d+:", said), said


def test_rich_is_loaded_on_a_terminal_only(repo_dir: Path, tmp_path: Path,
                                           run_ketch: RunKetch) -> None:
    """The meter's library costs cron runs and pipes nothing: not even its import."""
    (tmp_path / "f").write_bytes(b"x" * 1000)
    timed = {"PYTHONPROFILEIMPORTTIME": "1"}
    r = run_ketch("save", "-d", repo_dir, "-n", "s", tmp_path, env=timed, check=True)
    assert b"| ketch.save\n" in r.stderr and b" rich" not in r.stderr, r.stderr
    r = run_ketch("cat-file", "-d", repo_dir, f"s/latest{tmp_path}/f", env=timed, check=True)
    assert r.stdout == b"x" * 1000 and b" rich" not in r.stderr
    code, said = on_terminal(["save", "-d", str(repo_dir), "-n", "s", str(tmp_path)], timed)
    assert code == 0 and b" rich.progress\r\n" in said, said


def test_save_meter_total_covers_more_than_the_index_knows(repo_dir: Path, tmp_path: Path,
                                                           run_ketch: RunKetch) -> None:
    """The index knows the sizes of a part only (an interrupted first save, or
    `ketch index` of a subdirectory): the meter's total is still the whole."""
    data = tmp_path / "d"
    (data / "small").mkdir(parents=True)
    (data / "small" / "a").write_bytes(os.urandom(1_000_000))
    for i in range(3):
        (data / f"big{i}").write_bytes(os.urandom(5_000_000))
    run_ketch("index", "-d", repo_dir, data / "small", check=True)
    code, said = on_terminal(["save", "-d", str(repo_dir), "-n", "s", str(data)])
    assert code == 0, said
    assert re.search(rb"Saving: 4 files, 16\.0 MB, [\d.,]+ MB/s, 100\.0%, ETA 0:00", said), said


def test_restore_meter_names_overwritten_files_above_it(repo_dir: Path, tmp_path: Path,
                                                        run_ketch: RunKetch) -> None:
    data = random_files(tmp_path / "d", 2, 3_000_000)
    run_ketch("save", "-q", "-d", repo_dir, "-n", "s", data, check=True)
    out = tmp_path / "out"
    run_ketch("restore", "-q", "-d", repo_dir, "-C", out, f"s/latest{data}/", check=True)
    code, said = on_terminal(["restore", "-v", "-d", str(repo_dir), "-C", str(out),
                              f"s/latest{data}/"])
    assert code == 0, said
    # What the terminal shows: each line as it was last drawn.
    shown = [re.sub(rb"\x1b\[[0-9;?]*[A-Za-z]", b"", line).split(b"\r")[-1]
             for line in said.split(b"\r\n")]
    assert [ln for ln in shown if ln.startswith(b"overwritten: ")] == [
        f"overwritten: {out}/f{i}".encode() for i in range(2)], said
    assert any(re.fullmatch(rb"Restoring: 2 files, 6\.0 MB, [\d.,]+ MB/s, 100\.0%, ETA 0:00 *",
                            ln) for ln in shown), said


def test_interrupted_meter_ends_its_line_and_shows_the_cursor(repo_dir: Path) -> None:
    master, slave = os.openpty()
    try:
        proc = subprocess.Popen([sys.executable, "-m", "ketch", "split", "-d", str(repo_dir),
                                 "-n", "x"], stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                                stderr=slave, env=_subprocess_env(None))
        os.close(slave)
        assert proc.stdin is not None
        proc.stdin.write(os.urandom(20_000_000))  # more than one read
        proc.stdin.flush()
        said = b""
        while b"Splitting: " not in said:
            assert select.select([master], [], [], 60)[0], said
            said += os.read(master, 65536)
        proc.send_signal(signal.SIGINT)
        # Another of its threads may take the signal while the main one waits for
        # input: the end of input lets the main one see it.
        time.sleep(0.5)
        proc.stdin.close()
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError:  # EIO: the command ended
                break
            if not chunk:
                break
            said += chunk
        assert proc.wait(timeout=60) == 2
    finally:
        os.close(master)
    assert re.search(rb"\nketch: error: interrupted\r\n$", said), said
    hidden, shown = said.rfind(b"\x1b[?25l"), said.rfind(b"\x1b[?25h")
    assert hidden < shown or hidden == -1, said


def test_completion_scripts(tmp_path: Path, run_ketch: RunKetch) -> None:
    for shell in ("bash", "zsh", "fish"):
        r = run_ketch("completion", shell, check=True)
        assert b"_KETCH_COMPLETE" in r.stdout, shell
    bindir = ketch_bin(tmp_path)
    script = ('source <(ketch completion bash)\n'
              'COMP_WORDS=(ketch sa); COMP_CWORD=1; _ketch_completion ketch\n'
              'echo "${COMPREPLY[@]}"\n'
              'COMPREPLY=(); COMP_WORDS=(ketch ls --endp); COMP_CWORD=2; _ketch_completion ketch\n'
              'echo "${COMPREPLY[@]}"\n')
    r = subprocess.run(["bash", "-c", script], capture_output=True, timeout=60,
                       env=_subprocess_env({"PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}))
    assert r.stdout.decode().splitlines() == ["save", "--endpoint-url"], r.stderr
    assert run_ketch("completion", "tcsh").returncode == 2


def test_help_topics(run_ketch: RunKetch) -> None:
    r = run_ketch("help", check=True)
    assert b"  config " in r.stdout and b"  repository " in r.stdout
    text = run_ketch("help", "config", check=True).stdout.decode()
    from ketch.jobs import config as schema

    for table in (schema._TOP, schema._SET, schema._DUMP, schema.RETENTION_SCHEMA,
                  schema._SCHEDULE, schema._NOTIFY, schema._EMAIL):
        for key in table:
            assert re.search(rf"^  {key}: .*\n {{6}}\S", text, re.M), key
    assert "[[dump]]" in text and "[notify.email]" in text
    assert "  globals: a boolean (true or false) (default: true); for postgresql" in text
    assert run_ketch("help", "save", check=True).stdout.startswith(b"Usage: ketch save")
    bad = run_ketch("help", "confg")
    assert bad.returncode == 2 and b"did you mean 'config'?" in bad.stderr
