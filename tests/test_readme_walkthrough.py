"""The README's five-minute walk-through, run verbatim: from `ketch config init`
to putting a database dump back.

The block after the README's ``<!-- walkthrough -->`` marker is run line by
line by bash, as root, in a private mount and PID namespace where /etc/ketch,
/etc/cron.d, /var/backups, /var/log/ketch and /run are empty tmpfs mounts (so the
commands write exactly where the README says, without touching this machine),
a real cron daemon runs, and the default MariaDB socket leads to a throwaway
server holding the database `app`.  Between the first backup and the restore
line the test drops the database, as the disaster would; the restore line must
bring it back row for row.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import SRC_DIR, in_ci
from tests.jobs.conftest import require_mariadb
from tests.services.mariadb import MariaDBServer

README = Path(__file__).resolve().parent.parent / "README.md"
MARKER = "<!-- walkthrough -->"


def walkthrough_lines() -> list[str]:
    text = README.read_text()
    assert MARKER in text, "README.md lost its walk-through marker"
    block = re.search(re.escape(MARKER) + r"\s*```[a-z]*\n(.*?)```", text, re.S)
    assert block, "no fenced block after the walk-through marker"
    lines = [ln.split("  #")[0].rstrip() for ln in block.group(1).splitlines()]
    return [ln for ln in lines if ln and not ln.startswith("#")]


def _require(tool: str, package: str) -> str:
    path = shutil.which(tool) or (f"/usr/sbin/{tool}" if os.path.exists(f"/usr/sbin/{tool}")
                                  else None)
    if path is None:
        msg = f"{tool} is not installed (apt-get install {package})"
        if in_ci():
            pytest.fail(f"{msg}; CI requires it")
        pytest.skip(msg)
    return path


def test_readme_walkthrough_verbatim(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("the walk-through is for root (it writes /etc/ketch)")
    require_mariadb()
    unshare = _require("unshare", "util-linux")
    cron = _require("cron", "cron")
    lines = walkthrough_lines()
    restore_at = next(i for i, ln in enumerate(lines) if ln.startswith("ketch cat-file mysql/"))

    bindir = tmp_path / "bin"
    bindir.mkdir()
    (bindir / "ketch").write_text(
        f"#!/bin/sh\nPYTHONPATH={shlex.quote(str(SRC_DIR))} "
        f'exec {shlex.quote(sys.executable)} -m ketch "$@"\n')
    (bindir / "ketch").chmod(0o755)

    with MariaDBServer.start(tmp_path / "db", buffer_pool="32M") as server:
        server.sql("CREATE DATABASE app; USE app; CREATE TABLE app.t (id INT PRIMARY KEY, v TEXT);"
                   "INSERT INTO app.t SELECT seq, CONCAT('row ', seq) FROM seq_1_to_5000;")
        before = server.query("CHECKSUM TABLE app.t")
        script = [
            "set -eu -o pipefail",
            "for d in /etc/ketch /etc/cron.d /var/backups /var/log/ketch /run /run/mysqld; do",
            '  mkdir -p "$d"; mount -t tmpfs tmpfs "$d"',
            "done",
            "touch /run/mysqld/mysqld.sock",
            f"mount --bind {shlex.quote(server.socket)} /run/mysqld/mysqld.sock",
            f"{shlex.quote(cron)}",  # forks into the background, inside this namespace
            f"export PATH={shlex.quote(str(bindir))}:$PATH",
            "cd /",
            "set +e",  # from here on each README line's exit code is checked below
        ]
        for i, line in enumerate(lines):
            if i == restore_at:
                script += ["echo '+ (the test) DROP DATABASE app'",
                           "mysql -e 'DROP DATABASE app'"]
            script += [f"echo {shlex.quote('+ ' + line)}", line,
                       f'echo "@@ {i} $?"']
        script += ["echo '+ (the test) cron entry:'", "cat /etc/cron.d/ketch"]
        proc = subprocess.run(
            [unshare, "--mount", "--pid", "--fork", "--mount-proc", "--propagation", "private",
             "bash", "-c", "\n".join(script)],
            capture_output=True, stdin=subprocess.DEVNULL, timeout=600,
            env={k: v for k, v in os.environ.items() if k not in ("KETCH_CONFIG", "KETCH_DIR")})
        out = proc.stdout.decode(errors="replace") + proc.stderr.decode(errors="replace")
        assert proc.returncode == 0, out
        codes = {int(m[1]): int(m[2]) for m in re.finditer(r"^@@ (\d+) (\d+)$", out, re.M)}
        assert sorted(codes) == list(range(len(lines))), out
        for i, line in enumerate(lines):
            # `config check` may warn (exit 1): nothing here notifies a human yet.
            allowed = (0, 1) if line.startswith("ketch config check") else (0,)
            assert codes[i] in allowed, f"{line!r} exited {codes[i]}\n{out}"
        print(out)  # shown with -rP: what the walk-through looks like to its reader
        assert "Traceback" not in out, out
        assert server.query("CHECKSUM TABLE app.t") == before, out
        assert server.query("SELECT COUNT(*) FROM app.t") == [["5000"]]
