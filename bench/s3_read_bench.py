#!/usr/bin/env python3
"""Restoring from a repository in S3 against restoring from the local one (issue 14, item 5).

    .venv/bin/python bench/s3_read_bench.py                 # no added latency
    .venv/bin/python bench/s3_read_bench.py --latency 30    # 30 ms before each GET

A repository of a small tree (200 files), a 50 MB random file and a 1 MB one
is pushed (`ketch mirror push`) to a private SeaweedFS (tests/services); then
the whole save, the 50 MB file and the 1 MB file are restored in this process
from the local repository and through a StoreRepository, each from an empty
cache, and the time, the GETs and the bytes received are printed. The added
latency sleeps on the thread that makes each GET, so GETs in flight together
wait together, as over a real link.
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
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "src"))

from tests.services.seaweedfs import SeaweedServer  # noqa: E402

from ketch.localrepo import LocalRepository  # noqa: E402
from ketch.offsite.retry import RetryingStore  # noqa: E402
from ketch.offsite.s3 import S3Store  # noqa: E402
from ketch.offsite.s3repo import StoreRepository  # noqa: E402
from ketch.repo import Repository  # noqa: E402
from ketch.restore import restore  # noqa: E402
from ketch.vfs import VFS  # noqa: E402


class Slow:
    """An ObjectStore whose GETs each wait `latency` seconds first."""

    def __init__(self, inner: Any, latency: float) -> None:
        self.inner, self.latency = inner, latency

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)

    def get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        time.sleep(self.latency)
        data: bytes = self.inner.get(key, start, end)
        return data


def ketch(*args: object, env: dict[str, str]) -> None:
    subprocess.run([sys.executable, "-m", "ketch", *map(str, args)], check=True, env=env,
                   capture_output=True, stdin=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--latency", type=float, default=0.0, help="ms added before each GET")
    ap.add_argument("--mb", type=int, default=50, help="size of the big file")
    opts = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="ketch-s3bench-"))
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"), AWS_ACCESS_KEY_ID="test",
               AWS_SECRET_ACCESS_KEY="test", AWS_DEFAULT_REGION="us-east-1",
               XDG_CACHE_HOME=str(work / "cache"))
    try:
        with SeaweedServer.start(work / "weed") as weed:
            env["KETCH_S3_ENDPOINT"] = weed.endpoint
            os.environ.update({k: env[k] for k in (
                "AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION",
                "KETCH_S3_ENDPOINT", "XDG_CACHE_HOME")})
            S3Store("s3://bench").client.create_bucket(Bucket="bench")
            data = work / "data"
            (data / "tree").mkdir(parents=True)
            for i in range(200):
                (data / "tree" / f"f{i}").write_bytes(os.urandom(100 + i * 500))
            (data / "big").write_bytes(os.urandom(opts.mb << 20))
            (data / "one").write_bytes(os.urandom(1 << 20))
            ketch("init", "-d", work / "repo", env=env)
            ketch("save", "-d", work / "repo", "-n", "h", "--strip", data, env=env)
            ketch("mirror", "push", work / "repo", "s3://bench/m", env=env)
            for what in ("", "big", "one"):
                path = b"/h/latest/" + what.encode()
                for kind in ("local", "s3"):
                    shutil.rmtree(work / "out", ignore_errors=True)
                    shutil.rmtree(work / "cache", ignore_errors=True)
                    began = time.monotonic()
                    repo: Repository
                    sr = None
                    if kind == "local":
                        repo = LocalRepository(str(work / "repo"))
                    else:
                        store = RetryingStore(S3Store("s3://bench/m"))
                        repo = sr = StoreRepository(Slow(store, opts.latency / 1000), "repo",
                                                    url="s3://bench/m")
                    with repo:
                        restore(VFS(repo), [path], str(work / "out"))
                        took = time.monotonic() - began
                        traffic = ""
                        if sr is not None:
                            traffic = (f", {sr.requests} GETs, "
                                       f"{sr.bytes_received / 1e6:.2f} MB received")
                    size = sum(f.stat().st_size for f in (work / "out").rglob("*")
                               if f.is_file())
                    print(f"{what or 'whole save':10} {kind:5} {took:6.2f} s "
                          f"{size / 1e6 / took:7.1f} MB/s{traffic}")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
