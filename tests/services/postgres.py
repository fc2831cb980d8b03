"""A throwaway PostgreSQL cluster on a private unix socket, for tests and benchmarks.

Recipe and pitfalls: shared/reference/test-services.md, section 4.  initdb
refuses to run as root, so the cluster belongs to the ``postgres`` OS user that
the Debian package creates (no user is created or removed); the clients run as
root and connect over the socket directory with ``trust`` authentication
(``scram-sha-256`` over TCP on 127.0.0.1, where a password is checked).  The
postmaster is started directly rather than through ``pg_ctl``, which would
daemonize and leave no process to own.

    with PostgresServer.start() as pg:              # or .start(WORKDIR)
        pg.psql("CREATE DATABASE shop")
        rows = pg.query("SELECT 1", db="shop")      # [["1"]]
        env = pg.client_env()                       # PGHOST/PGPORT/PGUSER

The work directory must be reachable by the ``postgres`` user: it is made
0755 and owned by postgres, and each of its parents must let postgres in
(pytest's tmp dirs and a ``mktemp -d`` of root's are 0700 and do not).  So by
default the server makes its own work directory under /tmp and removes it
when it stops; a work directory passed in is left in place.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from collections.abc import Mapping
from pathlib import Path

from tests.services.process import ServiceProcess, free_port

START_TIMEOUT = 60.0
STOP_TIMEOUT = 30.0
OS_USER = "postgres"


def bin_dir() -> Path | None:
    """The newest installed /usr/lib/postgresql/N/bin holding initdb and postgres."""
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        if os.access(os.path.join(d, "initdb"), os.X_OK) and os.access(
                os.path.join(d, "postgres"), os.X_OK):
            try:
                found.append((int(Path(d).parent.name), Path(d)))
            except ValueError:
                continue
    return max(found)[1] if found else None


def missing_binaries() -> list[str]:
    """What this module needs and cannot find (programs, or the postgres user)."""
    missing = []
    b = bin_dir()
    if b is None:
        missing.append("initdb/postgres (/usr/lib/postgresql/N/bin)")
    for prog in ("psql", "pg_isready"):
        if b is None or not os.access(b / prog, os.X_OK):
            missing.append(prog)
    try:
        pwd.getpwnam(OS_USER)
    except KeyError:
        missing.append(f"the {OS_USER!r} OS user")
    return missing


class PostgresServer(ServiceProcess):
    """``postgres`` on ``WORKDIR`` (socket directory) and a free TCP port on
    127.0.0.1; see the module doc."""

    name = "postgres"
    user = "postgres"  # the database superuser

    def __init__(self, workdir: Path | None = None) -> None:
        b = bin_dir()
        if b is None:
            raise FileNotFoundError("PostgreSQL server binaries are not installed")
        self.bin = b
        self._own_workdir = workdir is None
        if workdir is None:
            workdir = Path(tempfile.mkdtemp(prefix="ketch-pg.", dir="/tmp"))
        self.workdir = Path(workdir).resolve()
        self.datadir = self.workdir / "data"
        self.host = str(self.workdir)  # a directory: libpq connects to its socket
        super().__init__(self.workdir / "postgres.log")
        self.port = 0

    # -- lifecycle ---------------------------------------------------------

    @classmethod
    def start(cls, workdir: Path | None = None) -> PostgresServer:
        """initdb a fresh cluster in *workdir* (default: a new directory under
        /tmp) and start it; return once it answers."""
        return cls(workdir)._start()

    def _launch(self) -> None:
        pw = pwd.getpwnam(OS_USER)
        self.workdir.mkdir(parents=True, exist_ok=True)
        os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.workdir, 0o755)
        init = subprocess.run(
            [str(self.bin / "initdb"), "-D", str(self.datadir), "-U", self.user,
             "--auth-local=trust", "--auth-host=scram-sha-256", "-E", "UTF8", "--no-locale",
             "--no-sync"],
            user=OS_USER, cwd="/", stdin=subprocess.DEVNULL, capture_output=True)
        if init.returncode != 0:
            raise RuntimeError("initdb failed:\n" + init.stdout.decode(errors="replace")
                               + init.stderr.decode(errors="replace"))
        self.port = free_port()
        self.log_path.touch()
        os.chown(self.log_path, pw.pw_uid, pw.pw_gid)
        self.spawn(
            [str(self.bin / "postgres"), "-D", str(self.datadir), "-k", self.host,
             "-p", str(self.port), "-c", "listen_addresses=127.0.0.1",
             # A throwaway cluster: durability buys nothing and costs time.
             "-c", "fsync=off", "-c", "full_page_writes=off",
             "-c", "synchronous_commit=off"],
            user=OS_USER, cwd="/")
        self.wait_ready(self._answers, START_TIMEOUT,
                        f"postgres to answer on {self.host} and port {self.port}")

    def _answers(self) -> bool:
        return subprocess.run(
            [str(self.bin / "pg_isready"), "-q", "-h", self.host, "-p", str(self.port)],
            stdin=subprocess.DEVNULL, capture_output=True).returncode == 0

    def stop(self) -> None:
        """Fast shutdown (SIGINT to the postmaster); idempotent.  A work directory
        made by the server itself is removed."""
        self.stop_process(signal.SIGINT, STOP_TIMEOUT)
        if self._own_workdir:
            shutil.rmtree(self.workdir, ignore_errors=True)

    # -- clients -------------------------------------------------------------

    def client_env(self, base: Mapping[str, str] | None = None) -> dict[str, str]:
        """*base* (default: os.environ) with PGHOST/PGPORT/PGUSER set for this cluster."""
        env = dict(os.environ if base is None else base)
        for k in ("PGPASSWORD", "PGPASSFILE", "PGDATABASE", "PGSERVICE"):
            env.pop(k, None)
        env.update(PGHOST=self.host, PGPORT=str(self.port), PGUSER=self.user)
        return env

    def psql(self, sql: str, db: str = "postgres", *, input: bytes | None = None,
             stop_on_error: bool = True, timeout: float = 600) -> str:
        """Run *sql* (or the script in *input* when *sql* is empty) with psql;
        return its unaligned, tuples-only output; raise on an error (or, with
        stop_on_error=False, only when psql itself fails)."""
        argv = [str(self.bin / "psql"), "-X", "-q", "-At", "-d", db,
                "-v", f"ON_ERROR_STOP={1 if stop_on_error else 0}"]
        if sql:
            argv += ["-c", sql]
        proc = subprocess.run(argv, input=input if input is not None else b"",
                              capture_output=True, env=self.client_env(), timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"psql failed ({proc.returncode}): "
                               f"{proc.stderr.decode(errors='replace').strip()}")
        return proc.stdout.decode()

    def query(self, sql: str, db: str = "postgres") -> list[list[str]]:
        """Rows of *sql*, each a list of column texts ('|'-separated by psql -A)."""
        return [line.split("|") for line in self.psql(sql, db).splitlines()]
