"""Database dumps streamed into a repository (ketch.jobs.dumps), against real
MariaDB and PostgreSQL servers (throwaway, on private sockets): dump, read back
with ketch and bup, restore into a fresh server with the documented one-liner,
compare row counts and checksums.  MongoDB has no server here: its path runs a
stand-in `mongodump` (see test_mongodb_uses_a_config_file_not_argv)."""

from __future__ import annotations

import io
import os
import shlex
import sqlite3
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from ketch import split as hs
from ketch.jobs.dumps import (
    DumpFailed,
    DumpResult,
    _detect_mysql,
    _detect_postgres,
    check_dump,
    detect_local_databases,
    restore_command,
    run_dump,
)
from ketch.jobs.dumpsave import scrub
from ketch.jobs.model import DumpSpec
from ketch.localrepo import LocalRepository, init_repository
from ketch.progress import NullProgress
from ketch.stream import HashOnlySink
from tests.conftest import SRC_DIR, RunBup, RunKetch
from tests.gitutil import git
from tests.services.mariadb import MariaDBServer
from tests.services.postgres import PostgresServer

MYSQL_DBS = ("dumpapp", "dumpshop")
PG_DBS = ("pgapp", "pgshop")
PASSWORD = "s3cr3t-Pw0rd!"

MYSQL_SEED = """
CREATE DATABASE dumpapp;
CREATE TABLE dumpapp.users (id INT PRIMARY KEY AUTO_INCREMENT, name VARCHAR(100),
    avatar BLOB, created DATETIME) ENGINE=InnoDB;
CREATE TRIGGER dumpapp.users_trim BEFORE INSERT ON dumpapp.users
    FOR EACH ROW SET NEW.name = TRIM(NEW.name);
CREATE FUNCTION dumpapp.double_it(x INT) RETURNS INT DETERMINISTIC RETURN x * 2;
INSERT INTO dumpapp.users (name, avatar, created)
    SELECT CONCAT(' user', seq, ' '), UNHEX(CONCAT(SHA2(seq, 256), MD5(seq))),
           '2020-01-01' + INTERVAL seq MINUTE FROM dumpapp.seq_1_to_3000;
INSERT INTO dumpapp.users (name, avatar) VALUES ('quotes '' \\\\ and NUL', X'00275C0A0D1A22FF');
CREATE TABLE dumpapp.notes (id INT PRIMARY KEY, body TEXT) ENGINE=MyISAM;
INSERT INTO dumpapp.notes SELECT seq, REPEAT(CONCAT('note ', seq, ' '), 20)
    FROM dumpapp.seq_1_to_500;
CREATE DATABASE dumpshop;
CREATE TABLE dumpshop.orders (id INT PRIMARY KEY, customer INT, amount DECIMAL(10,2))
    ENGINE=InnoDB;
INSERT INTO dumpshop.orders SELECT seq, 1 + seq % 97, (seq % 997) / 7
    FROM dumpshop.seq_1_to_20000;
CREATE USER bkp@localhost IDENTIFIED BY '{password}';
GRANT SELECT, SHOW VIEW, TRIGGER, LOCK TABLES, EVENT, RELOAD, PROCESS ON *.* TO bkp@localhost;
"""

PG_SEED_GLOBAL = """
CREATE ROLE pgowner LOGIN;
CREATE DATABASE pgapp OWNER pgowner;
CREATE DATABASE pgshop;
"""
PG_SEED_APP = """
CREATE TABLE users (id int PRIMARY KEY, name text, avatar bytea);
INSERT INTO users SELECT n, 'user ' || n, decode(md5(n::text) || md5((n * 7)::text), 'hex')
    FROM generate_series(1, 3000) n;
INSERT INTO users VALUES (0, E'quote '' backslash \\\\ tab \\t', '\\x00275c0a0d1a22ff');
ALTER TABLE users OWNER TO pgowner;
"""
PG_SEED_SHOP = """
CREATE TABLE orders AS SELECT n AS id, (n % 997)::numeric / 7 AS amount,
    timestamp '2020-01-01' + n * interval '1 minute' AS created
    FROM generate_series(1, 20000) n;
"""


