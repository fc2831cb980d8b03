"""Throwaway database servers for restore drills, from the machine's own
binaries, on a private unix socket in a scratch directory (no TCP port, no
system config: `--no-defaults`, trust authentication), stopped and removed
afterwards.

MariaDB/MySQL: `mariadb-install-db` + `mariadbd`; as root the server is told
`--user=root` (it refuses root otherwise). PostgreSQL: `initdb` + `postgres`
from the newest /usr/lib/postgresql/N/bin (or PATH), which refuse root
outright: as root the cluster belongs to the `postgres` OS user (`nobody`
where there is none), in a directory of its own under /tmp that it can enter.
"""

from __future__ import annotations

import glob
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from abc import ABC, abstractmethod
from collections.abc import Iterable
from pathlib import Path

from ketch.errors import KetchError
from ketch.jobs import sqlsplit

START_TIMEOUT = 120.0
STOP_TIMEOUT = 30.0
_SBIN = ("/usr/sbin", "/usr/local/sbin", "/sbin")
MYSQL_SKIP = ("information_schema", "performance_schema", "sys", "mysql")
# Up to this many tables per database get an exact row count.
MAX_COUNTED = 500


class DrillDbError(KetchError):
    """A throwaway server did not start, or a dump did not load into it."""


def _which(names: Iterable[str]) -> str | None:
    path = os.environ.get("PATH", os.defpath) + os.pathsep + os.pathsep.join(_SBIN)
    for n in names:
        if found := shutil.which(n, path=path):
            return found
    return None


def _tail(path: str, n: int = 3) -> str:
    try:
        with open(path, "rb") as f:
            f.seek(max(0, os.fstat(f.fileno()).st_size - 8192))
            text = f.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-n:])


class ThrowawayServer(ABC):
    """One server process; `load` streams a dump into its client, `tables` counts."""

    what = "database"
    # The client's option for one statement, and its column separator.
    statement_flag, separator = "-e", "\t"
    proc: subprocess.Popen[bytes] | None = None

    def __init__(self, workdir: str) -> None:
        self.workdir = workdir
        self.log = os.path.join(workdir, "server.log")

    def _wait(self, ready: list[str], env: dict[str, str] | None = None) -> None:
        end = time.monotonic() + START_TIMEOUT
        while True:
            if subprocess.run(ready, stdin=subprocess.DEVNULL, capture_output=True,
                              env=env).returncode == 0:
                return
            if self.proc is not None and self.proc.poll() is not None:
                raise DrillDbError(f"the throwaway {self.what} server exited at start-up: "
                                   f"{_tail(self.log)}")
            if time.monotonic() > end:
                raise DrillDbError(f"the throwaway {self.what} server did not answer within "
                                   f"{START_TIMEOUT:g} s: {_tail(self.log)}")
            time.sleep(0.1)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(sig)
        try:
            self.proc.wait(STOP_TIMEOUT)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    @abstractmethod
    def missing(self) -> str | None:
        """The program that is not installed, or None."""

    @abstractmethod
    def start(self) -> None: ...

    @abstractmethod
    def tables(self) -> dict[str, int]:
        """"DB.TABLE" (PostgreSQL: "DB.SCHEMA.TABLE") -> exact row count."""

    @abstractmethod
    def client(self, db: str | None = None) -> list[str]: ...

    def env(self) -> dict[str, str] | None:
        return None

    def query(self, sql: str, db: str | None = None) -> list[list[str]]:
        proc = subprocess.run([*self.client(db), self.statement_flag, sql],
                              stdin=subprocess.DEVNULL, capture_output=True, env=self.env(),
                              timeout=600)
        if proc.returncode != 0:
            raise DrillDbError(f"sanity query failed: "
                               f"{proc.stderr.decode(errors='replace').strip()[-300:]}")
        return [line.split(self.separator) for line in proc.stdout.decode(errors="replace").splitlines()]

    def load(self, blocks: Iterable[bytes], *, db: str | None = None) -> list[str]:
        """Stream a dump into the server's client(s); the clients' error lines."""
        errors: list[str] = []
        for code, errlog in self._clients_load(blocks, db):
            with open(errlog, "rb") as f:
                found = [line.strip() for line in f.read().decode(errors="replace").splitlines()
                         if "ERROR" in line]
            if code != 0 and not found:
                found = [f"the client exited with status {code}: {_tail(errlog)}"]
            errors += found
        return errors

    def _clients_load(self, blocks: Iterable[bytes], db: str | None) -> list[tuple[int, str]]:
        """(exit status, stderr file) of each client that loaded the dump: one here."""
        errlog = os.path.join(self.workdir, "client.err")
        with open(errlog, "wb") as err:
            proc = subprocess.Popen(self.client(db), stdin=subprocess.PIPE,
                                    stdout=subprocess.DEVNULL, stderr=err, env=self.env())
            assert proc.stdin is not None
            try:
                for block in blocks:
                    proc.stdin.write(block)
                proc.stdin.close()
            except BrokenPipeError:
                pass
            except BaseException:
                proc.kill()
                proc.wait()
                raise
            return [(proc.wait(), errlog)]


