"""Procedure 2 of docs/disaster-recovery.md, "a database damaged", rehearsed end
to end on real parts: last night's dump reloaded into the *running* server.

For MariaDB and for PostgreSQL (the session's servers), a machine's config
dumps one database (with a foreign key, text with quotes, newlines and
non-ASCII; a view and a trigger; for PostgreSQL a role owning the database
and one granted a table, so that the globals dump matters) into a repository
on a backup server over real ssh, with `ketch run`. After a day's writes the
database is damaged in the running server: a table dropped, rows deleted and
updated (for PostgreSQL a role dropped too). Then the lines `ketch runbook
--only database` prints are run as printed, in `bash -e -o pipefail`:

- first by mistake with the repository unreachable (server down, wrong path):
  they must fail and leave the database as it was, not load an empty dump;
- then with the damaged database still there, as an operator who follows the
  printed runbook (it does not say to drop it) would: MariaDB's dump drops
  and recreates each of its tables, so they come back, but a table made since
  the backup stays; PostgreSQL's stops at its CREATE DATABASE, with a non-zero
  status, having changed nothing;
- then after the step the doc asks of the operator, dropping the damaged
  database: it must come back as it was at backup time, every table in key
  order, its schema, view, trigger, grants and roles (globals.sql first). The
  day's writes after the backup are lost, as with any reload of a nightly dump.

Throughout, the server keeps running and its other databases are untouched.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ketch.localrepo import init_repository
from tests.conftest import RunKetch, RunResult
from tests.jobs.rehearsal import ketch_on_path
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import Machine
from tests.services.mariadb import MariaDBServer
from tests.services.postgres import PostgresServer
from tests.services.process import free_port
from tests.services.sshd import SshServer

# Names of their own: the servers are shared by the session. Both sort before
# "globals", as most real names (app, billing, crm) do.
MY_DB, MY_NEIGHBOUR = "disaster_shop", "disaster_shop_neighbour"
PG_DB, PG_NEIGHBOUR = "disaster_pg", "disaster_pg_neighbour"
PG_OWNER, PG_READER = "disaster_owner", "disaster_reader"

# Quotes of both kinds, a backslash, a newline, a tab, and text beyond Latin-1.
AWKWARD = "O'Brien \"the quoted\" \\ back\nline two\ttab: Ünïcødé 日本語 🎉"

MY_SEED = f"""
SET NAMES utf8mb4;
CREATE DATABASE {MY_DB} CHARACTER SET utf8mb4 COLLATE utf8mb4_unicode_ci;
USE {MY_DB};
CREATE TABLE customers (id INT PRIMARY KEY, name VARCHAR(100) NOT NULL, note TEXT)
    ENGINE=InnoDB;
CREATE TABLE orders (id INT PRIMARY KEY AUTO_INCREMENT, customer INT NOT NULL,
    amount DECIMAL(10,2) NOT NULL, placed DATETIME NOT NULL,
    CONSTRAINT orders_customer FOREIGN KEY (customer) REFERENCES customers (id))
    ENGINE=InnoDB;
CREATE TABLE audit (id INT PRIMARY KEY AUTO_INCREMENT, order_id INT NOT NULL,
    what VARCHAR(20) NOT NULL) ENGINE=InnoDB;
CREATE TRIGGER orders_audit AFTER INSERT ON orders FOR EACH ROW
    INSERT INTO audit (order_id, what) VALUES (NEW.id, 'placed');
CREATE VIEW big_spenders AS SELECT customer, SUM(amount) AS total FROM orders
    GROUP BY customer HAVING SUM(amount) > 150;
INSERT INTO customers SELECT seq, CONCAT('customer ', seq),
    IF(seq % 7 = 0, NULL, CONCAT('note ', seq)) FROM seq_1_to_1500;