# -- fixtures and helpers ----------------------------------------------------------


@pytest.fixture(scope="module")
def mysql_seeded(mariadb_server: MariaDBServer) -> MariaDBServer:
    mariadb_server.sql(MYSQL_SEED.format(password=PASSWORD))
    return mariadb_server


@pytest.fixture(scope="module")
def pg_seeded(postgres_server: PostgresServer) -> PostgresServer:
    pg = postgres_server
    for stmt in PG_SEED_GLOBAL.strip().splitlines():
        pg.psql(stmt)  # CREATE DATABASE cannot run inside a multi-statement string
    pg.psql(PG_SEED_APP, db="pgapp")
    pg.psql(PG_SEED_SHOP, db="pgshop")
    return pg


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[LocalRepository]:
    path = tmp_path / "repo"
    init_repository(str(path))
    r = LocalRepository(str(path))
    yield r
    r.close()


def mysql_spec(server: MariaDBServer, name: str = "mysql", **kw: Any) -> DumpSpec:
    return DumpSpec(name=name, type="mysql", host=server.socket, user="root", **kw)


def pg_spec(server: PostgresServer, name: str = "pg", **kw: Any) -> DumpSpec:
    return DumpSpec(name=name, type="postgresql", host=server.host, port=server.port,
                    user="postgres", **kw)


def script(path: Path, body: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(0o755)
    return path


def path_with(bindir: Path) -> str:
    return f"{bindir}{os.pathsep}{os.environ.get('PATH', os.defpath)}"


def ketch_shell(tmp_path: Path, repo: LocalRepository) -> dict[str, str]:
    """An environment where `ketch` on PATH is this checkout's, on `repo`: to run
    restore_command's one-liners as a user would."""
    bindir = tmp_path / "ketch-bin"
    script(bindir / "ketch", f'exec {shlex.quote(sys.executable)} -m ketch "$@"\n')
    env = dict(os.environ)
    env.update(PATH=path_with(bindir), KETCH_DIR=repo.path, PYTHONPATH=str(SRC_DIR))
    return env


def run_shell(cmd: str, env: dict[str, str]) -> subprocess.CompletedProcess[bytes]:
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", cmd], env=env, capture_output=True,
                          stdin=subprocess.DEVNULL, timeout=300)
    assert proc.returncode == 0, (cmd, proc.stderr.decode(errors="replace"))
    return proc


def cat(run_ketch: RunKetch, repo: LocalRepository, path: str) -> bytes:
    return run_ketch("-d", repo.path, "cat-file", path, check=True).stdout


def head(repo: LocalRepository, name: str) -> bytes | None:
    return repo.read_ref(b"refs/heads/" + name.encode())


def assert_fsck_clean(repo: LocalRepository) -> None:
    git(repo.path, "fsck", "--strict", "--no-dangling")


def mysql_fingerprint(server: MariaDBServer, db: str) -> dict[str, tuple[str, str]]:
    """Per table: (row count, CHECKSUM TABLE)."""
    out = {}
    for (table,) in server.query("SHOW TABLES", db):
        count = server.query(f"SELECT COUNT(*) FROM `{table}`", db)[0][0]
        checksum = server.query(f"CHECKSUM TABLE `{table}`", db)[0][1]
        out[table] = (count, checksum)
    return out


def pg_fingerprint(server: PostgresServer, db: str) -> dict[str, tuple[str, str]]:
    """Per table: (row count, md5 over its rows in primary key order)."""
    out = {}
    for (table,) in server.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                                 db):
        row = server.query(f"SELECT count(*), md5(string_agg(t::text, ',' ORDER BY t.id)) "
                           f"FROM {table} t", db)[0]
        out[table] = (row[0], row[1])
    return out


