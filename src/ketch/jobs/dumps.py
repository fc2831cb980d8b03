"""Database dumps streamed into the repository, one save per run of a `[[dump]]`.

Each dump tool's stdout is hashsplit straight into the repository
(`dumpsave.save_sources`): no temporary copy of the data on disk.  One run
of a DumpSpec makes one save on branch `spec.name`, holding one file per
database at the save's root (`ketch ls -l NAME/latest`):

    mysql        DB.sql       mysqldump --single-transaction --routines --events
                              --triggers --hex-blob --databases DB
    postgresql   DB.sql       pg_dump --format=plain --create DB
                 globals.sql  pg_dumpall --globals-only (roles), unless globals = false
    mongodb      DB.archive   mongodump --archive [--db DB]  (all.archive: every database)
    sqlite       BASENAME     the online backup API (a consistent copy of a live file)
    command      FILE         the command's stdout (`filename`, default the dump's name)

Which databases: the listed ones, or, with none listed, every one the server
has except MySQL's information_schema, performance_schema and sys (`mysql`,
which holds users and grants, is kept), and PostgreSQL's templates (`postgres`
is kept).  Each database is dumped on its own (consistent per database, not
across them).  Plain SQL formats, so that every restore is a pipe:
`ketch cat-file mysql/latest/app.sql | mysql` (the dump recreates the
database); see `restore_command`.

A dump fails (DumpFailed, the branch does not move) when its tool exits
non-zero or is killed, or when the stream is truncated: mysqldump's output
must end with `-- Dump completed` (checked unless extra_args has
--skip-comments or --compact, which drop that line) and pg_dump's with
`-- PostgreSQL database dump complete`; mongodump, sqlite and commands are
judged by exit status only.

Credentials never go on a command line (where `ps` shows them) nor into a
message: MySQL/MariaDB read them from an option file given as
`--defaults-extra-file` (the first option, as mysql requires); PostgreSQL
from PGPASSFILE (`passfile`); MongoDB's URI (`uri_file`) goes into a 0600
temporary `--config` YAML file, removed afterwards.  `env` / `env_file` add
variables to the tools' environment (MYSQL_PWD works but is deprecated by
MySQL: prefer an option file).  Tool stderr is kept in a bounded buffer and
scrubbed of anything that looks like a password before it reaches a message.
"""

from __future__ import annotations

import json
import os
import pwd
import shlex
import shutil
import sqlite3
import subprocess
import tempfile
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager

from ketch.errors import KetchError
from ketch.jobs.dumpenv import base_env, find_tool, known_secrets, tool_user
from ketch.jobs.dumpsave import DumpFailed as DumpFailed
from ketch.jobs.dumpsave import DumpResult as DumpResult
from ketch.jobs.dumpsave import Source, save_sources, scrub, tail_lines, unique_filename
from ketch.jobs.model import DumpSpec
from ketch.progress import Progress
from ketch.repo import WritableRepository

__all__ = ["DumpFailed", "DumpResult", "check_dump", "detect_local_databases",
           "restore_command", "run_dump"]

MYSQL_SYSTEM_DBS = frozenset({"information_schema", "performance_schema", "sys"})
# Left out of what `detect_local_databases` proposes, on top of the above.
MYSQL_DETECT_SKIP = MYSQL_SYSTEM_DBS | {"mysql"}
PG_DETECT_SKIP = frozenset({"postgres"})
PG_LIST_SQL = ("SELECT datname FROM pg_database WHERE datallowconn AND NOT datistemplate "
               "ORDER BY datname")
MYSQL_DONE = b"\n-- Dump completed"
PG_DONE = b"\n-- PostgreSQL database dump complete\n"
PG_GLOBALS_DONE = b"\n-- PostgreSQL database cluster dump complete\n"
# Listing databases or checking a server: a dead server must not hang a run.
QUERY_TIMEOUT = 60.0
CHECK_TIMEOUT = 20.0
# Debian's MariaDB/MySQL maintenance credentials, readable by root.
DEBIAN_CNF = "/etc/mysql/debian.cnf"

# Program names, first found on PATH wins (MariaDB also installs the MySQL names).
_MYSQLDUMP = ("mysqldump", "mariadb-dump")
_MYSQL = ("mysql", "mariadb")


# -- MySQL / MariaDB ----------------------------------------------------------------