INSERT INTO customers VALUES (0, 'awkward', {{awkward}});
INSERT INTO orders (customer, amount, placed) SELECT seq % 1500 + 1, (seq % 997) / 7,
    '2024-01-01' + INTERVAL seq MINUTE FROM seq_1_to_4000;
CREATE DATABASE {MY_NEIGHBOUR};
CREATE TABLE {MY_NEIGHBOUR}.t (id INT PRIMARY KEY, v VARCHAR(20));
INSERT INTO {MY_NEIGHBOUR}.t SELECT seq, CONCAT('v', seq) FROM seq_1_to_300;
"""

PG_SEED = f"""
SET ROLE {PG_OWNER};
CREATE TABLE customers (id int PRIMARY KEY, name text NOT NULL, note text);
CREATE TABLE orders (id serial PRIMARY KEY, customer int NOT NULL REFERENCES customers,
    amount numeric(10,2) NOT NULL, placed timestamptz NOT NULL);
CREATE VIEW big_spenders AS SELECT customer, sum(amount) AS total FROM orders
    GROUP BY customer HAVING sum(amount) > 150;
INSERT INTO customers SELECT n, 'customer ' || n,
    CASE WHEN n % 7 = 0 THEN NULL ELSE 'note ' || n END FROM generate_series(1, 1500) n;
INSERT INTO customers VALUES (0, 'awkward', {{awkward}});
INSERT INTO orders (customer, amount, placed) SELECT n % 1500 + 1, (n % 997) / 7.0,
    timestamptz '2024-01-01 00:00+00' + n * interval '1 minute' FROM generate_series(1, 4000) n;
GRANT SELECT ON customers, big_spenders TO {PG_READER};
"""


# -- the machine and its operator's shell ---------------------------------------------


@dataclass
class Site:
    """The machine: its config, and the environment of its operator's shell
    (this checkout's `ketch` on PATH, its ssh key for the backup server)."""

    config: Path
    env: dict[str, str]
    url: str


def _site(server: SshServer, tmp_path: Path, name: str, dump: str) -> Site:
    m = Machine.new(server, name)
    env = ketch_on_path(tmp_path / "bin", m.env)
    repo = tmp_path / "backup-server" / name
    init_repository(str(repo))
    config = tmp_path / "ketch.toml"
    config.write_text(f'repository = "{m.url(repo)}"\nlock_file = "{tmp_path / "run.lock"}"\n'
                      f'log_file = "{tmp_path / "run.log"}"\n{dump}')
    config.chmod(0o600)
    return Site(config, env, m.url(repo))


def _backup(run_ketch: RunKetch, site: Site) -> None:
    got = run_ketch("run", "--config", site.config, "-q", env=site.env)
    assert got.returncode == 0, got.stdout.decode() + got.stderr.decode()


def _runbook(run_ketch: RunKetch, site: Site, machine: str) -> list[str]:
    """The database procedure's command lines, as printed."""
    got = run_ketch("runbook", "--only", "database", "-c", site.config, "--machine", machine,
                    env=site.env)
    assert got.returncode == 0 and b"Traceback" not in got.stderr, got.stderr.decode()
    # Dump files named from the repository, not the generic `ketch ls` + FILE lines.
    assert b"repository not read" not in got.stderr, got.stderr.decode()
    text = got.stdout.decode()
    lines = [ln for ln in text.splitlines() if ln and not ln.startswith("#")]
    assert lines[0] == "set -o pipefail", text
    assert all(ln.startswith(f"ketch cat-file -r {site.url} ") for ln in lines[1:]), text
    return lines


def _bash(lines: list[str], env: dict[str, str]) -> RunResult:
    return subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(lines)], env=env,
                          capture_output=True, stdin=subprocess.DEVNULL, timeout=300)


