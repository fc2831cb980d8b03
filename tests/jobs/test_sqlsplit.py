"""A drill loads a mysqldump through several clients (ketch.jobs.sqlsplit):
what a real mysqldump writes (tables, triggers, a view, a routine, an event)
must arrive whole, in an order the server accepts."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ketch.jobs.drilldb import MariaDB
from ketch.jobs.sqlsplit import sections
from tests.services.mariadb import MariaDBServer

HEAD = b"/*!40101 SET NAMES utf8mb4 */;\nSET FOREIGN_KEY_CHECKS=0;\n\n"
DUMP = (HEAD
        + b"--\n-- Current Database: `db`\n--\n\nCREATE DATABASE `db`;\nUSE `db`;\n\n"
        + b"--\n-- Table structure for table `a`\n--\nCREATE TABLE a (x int);\n"
        + b"INSERT INTO a VALUES (1),('-- Table structure for table in a value');\n"
        + b"--\n-- Dumping data for table `a`\n--\n"
        + b"--\n-- Table structure for table `b`\n--\nCREATE TABLE b (y int);\n"
        + b"--\n-- Dumping routines for database 'db'\n--\nDELIMITER ;;\n"
        + b"CREATE PROCEDURE p() SELECT 1 ;;\nDELIMITER ;\n")


def _blocks(data: bytes, size: int) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("size", [1, 7, 64, len(DUMP)])
def test_sections_keep_every_byte_and_cut_only_at_markers(size: int) -> None:
    parts = list(sections(_blocks(DUMP, size)))
    assert b"".join(data for _, data in parts) == DUMP
    starts = [kind for kind, data in parts if not data]
    assert starts == ["barrier", "table", "table", "barrier"]
    by_kind: dict[str, bytes] = {}
    for kind, data in parts:
        by_kind[kind] = by_kind.get(kind, b"") + data
    assert by_kind["head"] == HEAD + b"--\n"  # a bare "--" line stays with what it ends
    # A marker's text inside a row (not at a line's start) cuts nothing.
    assert b"in a value" in by_kind["table"]


SEED = """
CREATE DATABASE splitdb;
USE splitdb;
CREATE TABLE parent (id INT PRIMARY KEY, name VARCHAR(40));
CREATE TABLE child (id INT PRIMARY KEY, parent INT, note TEXT,
                    FOREIGN KEY (parent) REFERENCES parent(id));
CREATE TABLE audit (n INT);
CREATE TRIGGER child_ins AFTER INSERT ON child FOR EACH ROW INSERT INTO audit VALUES (NEW.id);
INSERT INTO parent SELECT seq, CONCAT('p', seq) FROM seq_1_to_3000;
INSERT INTO child SELECT seq, 1 + seq % 3000, REPEAT('x\\n-- Table structure for table z', 3)
  FROM seq_1_to_6000;
CREATE VIEW big_parents AS SELECT p.id, COUNT(*) AS n FROM parent p
  JOIN child c ON c.parent = p.id GROUP BY p.id;
CREATE PROCEDURE total() SELECT COUNT(*) FROM child;
CREATE EVENT tidy ON SCHEDULE EVERY 1 DAY DISABLE DO DELETE FROM audit WHERE n < 0;
"""


def _dump(server: MariaDBServer) -> bytes:
    dump = shutil.which("mysqldump") or shutil.which("mariadb-dump")
    assert dump, "mysqldump is not installed (apt-get install mariadb-client)"
    argv = [dump, "--no-defaults", f"--socket={server.socket}", f"--user={server.user}",
            "--single-transaction", "--routines", "--events", "--triggers", "--hex-blob",
            "--databases", "splitdb"]
    return subprocess.run(argv, check=True, capture_output=True, timeout=120).stdout


def test_a_real_dump_loads_in_parallel_whole(mariadb_server: MariaDBServer,
                                             tmp_path: Path) -> None:
    mariadb_server.sql("DROP DATABASE IF EXISTS splitdb")
    mariadb_server.sql(SEED)
    want = {t: mariadb_server.query(f"SELECT COUNT(*) FROM splitdb.{t}")[0][0]
            for t in ("parent", "child", "audit")}
    dump = _dump(mariadb_server)
    server = MariaDB(str(tmp_path))
    assert server.missing() is None
    server.start()
    try:
        errors = server.load(_blocks(dump, 4096))
        assert errors == []
        got = server.tables()
        assert {k.split(".", 1)[1]: str(v) for k, v in got.items()} == want
        # What is not a table came too, after the tables it names.
        assert server.query("SELECT COUNT(*) FROM big_parents", "splitdb") == [["3000"]]
        assert server.query("SHOW PROCEDURE STATUS WHERE Db = 'splitdb'")[0][1] == "total"
        assert server.query("SELECT trigger_name FROM information_schema.triggers "
                            "WHERE trigger_schema = 'splitdb'") == [["child_ins"]]
        assert server.query("SELECT event_name FROM information_schema.events "
                            "WHERE event_schema = 'splitdb'") == [["tidy"]]
        # Damage in one table's section is reported, not lost among clients.
        bad = dump.replace(b"INSERT INTO `child` VALUES", b"INSERT INTO `child` VALUES (", 1)
        server.query("DROP DATABASE splitdb")
        errors = server.load(_blocks(bad, 65536))
        assert len(errors) == 1 and "ERROR 1064" in errors[0], errors
    finally:
        server.stop()