def _mysql_conn(spec: DumpSpec) -> list[str]:
    """Connection options; --defaults-extra-file must come first."""
    argv = []
    if spec.options_file:
        argv.append(f"--defaults-extra-file={spec.options_file}")
    if spec.host and spec.host.startswith("/"):
        argv.append(f"--socket={spec.host}")
    elif spec.host:
        argv.append(f"--host={spec.host}")
    if spec.port:
        argv.append(f"--port={spec.port}")
        if not (spec.host and spec.host.startswith("/")):
            # Else "localhost" means the socket and the port is ignored.
            argv.append("--protocol=TCP")
    if spec.user:
        argv.append(f"--user={spec.user}")
    return argv


def _query(argv: list[str], env: dict[str, str], user: str | None, cwd: str | None,
           timeout: float) -> tuple[int, bytes, bytes]:
    """Run a client query: (exit status, stdout, stderr); (-1, b"", reason) when
    it cannot be started or times out."""
    try:
        p = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True, env=env,
                           user=user, cwd=cwd, timeout=timeout)
    except subprocess.TimeoutExpired:
        return -1, b"", f"no answer within {timeout:.0f} s".encode()
    except (OSError, subprocess.SubprocessError) as e:
        return -1, b"", str(e).encode()
    return p.returncode, p.stdout, p.stderr


def _mysql_list(spec: DumpSpec, env: dict[str, str], timeout: float = QUERY_TIMEOUT
                ) -> list[str]:
    """SHOW DATABASES, as the dump's credentials see them."""
    user, cwd = tool_user(spec)
    prog = find_tool(_MYSQL, env, "MySQL/MariaDB")
    code, out, err = _query([prog, *_mysql_conn(spec), "--batch", "--skip-column-names",
                             "--raw", "-e", "SHOW DATABASES"], env, user, cwd, timeout)
    if code != 0:
        raise DumpFailed(scrub(f"dump {spec.name}: cannot list the MySQL databases: "
                               f"{tail_lines(err) or f'status {code}'}", known_secrets(spec)))
    return [ln for ln in out.decode("utf-8", "replace").splitlines() if ln]


def _mysql_sources(spec: DumpSpec, env: dict[str, str]) -> Iterator[Source]:
    user, cwd = tool_user(spec)
    dbs = spec.databases or [d for d in _mysql_list(spec, env) if d not in MYSQL_SYSTEM_DBS]
    dbs = list(dict.fromkeys(dbs))  # a database listed twice is dumped once
    prog = find_tool(_MYSQLDUMP, env, "MySQL/MariaDB")
    # Without comments there is no final line to check the stream against.
    marker = None if {"--skip-comments", "--compact"} & set(spec.extra_args) else MYSQL_DONE
    taken: set[str] = set()
    for db in dbs:
        argv = [prog, *_mysql_conn(spec), "--single-transaction", "--routines", "--events",
                "--triggers", "--hex-blob", *spec.extra_args, "--databases", db]
        yield Source(unique_filename(f"{db}.sql", taken), f"mysqldump of database {db}",
                     argv=argv, env=env, user=user, cwd=cwd, done_marker=marker,
                     stderr_warns=True)


# -- PostgreSQL -------------------------------------------------------------------------


def _pg_env(spec: DumpSpec, base: dict[str, str]) -> dict[str, str]:
    env = dict(base)
    # Not secrets: connection settings go in the environment like the password
    # file, so every tool (pg_dump, pg_dumpall, psql) gets them the same way.
    if spec.host:
        env["PGHOST"] = spec.host
    if spec.port:
        env["PGPORT"] = str(spec.port)
    if spec.user:
        env["PGUSER"] = spec.user
    if spec.passfile:
        env["PGPASSFILE"] = spec.passfile
    env.setdefault("PGCONNECT_TIMEOUT", "30")
    return env


def _pg_list(spec: DumpSpec, env: dict[str, str], timeout: float = QUERY_TIMEOUT) -> list[str]:
    user, cwd = tool_user(spec)
    psql = find_tool(("psql",), env, "PostgreSQL")
    code, out, err = _query([psql, "-X", "--no-password", "-At", "-d", "postgres",
                             "-c", PG_LIST_SQL], env, user, cwd, timeout)
    if code != 0:
        raise DumpFailed(scrub(f"dump {spec.name}: cannot list the PostgreSQL databases: "
                               f"{tail_lines(err) or f'status {code}'}", known_secrets(spec)))
    return [ln for ln in out.decode("utf-8", "replace").splitlines() if ln]