def _accident(lines: list[str], site: Site, ssh_port: int) -> None:
    """The reload lines run with the repository unreachable, as a 3 a.m. operator
    might: the backup server down (nothing listens on its port) for each line,
    the repository's path mistyped for the first. Each fails: with pipefail the
    read's failure is the pipeline's, though the client read an empty input and
    exited 0."""
    down = site.url.replace(f":{ssh_port}/", f":{free_port()}/", 1)
    assert down != site.url
    tries = [(line, down) for line in lines[1:]] + [(lines[1], site.url + "-typo")]
    for line, url in tries:
        got = _bash([lines[0], line.replace(site.url, url, 1)], site.env)
        err = got.stderr.decode()
        assert got.returncode == 2, (line, url, got.returncode, err)
        assert "Traceback" not in err, err


# -- MariaDB ---------------------------------------------------------------------------


def _my_literal(text: str) -> str:
    return "'" + text.replace("\\", "\\\\").replace("'", "\\'") + "'"


def _my_state(db: MariaDBServer, name: str) -> dict[str, str]:
    """Database `name` as the damage and the reload could change it: each table's
    and view's definition, each table's rows in key order, the triggers."""
    state: dict[str, str] = {}
    for table, kind in db.query(f"SHOW FULL TABLES FROM `{name}`"):
        if kind == "BASE TABLE":
            state[f"create {table}"] = db.sql(f"SHOW CREATE TABLE `{name}`.`{table}`")
            state[f"rows {table}"] = db.sql(f"SELECT * FROM `{name}`.`{table}` ORDER BY 1")
    # From the catalogue: a view whose table was dropped cannot be queried.
    state["views"] = db.sql("SELECT TABLE_NAME, VIEW_DEFINITION FROM information_schema.VIEWS "
                            f"WHERE TABLE_SCHEMA = '{name}' ORDER BY 1")
    state["triggers"] = db.sql(
        "SELECT TRIGGER_NAME, ACTION_TIMING, EVENT_MANIPULATION, EVENT_OBJECT_TABLE, "
        "ACTION_STATEMENT FROM information_schema.TRIGGERS "
        f"WHERE TRIGGER_SCHEMA = '{name}' ORDER BY 1")
    return state


def _my_counts(db: MariaDBServer, name: str) -> dict[str, int]:
    return {t: int(db.query(f"SELECT COUNT(*) FROM `{name}`.`{t}`")[0][0])
            for t, kind in db.query(f"SHOW FULL TABLES FROM `{name}`") if kind == "BASE TABLE"}


def _my_uptime(db: MariaDBServer) -> int:
    return int(db.query("SHOW GLOBAL STATUS LIKE 'Uptime'")[0][1])


@pytest.fixture
def mariadb_gone(mariadb_server: MariaDBServer) -> Iterator[MariaDBServer]:
    """The session's server, left without this module's databases: a damaged one
    (its view broken) would fail another test's dump of every database."""
    yield mariadb_server
    mariadb_server.sql(f"DROP DATABASE IF EXISTS {MY_DB}; DROP DATABASE IF EXISTS {MY_NEIGHBOUR}")


