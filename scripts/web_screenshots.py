#!/usr/bin/env python3
"""The screenshots in docs/ (README "Web dashboard"): a demo fleet of eight
machines with three weeks of history, served by `ketch web`, photographed
by Chromium through Playwright.

    .venv/bin/python scripts/web_screenshots.py            # writes docs/web-*.png
    .venv/bin/python scripts/web_screenshots.py --keep DIR # and leaves the fleet in DIR

The saves are real (`ketch save --date`, one a day); the history is made by
dating them, and each day's new packs get that day's mtime, which is what the
size charts read. The run, mirror, drill and fsck reports are stored through
ketch.reportlog with the numbers of those saves, dated the same way, since
`ketch run` cannot be run in the past.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "src"))
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
DAY = 86400
DAYS = 21
CHROME_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"]

# name: (sets, bytes added a day, days since the last save, last run's exit code)
MACHINES = {
    "web01": (["etc", "www"], 40_000, 0, 0),
    "web02": (["etc", "www"], 35_000, 0, 0),
    "db01": (["etc", "pgdump"], 400_000, 0, 0),
    "db02": (["etc", "pgdump"], 380_000, 3, 0),
    "mail01": (["etc", "spool"], 120_000, 0, 2),
    "files01": (["etc", "share"], 250_000, 0, 1),
    "app01": (["etc", "app"], 20_000, 1, 0),
    "gw01": (["etc"], 2_000, 0, 0),
}


def ketch(*args: object) -> str:
    return subprocess.run([sys.executable, "-m", "ketch", *map(str, args)], check=True, env=ENV,
                          capture_output=True, text=True).stdout


def packs(repo: Path) -> set[Path]:
    return set((repo / "objects" / "pack").glob("pack-*.pack"))


def make_machine(root: Path, src_root: Path, name: str, now: float, rng: random.Random) -> None:
    from ketch import reportlog
    from ketch.localrepo import LocalRepository

    sets, growth, stale, last_code = MACHINES[name]
    repo = root / name
    ketch("init", "-d", repo)
    srcs = {}
    for s in sets:
        d = src_root / name / s
        d.mkdir(parents=True)
        (d / "base.bin").write_bytes(rng.randbytes(growth * 5))
        srcs[s] = d
    for day in range(DAYS, stale - 1, -1):
        when = int(now - day * DAY - 3600 * 5 - rng.randint(0, 1800))
        items = []
        for s, d in srcs.items():
            (d / f"day-{day:02d}.bin").write_bytes(rng.randbytes(int(growth * rng.uniform(0.6, 1.4))
                                                              // len(srcs)))
            before = packs(repo)
            got = json.loads(ketch("save", "-d", repo, "-n", s, "--date", when, "--json", d))
            for p in packs(repo) - before:
                os.utime(p, (when, when))
                os.utime(p.with_suffix(".idx"), (when, when))
            items.append({"kind": "set", "name": s, "ok": True, "files": got["files"],
                          "bytes_read": got["bytes_read"], "bytes_new": got["bytes_new"],
                          "seconds": got["seconds"] + rng.uniform(20, 90), "commit": got["commit"],
                          "warnings": [], "error": None})
        code = last_code if day == stale else 0
        if code == 2:
            items.append({"kind": "dump", "name": "mysql", "ok": False, "files": 0,
                          "bytes_read": 0, "bytes_new": 0, "seconds": 0.4, "commit": None,
                          "warnings": [], "error": "mysqldump exited 2: Got error: 1045: Access "
                                                   "denied for user 'backup'@'localhost'"})
        if code == 1:
            items[-1]["warnings"] = ["share/scans/2026-11.pdf: changed while it was read",
                                     "share/tmp/lock: vanished before it was read"]
        r = LocalRepository(str(repo))
        status = {0: "OK", 1: "WARNINGS", 2: "FAILED"}[code]
        reportlog.store(r, "run", {"machine": name, "exit_code": code, "status": status,
                                   "items": items, "errors": [], "warnings": [], "notes": [],
                                   "started": time.strftime("%Y-%m-%dT%H:%M:%S",
                                                            time.localtime(when)),
                                   "seconds": sum(i["seconds"] for i in items)},
                        status, when=when + 120)
        if day % 7 == 0 and name != "app01":
            reportlog.store(r, "drill", {"exit_code": 0, "status": "OK", "items": []}, "OK",
                            when=when + 2 * 3600)
            reportlog.store(r, "fsck", {"ok": True, "exit_code": 0}, "ok", when=when + 2 * 3600 + 900)
        push_ok = not (name == "files01" and day == stale)
        reportlog.store(r, "mirror", {"action": "push", "ok": push_ok,
                                      "error": None if push_ok else "s3: RequestTimeout"},
                        "push", when=when + 3600)
        if day % 7 == 1:
            reportlog.store(r, "mirror", {"action": "verify", "ok": True}, "verify",
                            when=when + 3 * 3600)
        r.close()
        for p in packs(repo):
            if p.stat().st_mtime > now - 60:  # the reports' own packs: that day too
                os.utime(p, (when, when))


def shoot(root: Path, out: Path) -> None:
    from playwright.sync_api import sync_playwright

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    web = subprocess.Popen([sys.executable, "-m", "ketch", "web", "--root", str(root),
                            "--listen", f"127.0.0.1:{port}"], env=ENV)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.1)
        with sync_playwright() as p:
            b = p.chromium.launch(executable_path="/usr/bin/chromium", args=CHROME_ARGS)
            page = b.new_page(viewport={"width": 1500, "height": 620})
            page.goto(f"http://127.0.0.1:{port}/")
            page.screenshot(path=str(out / "web-overview.png"), full_page=True)
            page.set_viewport_size({"width": 1200, "height": 900})
            page.goto(f"http://127.0.0.1:{port}/m/files01")
            page.screenshot(path=str(out / "web-machine.png"), full_page=False)
            b.close()
    finally:
        web.terminate()
        web.wait()


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--keep", metavar="DIR", help="build the fleet in DIR and leave it there")
    ap.add_argument("--out", default=str(ROOT / "docs"), help="where the PNGs go")
    args = ap.parse_args()
    work = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="ketch-web-demo-"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    (work / "root").mkdir(parents=True)
    rng = random.Random(15)
    now = time.time()
    for name in MACHINES:
        make_machine(work / "root", work / "src", name, now, rng)
    Path(args.out).mkdir(exist_ok=True)
    shoot(work / "root", Path(args.out))
    if not args.keep:
        shutil.rmtree(work)
    print(f"wrote {args.out}/web-overview.png and web-machine.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