def _pg_sources(spec: DumpSpec, env: dict[str, str]) -> Iterator[Source]:
    user, cwd = tool_user(spec)
    taken: set[str] = set()
    if spec.globals:
        # First, and its name reserved: roles must exist before the databases
        # that refer to them are restored.
        dumpall = find_tool(("pg_dumpall",), env, "PostgreSQL")
        yield Source(unique_filename("globals.sql", taken), "pg_dumpall --globals-only",
                     argv=[dumpall, "--no-password", "--globals-only"], env=env, user=user,
                     cwd=cwd, done_marker=PG_GLOBALS_DONE, stderr_warns=True)
    dbs = list(dict.fromkeys(spec.databases or _pg_list(spec, env)))
    pg_dump = find_tool(("pg_dump",), env, "PostgreSQL")
    for db in dbs:
        argv = [pg_dump, "--no-password", "--format=plain", "--create", *spec.extra_args, db]
        yield Source(unique_filename(f"{db}.sql", taken), f"pg_dump of database {db}",
                     argv=argv, env=env, user=user, cwd=cwd, done_marker=PG_DONE,
                     stderr_warns=True)


# -- MongoDB, SQLite, any command -------------------------------------------------------


@contextmanager
def _mongo_config(spec: DumpSpec, user: str | None) -> Iterator[str]:
    """A 0600 YAML file holding `uri:` (the one temporary file: credentials, not
    data), readable by the dump's user, removed afterwards."""
    if not spec.uri_file:
        raise DumpFailed(f"dump {spec.name}: mongodb needs uri_file")
    try:
        with open(spec.uri_file, encoding="utf-8") as f:
            uri = f.read().strip()
    except OSError as e:
        raise DumpFailed(f"dump {spec.name}: uri_file {spec.uri_file}: {e.strerror}") from None
    fd, path = tempfile.mkstemp(prefix="ketch-mongodump-", suffix=".yaml")
    try:
        try:
            # A JSON string is a valid YAML double-quoted scalar: any URI survives.
            os.write(fd, f"uri: {json.dumps(uri)}\n".encode())
            if user is not None:
                pw = pwd.getpwnam(user)
                os.fchown(fd, pw.pw_uid, pw.pw_gid)
        finally:
            os.close(fd)
        yield path
    finally:
        os.unlink(path)


def _mongo_sources(spec: DumpSpec, env: dict[str, str], config: str) -> Iterator[Source]:
    user, cwd = tool_user(spec)
    prog = find_tool(("mongodump",), env, "MongoDB database")
    taken: set[str] = set()
    # --quiet: mongodump logs every collection to stderr otherwise.
    base = [prog, "--config", config, "--archive", "--quiet"]
    dbs: list[str | None] = [*spec.databases] or [None]
    for db in dbs:
        argv = [*base, *(["--db", db] if db else []), *spec.extra_args]
        yield Source(unique_filename(f"{db or 'all'}.archive", taken),
                     f"mongodump of database {db}" if db else "mongodump of all databases",
                     argv=argv, env=env, user=user, cwd=cwd)


def sqlite_backup(path: str) -> bytes:
    """A consistent copy of a live SQLite database, made with the online backup API
    into memory (no temporary file): it costs the database's size in memory,
    twice at the peak.  For very big files a `command` dump running
    `sqlite3 FILE .dump` streams instead."""
    uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
    src = sqlite3.connect(uri, uri=True)
    try:
        dst = sqlite3.connect(":memory:")
        try:
            src.backup(dst)
            return dst.serialize()
        finally:
            dst.close()
    finally:
        src.close()


def _sqlite_source(spec: DumpSpec) -> Source:
    if not spec.path:
        raise DumpFailed(f"dump {spec.name}: sqlite needs path")
    path = spec.path

    def produce() -> bytes:
        if not os.path.isfile(path):
            raise DumpFailed(f"dump {spec.name}: sqlite backup of {path} failed: no such file")
        try:
            return sqlite_backup(path)
        except (sqlite3.Error, MemoryError) as e:
            raise DumpFailed(f"dump {spec.name}: sqlite backup of {path} failed: {e}") from None

    return Source(os.path.basename(path.rstrip("/")) or spec.name, f"sqlite backup of {path}",
                  produce=produce)


