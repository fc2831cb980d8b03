#!/usr/bin/env python3
"""How fast the dashboard's overview answers for a fleet of N machines
(issue 15's target: 200 repositories in <= 1 s).

    .venv/bin/python bench/web_bench.py              # 200 machines
    .venv/bin/python bench/web_bench.py --machines 50

One machine is made for real (two sets saved, a run report, a mirror push
report, a drill report, an fsck report) and copied N times, each copy a
repository of its own. `ketch web --root` is started as a process and timed
over HTTP: the first overview (every summary read: each branch head, each
report chain's head), the next ones (the summaries cached: refs and pack
listings only), one after a single machine saved again (its summary alone
read again), and /api/ and /metrics.
"""

from __future__ import annotations

import argparse
import http.client
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
KETCH = [sys.executable, "-m", "ketch"]
ENV = dict(os.environ, PYTHONPATH=str(ROOT / "src"))


def ketch(*args: object) -> None:
    subprocess.run([*KETCH, *map(str, args)], check=True, env=ENV, capture_output=True)


def template(work: Path) -> Path:
    from ketch import reportlog
    from ketch.localrepo import LocalRepository

    src = work / "src"
    for i in range(50):
        d = src / f"d{i % 5}"
        d.mkdir(parents=True, exist_ok=True)
        (d / f"f{i}").write_bytes(os.urandom(2000))
    repo = work / "template"
    ketch("init", "-d", repo)
    for name in ("etc", "home"):
        ketch("save", "-d", repo, "-n", name, src)
    r = LocalRepository(str(repo))
    heads = dict(r.iter_refs(b"refs/heads/"))
    reportlog.store(r, "run", {"exit_code": 0, "status": "OK", "items": [
        {"kind": "set", "name": n.decode()[11:], "ok": True, "files": 50, "bytes_read": 100_000,
         "bytes_new": 100_000, "seconds": 1.0, "commit": c.hex(), "warnings": []}
        for n, c in heads.items()], "warnings": [], "errors": []}, "OK")
    reportlog.store(r, "mirror", {"action": "push", "ok": True}, "push ok")
    reportlog.store(r, "mirror", {"action": "verify", "ok": True}, "verify ok")
    reportlog.store(r, "drill", {"exit_code": 0, "status": "OK"}, "OK")
    reportlog.store(r, "fsck", {"ok": True, "exit_code": 0}, "ok")
    r.close()
    return repo


def get(port: int, path: str) -> tuple[float, int, int]:
    t = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    conn.request("GET", path)
    resp = conn.getresponse()
    body = resp.read()
    conn.close()
    return time.perf_counter() - t, resp.status, len(body)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--machines", type=int, default=200)
    args = ap.parse_args()
    sys.path.insert(0, str(ROOT / "src"))
    with tempfile.TemporaryDirectory(prefix="ketch-web-bench-") as tmp:
        work = Path(tmp)
        tpl = template(work)
        root = work / "root"
        root.mkdir()
        for i in range(args.machines):
            shutil.copytree(tpl, root / f"host{i:03d}", symlinks=True)
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port = s.getsockname()[1]
        proc = subprocess.Popen([*KETCH, "web", "--root", root, "--listen", f"127.0.0.1:{port}"],
                                env=ENV, stderr=subprocess.DEVNULL)
        try:
            for _ in range(200):
                try:
                    socket.create_connection(("127.0.0.1", port), 0.2).close()
                    break
                except OSError:
                    time.sleep(0.05)
            cold = get(port, "/")
            warm = [get(port, "/")[0] for _ in range(5)]
            ketch("save", "-d", root / "host007", "-n", "etc", work / "src")
            moved = get(port, "/")
            api = [get(port, "/api/")[0] for _ in range(3)]
            metrics = [get(port, "/metrics")[0] for _ in range(3)]
        finally:
            proc.terminate()
            proc.wait()
    n = args.machines
    print(f"ketch web overview, {n} machines (bench/web_bench.py --machines {n})")
    print(f"  first load (every summary read)   {cold[0]:6.3f} s  ({cold[2] / 1e3:,.0f} kB, "
          f"HTTP {cold[1]})")
    print(f"  next loads (summaries cached)     {statistics.median(warm):6.3f} s  median of 5")
    print(f"  after one machine saved again     {moved[0]:6.3f} s")
    print(f"  /api/                             {statistics.median(api):6.3f} s  median of 3")
    print(f"  /metrics                          {statistics.median(metrics):6.3f} s  median of 3")
    return 0


if __name__ == "__main__":
    sys.exit(main())
