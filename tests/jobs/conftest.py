"""Fixtures for the backup-job tests.

- ``mariadb_server`` (session): a started :class:`tests.services.mariadb.MariaDBServer`
  on a private socket (root, no password).
- ``postgres_server`` (session): a started
  :class:`tests.services.postgres.PostgresServer` (socket directory, trust
  authentication as ``postgres``).

Both skip when the server or client programs are missing, except in CI
(``CI=true``) where they fail.  Tests share the servers: create databases
under names of their own.
"""

from __future__ import annotations

import shutil
import time
from collections.abc import Iterator

import pytest

from tests.conftest import in_ci
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