# -- MariaDB ------------------------------------------------------------------------


def test_mysql_dump_restores_into_a_fresh_server(
        mysql_seeded: MariaDBServer, repo: LocalRepository, tmp_path: Path,
        run_ketch: RunKetch, bup: RunBup) -> None:
    server = mysql_seeded
    progress = NullProgress()
    res = run_dump(repo, mysql_spec(server, databases=list(MYSQL_DBS)), progress=progress)
    assert isinstance(res, DumpResult) and res.commit == head(repo, "mysql")
    assert [n for n, _ in res.files] == ["dumpapp.sql", "dumpshop.sql"]
    assert res.bytes_read == sum(n for _, n in res.files) == progress.bytes > 100_000
    assert progress.files == 2 and res.bytes_new > 0 and res.warnings == []

    # ketch and bup both list it and give back the same bytes.
    listing = run_ketch("-d", repo.path, "ls", "-l", "mysql/latest", check=True).stdout.decode()
    assert "-rw-------" in listing and "dumpapp.sql" in listing and "dumpshop.sql" in listing
    assert bup(repo.path, "ls", "mysql/latest").stdout.split() == [b"dumpapp.sql",
                                                                   b"dumpshop.sql"]
    dumps = {n: cat(run_ketch, repo, f"mysql/latest/{n}") for n, _ in res.files}
    for n, size in res.files:
        assert len(dumps[n]) == size
        assert dumps[n].rstrip().splitlines()[-1].startswith(b"-- Dump completed")
        assert bup(repo.path, "cat-file", f"mysql/latest/{n}").stdout == dumps[n]
    bup(repo.path, "restore", "-C", tmp_path / "bup-out", "mysql/latest/dumpshop.sql")
    assert (tmp_path / "bup-out" / "dumpshop.sql").read_bytes() == dumps["dumpshop.sql"]
    # Chunked exactly as `ketch save` (and bup save) would chunk a file of these bytes.
    mode, oid, _ = hs.split_to_blob_or_tree(HashOnlySink(), hs.read_blocks(
        io.BytesIO(dumps["dumpshop.sql"])))
    assert git(repo.path, "rev-parse", "mysql:dumpshop.sql.bup").strip() == oid.hex().encode()
    assert_fsck_clean(repo)

    # The documented one-liner, run by a shell, into a fresh server.
    with MariaDBServer.start(tmp_path / "fresh", buffer_pool="32M") as fresh:
        target = mysql_spec(fresh)
        env = ketch_shell(tmp_path, repo)
        for n, _ in res.files:
            cmd = restore_command(target, n)
            assert cmd.startswith(f"ketch cat-file mysql/latest/{n} | mysql ")
            run_shell(cmd, env)
        for db in MYSQL_DBS:
            assert mysql_fingerprint(fresh, db) == mysql_fingerprint(server, db)
        assert fresh.query("SELECT dumpapp.double_it(21)") == [["42"]]
        assert fresh.query("SELECT TRIGGER_NAME FROM information_schema.TRIGGERS "
                           "WHERE TRIGGER_SCHEMA = 'dumpapp'") == [["users_trim"]]


def test_mysql_all_databases_skips_system_schemas(
        mysql_seeded: MariaDBServer, repo: LocalRepository) -> None:
    res = run_dump(repo, mysql_spec(mysql_seeded, name="all"))
    names = [n for n, _ in res.files]
    assert {"dumpapp.sql", "dumpshop.sql", "mysql.sql"} <= set(names)
    assert not {"information_schema.sql", "performance_schema.sql", "sys.sql"} & set(names)


