"""A throwaway MariaDB server on a private unix socket, for tests and benchmarks.

Recipe and pitfalls: shared/reference/test-services.md, section 3.  The data
directory, socket, pid file and error log all live in one work directory; the
server listens on no TCP port (``--skip-networking``) and runs as root (the
test suite runs as root; ``--user=root`` is then required).  ``--no-defaults``
everywhere, or ``/etc/mysql/my.cnf`` would point server and clients at the
system's socket in /run/mysqld.

    with MariaDBServer.start(tmp_path / "mdb") as db:
        db.sql("CREATE DATABASE shop")
        rows = db.query("SELECT 1")           # [["1"]]
        subprocess.run([*db.client_argv(), "shop"], input=b"...")

Root logs in over the socket without a password (``normal`` authentication
with an empty password, as mariadb-install-db leaves it).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path

from tests.services.process import ServiceProcess

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0

# The server and client programs, by their MariaDB names with the MySQL
# compatibility names as fallback (Debian ships both).
_SERVER_NAMES = ("mariadbd", "mysqld")
_INSTALL_NAMES = ("mariadb-install-db", "mysql_install_db")
_ADMIN_NAMES = ("mariadb-admin", "mysqladmin")
_CLIENT_NAMES = ("mariadb", "mysql")
_SBIN_DIRS = ("/usr/sbin", "/usr/local/sbin")


def _find(names: Sequence[str]) -> str | None:
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SBIN_DIRS)
    for name in names:
        found = shutil.which(name, path=path)
        if found:
            return found
    return None


def missing_binaries() -> list[str]:
    """The MariaDB programs this module needs that are not installed."""
    wanted = {"server": _SERVER_NAMES, "install-db": _INSTALL_NAMES,
              "admin": _ADMIN_NAMES, "client": _CLIENT_NAMES}
    return [names[0] for names in wanted.values() if _find(names) is None]


class MariaDBServer(ServiceProcess):
    """``mariadbd`` on ``WORKDIR/sock``; see the module doc."""

    name = "mariadbd"
    user = "root"

    def __init__(self, workdir: Path, *, buffer_pool: str = "128M") -> None:
        self.workdir = Path(workdir).resolve()
        self.datadir = self.workdir / "data"
        self.socket = str(self.workdir / "sock")
        super().__init__(self.workdir / "err.log")
        self.buffer_pool = buffer_pool
        server, install, admin, client = (_find(n) for n in (
            _SERVER_NAMES, _INSTALL_NAMES, _ADMIN_NAMES, _CLIENT_NAMES))
        if not (server and install and admin and client):
            raise FileNotFoundError(f"MariaDB is not installed (missing {missing_binaries()})")
        self._server, self._install, self._admin, self._client = server, install, admin, client

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path, *, buffer_pool: str = "128M") -> MariaDBServer:
        """Create a fresh data directory in *workdir* and start the server on it;
        return once it answers a ping."""
        return cls(workdir, buffer_pool=buffer_pool)._start()

    def _launch(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        # A socket path is limited to 107 bytes (sun_path); fail clearly.
        if len(self.socket) > 100:
            raise ValueError(f"socket path too long for a unix socket: {self.socket}")
        install = subprocess.run(
            [self._install, "--no-defaults", f"--datadir={self.datadir}", "--user=root",
             "--auth-root-authentication-method=normal", "--skip-test-db"],
            stdin=subprocess.DEVNULL, capture_output=True)
        if install.returncode != 0:
            raise RuntimeError("mariadb-install-db failed:\n"
                               + install.stdout.decode(errors="replace")
                               + install.stderr.decode(errors="replace"))
        # mariadbd writes its own log (--log-error); stdout and stderr say nothing.
        self.spawn(
            [self._server, "--no-defaults", f"--datadir={self.datadir}",
             f"--socket={self.socket}", f"--pid-file={self.workdir / 'pid'}",
             "--skip-networking", "--user=root", f"--log-error={self.log_path}",
             # Harmless "could not increase max_open_files" otherwise.
             "--open-files-limit=1024", f"--innodb-buffer-pool-size={self.buffer_pool}",
             "--skip-log-bin",
             # A throwaway server: durability buys nothing and costs seconds.
             "--innodb-flush-log-at-trx-commit=0", "--innodb-doublewrite=0"],
            to_log=False)
        self.wait_ready(self._ping, START_TIMEOUT, f"mariadbd to answer on {self.socket}")

    def _ping(self) -> bool:
        return subprocess.run(
            [self._admin, "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"],
            stdin=subprocess.DEVNULL, capture_output=True).returncode == 0

    def stop(self) -> None:
        """Shut the server down (idempotent); the work directory is left to the caller."""
        self.stop_process(timeout=STOP_TIMEOUT)  # SIGTERM is mariadbd's normal shutdown

    # -- clients -------------------------------------------------------------

    def client_argv(self, *, user: str | None = None) -> list[str]:
        """The ``mariadb`` client connected as root (or *user*, no password) over
        our socket; append the database and options."""
        return [self._client, "--no-defaults", f"--socket={self.socket}",
                f"--user={user or self.user}"]

    def sql(self, statements: str, db: str | None = None, *, input: bytes | None = None,
            timeout: float = 600) -> str:
        """Run *statements* (or the script in *input* when *statements* is empty)
        and return the client's tab-separated output; raise on any error."""
        argv = [*self.client_argv(), "--batch", "--skip-column-names", "--raw"]
        if statements:
            argv += ["-e", statements]
        if db:
            argv.append(db)
        proc = subprocess.run(argv, input=input if input is not None else b"",
                              capture_output=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"mariadb client failed ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode()

    def query(self, statement: str, db: str | None = None) -> list[list[str]]:
        """Rows of *statement*, each a list of column texts."""
        return [line.split("\t") for line in self.sql(statement, db).splitlines()]
