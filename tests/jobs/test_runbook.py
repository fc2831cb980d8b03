"""`ketch runbook`: the machine-lost procedure it prints is run as printed, on a
machine whose files are gone, and gives the machine back: its config, its
sets (bytes, modes, mtimes) and its database, reloaded from the dump."""

from __future__ import annotations

import os
import shutil
import sqlite3
import subprocess
from pathlib import Path

from tests.conftest import RunKetch
from tests.jobs.rehearsal import ketch_on_path, printed_commands
from tests.test_restore import snapshot


def _machine(root: Path) -> tuple[Path, Path]:
    """A machine under `root`: /etc/ketch with its config (in no set: every run
    saves it as ketch-config), /etc/app, /srv/data, a SQLite DB."""
    etc, data, db = root / "etc" / "app", root / "srv" / "data", root / "var" / "db"
    (root / "etc" / "ketch").mkdir(parents=True)
    etc.mkdir()
    (etc / "app.conf").write_text("port = 8080\n")
    data.mkdir(parents=True)
    (data / "report.pdf").write_bytes(os.urandom(300_000))
    (data / "sub").mkdir()
    (data / "sub" / "notes.txt").write_text("notes\n")
    os.chmod(data / "sub" / "notes.txt", 0o640)
    os.symlink("sub/notes.txt", data / "link")
    db.mkdir(parents=True)
    with sqlite3.connect(db / "app.db") as c:
        c.execute("CREATE TABLE t (id INTEGER PRIMARY KEY, v TEXT)")
        c.executemany("INSERT INTO t (v) VALUES (?)", [(f"row {i}",) for i in range(500)])
    c.close()
    cfg = root / "etc" / "ketch" / "ketch.toml"
    cfg.write_text(f'''repository = "{root.parent / "repo"}"
lock_file = "{root.parent / "run.lock"}"
log_file = "{root.parent / "ketch.log"}"
[[set]]
name = "etc"
paths = ["{etc}"]
[[set]]
name = "data"
paths = ["{data}"]
[[dump]]
name = "appdb"
type = "sqlite"
path = "{db / "app.db"}"
''')
    cfg.chmod(0o600)
    return cfg, db / "app.db"


def test_the_machine_lost_procedure_gives_the_machine_back(tmp_path: Path,
                                                           run_ketch: RunKetch) -> None:
    root = tmp_path / "machine"
    cfg, db = _machine(root)
    run_ketch("init", "-d", tmp_path / "repo", check=True)
    got = run_ketch("run", "--config", cfg, "-q")
    assert got.returncode == 0, got.stderr.decode()
    book = run_ketch("runbook", "-c", cfg, "--machine", "web1", "--only", "machine", check=True)
    text = book.stdout.decode()
    assert "no ketch-config yet" not in text  # the run saved it
    assert f"-C {root / 'etc'} ketch-config/latest{root / 'etc' / 'ketch'}" in text
    assert "appdb/latest/app.db" in text  # the dump's file, read from the repository

    before = {p: snapshot(root / p) for p in ("etc/app", "etc/ketch", "srv/data")}
    with sqlite3.connect(db) as c:
        rows = c.execute("SELECT id, v FROM t ORDER BY id").fetchall()
    c.close()
    shutil.rmtree(root)  # the machine is gone

    env = ketch_on_path(tmp_path / "bin")
    # As printed, but for installing ketch (the wrapper above stands in) and the
    # schedule (no cron here); the config check runs last, on its own: 1 is warnings.
    lines = printed_commands(text)
    check = [c for c in lines if c.startswith("ketch config check")]
    script = [c for c in lines if c not in check and
              not c.startswith(("scripts/install-ketch.sh", "ketch schedule install"))]
    assert len(check) == 1 and len(script) >= 5, lines
    done = subprocess.run(["bash", "-e", "-o", "pipefail", "-c", "\n".join(script)], env=env,
                          capture_output=True, timeout=600)
    assert done.returncode == 0, done.stderr.decode()
    for p, snap in before.items():
        assert snapshot(root / p) == snap, p
    # After the comparison: reading the config bumps its atime.
    checked = subprocess.run(["bash", "-c", check[0]], env=env, capture_output=True, timeout=120)
    assert checked.returncode in (0, 1), checked.stdout.decode()
    assert not Path(str(db) + ".restored").exists()  # moved in place, as printed
    with sqlite3.connect(db) as c:
        assert c.execute("SELECT id, v FROM t ORDER BY id").fetchall() == rows
    c.close()


def test_every_procedure_names_its_repository_and_warns_of_gaps(tmp_path: Path,
                                                                run_ketch: RunKetch) -> None:
    src = tmp_path / "data"
    src.mkdir()
    (src / "f").write_text("x\n")
    cfg = tmp_path / "k.toml"
    cfg.write_text(f'repository = "backup@server:/srv/ketch/web1"\n[[set]]\nname = "data"\n'
                   f'paths = ["{src}"]\n')
    cfg.chmod(0o600)
    got = run_ketch("runbook", "-c", cfg, "--machine", "web1", "--mirror", "s3://b/ketch",
                    "--json")
    assert got.returncode == 0, got.stderr.decode()
    import json
    book = json.loads(got.stdout)
    assert [p["name"] for p in book["procedures"]] == ["files", "database", "machine", "server"]
    assert book["warnings"] == []  # the repository could not be read: nothing to warn of
    # The config alone (its directory is not ketch's own), from the save of it every run makes.
    assert f"ketch restore -r backup@server:/srv/ketch/web1 -C {tmp_path} " \
           f"ketch-config/latest{cfg}" in "\n".join(c for p in book["procedures"]
                                                   for s in p["steps"] for c in s["commands"])
    commands = [c for p in book["procedures"] for s in p["steps"] for c in s["commands"]]
    ketch_lines = [c for c in commands if c.startswith("ketch ") and " -r " not in c
                   and not c.startswith(("ketch config", "ketch schedule", "ketch mirror",
                                         "ketch fsck", "ketch server"))]
    assert ketch_lines == [], ketch_lines  # each names its repository
    assert "ketch restore -r s3://b/ketch/web1" in "\n".join(commands)
    assert b"repository not read" in got.stderr  # the server is not reachable here
    bad = run_ketch("runbook", "-c", cfg, "--mirror", "http://x")
    assert bad.returncode == 2 and len(bad.stderr.decode().strip().splitlines()) == 1