def test_mysql_failure_keeps_the_previous_save(
        mysql_seeded: MariaDBServer, repo: LocalRepository) -> None:
    good = run_dump(repo, mysql_spec(mysql_seeded, databases=["dumpshop"]))
    with pytest.raises(DumpFailed) as e:
        run_dump(repo, mysql_spec(mysql_seeded, databases=["dumpshop", "nosuchdb"]))
    msg = str(e.value)
    assert "\n" not in msg and e.value.exit_code == 2
    assert "dump mysql" in msg and "nosuchdb" in msg and "status 2" in msg
    assert "Unknown database" in msg  # the tool's own last words
    assert head(repo, "mysql") == good.commit
    assert_fsck_clean(repo)


def test_mysql_truncated_stream_fails(
        mysql_seeded: MariaDBServer, repo: LocalRepository, tmp_path: Path) -> None:
    """A dump that stops early but exits 0 (a stand-in mysqldump cutting the real
    one's output short) is caught by the missing `-- Dump completed` line."""
    real = subprocess.run(["sh", "-c", "command -v mysqldump"], capture_output=True,
                          check=True).stdout.decode().strip()
    bindir = tmp_path / "bin"
    script(bindir / "mysqldump", f'{shlex.quote(real)} "$@" | head -c 20000\nexit 0\n')
    good = run_dump(repo, mysql_spec(mysql_seeded, databases=["dumpshop"]))
    cut = mysql_spec(mysql_seeded, databases=["dumpshop"], env={"PATH": path_with(bindir)})
    with pytest.raises(DumpFailed, match="truncated.*-- Dump completed"):
        run_dump(repo, cut)
    assert head(repo, "mysql") == good.commit
    assert_fsck_clean(repo)


def test_mysql_password_stays_off_command_lines_and_messages(
        mysql_seeded: MariaDBServer, repo: LocalRepository, tmp_path: Path) -> None:
    """The password is in an option file: the dump's argv (recorded by a wrapper
    mysqldump, which also snapshots every process's /proc/PID/cmdline while the
    real dump runs) never holds it, and a failed login's message neither."""
    real = subprocess.run(["sh", "-c", "command -v mysqldump"], capture_output=True,
                          check=True).stdout.decode().strip()
    bindir = tmp_path / "bin"
    rec = tmp_path / "rec"
    rec.mkdir()
    script(bindir / "mysqldump", (
        f'printf "%s\\n" "$@" > {rec}/argv\n'
        f'{shlex.quote(real)} "$@" &\n'
        f'cat /proc/[0-9]*/cmdline > {rec}/cmdlines 2>/dev/null\n'
        'wait $!\n'))
    cnf = tmp_path / "backup.cnf"
    cnf.write_text(f"[client]\nuser=bkp\npassword={PASSWORD}\n")
    cnf.chmod(0o600)
    spec = DumpSpec(name="mysql", type="mysql", host=mysql_seeded.socket,
                    options_file=str(cnf), databases=["dumpapp"],
                    env={"PATH": path_with(bindir)})
    res = run_dump(repo, spec)
    assert res.files[0][0] == "dumpapp.sql"
    argv = (rec / "argv").read_text().splitlines()
    assert argv[0] == f"--defaults-extra-file={cnf}"
    assert PASSWORD not in "\n".join(argv)
    assert PASSWORD.encode() not in (rec / "cmdlines").read_bytes()
    assert b"mysqldump" in (rec / "cmdlines").read_bytes()

    cnf.write_text("[client]\nuser=bkp\npassword=wrong-Secret-42\n")
    with pytest.raises(DumpFailed) as e:
        run_dump(repo, spec)
    assert "Access denied" in str(e.value) and "wrong-Secret-42" not in str(e.value)
    assert head(repo, "mysql") == res.commit


# -- PostgreSQL ------------------------------------------------------------------------