def test_mariadb_dump_reloads_into_the_running_server(
        sshd: SshServer, mariadb_gone: MariaDBServer, run_ketch: RunKetch,  # noqa: F811
        tmp_path: Path) -> None:
    db = mariadb_gone
    db.sql(MY_SEED.format(awkward=_my_literal(AWKWARD)))
    # The seed itself: the awkward text went in as text, not as mojibake.
    assert db.query(f"SELECT HEX(note) FROM {MY_DB}.customers WHERE id = 0") == [
        [AWKWARD.encode().hex().upper()]]
    cnf = tmp_path / "mysql.cnf"
    cnf.write_text(f"[client]\nsocket={db.socket}\nuser=root\n")
    cnf.chmod(0o600)
    site = _site(sshd, tmp_path, "disaster-mariadb",
                 f'[[dump]]\nname = "mysql"\ntype = "mysql"\noptions_file = "{cnf}"\n'
                 f'databases = ["{MY_DB}"]\n')
    at_backup, counts = _my_state(db, MY_DB), _my_counts(db, MY_DB)
    assert counts == {"audit": 4000, "customers": 1501, "orders": 4000}
    spenders = db.sql(f"SELECT * FROM {MY_DB}.big_spenders ORDER BY 1")
    assert spenders.count("\n") > 10
    neighbour = _my_state(db, MY_NEIGHBOUR)
    databases = db.sql("SHOW DATABASES")
    _backup(run_ketch, site)

    # The day goes on after the backup: these are not in last night's dump.
    db.sql("INSERT INTO orders (customer, amount, placed) VALUES (1, 9.99, NOW()), "
           "(2, 19.99, NOW()); CREATE TABLE coupons (code VARCHAR(20) PRIMARY KEY); "
           "INSERT INTO coupons VALUES ('SPRING')", MY_DB)
    # The damage.
    db.sql("DROP TABLE orders; DELETE FROM customers WHERE id % 3 = 0; "
           "UPDATE customers SET name = 'overwritten', note = NULL WHERE id < 100; "
           "DELETE FROM audit WHERE id > 10", MY_DB)
    damaged = _my_state(db, MY_DB)
    uptime = _my_uptime(db)

    lines = _runbook(run_ketch, site, "web1")
    assert lines[1:] == [f"ketch cat-file -r {site.url} mysql/latest/{MY_DB}.sql | "
                         f"mysql --defaults-extra-file={cnf}"]
    _accident(lines, site, sshd.port)
    assert _my_state(db, MY_DB) == damaged

    # As the printed runbook has it, with the damaged database still there: the
    # dump drops and recreates each of its tables, so this works...
    got = _bash(lines, site.env)
    assert (got.returncode, got.stderr.decode()) == (0, "")
    assert _my_counts(db, MY_DB) == {**counts, "coupons": 1}
    again = _my_state(db, MY_DB)
    assert {k: v for k, v in again.items() if "coupons" not in k} == at_backup
    # ...but what it does not hold stays: a table made since the backup.
    assert "create coupons" in again

    # As the doc has it: the damaged database dropped first. Exactly the backup,
    # so without the day's writes since.
    db.sql(f"DROP DATABASE {MY_DB}")
    got = _bash(lines, site.env)
    assert (got.returncode, got.stderr.decode()) == (0, "")
    assert _my_counts(db, MY_DB) == counts
    assert _my_state(db, MY_DB) == at_backup
    assert db.sql(f"SELECT * FROM {MY_DB}.big_spenders ORDER BY 1") == spenders
    # The trigger is back and fires once per insert, the foreign key holds.
    db.sql("INSERT INTO orders (customer, amount, placed) VALUES (5, 1, NOW())", MY_DB)
    assert _my_counts(db, MY_DB)["audit"] == counts["audit"] + 1
    with pytest.raises(RuntimeError, match="foreign key constraint fails"):
        db.sql("INSERT INTO orders (customer, amount, placed) VALUES (99999, 1, NOW())", MY_DB)

    # The same server, still running; its other databases as they were.
    assert _my_uptime(db) >= uptime
    assert db.sql("SHOW DATABASES") == databases
    assert _my_state(db, MY_NEIGHBOUR) == neighbour


# -- PostgreSQL -----------------------------------------------------------------------


def _pg_literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _pg_state(pg: PostgresServer, name: str) -> dict[str, str]:
    """Database `name` as the damage and the reload could change it: its owner,
    each relation's kind, owner and grants, the constraints, the view, the
    sequences, and each table's rows in key order."""
    state = {
        "database": pg.psql(f"SELECT pg_get_userbyid(datdba), datacl FROM pg_database "
                            f"WHERE datname = '{name}'"),
        "relations": pg.psql("SELECT relname, relkind, pg_get_userbyid(relowner), relacl "
                             "FROM pg_class WHERE relnamespace = 'public'::regnamespace "
                             "ORDER BY 1", name),
        "constraints": pg.psql("SELECT conrelid::regclass::text, conname, pg_get_constraintdef(oid) "
                               "FROM pg_constraint WHERE connamespace = 'public'::regnamespace "
                               "ORDER BY 1, 2", name),
        "views": pg.psql("SELECT viewname, definition FROM pg_views "
                         "WHERE schemaname = 'public' ORDER BY 1", name),
        "sequences": pg.psql("SELECT sequencename, last_value FROM pg_sequences ORDER BY 1", name),
    }
    for (table,) in pg.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public' "
                             "ORDER BY 1", name):
        state[f"rows {table}"] = pg.psql(f"SELECT * FROM {table} ORDER BY 1", name)
    return state


