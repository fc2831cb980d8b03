"""Fixtures for the backup-job tests.

- ``mariadb_server`` (session): a started :class:`tests.services.mariadb.MariaDBServer`
  on a private socket (root, no password).
- ``postgres_server`` (session): a started
  :class:`tests.services.postgres.PostgresServer` (socket directory, trust
  authentication as ``postgres``).

Both skip when the server or client programs are missing, except in CI
(``CI=true``) where they fail.  Tests share the servers: create databases
under names of their own.

- ``in_pid_namespace``: run ketch in a PID namespace of its own (``unshare
  --pid --mount-proc``), whose process table holds no cron daemon, or one
  process named ``cron`` (a copy of ``sleep``) with ``cron_running=True``:
  whether a cron daemon runs is then the test's to decide, whatever runs on
  the machine. Its PID 1 is never systemd either.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Protocol

import pytest

from tests.conftest import RunResult, _subprocess_env, in_ci
from tests.services import mariadb, postgres


def _require(missing: list[str], what: str, packages: str) -> None:
    if not missing:
        return
    msg = (f"{what} is not installed (missing {', '.join(missing)}; "
           f"scripts/install-deps.sh installs it: apt-get install {packages})")
    if in_ci():
        pytest.fail(f"{msg}; CI requires it")
    pytest.skip(msg)


def require_mariadb() -> None:
    missing = mariadb.missing_binaries()
    missing += [p for p in ("mysqldump",) if shutil.which(p) is None]
    _require(missing, "MariaDB", "mariadb-server mariadb-client")


def require_postgres() -> None:
    missing = postgres.missing_binaries()
    missing += [p for p in ("pg_dump", "pg_dumpall", "psql") if shutil.which(p) is None]
    _require(missing, "PostgreSQL", "postgresql postgresql-client")


@pytest.fixture(scope="session")
def mariadb_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[mariadb.MariaDBServer]:
    require_mariadb()
    began = time.monotonic()
    with mariadb.MariaDBServer.start(tmp_path_factory.mktemp("mariadb")) as server:
        # Shown with -rP / on failure: start-up cost is worth keeping an eye on.
        print(f"mariadbd on {server.socket} after {time.monotonic() - began:.2f} s")
        yield server


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[postgres.PostgresServer]:
    require_postgres()
    began = time.monotonic()
    # Its own work directory under /tmp: pytest's tmp dirs are closed to the
    # postgres user (see tests/services/postgres.py).
    with postgres.PostgresServer.start() as server:
        print(f"postgres on {server.host}:{server.port} after {time.monotonic() - began:.2f} s")
        yield server


class InNamespace(Protocol):
    def __call__(self, *args: Any, cron_running: bool = False,
                 code: str | None = None) -> RunResult: ...


@pytest.fixture
def in_pid_namespace(tmp_path_factory: pytest.TempPathFactory) -> InNamespace:
    unshare = shutil.which("unshare")
    probe = subprocess.run([unshare or "unshare", "--pid", "--fork", "--mount-proc", "true"],
                           capture_output=True, check=False) if unshare else None
    if probe is None or probe.returncode != 0:
        why = probe.stderr.decode().strip() if probe else "unshare is not installed"
        if in_ci():
            pytest.fail(f"cannot make a PID namespace ({why}); CI requires it")
        pytest.skip(f"cannot make a PID namespace: {why} (needs root)")
    fake = tmp_path_factory.mktemp("fakecron") / "cron"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    # ketch is PID 1 of the namespace: when it exits, the kernel ends the fake
    # daemon too. The loop waits until the daemon's exec made its name "cron".
    start_cron = ('"$FAKE_CRON" 600 & while ! grep -qx cron /proc/$!/comm; do sleep 0.01; '
                  "done; ")

    def run(*args: Any, cron_running: bool = False, code: str | None = None) -> RunResult:
        """``ketch ARGS`` in the namespace; with ``code``, ``python -c CODE ARGS``."""
        assert unshare is not None
        script = (start_cron if cron_running else "") + 'exec "$@"'
        prog = ["-c", code] if code is not None else ["-m", "ketch"]
        cmd = [unshare, "--pid", "--fork", "--mount-proc", "/bin/sh", "-c", script, "sh",
               sys.executable, *prog, *(os.fspath(a) if isinstance(a, Path) else str(a)
                                        for a in args)]
        return subprocess.run(cmd, capture_output=True, stdin=subprocess.DEVNULL, timeout=120,
                              env=_subprocess_env({"FAKE_CRON": str(fake)}), check=False)

    return run