def _command_source(spec: DumpSpec, env: dict[str, str]) -> Source:
    if not spec.command:
        raise DumpFailed(f"dump {spec.name}: command is empty")
    user, cwd = tool_user(spec)
    return Source(unique_filename(spec.filename or spec.name, set()),
                  f"command {shlex.quote(spec.command[0])}",
                  argv=[*spec.command, *spec.extra_args], env=env, user=user, cwd=cwd)


# -- the API the runner uses ---------------------------------------------------------------


def run_dump(repo: WritableRepository, spec: DumpSpec, *, level: int = 1,
             progress: Progress | None = None, date: float | None = None) -> DumpResult:
    """Dump `spec`'s databases into one new save on branch `spec.name`.

    Raises DumpFailed (and records nothing) when any of its dumps fails."""
    env = base_env(spec)
    secrets = known_secrets(spec)

    def save(sources: Iterator[Source]) -> DumpResult:
        return save_sources(repo, spec.name, sources, level=level, progress=progress,
                            date=date, secrets=secrets)

    if spec.type == "mysql":
        return save(_mysql_sources(spec, env))
    if spec.type == "postgresql":
        return save(_pg_sources(spec, _pg_env(spec, env)))
    if spec.type == "mongodb":
        with _mongo_config(spec, tool_user(spec)[0]) as config:
            return save(_mongo_sources(spec, env, config))
    if spec.type == "sqlite":
        return save(iter([_sqlite_source(spec)]))
    if spec.type == "command":
        return save(iter([_command_source(spec, env)]))
    raise DumpFailed(f"dump {spec.name}: unknown type {spec.type!r}")


def _missing(what: str, wanted: list[str], have: list[str]) -> list[str]:
    have_set = set(have)
    return [f"{what}: database {db!r} does not exist" for db in wanted if db not in have_set]


def _check_file(spec: DumpSpec, key: str, path: str | None) -> list[str]:
    if path and not os.access(path, os.R_OK):
        return [f"dump {spec.name}: {key} {path} cannot be read"]
    return []


def check_dump(spec: DumpSpec) -> list[str]:
    """What stops `spec` from dumping (empty: the server answers and the databases
    exist).  Never raises for an unreachable server.  MongoDB: only the tools and
    the URI file are checked (reaching the server would mean dumping)."""
    what = f"dump {spec.name}"
    problems: list[str] = []
    for key in ("options_file", "passfile", "uri_file", "env_file"):
        problems += _check_file(spec, key, getattr(spec, key))
    if problems:
        return problems
    try:
        env = base_env(spec)
        if spec.type == "mysql":
            find_tool(_MYSQLDUMP, env, "MySQL/MariaDB")
            have = _mysql_list(spec, env, CHECK_TIMEOUT)
            return _missing(what, spec.databases, have)
        if spec.type == "postgresql":
            pg_env = _pg_env(spec, env)
            for prog in ("pg_dump", "pg_dumpall") if spec.globals else ("pg_dump",):
                find_tool((prog,), pg_env, "PostgreSQL")
            have = _pg_list(spec, pg_env, CHECK_TIMEOUT)
            return _missing(what, spec.databases, have)
        if spec.type == "mongodb":
            find_tool(("mongodump",), env, "MongoDB database")
            return [] if spec.uri_file else [f"{what}: mongodb needs uri_file"]
        if spec.type == "sqlite":
            return _check_sqlite(what, spec.path)
        if spec.type == "command":
            if not spec.command:
                return [f"{what}: command is empty"]
            exe = spec.command[0]
            found = (os.access(exe, os.X_OK) if "/" in exe
                     else shutil.which(exe, path=env.get("PATH", os.defpath)))
            return [] if found else [f"{what}: {exe}: command not found"]
        return [f"{what}: unknown type {spec.type!r}"]
    except KetchError as e:
        return [str(e)]


def _check_sqlite(what: str, path: str | None) -> list[str]:
    if not path:
        return [f"{what}: sqlite needs path"]
    if not os.path.isfile(path):
        return [f"{what}: {path}: no such file"]
    try:
        uri = "file:" + urllib.parse.quote(os.path.abspath(path)) + "?mode=ro"
        con = sqlite3.connect(uri, uri=True)
        try:
            con.execute("PRAGMA schema_version").fetchone()
        finally:
            con.close()
    except sqlite3.Error as e:
        return [f"{what}: {path}: {e}"]
    return []


