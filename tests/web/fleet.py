"""A small backup server's root for the dashboard's tests, made the way a real
one is: `ketch run` with a config per machine (reports included), and one
machine saved by hand three days ago.

    web01   two sets, two runs, OK; its home holds hostile file names
    mail01  its last run failed (a dump's command exits 3)
    db01    one save three days old, no run reports
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import RunKetch, _subprocess_env

XSS_NAME = "<img src=x onerror=alert(1)>"
HOSTILE_NAMES: list[bytes] = [
    XSS_NAME.encode(),
    b'quote"and\'apostrophe.txt',
    b"new\nline.txt",
    b"..dots..",
    b"not-utf8-\xff\xfe.bin",
    b"space and %percent.txt",
]


@dataclass
class Fleet:
    root: Path
    web01_home: Path  # the directory saved as web01's set "home"
    web01_etc: Path
    now: float


def _config(path: Path, repo: Path, sets: dict[str, Path], dumps: str = "") -> Path:
    lines = [f'repository = "{repo}"', f'lock_file = "{path.parent / (path.stem + ".lock")}"',
             f'log_file = "{path.parent / (path.stem + ".log")}"']
    for name, src in sets.items():
        lines += ["[[set]]", f'name = "{name}"', f'paths = ["{src}"]']
    path.write_text("\n".join(lines) + "\n" + dumps)
    path.chmod(0o600)
    return path


def _tree(home: Path) -> None:
    (home / "docs").mkdir(parents=True)
    (home / "docs" / "notes.txt").write_text("first line\nsecond line\n")
    (home / "docs" / "deep" / "er").mkdir(parents=True)
    (home / "docs" / "deep" / "er" / "leaf.txt").write_text("leaf\n")
    (home / "blob.bin").write_bytes(os.urandom(200_000) + bytes(range(256)) * 400)
    os.symlink("docs/notes.txt", home / "link-to-notes")
    for name in HOSTILE_NAMES:
        with open(os.path.join(os.fsencode(home), name), "wb") as f:
            f.write(b"hostile: " + name + b"\n")
    (home / "docs" / "notes.txt").chmod(0o640)


def make_fleet(tmp: Path, run_ketch: RunKetch) -> Fleet:
    root = tmp / "root"
    root.mkdir()
    src = tmp / "src"
    home, etc = src / "web01" / "home", src / "web01" / "etc"
    _tree(home)
    etc.mkdir(parents=True)
    (etc / "hosts").write_text("127.0.0.1 localhost\n")
    for m in ("web01", "mail01", "db01"):
        run_ketch("init", "-d", root / m, check=True)

    cfg = _config(tmp / "web01.toml", root / "web01", {"home": home, "etc": etc})
    got = run_ketch("run", "--config", cfg, "-q")
    assert got.returncode == 0, got.stderr.decode()
    # The second save differs: one line more, one file less, one new.
    with open(home / "docs" / "notes.txt", "a") as f:
        f.write("third line\n")
    (home / "docs" / "deep" / "er" / "leaf.txt").unlink()
    (home / "docs" / "added.txt").write_text("added\n")
    time.sleep(1.1)  # two saves in one second would share a name
    got = run_ketch("run", "--config", cfg, "-q")
    assert got.returncode == 0, got.stderr.decode()

    mail = src / "mail01"
    mail.mkdir()
    (mail / "spool").write_text("mail\n")
    failing = ('[[dump]]\nname = "broken"\ntype = "command"\n'
               'command = ["sh", "-c", "echo partial; exit 3"]\n')
    cfg = _config(tmp / "mail01.toml", root / "mail01", {"spool": mail}, failing)
    got = run_ketch("run", "--config", cfg, "-q")
    assert got.returncode == 2, got.stderr.decode()

    db = src / "db01"
    db.mkdir()
    (db / "dump.sql").write_text("CREATE TABLE t (x int);\n")
    three_days = int(time.time()) - 3 * 86400
    run_ketch("save", "-d", root / "db01", "-n", "pg", "--date", str(three_days), db, check=True)
    return Fleet(root, home, etc, time.time())


def run_ketch_plain(*args: str | Path, check: bool = False) -> subprocess.CompletedProcess[bytes]:
    """`python -m ketch ARGS`, for fixtures wider than one test (run_ketch is per test)."""
    got = subprocess.run([sys.executable, "-m", "ketch", *map(str, args)], capture_output=True,
                         env=_subprocess_env(None), stdin=subprocess.DEVNULL, timeout=600)
    if check and got.returncode:
        raise AssertionError(f"ketch {args}: {got.returncode}\n{got.stderr.decode()}")
    return got


def git_fsck(repo: Path) -> None:
    subprocess.run(["git", "--git-dir", str(repo), "fsck", "--strict", "--no-progress"],
                   check=True, capture_output=True)