class MariaDB(ThrowawayServer):
    what = "MariaDB"

    def __init__(self, workdir: str) -> None:
        super().__init__(workdir)
        self.server = _which(("mariadbd", "mysqld"))
        self.install = _which(("mariadb-install-db", "mysql_install_db"))
        self.admin = _which(("mariadb-admin", "mysqladmin"))
        self.mysql = _which(("mariadb", "mysql"))
        self.socket = os.path.join(workdir, "sock")

    def missing(self) -> str | None:
        for prog, name in ((self.server, "mariadbd"), (self.install, "mariadb-install-db"),
                           (self.admin, "mariadb-admin"), (self.mysql, "mariadb")):
            if prog is None:
                return name
        return None

    def start(self) -> None:
        assert self.server and self.install and self.admin
        data = os.path.join(self.workdir, "data")
        user = ["--user=root"] if os.geteuid() == 0 else []
        init = subprocess.run([self.install, "--no-defaults", f"--datadir={data}", *user,
                               "--auth-root-authentication-method=normal", "--skip-test-db"],
                              stdin=subprocess.DEVNULL, capture_output=True, timeout=START_TIMEOUT)
        if init.returncode != 0:
            raise DrillDbError("mariadb-install-db failed: "
                               + (init.stderr or init.stdout).decode(errors="replace")[-300:])
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                [self.server, "--no-defaults", f"--datadir={data}", f"--socket={self.socket}",
                 f"--pid-file={os.path.join(self.workdir, 'pid')}", "--skip-networking", *user,
                 f"--log-error={self.log}", "--open-files-limit=1024", "--skip-log-bin",
                 "--max-allowed-packet=1G", "--innodb-flush-log-at-trx-commit=0",
                 "--innodb-doublewrite=0"],
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        self._wait([self.admin, "--no-defaults", f"--socket={self.socket}", "-uroot", "ping"])

    def client(self, db: str | None = None) -> list[str]:
        assert self.mysql
        return [self.mysql, "--no-defaults", f"--socket={self.socket}", "-uroot",
                "--max-allowed-packet=1G", "--batch", "--skip-column-names", "--raw",
                *([db] if db else [])]

    def _clients_load(self, blocks: Iterable[bytes], db: str | None) -> list[tuple[int, str]]:
        # One client is bound by its connection's one server thread: tables load
        # in parallel (sqlsplit says how a dump is cut safely).
        return sqlsplit.load(blocks, self.client(db), self.env(), self.workdir)

    def tables(self) -> dict[str, int]:
        skip = ",".join(f"'{s}'" for s in MYSQL_SKIP)
        names = self.query("SELECT table_schema, table_name FROM information_schema.tables "
                           f"WHERE table_type = 'BASE TABLE' AND table_schema NOT IN ({skip}) "
                           "ORDER BY 1, 2")
        return self._count([(s, t) for s, t in names])

    def _count(self, names: list[tuple[str, str]]) -> dict[str, int]:
        out: dict[str, int] = {}
        names = names[:MAX_COUNTED]
        for at in range(0, len(names), 100):
            part = names[at:at + 100]
            q = " UNION ALL ".join(
                f"SELECT {n}, COUNT(*) FROM `{s.replace('`', '``')}`.`{t.replace('`', '``')}`"
                for n, (s, t) in enumerate(part))
            for n, count in self.query(q):
                s, t = part[int(n)]
                out[f"{s}.{t}"] = int(count)
        return out


