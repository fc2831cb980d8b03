#!/usr/bin/env python3
"""A database dump streamed into ketch vs the same dump thrown away.

    .venv/bin/python bench/dump_bench.py               # ~1 GB of dump
    .venv/bin/python bench/dump_bench.py --scale 0.1   # quick run

A throwaway MariaDB server (tests/services/mariadb.py) gets one database of
about SCALE GB of mysqldump output (an orders-like table: numbers, dates and
text of moderate entropy, so compression has work to do).  Then, alternating,
RUNS times each:

- baseline: ``mysqldump --single-transaction DB > /dev/null``
- ketch:    ``run_dump`` of the same database (mysqldump with ketch's options,
            hashsplit and written into a fresh local repository each time)

Each side's best time gives its throughput (dump bytes / s); the ratio
ketch/baseline has a target of >= 0.90 (issue 5).  The server's buffer pool
holds the whole table, so both sides read from memory after the warm-up run.
Exit status: 0 (a missed target is reported, not a failure), 2 bad setup.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.services.mariadb import MariaDBServer, missing_binaries  # noqa: E402

from ketch.jobs.dumps import run_dump  # noqa: E402
from ketch.jobs.model import DumpSpec  # noqa: E402
from ketch.localrepo import LocalRepository, init_repository  # noqa: E402

DB = "benchdb"
TARGET = 0.90
# mysqldump bytes per row of the table below, measured; sizes the row count.
BYTES_PER_ROW = 150
ROWS_PER_INSERT = 250_000


def create_database(server: MariaDBServer, rows: int) -> None:
    server.sql(f"CREATE DATABASE {DB}; CREATE TABLE {DB}.orders ("
               "id INT PRIMARY KEY, customer INT, amount DECIMAL(10,2), created DATETIME, "
               "status VARCHAR(16), note VARCHAR(200)) ENGINE=InnoDB")
    for lo in range(1, rows + 1, ROWS_PER_INSERT):
        hi = min(rows, lo + ROWS_PER_INSERT - 1)
        server.sql(
            f"INSERT INTO {DB}.orders SELECT seq, 1 + seq % 10007, (seq % 99991) / 7, "
            "'2020-01-01' + INTERVAL seq MINUTE, "
            "ELT(1 + seq % 4, 'new', 'paid', 'shipped', 'returned'), "
            "CONCAT('order ', seq, ' for customer ', 1 + seq % 10007, ': ', "
            "SUBSTR(MD5(seq), 1, 12 + seq % 20), ' ', SHA1(seq % 5000)) "
            f"FROM {DB}.seq_{lo}_to_{hi}")


def _server_cpu(server: MariaDBServer) -> float:
    """CPU seconds mariadbd has used so far (0 when its pid cannot be read)."""
    try:
        pid = int((server.workdir / "pid").read_text().split()[0])
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        return 0.0


class Cpu:
    """CPU seconds over a run: this process (ketch, in-process), its children
    (mysqldump) and the server."""

    def __init__(self, server: MariaDBServer) -> None:
        self.server = server
        self.own = self.kids = self.db = 0.0

    def __enter__(self) -> Cpu:
        t = os.times()
        self._t = (t.user + t.system, t.children_user + t.children_system,
                   _server_cpu(self.server))
        return self

    def __exit__(self, *_: object) -> None:
        t = os.times()
        self.own = t.user + t.system - self._t[0]
        self.kids = t.children_user + t.children_system - self._t[1]
        self.db = _server_cpu(self.server) - self._t[2]

    def __str__(self) -> str:
        return (f"CPU: ketch {self.own:.1f} s, mysqldump {self.kids:.1f} s, "
                f"mariadbd {self.db:.1f} s")


def time_baseline(server: MariaDBServer) -> float:
    """Seconds of ``mysqldump --single-transaction DB > /dev/null``."""
    argv = ["mysqldump", f"--socket={server.socket}", "--user=root",
            "--single-transaction", DB]
    with open(os.devnull, "wb") as null:
        t0 = time.perf_counter()
        subprocess.run(argv, stdout=null, check=True)
        return time.perf_counter() - t0


def dump_size(server: MariaDBServer) -> int:
    p = subprocess.Popen(["mysqldump", f"--socket={server.socket}", "--user=root",
                          "--single-transaction", DB], stdout=subprocess.PIPE)
    assert p.stdout is not None
    n = 0
    while block := p.stdout.read(1 << 20):
        n += len(block)
    p.wait()
    return n


def time_ketch(server: MariaDBServer, repo_dir: Path, level: int) -> tuple[float, int, int]:
    """Seconds, bytes read and bytes new of run_dump into a fresh repository."""
    shutil.rmtree(repo_dir, ignore_errors=True)
    init_repository(str(repo_dir))
    repo = LocalRepository(str(repo_dir))
    try:
        spec = DumpSpec(name="bench", type="mysql", host=server.socket, user="root",
                        databases=[DB])
        t0 = time.perf_counter()
        res = run_dump(repo, spec, level=level)
        return time.perf_counter() - t0, res.bytes_read, res.bytes_new
    finally:
        repo.close()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--scale", type=float, default=1.0, help="GB of dump (default 1.0)")
    ap.add_argument("--runs", type=int, default=2, help="timed runs per side (default 2)")
    ap.add_argument("--level", type=int, default=1, help="ketch's compression level")
    ap.add_argument("--workdir", default=None,
                    help="where the server and repository live (default: a temp dir "
                         "under /var/tmp, removed afterwards)")
    args = ap.parse_args()
    missing = missing_binaries() + [p for p in ("mysqldump",) if shutil.which(p) is None]
    if missing:
        print(f"dump_bench: MariaDB is not installed (missing {', '.join(missing)}; "
              "run scripts/install-deps.sh)", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="ketch-dump-bench.", dir="/var/tmp"))
    rows = max(1000, int(args.scale * 1e9 / BYTES_PER_ROW))
    pool = f"{max(128, int(args.scale * 1500))}M"
    try:
        with MariaDBServer.start(work / "mariadb", buffer_pool=pool) as server:
            t0 = time.perf_counter()
            create_database(server, rows)
            size = dump_size(server)  # also warms the buffer pool and page cache
            print(f"database: {rows:,} rows, {size / 1e6:,.0f} MB of dump, "
                  f"created in {time.perf_counter() - t0:.1f} s; cpus: {os.cpu_count()}")
            base: list[float] = []
            kt: list[float] = []
            new = read = 0
            for _ in range(args.runs):
                with Cpu(server) as cpu:
                    base.append(time_baseline(server))
                print(f"  mysqldump > /dev/null {base[-1]:.2f} s; {cpu}")
                with Cpu(server) as cpu:
                    secs, read, new = time_ketch(server, work / "repo", args.level)
                print(f"  ketch run_dump        {secs:.2f} s; {cpu}")
                kt.append(secs)
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if read != size:
        print(f"note: ketch read {read:,} bytes, mysqldump {size:,} "
              "(ketch adds --routines --events --triggers --hex-blob --databases)")
    b, k = min(base), min(kt)
    b_rate, k_rate = size / b / 1e6, size / k / 1e6
    ratio = k_rate / b_rate
    print(f"mysqldump > /dev/null  {b:7.2f} s  {b_rate:8.1f} MB/s   (runs: "
          + ", ".join(f"{t:.2f}" for t in base) + ")")
    print(f"ketch run_dump         {k:7.2f} s  {k_rate:8.1f} MB/s   (runs: "
          + ", ".join(f"{t:.2f}" for t in kt) + f"; {new / 1e6:,.0f} MB new in the repository)")
    print(f"ratio ketch/mysqldump  {ratio:.2f}   target >= {TARGET:.2f}  "
          + ("met" if ratio >= TARGET else "MISSED"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