def _pg_counts(pg: PostgresServer, name: str) -> dict[str, int]:
    return {t: int(pg.query(f"SELECT count(*) FROM {t}", name)[0][0])
            for (t,) in pg.query("SELECT tablename FROM pg_tables WHERE schemaname = 'public'",
                                 name)}


def _pg_roles(pg: PostgresServer) -> str:
    # The password's hash too: the globals dump carries it.
    return pg.psql("SELECT rolname, rolcanlogin, rolconnlimit, rolpassword FROM pg_authid "
                   "WHERE rolname LIKE 'disaster%' ORDER BY 1")


@pytest.fixture
def postgres_gone(postgres_server: PostgresServer) -> Iterator[PostgresServer]:
    """The session's server, left without this module's databases and roles (the
    globals dumps of other tests would carry the roles)."""
    yield postgres_server
    for stmt in (f"DROP DATABASE IF EXISTS {PG_DB} WITH (FORCE)",
                 f"DROP DATABASE IF EXISTS {PG_NEIGHBOUR} WITH (FORCE)",
                 f"DROP ROLE IF EXISTS {PG_READER}", f"DROP ROLE IF EXISTS {PG_OWNER}"):
        postgres_server.psql(stmt)


def _pg_seed(pg: PostgresServer) -> None:
    # One statement each: CREATE DATABASE cannot run in psql -c's transaction.
    pg.psql(f"CREATE ROLE {PG_OWNER} LOGIN")
    pg.psql(f"CREATE ROLE {PG_READER} LOGIN PASSWORD 'r3ad-only' CONNECTION LIMIT 3")
    pg.psql(f"CREATE DATABASE {PG_DB} OWNER {PG_OWNER}")
    pg.psql(PG_SEED.format(awkward=_pg_literal(AWKWARD)), PG_DB)
    assert pg.psql("SELECT note FROM customers WHERE id = 0", PG_DB) == AWKWARD + "\n"
    pg.psql(f"CREATE DATABASE {PG_NEIGHBOUR}")
    pg.psql("CREATE TABLE t AS SELECT n AS id, 'v' || n AS v FROM generate_series(1, 300) n",
            PG_NEIGHBOUR)


