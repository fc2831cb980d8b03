#!/usr/bin/env python3
"""`ketch drill` of the benchmark corpus with a MariaDB dump (issue 12: under a minute).

    .venv/bin/python bench/drill_bench.py --scale 0.1   # ~150 MB corpus, 30 MB SQL: quick
    .venv/bin/python bench/drill_bench.py               # full scale: 1.5 GB, 300 MB SQL

The corpus (bench/corpus.py, cached under --cache) is one set; its
`sql-dump.sql` is loaded into a throwaway MariaDB server (tests/services) as
database `shop`, which is the config's mysql dump. `ketch run` saves both into
a fresh local repository, then `ketch drill` runs RUNS times (default sample of
100 files); each run's wall time, and the set's and the dump's, are printed.
Exit status: 0 (a missed target is reported, not a failure), 2 bad setup.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "bench"))

from corpus import ensure_corpus  # noqa: E402
from tests.services.mariadb import MariaDBServer, missing_binaries  # noqa: E402

TARGET_S = 60.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--scale", type=float, default=1.0)
    ap.add_argument("--cache", type=Path, default=Path("/var/tmp/ketch-bench"))
    ap.add_argument("--runs", type=int, default=2)
    args = ap.parse_args()
    if missing := missing_binaries():
        print(f"MariaDB is not installed (missing {', '.join(missing)})", file=sys.stderr)
        return 2
    data = ensure_corpus(args.cache, args.scale, print).data_dir
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    ketch = [sys.executable, "-m", "ketch"]
    with tempfile.TemporaryDirectory(prefix="drill-bench.", dir="/var/tmp") as tmp:
        work = Path(tmp)
        with MariaDBServer.start(work / "mdb") as db:
            t = time.monotonic()
            with open(data / "sql-dump.sql", "rb") as f:
                db.sql("", None, input=b"CREATE DATABASE shop; USE shop;\n" + f.read())
            print(f"MariaDB: shop loaded in {time.monotonic() - t:.1f} s")
            config = work / "ketch.toml"
            config.write_text(f'repository = "{work}/repo"\n'
                              f'[[set]]\nname = "corpus"\npaths = ["{data}"]\n'
                              f'[[dump]]\nname = "mysql"\ntype = "mysql"\n'
                              f'host = "{db.socket}"\nuser = "root"\ndatabases = ["shop"]\n')
            subprocess.run([*ketch, "init", "-d", f"{work}/repo"], env=env, check=True,
                           capture_output=True)
            run = subprocess.run([*ketch, "run", "-c", str(config)], env=env, text=True,
                                 capture_output=True)
            print(run.stdout, end="")
            if run.returncode != 0:
                print(run.stderr, file=sys.stderr)
                return 2
            for _ in range(args.runs):
                t = time.monotonic()
                proc = subprocess.run([*ketch, "drill", "--json", "-c", str(config)], env=env,
                                      text=True, capture_output=True)
                wall = time.monotonic() - t
                report = json.loads(proc.stdout)
                parts = ", ".join(f"{i['kind']} {i['name']} {i['seconds']:.1f} s"
                                  for i in report["items"])
                verdict = "meets" if wall < TARGET_S else "misses"
                print(f"drill: {wall:.1f} s ({parts}), exit {proc.returncode}: {verdict} "
                      f"the {TARGET_S:.0f} s target")
    return 0


if __name__ == "__main__":
    sys.exit(main())
