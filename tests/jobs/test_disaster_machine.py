"""Procedure 3 of docs/disaster-recovery.md, rehearsed with the real parts: a
machine that backs up to a backup server over ssh (real sshd, an append-only
key from `ketch server setup-client`) and dumps a MariaDB database (the
session's real server) is lost: its files, its database and its ssh key.

A new instance starts from an empty directory tree. Its admin gives it a new
key, lets the server take that key for the old machine's repository, then
runs the lines `ketch runbook --only machine` printed while the machine was up,
as printed: the config comes back from the ketch-config save every run makes
(no set of this machine saves /etc), with the MariaDB option file beside it;
then the sets; then the dump, loaded into the new machine's (empty) database
server with that option file. The files (bytes, modes, owners, times,
symlinks) and the database (every row) equal the lost machine's, and the new
machine's first nightly run goes on in the same repository."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

from tests.conftest import RunKetch
from tests.jobs.rehearsal import ketch_on_path, keygen, printed_commands
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import Machine, fsck, future_atimes
from tests.services.mariadb import MariaDBServer
from tests.services.sshd import SshServer
from tests.test_restore import snapshot

DB = "lostshop"  # the session's MariaDB is shared: a name of this test's own
SEED = f"""
CREATE DATABASE {DB};
CREATE TABLE {DB}.customers (id INT PRIMARY KEY, name VARCHAR(60)) ENGINE=InnoDB;
CREATE TABLE {DB}.orders (id INT PRIMARY KEY, customer INT NOT NULL, note TEXT,
  FOREIGN KEY (customer) REFERENCES {DB}.customers (id)) ENGINE=InnoDB;
INSERT INTO {DB}.customers SELECT seq, CONCAT('customer ', seq) FROM {DB}.seq_1_to_300;
INSERT INTO {DB}.orders SELECT seq, 1 + seq % 300, CONCAT('it''s order ', seq, ' \\u00e9\\n')
  FROM {DB}.seq_1_to_2000;
"""


def _admit(sshd: SshServer, run_ketch: RunKetch, srv: Path, key: Path) -> Machine:  # noqa: F811
    """On the server: `ketch server setup-client` for machine web1, its line in
    authorized_keys (the forced command decides what runs, not the client)."""
    got = run_ketch("server", "setup-client", "--root", srv, "--user", "root", "web1",
                    f"{key}.pub")
    assert got.returncode == 0, got.stderr.decode()
    sshd.add_authorized_line(got.stdout.decode().strip())
    return Machine(sshd, key, remote_command="ignored")


def _build_machine(root: Path, url: str, mysql: MariaDBServer) -> Path:
    etc_ketch, www = root / "etc" / "ketch", root / "srv" / "www"
    etc_ketch.mkdir(parents=True)
    www.mkdir(parents=True)
    (www / "index.html").write_text("<h1>shop</h1>\n")
    (www / "assets").mkdir()
    (www / "assets" / "logo.bin").write_bytes(os.urandom(3_000_000))
    (www / "private.key").write_text("not really\n")
    os.chmod(www / "private.key", 0o600)
    os.chown(www / "index.html", 33, 33)
    os.symlink("assets/logo.bin", www / "logo")
    cnf = etc_ketch / "mysql.cnf"
    cnf.write_text(f"[client]\nuser = root\nsocket = {mysql.socket}\n")
    cnf.chmod(0o600)
    cfg = etc_ketch / "ketch.toml"
    cfg.write_text(f'''repository = "{url}"
lock_file = "{root.parent / "run.lock"}"
log_file = "{root.parent / "run.log"}"
[[set]]
name = "www"
paths = ["{www}"]
[[dump]]
name = "mysql"
type = "mysql"
options_file = "{cnf}"
databases = ["{DB}"]
''')
    cfg.chmod(0o600)
    future_atimes(root)
    return cfg


def _rows(mysql: MariaDBServer) -> dict[str, list[list[str]]]:
    return {t: mysql.query(f"SELECT * FROM {t} ORDER BY id", DB) for t in ("customers", "orders")}


def test_a_lost_machine_comes_back_from_the_server_with_its_database(
        sshd: SshServer, mariadb_server: MariaDBServer, run_ketch: RunKetch,  # noqa: F811
        tmp_path: Path) -> None:
    mysql = mariadb_server
    mysql.sql(f"DROP DATABASE IF EXISTS {DB}")
    mysql.sql(SEED)
    srv, root, keys = tmp_path / "srv", tmp_path / "web1", tmp_path / "keys"
    keys.mkdir()
    old = _admit(sshd, run_ketch, srv, keygen(keys / "old"))
    cfg = _build_machine(root, old.url(srv / "web1"), mysql)

    got = run_ketch("run", "--config", cfg, "-q", env=old.env)
    assert got.returncode == 0, got.stderr.decode() + got.stdout.decode()
    book = run_ketch("runbook", "-c", cfg, "--machine", "web1", "--server-root", srv,
                     "--only", "machine", env=old.env, check=True).stdout.decode()
    assert "warning" not in book, book
    assert f"ketch-config/latest{root / 'etc' / 'ketch'}" in book
    assert f"mysql/latest/{DB}.sql" in book  # read from the server

    before = {p: snapshot(root / p) for p in ("etc/ketch", "srv/www")}
    rows = _rows(mysql)
    # The disaster: the machine, its database and its key are gone.
    subprocess.run(["rm", "-rf", root, keys / "old", keys / "old.pub"], check=True)
    mysql.sql(f"DROP DATABASE {DB}")

    # A new instance: a new key, which the server's admin lets in for web1.
    new = _admit(sshd, run_ketch, srv, keygen(keys / "new"))
    env = ketch_on_path(tmp_path / "bin", new.env)
    lines = printed_commands(book)
    # As printed, but for what this test did itself above (installing ketch,
    # the key), what needs a cron daemon, and the config check, run last.
    skip = ("scripts/install-ketch.sh", "ssh-keygen ", "ketch schedule install",
            "ketch config check")
    script = [c for c in lines if not c.startswith(skip)]
    assert any(c.startswith("ssh-keygen ") for c in lines)
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(script)], env=env,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    for p, snap in before.items():
        assert snapshot(root / p) == snap, p
    assert _rows(mysql) == rows

    check = [c for c in lines if c.startswith("ketch config check")]
    checked = subprocess.run(["bash", "-c", check[0] + " --json"], env=env,
                             capture_output=True, timeout=120)
    failed = [c for c in json.loads(checked.stdout)["checks"] if c["status"] == "fail"]
    assert failed == [], failed
    # The first nightly run of the new machine: the same repository, its history on.
    again = run_ketch("run", "--config", cfg, "--json", "--no-notify", env=new.env)
    report = json.loads(again.stdout)
    assert again.returncode == 0, again.stderr.decode() + again.stdout.decode()
    www = next(i for i in report["items"] if i["name"] == "www")
    assert www["bytes_new"] < 200_000, www  # nothing changed: deduplicated
    saves = run_ketch("ls", "-r", new.url(srv / "web1"), "www", env=new.env, check=True)
    assert len(saves.stdout.split()) == 3  # two saves and `latest`
    fsck(srv / "web1")