def test_postgres_dump_reloads_into_the_running_server(
        sshd: SshServer, postgres_gone: PostgresServer, run_ketch: RunKetch,  # noqa: F811
        tmp_path: Path) -> None:
    pg = postgres_gone
    _pg_seed(pg)
    site = _site(sshd, tmp_path, "disaster-postgres",
                 f'[[dump]]\nname = "pg"\ntype = "postgresql"\nhost = "{pg.host}"\n'
                 f'port = {pg.port}\nuser = "postgres"\ndatabases = ["{PG_DB}"]\n')
    at_backup, counts, roles = _pg_state(pg, PG_DB), _pg_counts(pg, PG_DB), _pg_roles(pg)
    assert counts == {"customers": 1501, "orders": 4000}
    assert f"{PG_READER}=r/{PG_OWNER}" in at_backup["relations"]
    spenders = pg.psql("SELECT * FROM big_spenders ORDER BY 1", PG_DB)
    assert spenders.count("\n") > 10
    neighbour = _pg_state(pg, PG_NEIGHBOUR)
    databases = pg.psql("SELECT datname FROM pg_database ORDER BY 1")
    started = pg.psql("SELECT pg_postmaster_start_time()")
    _backup(run_ketch, site)

    # The day goes on after the backup: these are not in last night's dump.
    pg.psql("INSERT INTO orders (customer, amount, placed) VALUES (1, 9.99, now()), "
            "(2, 19.99, now()); CREATE TABLE coupons (code text PRIMARY KEY); "
            "INSERT INTO coupons VALUES ('SPRING')", PG_DB)
    # The damage; a clean-up gone wrong takes the reader's role with it.
    pg.psql("DROP TABLE orders CASCADE; DELETE FROM customers WHERE id % 3 = 0; "
            "UPDATE customers SET name = 'overwritten', note = NULL WHERE id < 100; "
            f"DROP OWNED BY {PG_READER}", PG_DB)
    pg.psql(f"DROP ROLE {PG_READER}")
    damaged, damaged_roles = _pg_state(pg, PG_DB), _pg_roles(pg)

    lines = _runbook(run_ketch, site, "web1")
    conn = f"-h {pg.host} -p {pg.port} -U postgres -d postgres"
    roles_line = f"ketch cat-file -r {site.url} pg/latest/globals.sql | psql -X {conn}"
    db_line = (f"ketch cat-file -r {site.url} pg/latest/{PG_DB}.sql | "
               f"psql -X -v ON_ERROR_STOP=1 {conn}")
    assert sorted(lines[1:]) == sorted([roles_line, db_line]), lines
    _accident(lines, site, sshd.port)
    assert (_pg_state(pg, PG_DB), _pg_roles(pg)) == (damaged, damaged_roles)

    # As the printed runbook has it, with the damaged database still there: the
    # dump stops at its CREATE DATABASE and says so, having changed nothing in
    # the database (without ON_ERROR_STOP, psql went on loading the dump into
    # the damaged tables, failed on most of it, and exited 0).
    got = _bash(lines, site.env)
    err = got.stderr.decode()
    assert got.returncode == 3, err
    assert f'database "{PG_DB}" already exists' in err, err
    assert _pg_state(pg, PG_DB) == damaged

    # As the doc has it: the damaged database dropped first. The reader's role
    # missing, as the damage left it (whether or not the attempt above ran the
    # globals): the roles must come back first, the database's dump grants to it.
    pg.psql(f"DROP DATABASE {PG_DB}")
    pg.psql(f"DROP ROLE IF EXISTS {PG_READER}")
    assert lines[1:] == [roles_line, db_line], "the runbook must reload globals.sql first"
    got = _bash(lines, site.env)
    err = got.stderr.decode()
    assert got.returncode == 0, err
    # What the globals say of roles the running server has, and nothing else.
    errors = [ln for ln in err.splitlines() if ln.startswith("ERROR:")]
    assert errors and all(re.fullmatch(r'ERROR:  role "\w+" already exists', e)
                          for e in errors), err
    assert f'role "{PG_READER}"' not in err
    # Exactly the backup, so without the day's writes since.
    assert _pg_counts(pg, PG_DB) == counts
    assert _pg_roles(pg) == roles
    assert _pg_state(pg, PG_DB) == at_backup
    assert pg.psql("SELECT * FROM big_spenders ORDER BY 1", PG_DB) == spenders
    assert pg.psql(f"SET ROLE {PG_READER}; SELECT count(*) FROM customers", PG_DB) == "1501\n"
    with pytest.raises(RuntimeError, match="violates foreign key constraint"):
        pg.psql("INSERT INTO orders (customer, amount, placed) VALUES (99999, 1, now())", PG_DB)

    # The same server, still running; its other databases as they were.
    assert pg.psql("SELECT pg_postmaster_start_time()") == started
    assert pg.psql("SELECT datname FROM pg_database ORDER BY 1") == databases
    assert _pg_state(pg, PG_NEIGHBOUR) == neighbour
