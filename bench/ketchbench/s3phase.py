"""The s3 phase: ketch against a private SeaweedFS on 127.0.0.1, straight and
through a latency relay (ketchbench/relay.py: a fixed delay per request) that
shows what a real, distant S3 endpoint would.

On a copy of DATA: a local save (the baseline), ``mirror push`` of that
repository, then full restores, each with the page cache dropped and an empty
ketch S3 cache ($XDG_CACHE_HOME pointed at a fresh directory): from the local
repository, from ``-r s3://`` straight, and from ``-r s3://`` through the relay
(requests and bytes counted there), once without delay (what the relay itself
costs) and once with; one ~1 MB file alone through the relay.
What a restore should download is computed from the local repository: the
compressed size in its packs of every object the save reaches. Then, once
ketch can save to S3 (``ketch init -r s3://...`` succeeds; until then "not
supported yet" rows): ``save -r`` initial and after the day's changes beside
the local saves, and 50 processes saving small trees into one bucket at once.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

from corpus import mutate_day

from ketchbench.common import (
    BRANCH,
    GNU_TIME,
    MB,
    Context,
    Measure,
    Row,
    Tool,
    _parse_gnu_time,
    drop_caches,
    failure,
    log,
    measure,
    repo_bytes,
    rev_parse,
)
from ketchbench.cycle import copy_data, warm
from ketchbench.mirror import (
    MIRROR_PUSH,
    _bucket_bytes,
    _s3_client,
    _s3_env,
    _start_seaweed,
    _verify_one,
    pick_one_file,
)
from ketchbench.relay import DEFAULT_DELAY, LatencyRelay, RelayCount
from ketchbench.trees import compare_trees

if TYPE_CHECKING:  # imported for real by _start_seaweed, once ROOT is on sys.path
    from tests.services.seaweedfs import SeaweedServer

S3 = "s3"  # the phase, and its rows' prefix: s3:save-initial, s3:restore, ...
BUCKET = "bench-s3"
MIRROR_PREFIX = "m"  # mirror push s3://bench-s3/m; the restores read s3://bench-s3/m/REPO
SAVE_PREFIX = "r"  # save -r s3://bench-s3/r/NAME
FLEET_PREFIX = "fleet"  # the 50 machines: s3://bench-s3/fleet/mNN
LOCAL = "ketch"  # the rows' tools
DIRECT = "ketch -r s3"
RELAYED = f"ketch -r s3 +{DEFAULT_DELAY * 1000:g}ms"
RELAYED_PHASE = f"restore-{DEFAULT_DELAY * 1000:g}ms"  # the full restore through the relay
# The same through the relay without delay: what the relay itself costs (no target)
RELAYED_0 = "ketch -r s3 +0ms"
RELAYED_0_PHASE = "restore-0ms"
NOT_SUPPORTED = "not supported yet"
FLEET = int(os.environ.get("KETCH_BENCH_FLEET", "50"))  # machines saving at once
REQUEST_SPAN = 4 << 20  # the requests target: one request per 4 MiB needed, at least
# A small tree per machine: files every machine has (the same bytes), and its own.
FLEET_SHARED = (40, 20_000)  # files, bytes each
FLEET_OWN = (10, 100_000)


def _row(phase: str, tool: str, item: str, bytes_in: int, m: Measure) -> Row:
    return Row(
        phase=f"{S3}:{phase}",
        tool=tool,
        item=item,
        bytes_in=bytes_in,
        seconds=round(m.seconds, 3),
        mb_per_s=round(bytes_in / MB / m.seconds, 2) if m.seconds > 0 else 0.0,
        max_rss_kib=m.max_rss_kib,
        repo_bytes=None,
        tree=None,
        ok=m.returncode == 0,
        note="" if m.returncode == 0 else failure(m),
        cpu_seconds=m.cpu_seconds,
        tree_pss_kib=m.tree_pss_kib,
    )


def _unsupported(phase: str, item: str, why: str) -> Row:
    """A row for what ketch cannot do yet: not a failure; its targets show "-"."""
    return Row(phase=f"{S3}:{phase}", tool=DIRECT, item=item, bytes_in=0, seconds=0.0,
               mb_per_s=0.0, max_rss_kib=None, repo_bytes=None, tree=None, ok=True,
               note=f"{NOT_SUPPORTED}: {why}")


def _fresh_dir(ctx: Context, name: str) -> Path:
    d = ctx.work_dir / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    ctx.repos.append(d)
    return d


def _json(m: Measure) -> dict[str, object]:
    try:
        out = json.loads(m.stdout)
    except ValueError:
        return {}
    return out if isinstance(out, dict) else {}


def needed_bytes(repo: Path, rev: str, env: dict[str, str]) -> tuple[int, int]:
    """The bytes of the pack entries a restore of ``rev`` needs (the size on
    disk, compressed, of every object ``rev`` reaches), and how many objects."""
    listed = subprocess.run(["git", f"--git-dir={repo}", "rev-list", "--objects", rev],
                            capture_output=True, check=True, env=env).stdout
    oids = b"".join(line.split(b" ", 1)[0] + b"\n" for line in listed.splitlines())
    sizes = subprocess.run(
        ["git", f"--git-dir={repo}", "cat-file", "--batch-check=%(objectsize:disk)"],
        input=oids, capture_output=True, check=True, env=env).stdout.split()
    return sum(int(s) for s in sizes), len(sizes)


def request_kinds(count: RelayCount) -> dict[str, int]:
    """The requests by what they read: "idx" (an idx file, whole or a piece),
    "pack" (a pack's range), "other" (manifest, listings...)."""
    kinds = {"idx": 0, "pack": 0, "other": 0}
    for method, target in count.targets:
        path = target.split("?", 1)[0]
        kind = "other"
        if method == "GET" and path.endswith(".idx"):
            kind = "idx"
        elif method == "GET" and path.endswith(".pack"):
            kind = "pack"
        kinds[kind] += 1
    return kinds


def idx_reads(count: RelayCount) -> int:
    """GETs of idx files (whole or a piece) among the requests."""
    return request_kinds(count)["idx"]


def _methods(count: RelayCount) -> str:
    return ", ".join(f"{n} {k}" for k, n in sorted(count.methods.items()))


# ---------------------------------------------------------------------------
# the steps


def push_step(ketch: Tool, repo: Path, env: dict[str, str], bytes_in: int) -> Row:
    """``ketch mirror push --json REPO s3://bench-s3/m``, timed (for the record)."""
    url = f"s3://{BUCKET}/{MIRROR_PREFIX}"
    log(f"ketch mirror push {repo} {url}")
    os.sync()
    m = measure([*ketch.argv, "mirror", "push", "--json", str(repo), url], env)
    row = _row("push", MIRROR_PUSH, "repo", bytes_in, m)
    uploaded = _json(m).get("uploaded_bytes")
    row.traffic = uploaded if isinstance(uploaded, int) else None
    return row


def _server_cpu_note(note: str, seconds: float) -> str:
    """The S3 server's CPU time during a step: on one machine of few cores it
    competes with ketch for them, which a real S3 endpoint does not."""
    return "; ".join(x for x in (note, f"server CPU {seconds:.1f} s") if x)


def restore_step(ctx: Context, label: str, cmd_of: Callable[[Path], list[str]],
                 env: dict[str, str], data: Path, data_bytes: int, phase: str,
                 tool: str, weed: SeaweedServer | None = None) -> Row:
    """One full restore of DATA into a fresh directory, the page cache dropped
    first, then (untimed) compared with DATA."""
    out = _fresh_dir(ctx, f"s3-out-{label}")
    log(f"{tool} restore into {out} (page cache dropped, empty cache)")
    dropped = drop_caches()
    if not dropped:
        log("cannot drop the page cache (not root): the restore starts warm")
    cpu = weed.cpu_seconds() if weed is not None else 0.0
    m = measure(cmd_of(out), env, cwd=out)
    row = _row(phase, tool, "data", data_bytes, m)
    if weed is not None:
        row.note = _server_cpu_note(row.note, weed.cpu_seconds() - cpu)
    row.cold_cache = dropped
    restored = out / data.name
    if m.returncode == 0:
        if restored.is_dir():
            log(f"verifying {restored} against {data}")
            problems = compare_trees(data, restored)
            row.verified = "identical" if not problems else f"{len(problems)} differences"
            if problems:
                row.ok = False
                row.note = "restore differs: " + "; ".join(problems[:3])
        else:
            row.ok, row.verified, row.note = False, "nothing restored", f"no {restored}"
    if not ctx.keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


def _count_row(row: Row, count: RelayCount, needed: int | None, idx: int) -> None:
    """The relay's figures on ``row``, and (for a full restore) what it needed."""
    row.downloaded, row.requests = count.bytes_down, count.requests
    row.wire_bytes = count.bytes_down + count.bytes_up
    parts = [f"{count.requests} requests ({_methods(count)}; {idx} of idx)",
             f"{count.bytes_down / MB:,.2f} MB down"]
    if needed is not None:
        row.needed = needed
        row.allowed_requests = round(needed / REQUEST_SPAN + idx + 10)
        parts.append(f"{count.bytes_down / needed:.3f}x the {needed / MB:,.1f} MB needed; "
                     f"allowance {row.allowed_requests} requests")
    if row.ok:
        row.note = "; ".join(x for x in (row.note, *parts) if x)


def one_file_step(ctx: Context, weed: SeaweedServer, ketch: Tool, url: str,
                  data: Path) -> tuple[Row, dict[str, int]]:
    """One ~1 MB file of DATA alone, through the relay, with an empty cache:
    the row, and its requests by kind."""
    src, remark = pick_one_file(data)
    size = src.stat().st_size
    ref = f"{BRANCH}/latest{src}"
    out = _fresh_dir(ctx, "s3-out-one")
    cache = _fresh_dir(ctx, "s3-cache-one")
    log(f"{RELAYED} restore {ref} ({size / MB:.3f} MB, empty cache)")
    drop_caches()
    with LatencyRelay(weed.host, weed.s3_port) as relay:
        env = _s3_env(ctx, weed, relay.endpoint, cache)
        m = measure([*ketch.argv, "restore", "-r", url, "-C", str(out), ref], env)
        count = relay.counts()
    row = _row("one-file", RELAYED, src.name, size, m)
    if m.returncode == 0:
        row.verified = _verify_one(src, out / src.name)
        if row.verified != "identical":
            row.ok, row.note = False, row.verified
    _count_row(row, count, None, idx_reads(count))
    if remark and row.ok:
        row.note += f"; {remark}"
    return row, request_kinds(count)


# ---------------------------------------------------------------------------
# saving to S3 (once ketch can)


def s3_init(ketch: Tool, url: str, env: dict[str, str]) -> str | None:
    """``ketch init -r URL``: None when it worked, else why not."""
    proc = subprocess.run([*ketch.argv, "init", "-r", url], capture_output=True, env=env)
    if proc.returncode == 0:
        return None
    lines = proc.stderr.decode(errors="replace").strip().splitlines() or ["?"]
    return f"ketch init -r {url}: exit {proc.returncode}: {lines[-1]}"


def save_cmd(ketch: Tool, url: str, path: Path) -> list[str]:
    return [*ketch.argv, "save", "-r", url, "-n", BRANCH, "--json", str(path)]


def local_save(ctx: Context, ketch: Tool, repo: Path, data: Path, data_bytes: int,
               phase: str) -> Row:
    log(f"ketch save -n {BRANCH} {data} ({phase}, local)")
    before = repo_bytes(repo)
    os.sync()
    m = measure([*ketch.cmd(repo, "save", "-n", BRANCH, "--json", str(data))], ctx.env)
    row = _row(phase, LOCAL, "data", data_bytes, m)
    row.repo_bytes = repo_bytes(repo)
    row.repo_growth = row.repo_bytes - before
    new = _json(m).get("bytes_new")
    row.bytes_new = new if isinstance(new, int) else None
    row.tree = rev_parse(repo, f"{BRANCH}:{str(data).lstrip('/')}", ctx.env)
    return row


def s3_save(ctx: Context, weed: SeaweedServer, ketch: Tool, url: str, name: str, data: Path,
            data_bytes: int, phase: str, counted: bool) -> Row:
    """``ketch save -r s3://...`` of DATA: straight to the server (timed), or
    through the relay without delay (``counted``: the bytes it uploads)."""
    prefix = f"{SAVE_PREFIX}/{name}"
    before = _bucket_bytes(weed, BUCKET, prefix)
    cache = _fresh_dir(ctx, f"s3-cache-{phase}")
    log(f"ketch save -r {url} -n {BRANCH} {data} ({phase}"
        f"{', through the relay: counted' if counted else ''})")
    os.sync()
    count = None
    server_cpu = 0.0
    if counted:
        with LatencyRelay(weed.host, weed.s3_port, delay=0.0) as relay:
            m = measure(save_cmd(ketch, url, data),
                        _s3_env(ctx, weed, relay.endpoint, cache))
            count = relay.counts()
    else:
        cpu = weed.cpu_seconds()
        m = measure(save_cmd(ketch, url, data), _s3_env(ctx, weed, weed.endpoint, cache))
        server_cpu = weed.cpu_seconds() - cpu
    row = _row(phase, DIRECT, "data", data_bytes, m)
    if not counted:
        row.note = _server_cpu_note(row.note, server_cpu)
    row.repo_bytes = _bucket_bytes(weed, BUCKET, prefix)
    if row.repo_bytes is not None and before is not None:
        row.repo_growth = row.repo_bytes - before
    summary = _json(m)
    new = summary.get("bytes_new")
    row.bytes_new = new if isinstance(new, int) else None
    row.tree = s3_subtree(ketch, url, data, _s3_env(ctx, weed, weed.endpoint, cache))
    if count is not None:
        row.traffic = count.bytes_up
        row.wire_bytes = count.bytes_up + count.bytes_down
        row.requests = count.requests
        if row.ok:
            row.note = f"{count.requests} requests ({_methods(count)}); " \
                f"{count.bytes_up / MB:,.2f} MB up"
    return row


def s3_subtree(ketch: Tool, url: str, data: Path, env: dict[str, str]) -> str | None:
    """The id of DATA's own tree in the latest save (`ls --json`), as rev_parse
    gives it for the local repository."""
    proc = subprocess.run([*ketch.argv, "ls", "-r", url, "-s", "--json",
                           f"{BRANCH}/latest{data.parent}"], capture_output=True, env=env)
    try:
        entries = json.loads(proc.stdout)
    except ValueError:
        return None
    oids = [e.get("oid") for e in entries if e.get("name") == data.name]
    return str(oids[0]) if oids and oids[0] else None


def fleet_trees(root: Path, n: int) -> tuple[list[Path], int]:
    """``n`` small trees (one a machine): FLEET_SHARED files alike in all,
    FLEET_OWN files of each its own; and their bytes together."""
    shutil.rmtree(root, ignore_errors=True)
    shared = random.Random(0)
    common = [shared.randbytes(FLEET_SHARED[1]) for _ in range(FLEET_SHARED[0])]
    trees, total = [], 0
    for i in range(n):
        tree = root / f"m{i:02d}"
        (tree / "etc").mkdir(parents=True)
        (tree / "home").mkdir()
        for j, body in enumerate(common):
            (tree / "etc" / f"conf{j:02d}").write_bytes(body)
        own = random.Random(i + 1)
        for j in range(FLEET_OWN[0]):
            (tree / "home" / f"file{j:02d}").write_bytes(own.randbytes(FLEET_OWN[1]))
        total += FLEET_SHARED[0] * FLEET_SHARED[1] + FLEET_OWN[0] * FLEET_OWN[1]
        trees.append(tree)
    return trees, total


def fleet_step(ctx: Context, weed: SeaweedServer, ketch: Tool) -> Row:
    """FLEET processes, each a machine with its own repository in the bucket
    (``s3://bench-s3/fleet/mNN``, made beforehand), saving its small tree at
    the same moment. Wall time from the first start to the last exit; every
    save must have succeeded and be listed afterwards."""
    root = ctx.work_dir / "s3-fleet"
    ctx.repos.append(root)
    trees, total = fleet_trees(root / "trees", FLEET)
    env = _s3_env(ctx, weed, weed.endpoint, _fresh_dir(ctx, "s3-cache-fleet"))
    urls = [f"s3://{BUCKET}/{FLEET_PREFIX}/{t.name}" for t in trees]
    for url in urls:
        why = s3_init(ketch, url, env)
        if why:
            raise RuntimeError(why)
    log(f"{FLEET} machines saving into s3://{BUCKET}/{FLEET_PREFIX} at once "
        f"({total / MB:,.1f} MB in all)")
    use_time = os.access(GNU_TIME, os.X_OK)
    times = [root / f"time-{i:02d}" for i in range(FLEET)]
    os.sync()
    with tempfile.TemporaryDirectory(prefix="bench-fleet-") as tmp:
        t0 = time.perf_counter()
        procs = []
        for i, (url, tree) in enumerate(zip(urls, trees, strict=True)):
            cmd = save_cmd(ketch, url, tree)
            if use_time:
                cmd = [GNU_TIME, "-f", "%e %M %U %S", "-o", str(times[i]), *cmd]
            with open(Path(tmp) / f"err-{i}", "wb") as err:
                procs.append(subprocess.Popen(cmd, stdin=subprocess.DEVNULL,
                                              stdout=subprocess.DEVNULL, stderr=err, env=env))
        codes = [p.wait() for p in procs]
        seconds = time.perf_counter() - t0
        errors = [f"m{i:02d}: exit {c}: "
                  + ((Path(tmp) / f"err-{i}").read_text(errors="replace").strip().splitlines()
                     or ["?"])[-1]
                  for i, c in enumerate(codes) if c]
    rss = [r for t in times if t.exists() for r in [_parse_gnu_time(t.read_text())[0]] if r]
    cpu = [c for t in times if t.exists() for c in [_parse_gnu_time(t.read_text())[1]] if c]
    missing = []
    for url in urls:
        proc = subprocess.run([*ketch.argv, "ls", "-r", url], capture_output=True, env=env)
        if proc.returncode != 0 or BRANCH.encode() not in proc.stdout:
            missing.append(url.rsplit("/", 1)[1])
    uploaded = _bucket_bytes(weed, BUCKET, FLEET_PREFIX)
    m = Measure(seconds, max(rss, default=None), 0, b"", b"",
                round(sum(cpu), 2) if cpu else None)
    row = _row("fleet", DIRECT, f"{FLEET} machines", total, m)
    row.repo_bytes = uploaded
    row.traffic = uploaded
    problems = errors[:3] + ([f"no save listed in {', '.join(missing[:5])}"] if missing else [])
    present = FLEET - len(missing)
    rate = "-" if uploaded is None else f"{uploaded / MB / seconds:,.1f}"
    row.note = (f"{present}/{FLEET} saves present, {len(errors)} errors; aggregate upload "
                f"{rate} MB/s (bucket bytes / wall)")
    if problems:
        row.ok = False
        row.note = "; ".join(problems) + "; " + row.note
    info = ctx.info[S3]
    assert isinstance(info, dict)
    info["fleet"] = {"machines": FLEET, "tree_bytes": total, "seconds": round(seconds, 3),
                     "uploaded_bytes": uploaded, "errors": errors, "missing": missing}
    return row


# ---------------------------------------------------------------------------
# the phase


def phase_s3(ctx: Context) -> list[Row]:
    ketch = next((t for t in ctx.tools if t.name == "ketch"), None)
    if ketch is None:
        log(f"{S3}: skipped: it measures ketch alone")
        return []
    try:
        import boto3  # noqa: F401  (the bucket)
    except ImportError:
        log(f"{S3}: skipped: boto3 is not installed in {sys.executable}'s environment")
        return []
    weed = _start_seaweed(ctx, S3)
    if weed is None:
        return []
    info: dict[str, object] = {
        "how": "SeaweedFS (weed mini) on 127.0.0.1, this machine; the relay (ketchbench/"
        f"relay.py) waits {DEFAULT_DELAY * 1000:g} ms before passing on each HTTP request "
        "and counts requests and bytes (HTTP heads included). Every restore: page cache "
        "dropped, empty ketch cache (XDG_CACHE_HOME a fresh directory), compared with DATA. "
        "needed: the compressed size in the local repository's packs of every object the "
        f"save reaches (git rev-list --objects | cat-file %(objectsize:disk)); request "
        f"allowance: needed / {REQUEST_SPAN >> 20} MiB + idx GETs + 10",
        "endpoint": weed.endpoint,
        "delay_seconds": DEFAULT_DELAY,
    }
    ctx.info[S3] = info
    rows: list[Row] = []
    with weed:
        try:
            s3 = _s3_client(weed)
            s3.create_bucket(Bucket=BUCKET)
            s3.put_object(Bucket=BUCKET, Key="bench-warmup", Body=b"warm")
        except Exception as e:  # botocore's errors
            raise RuntimeError(f"{S3}: cannot make the bucket: {e}") from None
        data = ctx.work_dir / "s3-data"
        log(f"copying DATA to {data}")
        copy_data(ctx.corpus.data_dir, data)
        ctx.repos.append(data)
        data_bytes = warm(data)
        repo = ctx.fresh_repo(ketch, S3)
        save = local_save(ctx, ketch, repo, data, data_bytes, "save-initial")
        rows.append(save)
        if not save.ok:
            raise RuntimeError(f"{S3}: the local save failed: {save.note}")
        needed, objects = needed_bytes(repo, BRANCH, ctx.env)
        info["needed"] = {"bytes": needed, "objects": objects}
        files = [p for p in (repo / "objects" / "pack").iterdir() if p.suffix in (".pack", ".idx")]
        push = push_step(ketch, repo, _s3_env(ctx, weed, weed.endpoint,
                                              _fresh_dir(ctx, "s3-cache-push")),
                         sum(f.stat().st_size for f in files))
        push.repo_bytes = _bucket_bytes(weed, BUCKET, MIRROR_PREFIX)
        rows.append(push)
        if not push.ok:
            raise RuntimeError(f"{S3}: mirror push failed: {push.note}")
        rows += restores(ctx, weed, ketch, repo, data, data_bytes, needed)
        rows += s3_saves(ctx, weed, ketch, repo, data, data_bytes, save)
    return rows


def restores(ctx: Context, weed: SeaweedServer, ketch: Tool, repo: Path, data: Path,
             data_bytes: int, needed: int) -> list[Row]:
    """DATA restored locally, from the mirror straight and through the relay
    (without delay: the relay's own cost; and with); one file alone through
    the relay."""
    info = ctx.info[S3]
    assert isinstance(info, dict)
    rows: list[Row] = []
    url = f"s3://{BUCKET}/{MIRROR_PREFIX}/{repo.name}"
    ref = f"{BRANCH}/latest{data}"
    info["mirror"] = url

    rows.append(restore_step(
        ctx, "local", lambda out: ketch.cmd(repo, "restore", "-C", str(out), ref), ctx.env,
        data, data_bytes, "restore", LOCAL))

    def from_s3(out: Path) -> list[str]:
        return [*ketch.argv, "restore", "-r", url, "-C", str(out), ref]

    direct = restore_step(ctx, "direct", from_s3,
                          _s3_env(ctx, weed, weed.endpoint, _fresh_dir(ctx, "s3-cache-d")),
                          data, data_bytes, "restore", DIRECT, weed)
    rows.append(direct)
    for delay, phase, tool in ((0.0, RELAYED_0_PHASE, RELAYED_0),
                               (DEFAULT_DELAY, RELAYED_PHASE, RELAYED)):
        with LatencyRelay(weed.host, weed.s3_port, delay=delay) as relay:
            relayed = restore_step(
                ctx, phase, from_s3,
                _s3_env(ctx, weed, relay.endpoint, _fresh_dir(ctx, f"s3-cache-{phase}")),
                data, data_bytes, phase, tool, weed)
            count = relay.counts()
        _count_row(relayed, count, needed, idx_reads(count))
        info[phase] = {**count.as_dict(), "kinds": request_kinds(count),
                       "seconds": relayed.seconds}
        rows.append(relayed)
    one, one_kinds = one_file_step(ctx, weed, ketch, url, data)
    info["one_file"] = {"file": one.item, "bytes": one.bytes_in, "requests": one.requests,
                        "downloaded": one.downloaded, "kinds": one_kinds}
    rows.append(one)

    return rows


def s3_saves(ctx: Context, weed: SeaweedServer, ketch: Tool, repo: Path, data: Path,
             data_bytes: int, initial: Row) -> list[Row]:
    """``save -r s3://`` beside the local saves, then the fleet; "not
    supported yet" rows while ``ketch init -r s3://...`` fails."""
    info = ctx.info[S3]
    assert isinstance(info, dict)
    name = "saved"
    url = f"s3://{BUCKET}/{SAVE_PREFIX}/{name}"
    env = _s3_env(ctx, weed, weed.endpoint, _fresh_dir(ctx, "s3-cache-init"))
    why = s3_init(ketch, url, env)
    info["save_to_s3"] = why or "supported"
    if why:
        log(f"{S3}: save to S3 {NOT_SUPPORTED}: {why}")
        return [_unsupported(p, item, why) for p, item in (
            ("save-initial", "data"), ("save-day", "data"), ("fleet", f"{FLEET} machines"))]
    rows = [s3_save(ctx, weed, ketch, url, name, data, data_bytes, "save-initial", False)]
    log(f"{S3}: the day's changes to {data}")
    info["day"] = mutate_day(data, ctx.scale).as_dict()
    data_bytes = warm(data)
    rows.append(local_save(ctx, ketch, repo, data, data_bytes, "save-day"))
    rows.append(s3_save(ctx, weed, ketch, url, name, data, data_bytes, "save-day", True))
    try:
        rows.append(fleet_step(ctx, weed, ketch))
    except RuntimeError as e:
        row = _unsupported("fleet", f"{FLEET} machines", str(e))
        row.ok, row.note = False, str(e)
        rows.append(row)
    return rows