def _pg_bin() -> str | None:
    found = []
    for d in glob.glob("/usr/lib/postgresql/*/bin"):
        if all(os.access(os.path.join(d, p), os.X_OK) for p in ("initdb", "postgres", "psql")):
            try:
                found.append((int(Path(d).parent.name), d))
            except ValueError:
                continue
    if found:
        return max(found)[1]
    initdb = _which(("initdb",))
    return os.path.dirname(initdb) if initdb else None


class Postgres(ThrowawayServer):
    what = "PostgreSQL"
    statement_flag, separator = "-c", "|"
    SUPERUSER = "postgres"
    own = False  # the work directory is ours to remove

    def __init__(self, workdir: str) -> None:
        self.bin = _pg_bin()
        self.run_as: str | None = None
        if os.geteuid() == 0:
            for name in ("postgres", "nobody"):
                try:
                    pwd.getpwnam(name)
                    self.run_as = name
                    break
                except KeyError:
                    continue
        super().__init__(workdir)

    def missing(self) -> str | None:
        if self.bin is None or not all(os.access(os.path.join(self.bin, p), os.X_OK)
                                       for p in ("initdb", "postgres", "psql")):
            return "postgres"
        if os.geteuid() == 0 and self.run_as is None:
            return "postgres (no OS user to run it as)"
        return None

    def _prog(self, name: str) -> str:
        assert self.bin
        return os.path.join(self.bin, name)

    def start(self) -> None:
        # Its own directory under /tmp: the scratch directory is root's (0700).
        self.workdir = tempfile.mkdtemp(prefix="ketch-drill-pg.", dir="/tmp")
        self.log = os.path.join(self.workdir, "server.log")
        self.own = True
        if self.run_as:
            pw = pwd.getpwnam(self.run_as)
            os.chown(self.workdir, pw.pw_uid, pw.pw_gid)
        os.chmod(self.workdir, 0o755)
        data = os.path.join(self.workdir, "data")
        init = subprocess.run(
            [self._prog("initdb"), "-D", data, "-U", self.SUPERUSER, "--auth-local=trust",
             "-E", "UTF8", "--no-locale", "--no-sync"], user=self.run_as, cwd="/",
            stdin=subprocess.DEVNULL, capture_output=True, timeout=START_TIMEOUT)
        if init.returncode != 0:
            raise DrillDbError("initdb failed: "
                               + (init.stderr or init.stdout).decode(errors="replace")[-300:])
        log = os.open(self.log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        try:
            self.proc = subprocess.Popen(
                [self._prog("postgres"), "-D", data, "-k", self.workdir, "-c",
                 "listen_addresses=", "-c", "fsync=off", "-c", "full_page_writes=off",
                 "-c", "synchronous_commit=off"], user=self.run_as, cwd="/",
                stdin=subprocess.DEVNULL, stdout=log, stderr=log, start_new_session=True)
        finally:
            os.close(log)
        self._wait([self._prog("psql"), "-X", "-At", "-c", "SELECT 1", "-d", "postgres"],
                   self.env())

    def stop(self, sig: int = signal.SIGINT) -> None:  # SIGINT: a fast shutdown
        super().stop(sig)
        if self.own:
            shutil.rmtree(self.workdir, ignore_errors=True)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
        env.update(PGHOST=self.workdir, PGUSER=self.SUPERUSER)
        return env

    def client(self, db: str | None = None) -> list[str]:
        return [self._prog("psql"), "-X", "-q", "-At", "-v", "ON_ERROR_STOP=0",
                "-d", db or "postgres"]

    def tables(self) -> dict[str, int]:
        out: dict[str, int] = {}
        dbs = [r[0] for r in self.query("SELECT datname FROM pg_database WHERE NOT "
                                        "datistemplate AND datname <> 'postgres' ORDER BY 1")]
        for db in dbs:
            rows = self.query(
                "SELECT table_schema, table_name, (xpath('/row/c/text()', query_to_xml("
                "format('SELECT count(*) AS c FROM %I.%I', table_schema, table_name), "
                "false, true, '')))[1]::text FROM information_schema.tables WHERE "
                "table_type = 'BASE TABLE' AND table_schema NOT IN "
                f"('pg_catalog', 'information_schema') ORDER BY 1, 2 LIMIT {MAX_COUNTED}", db)
            for schema, table, count in rows:
                out[f"{db}.{schema}.{table}"] = int(count)
        return out