def restore_command(spec: DumpSpec, filename: str, save: str = "latest") -> str:
    """The one-liner that puts `filename` of a save back (add `-d`/`-r` for the
    repository).  mysql and pg dumps recreate their database (it must not exist
    yet: drop it, or restore into a fresh server); restoring globals.sql into a
    cluster that has the roles reports "already exists" for them, harmlessly.
    A pg database's dump stops at its first error (ON_ERROR_STOP), with a
    non-zero status: at CREATE DATABASE when the database is still there, where
    psql would otherwise go on loading the dump into it and exit 0.  Not
    globals.sql nor postgres.sql: their roles and database exist on every server.
    A SQLite file is written next to the original (`.restored`): stop the
    application, then move it over the database and remove any -wal/-shm files."""
    src = "ketch cat-file " + shlex.quote(f"{spec.name}/{save}/{filename}")
    q = shlex.quote
    as_user = ["runuser", "-u", spec.run_as, "--"] if spec.run_as else []
    if spec.type == "mysql":
        return f"{src} | " + shlex.join([*as_user, "mysql", *_mysql_conn(spec)])
    if spec.type == "postgresql":
        argv = ["psql", "-X"]
        # Not the runbook's placeholder FILE either, which may stand for globals.sql.
        if filename.endswith(".sql") and filename != "postgres.sql" and not (
                spec.globals and filename == "globals.sql"):
            argv += ["-v", "ON_ERROR_STOP=1"]
        if spec.host:
            argv += ["-h", spec.host]
        if spec.port:
            argv += ["-p", str(spec.port)]
        if spec.user:
            argv += ["-U", spec.user]
        argv += ["-d", "postgres"]
        if spec.passfile:
            argv = ["env", f"PGPASSFILE={spec.passfile}", *argv]
        return f"{src} | " + shlex.join([*as_user, *argv])
    if spec.type == "mongodb":
        uri = q(spec.uri_file or "URI_FILE")
        # bash: the URI reaches mongorestore through a file descriptor, not argv.
        return (f"{src} | mongorestore --archive --drop "
                f"--config <(printf 'uri: \"%s\"\\n' \"$(cat {uri})\")")
    if spec.type == "sqlite" and spec.path:
        return f"{src} > {q(spec.path + '.restored')}"
    return f"{src} > {q(filename)}"


# -- `ketch config init`: what runs on this machine ---------------------------------------


def _detect_mysql(socket: str | None = None, user: str | None = None,
                  options_file: str | None = None) -> DumpSpec | None:
    """A MySQL/MariaDB server on `socket` (default: the client's default socket),
    as this user or with Debian's maintenance credentials; None if none answers."""
    tries = [options_file] if options_file else [None, DEBIAN_CNF]
    env = dict(os.environ)
    for cnf in tries:
        if cnf and not os.access(cnf, os.R_OK):
            continue
        spec = DumpSpec(name="mysql", type="mysql", host=socket, user=user, options_file=cnf)
        try:
            dbs = _mysql_list(spec, env, CHECK_TIMEOUT)
        except KetchError:
            continue
        spec.databases = [d for d in dbs if d not in MYSQL_DETECT_SKIP]
        return spec
    return None


def _detect_postgres(host: str | None = None, port: int | None = None,
                     user: str | None = None, run_as: str | None = None) -> DumpSpec | None:
    """A PostgreSQL server on `host`/`port` (default: the local socket), as the
    `postgres` OS user when we are root (Debian's peer authentication); None if
    none answers."""
    if run_as is None and os.getuid() == 0 and user is None:
        try:
            pwd.getpwnam("postgres")
            run_as = "postgres"
        except KeyError:
            pass
    spec = DumpSpec(name="postgresql", type="postgresql", host=host, port=port, user=user,
                    run_as=run_as)
    try:
        dbs = _pg_list(spec, _pg_env(spec, dict(os.environ)), CHECK_TIMEOUT)
    except KetchError:
        return None
    spec.databases = [d for d in dbs if d not in PG_DETECT_SKIP]
    return spec


def detect_local_databases() -> list[DumpSpec]:
    """Local MySQL/MariaDB and PostgreSQL servers and their databases, for `ketch
    config init` (system databases, and MySQL's `mysql` and PostgreSQL's
    `postgres`, left out; an empty list means "all")."""
    found = [_detect_mysql(), _detect_postgres()]
    return [s for s in found if s is not None]