def test_postgres_dump_restores_into_a_fresh_cluster(
        pg_seeded: PostgresServer, repo: LocalRepository, tmp_path: Path,
        run_ketch: RunKetch) -> None:
    res = run_dump(repo, pg_spec(pg_seeded))
    names = [n for n, _ in res.files]
    assert names[0] == "globals.sql"
    assert {"pgapp.sql", "pgshop.sql", "postgres.sql"} <= set(names)
    assert not any(n.startswith("template") for n in names)
    assert res.warnings == [] and res.commit == head(repo, "pg")
    globals_sql = cat(run_ketch, repo, "pg/latest/globals.sql")
    assert b"CREATE ROLE pgowner" in globals_sql
    assert_fsck_clean(repo)

    with PostgresServer.start() as fresh:
        target = pg_spec(fresh)
        env = ketch_shell(tmp_path, repo)
        for n in ("globals.sql", "pgapp.sql", "pgshop.sql"):
            cmd = restore_command(target, n)
            assert cmd.startswith(f"ketch cat-file pg/latest/{n} | psql ")
            run_shell(cmd, env)
        for db in PG_DBS:
            assert pg_fingerprint(fresh, db) == pg_fingerprint(pg_seeded, db)
        assert fresh.query("SELECT tableowner FROM pg_tables WHERE tablename = 'users'",
                           "pgapp") == [["pgowner"]]


def test_postgres_failure_keeps_the_previous_save(
        pg_seeded: PostgresServer, repo: LocalRepository) -> None:
    good = run_dump(repo, pg_spec(pg_seeded, databases=["pgshop"], globals=False))
    assert [n for n, _ in good.files] == ["pgshop.sql"]
    with pytest.raises(DumpFailed, match=r"pg_dump of database nosuchdb.*status 1.*does not exist"):
        run_dump(repo, pg_spec(pg_seeded, databases=["pgshop", "nosuchdb"]))
    assert head(repo, "pg") == good.commit
    assert_fsck_clean(repo)


# -- commands, MongoDB, SQLite ---------------------------------------------------------


def test_command_dump_and_its_failures(repo: LocalRepository, run_ketch: RunKetch) -> None:
    data = os.urandom(300_000)
    src = repo.path + "-data"
    Path(src).write_bytes(data)
    good = run_dump(repo, DumpSpec(name="cmd", type="command", command=["cat", src],
                                   filename="blob.bin"))
    assert good.files == [("blob.bin", len(data))]
    assert cat(run_ketch, repo, "cmd/latest/blob.bin") == data
    assert restore_command(DumpSpec(name="cmd", type="command"), "blob.bin") == \
        "ketch cat-file cmd/latest/blob.bin > blob.bin"

    failing = {
        "echo partial; exit 3": "exited with status 3",
        "echo partial; kill -9 $$": "killed by SIGKILL",
        "echo password=hunter22 >&2; exit 1": "exited with status 1: password=***",
    }
    for body, reason in failing.items():
        spec = DumpSpec(name="cmd", type="command", command=["sh", "-c", body],
                        env={"DB_PASSWORD": "hunter22"})
        with pytest.raises(DumpFailed) as e:
            run_dump(repo, spec)
        assert reason in str(e.value) and "hunter22" not in str(e.value)
        assert str(e.value).startswith("dump cmd: command sh failed: ")
        assert head(repo, "cmd") == good.commit
    assert_fsck_clean(repo)


def test_command_leftovers_do_not_hang_the_dump(repo: LocalRepository) -> None:
    """A background process that keeps the dump's stderr open is stopped once the
    dump itself is over, rather than waited for."""
    res = run_dump(repo, DumpSpec(name="bg", type="command", command=[
        "sh", "-c", "sleep 300 >/dev/null & echo data"]))
    assert res.files == [("bg", 5)] and res.seconds < 30


def test_scrub() -> None:
    assert scrub("login failed for s3cret-value here", ["s3cret-value"]) == \
        "login failed for *** here"
    assert scrub("Access denied (using password: YES)") == "Access denied (using password: YES)"
    assert scrub("password=hunter2 x, PGPASSWORD='a b'") == "password=*** x, PGPASSWORD=***"
    assert scrub("mongodb://u:p4ss@h/db -pTopSecret") == "mongodb://u:***@h/db -p***"


