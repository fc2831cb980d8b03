"""Shared fixtures.

- ``git_env`` (autouse, session): isolates git and bup from the user's config
  and from ``$KETCH_DIR``/``$BUP_DIR``, and points ``$HOME`` at a temp dir so a
  test that forgets ``-d`` cannot touch the real ``~/.ketch`` (and
  ``$KETCH_CONFIG`` at a missing file, not the machine's config).
- ``run_ketch(*args, input=None, check=False, cwd=None, env=None)``: runs the
  CLI as ``python -m ketch ARGS`` and returns the CompletedProcess (bytes).
- ``bup(repo, *args, input=None, check=True)``: runs ``bup -d REPO ARGS``.
  Skips when bup is missing, except in CI (``CI=true``) where it fails.
- ``repo_dir``: a fresh repository made by ``ketch init -d``.

Under CI (``CI=true``) a skipped test fails: CI installs every tool the tests
use (scripts/install-deps.sh) and runs as root, so a skip there is a missing
tool or a machine-dependent test, never something to pass silently. The one
exception carries ``@pytest.mark.allowed_skip("why")`` (systemd as PID 1,
which a container cannot give).
"""

from __future__ import annotations

import os
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

SRC_DIR = Path(__file__).resolve().parent.parent / "src"

RunResult = subprocess.CompletedProcess[bytes]
RunKetch = Callable[..., RunResult]
RunBup = Callable[..., RunResult]


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in ("1", "true", "yes")


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line(
        "markers", "allowed_skip(reason): this test may skip under CI=true (why it must)")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Iterator[None]:
    outcome = yield
    rep: pytest.TestReport = outcome.get_result()  # type: ignore[attr-defined]
    if not (rep.skipped and in_ci()) or hasattr(rep, "wasxfail"):
        return
    if item.get_closest_marker("allowed_skip") is not None:
        return
    reason = rep.longrepr[2] if isinstance(rep.longrepr, tuple) else str(rep.longrepr)
    rep.outcome = "failed"
    rep.longrepr = (f"skipped under CI=true, where every tool is installed and tests run as "
                    f"root: {reason}")


@pytest.fixture(autouse=True, scope="session")
def git_env(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    home = tmp_path_factory.mktemp("home")
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("GIT_CONFIG_GLOBAL", "/dev/null")
        mp.setenv("GIT_CONFIG_NOSYSTEM", "1")
        for role in ("AUTHOR", "COMMITTER"):
            mp.setenv(f"GIT_{role}_NAME", "Ketch Test")
            mp.setenv(f"GIT_{role}_EMAIL", "ketch-test@example.invalid")
        mp.delenv("KETCH_DIR", raising=False)
        mp.delenv("BUP_DIR", raising=False)
        mp.setenv("HOME", str(home))
        # Commands without -d/-r read the machine's config (/etc/ketch/ketch.toml):
        # a test must not pick up the one of the machine it runs on.
        mp.setenv("KETCH_CONFIG", str(home / "no-ketch.toml"))
        # Nor the backup server's (/etc/ketch/server.toml).
        mp.setenv("KETCH_SERVER_CONFIG", str(home / "no-server.toml"))
        yield


def _arg(a: Any) -> str | bytes:
    if isinstance(a, (str, bytes, os.PathLike)):
        return os.fspath(a)
    return str(a)


def _fail_with_output(cmd: list[str | bytes], proc: RunResult) -> None:
    """Raise CalledProcessError, leaving the output in pytest's captured stderr."""
    sys.stderr.write(f"$ {shlex.join(map(os.fsdecode, cmd))}\n[exit {proc.returncode}]\n")
    sys.stderr.write(proc.stdout.decode(errors="replace"))
    sys.stderr.write(proc.stderr.decode(errors="replace"))
    raise subprocess.CalledProcessError(proc.returncode, cmd, proc.stdout, proc.stderr)


def _subprocess_env(extra: Mapping[str, str] | None) -> dict[str, str]:
    env = dict(os.environ)
    # Works whether or not ketch is installed in the interpreter running pytest.
    pythonpath = env.get("PYTHONPATH")
    env["PYTHONPATH"] = f"{SRC_DIR}{os.pathsep}{pythonpath}" if pythonpath else str(SRC_DIR)
    if extra:
        env.update(extra)
    return env


@pytest.fixture
def run_ketch() -> RunKetch:
    def run(
        *args: Any,
        input: bytes | None = None,
        check: bool = False,
        cwd: str | os.PathLike[str] | None = None,
        env: Mapping[str, str] | None = None,
        timeout: float = 600,
    ) -> RunResult:
        cmd: list[str | bytes] = [sys.executable, "-m", "ketch", *map(_arg, args)]
        proc = subprocess.run(
            cmd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            cwd=cwd,
            env=_subprocess_env(env),
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            _fail_with_output(cmd, proc)
        return proc

    return run


@pytest.fixture
def bup() -> RunBup:
    from tests.buputil import bup_exe as find_bup  # buputil imports this module

    bup_exe = find_bup()

    def run(
        repo: str | os.PathLike[str],
        *args: Any,
        input: bytes | None = None,
        check: bool = True,
        timeout: float = 600,
    ) -> RunResult:
        cmd: list[str | bytes] = [bup_exe, "-d", os.fspath(repo), *map(_arg, args)]
        proc = subprocess.run(
            cmd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            _fail_with_output(cmd, proc)
        return proc

    return run


@pytest.fixture
def repo_dir(tmp_path: Path, run_ketch: RunKetch) -> Path:
    path = tmp_path / "repo"
    run_ketch("init", "-d", path, check=True)
    return path
