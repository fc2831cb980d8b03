"""The README's dump restore line, run as written after `ketch run`, with the
repository coming from the machine's config (issue 17, item 2): no -d anywhere."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from tests.conftest import RunKetch, _subprocess_env
from tests.services.mariadb import MariaDBServer


def test_readme_mysql_restore_line(tmp_path: Path, mariadb_server: MariaDBServer,
                                   run_ketch: RunKetch) -> None:
    db = mariadb_server
    db.sql("CREATE DATABASE readmeapp; CREATE TABLE readmeapp.t (id INT PRIMARY KEY, v TEXT);"
           "INSERT INTO readmeapp.t SELECT seq, CONCAT('row ', seq) FROM readmeapp.seq_1_to_500;")
    repo = tmp_path / "repo"
    cnf = tmp_path / "mysql.cnf"
    cnf.write_text(f"[client]\nsocket={db.socket}\nuser=root\n")
    cnf.chmod(0o600)
    cfg = tmp_path / "ketch.toml"
    cfg.write_text(f'repository = "{repo}"\nlock_file = "{tmp_path}/lock"\n\n'
                   f'[[dump]]\nname = "mysql"\ntype = "mysql"\ndatabases = ["readmeapp"]\n'
                   f'host = "{db.socket}"\nuser = "root"\n')
    env = {"KETCH_CONFIG": str(cfg)}
    run_ketch("init", env=env, check=True)
    r = run_ketch("run", "-q", "--no-notify", env=env)
    assert r.returncode == 0, r.stderr
    db.sql("DROP DATABASE readmeapp")

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ketch").write_text(f'#!/bin/sh\nexec {sys.executable} -m ketch "$@"\n')
    (bindir / "ketch").chmod(0o755)
    # The README's line, but for the options file's place (and the client's name).
    line = f"ketch cat-file mysql/latest/readmeapp.sql | mysql --defaults-extra-file={cnf}"
    proc = subprocess.run(["bash", "-o", "pipefail", "-c", line], capture_output=True,
                          timeout=120, env=_subprocess_env(
                              {**env, "PATH": f"{bindir}{os.pathsep}{os.environ['PATH']}"}))
    assert (proc.returncode, proc.stderr) == (0, b"")
    assert db.query("SELECT COUNT(*), MAX(v) FROM readmeapp.t") == [["500", "row 99"]]