def test_command_env_file_reaches_the_command(repo: LocalRepository, tmp_path: Path,
                                              run_ketch: RunKetch) -> None:
    env_file = tmp_path / "dump.env"
    env_file.write_text("# comment\nexport GREETING='hello there'\nOTHER=x\n")
    res = run_dump(repo, DumpSpec(name="env", type="command", env_file=str(env_file),
                                  env={"OTHER": "y"},
                                  command=["sh", "-c", 'printf "%s %s" "$GREETING" "$OTHER"']))
    assert res.files == [("env", 13)]
    assert cat(run_ketch, repo, "env/latest/env") == b"hello there y"


def test_mongodb_uses_a_config_file_not_argv(repo: LocalRepository, tmp_path: Path,
                                             run_ketch: RunKetch) -> None:
    """No mongod exists in these package registries, so a stand-in `mongodump` on
    PATH checks what the real one would get: `--archive` (to stdout), `--config
    FILE` whose YAML holds the URI, and no URI anywhere on its command line; it
    writes known bytes as the archive."""
    uri = "mongodb://backup:m0ngo-Secret@db.example:27017/?authSource=admin"
    uri_file = tmp_path / "mongo.uri"
    uri_file.write_text(uri + "\n")
    rec = tmp_path / "rec"
    rec.mkdir()
    script(tmp_path / "bin" / "mongodump", f"""
printf '%s\\n' "$@" > {rec}/argv
case " $* " in *mongodb://*|*m0ngo-Secret*) echo "uri on argv" >&2; exit 9;; esac
case " $* " in *" --archive "*) ;; *) echo "no --archive" >&2; exit 9;; esac
while [ $# -gt 0 ]; do
  if [ "$1" = --config ]; then cfg=$2; fi
  if [ "$1" = --db ]; then db=$2; fi
  shift
done
[ -n "$cfg" ] || {{ echo "no --config" >&2; exit 9; }}
echo "$cfg" > {rec}/config-path
stat -c %a "$cfg" > {rec}/config-mode
cp "$cfg" {rec}/config
printf 'ARCHIVE-OF-%s\\n' "$db"
""")
    spec = DumpSpec(name="mongo", type="mongodb", uri_file=str(uri_file),
                    databases=["app", "crm"], env={"PATH": path_with(tmp_path / "bin")})
    res = run_dump(repo, spec)
    assert res.files == [("app.archive", 15), ("crm.archive", 15)]
    assert cat(run_ketch, repo, "mongo/latest/crm.archive") == b"ARCHIVE-OF-crm\n"
    assert (rec / "config").read_text() == f'uri: "{uri}"\n'
    assert (rec / "config-mode").read_text().strip() == "600"
    assert not Path((rec / "config-path").read_text().strip()).exists()  # removed after
    assert "--quiet" in (rec / "argv").read_text().splitlines()
    assert "m0ngo-Secret" not in restore_command(spec, "app.archive")

    all_dbs = DumpSpec(name="mongo", type="mongodb", uri_file=str(uri_file),
                       env={"PATH": path_with(tmp_path / "bin")})
    assert [n for n, _ in run_dump(repo, all_dbs).files] == ["all.archive"]


def test_sqlite_online_backup(repo: LocalRepository, tmp_path: Path,
                              run_ketch: RunKetch) -> None:
    db = tmp_path / "app.db"
    con = sqlite3.connect(db)
    con.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, name TEXT, data BLOB)")
    con.executemany("INSERT INTO t VALUES (?, ?, ?)",
                    [(i, f"row {i}", os.urandom(i % 200)) for i in range(5000)])
    con.execute("CREATE INDEX t_name ON t (name)")
    con.commit()
    want = list(con.iterdump())
    spec = DumpSpec(name="sq", type="sqlite", path=str(db))
    assert check_dump(spec) == []
    res = run_dump(repo, spec)  # while `con` still has the file open
    con.close()
    assert [n for n, _ in res.files] == ["app.db"]
    restored = tmp_path / "restored.db"
    restored.write_bytes(cat(run_ketch, repo, "sq/latest/app.db"))
    back = sqlite3.connect(restored)
    assert list(back.iterdump()) == want
    back.close()
    assert restore_command(spec, "app.db") == f"ketch cat-file sq/latest/app.db > {db}.restored"

    with pytest.raises(DumpFailed, match="no such file"):
        run_dump(repo, DumpSpec(name="sq", type="sqlite", path=str(tmp_path / "gone.db")))
    assert head(repo, "sq") == res.commit


# -- check_dump and detection -------------------------------------------------------------


def test_check_dump(mysql_seeded: MariaDBServer, pg_seeded: PostgresServer,
                    tmp_path: Path) -> None:
    assert check_dump(mysql_spec(mysql_seeded, databases=list(MYSQL_DBS))) == []
    assert check_dump(mysql_spec(mysql_seeded)) == []
    (missing,) = check_dump(mysql_spec(mysql_seeded, databases=["dumpapp", "nosuchdb"]))
    assert "nosuchdb" in missing and "does not exist" in missing
    # A short path: the client cuts a socket path at sockaddr_un's 108 bytes, and
    # pytest's tmp_path grows with its run counter (pytest-113/popen-gw1/...).
    with tempfile.TemporaryDirectory(dir="/tmp", prefix="k") as short:
        (down,) = check_dump(DumpSpec(name="m", type="mysql", host=f"{short}/no.sock"))
    assert "cannot list" in down and "no.sock" in down

    assert check_dump(pg_spec(pg_seeded, databases=list(PG_DBS))) == []
    (missing,) = check_dump(pg_spec(pg_seeded, databases=["nosuchdb"]))
    assert "nosuchdb" in missing
    (down,) = check_dump(DumpSpec(name="p", type="postgresql", host=str(tmp_path),
                                  port=pg_seeded.port))
    assert "cannot list" in down

    assert check_dump(DumpSpec(name="s", type="sqlite", path=str(tmp_path / "x.db")))
    assert check_dump(DumpSpec(name="c", type="command", command=["no-such-tool-here"]))
    assert check_dump(DumpSpec(name="c", type="command", command=["true"])) == []
    assert check_dump(DumpSpec(name="o", type="mysql", options_file=str(tmp_path / "none")))


def test_detect_local_databases(mysql_seeded: MariaDBServer, pg_seeded: PostgresServer,
                                tmp_path: Path) -> None:
    my = _detect_mysql(socket=mysql_seeded.socket, user="root")
    assert my is not None and my.type == "mysql" and my.host == mysql_seeded.socket
    assert set(MYSQL_DBS) <= set(my.databases)
    assert not {"mysql", "sys", "information_schema", "performance_schema"} & set(my.databases)
    assert _detect_mysql(socket=str(tmp_path / "none.sock")) is None

    pg = _detect_postgres(host=pg_seeded.host, port=pg_seeded.port, user="postgres")
    assert pg is not None and pg.type == "postgresql"
    assert set(PG_DBS) <= set(pg.databases)
    assert not {"postgres", "template0", "template1"} & set(pg.databases)
    # As root, by default through the postgres OS user (Debian's peer authentication).
    if os.getuid() == 0:
        as_os_user = _detect_postgres(host=pg_seeded.host, port=pg_seeded.port)
        assert as_os_user is not None and as_os_user.run_as == "postgres"
    assert _detect_postgres(host=str(tmp_path), port=pg_seeded.port) is None

    # The machine's own servers (none in a test container): must not fail.
    assert all(s.type in ("mysql", "postgresql") for s in detect_local_databases())
