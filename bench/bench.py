#!/usr/bin/env python3
"""ketch beside bup, restic and borg, on the same deterministic corpus (see corpus.py).

    make bench                                  # full size: ~1.5 GB of DATA
    .venv/bin/python bench/bench.py --scale 0.1 # quick run
    .venv/bin/python bench/bench.py --only bup  # one tool only (ketch, bup, restic, borg)
    .venv/bin/python bench/bench.py --phase cycle
    .venv/bin/python bench/bench.py --phase remote --scale 0.1
    .venv/bin/python bench/bench.py --phase mirror --scale 0.1
    .venv/bin/python bench/bench.py --phase lifecycle --scale 0.1
    .venv/bin/python bench/bench.py --phase fsck --scale 0.1
    .venv/bin/python bench/bench.py --phase s3 --scale 0.1

Each phase is a function ``(Context) -> list[Row]``, in its own module of
bench/ketchbench/ (what they share: common.py), listed in PHASES:

- ``split``: ``split -n NAME FILE`` of the image and the dump into a fresh repo.
- ``cycle``: the whole filesystem-backup cycle of DATA (config tree + image +
  dump, copied once per run into the work dir) by ketch, bup, restic and borg
  (restic and borg from PATH, left out with a message when missing), the
  tools in turn at each step: ``save-initial`` (bup: index + save; ketch:
  save; restic: backup; borg: create) twice (``--initial-runs``), each into a
  fresh repository, the median shown (the last repository goes on); ``resave``
  with nothing changed, ``save-day`` after corpus.mutate_day, and a full
  restore into a fresh directory with the page cache dropped first (as root;
  restic: ``restore latest --target OUT``, borg: ``extract`` run in OUT),
  verified against DATA outside the timing (content, type, mode, owner,
  mtime: every tool keeps these). Time, MB/s, CPU (user + system) and
  CPU/wall, peak RSS, repository size and growth of each; per step a table of
  the four tools, ketch's time over the faster of borg and restic, its growth
  and size over bup's (ketchbench/cyclereport.py; "cycle" in the results).
  These depend on each other, so they are one phase that emits several rows.
- ``remote``: the same steps on another copy of DATA, ketch's client against
  ``ketch server`` over ssh (a private sshd on 127.0.0.1, tests/services/sshd.py)
  beside a local ketch on identical states of DATA: save-initial, resave,
  save-day (``save -r URL`` vs ``save -d REPO``), restore (``restore -r``) and a
  listing (``ls -r URL -l``) of DATA's largest directory, plus bup's client
  against ``bup server`` for the saves. Its rows are named ``remote:STEP``, the
  tools ``ketch``, ``ketch -r`` and ``bup -r``; the ratios compare ``ketch -r``
  with ``ketch``. Traffic is what ``ketch save --json`` counts (protocol bytes
  both ways, idx downloads included) and, for every remote command, the bytes
  on the wire from ``ssh -v``'s "Transferred:" line (also for bup). Skipped,
  with a message, when OpenSSH's sshd is not installed.
- ``mirror``: ketch alone (skipped with ``--only bup``), against a private
  SeaweedFS S3 server (tests/services/seaweedfs.py; skipped, with a message,
  without ``weed``). A fresh repository of DATA (``ketch save``, not timed);
  ``push``: ``ketch mirror push --json REPO s3://bench-ketch/m`` into an empty
  bucket beside boto3's ``upload_file`` (default TransferConfig, a subprocess)
  of the same files (packs, idx, refs) into another, MB/s of those files'
  bytes; ``repush``: the same push again (nothing new, uploaded bytes from
  ``--json``); ``restore``: ``ketch restore -r s3://bench-ketch/m/REPO`` of one
  ~1 MB file of DATA (0.9-1.5 MB; else the closest, with a remark) with an
  empty cache, verified: timed straight to the server, then again through a
  counting TCP relay for the bytes downloaded (HTTP headers, manifest and idx
  pieces included) and the requests, and again through the library for
  ketch's own count (``StoreRepository.traffic()``). Targets: push ≥ 0.8× boto3's
  MB/s, a re-push uploads nothing, the restore downloads ≤ 5 MB.
- ``lifecycle``: its own corpus (ketchbench/daily.py: a few hundred files, a
  dump rewritten daily, growing and rotated logs, uploads added and deleted;
  ~240 MB at scale 1), 60 daily versions saved with their dates by ketch, bup,
  restic and borg (``--only`` picks among the four; restic and borg from PATH,
  left out with a message when missing), then keep 7 daily, 4 weekly, 6
  monthly and reclaim the space: ``ketch prune`` + ``ketch gc``; ``bup
  prune-older --unsafe`` (no weeklies in bup) + ``bup gc --unsafe``; ``restic
  forget --prune``; ``borg prune`` + ``borg compact``. Time, peak RSS and
  repository size of each step, the days each tool kept (a warning when they
  differ), and a fresh repository per tool holding only the days it kept; every
  save ketch kept is restored and compared, and ``git fsck --strict`` checks
  its repository. Targets: ketch's gc within 10% of its fresh repository,
  prune + gc ≤ 0.5× bup's time and ≤ restic's, peak RSS ≤ 150 MB. How each
  tool ran (policy mapping, encryption) goes to the results.
- ``fsck``: a repository of DATA per tool (saved untimed), then ketch's ``fsck
  --read-data``, ``fsck`` and ``fsck --quick`` beside ``cat`` of its packs (warm,
  and cold when root may drop the page cache), ``bup fsck``, ``restic check
  --read-data`` and ``borg check --verify-data`` (ketchbench/fsckphase.py).
  Targets: ``--read-data`` ≥ 0.8× cat's MB/s, peak RSS ≤ 150 MB, ``--quick`` ≤ 2 s.
- ``s3``: ketch against a private SeaweedFS (skipped without ``weed``), straight
  and through a latency relay (ketchbench/relay.py: 30 ms before each HTTP
  request, requests and bytes counted) for what a real S3 endpoint would show
  (ketchbench/s3phase.py). On a copy of DATA: a local save, ``mirror push`` of
  it, full restores (page cache dropped, an empty ketch cache each) locally,
  from ``-r s3://`` straight and through the relay, verified; one ~1 MB file
  through the relay; then ``save -r s3://`` initial and after the day beside
  the local saves, and 50 processes saving small trees into one bucket at once
  ("not supported yet" rows while ``ketch init -r s3://...`` fails). Targets:
  save ≥ 0.8× local MB/s, the day's upload ≤ 1.1× the local growth; restore ≥
  0.7× local MB/s, ≥ 50 MB/s at 30 ms, download ≤ 1.1× the pack entries
  needed, requests ≤ needed / 4 MiB + idx GETs + 10; the one file ≤ 2 MB and
  ≤ 20 requests; the 50 saves all there, without errors.

Every command runs under ``/usr/bin/time`` for its CPU time (user + system)
and its largest process's peak RSS, while a thread sums the PSS of its whole
process tree every 50 ms; memory targets are judged on "peak RSS (tree)", the
larger of the two, so that forked workers count together. The page cache is warm for the saves: DATA is read once
before timing (and again after the day's changes), and ``sync`` runs before
every measured step; the cycle's restores start with it dropped. ketch's
modules are byte-compiled first, and PYTHONDONTWRITEBYTECODE is not passed on. Rows of the same (phase, item)
from different tools must agree on the tree id. The ratios table marks the
issue's targets met (✓) or missed (✗). Results go to a table on stdout and to
``bench/results/latest.json``. Exit status: 0 ok, 1 a command failed, a restore
did not verify, or the tools disagreed (a missed target alone is not a
failure), 2 bad setup.
"""

from __future__ import annotations

import argparse
import compileall
import json
import os
import platform
import shutil
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path

from ketchbench.common import (
    CACHE_NOTE,
    DEFAULT_CACHE,
    DEFAULT_RESULTS,
    MB,
    ROOT,
    TOOL_NAMES,
    Context,
    Row,
    Tool,
    log,
)
from ketchbench.cycle import phase_cycle
from ketchbench.cyclereport import cycle_summary, print_cycle
from ketchbench.fsckphase import FSCK, phase_fsck
from ketchbench.lifecycle import LIFECYCLE, phase_lifecycle, summary_table
from ketchbench.mirror import MIRROR, phase_mirror
from ketchbench.peers import PEER_NAMES
from ketchbench.remote import REMOTE, phase_remote
from ketchbench.report import (
    RATIO_HEADERS,
    ROW_HEADERS,
    check_trees,
    fmt_ratio,
    fmt_row,
    print_table,
    ratios,
)
from ketchbench.s3phase import S3, phase_s3
from ketchbench.splitphase import phase_split

Phase = Callable[[Context], list[Row]]
PHASES: dict[str, Phase] = {
    "split": phase_split,
    "cycle": phase_cycle,
    REMOTE: phase_remote,
    MIRROR: phase_mirror,
    LIFECYCLE: phase_lifecycle,
    FSCK: phase_fsck,
    S3: phase_s3,
}


# ---------------------------------------------------------------------------
# setup and main


def tool_env() -> dict[str, str]:
    # PYTHONDONTWRITEBYTECODE would have ketch (and bup) compile every module
    # on every command: ~0.5 s each, which an installed ketch never pays.
    dropped = ("KETCH_DIR", "BUP_DIR", "PYTHONDONTWRITEBYTECODE")
    env = {k: v for k, v in os.environ.items() if k not in dropped}
    env.update(
        GIT_CONFIG_GLOBAL="/dev/null",
        GIT_CONFIG_NOSYSTEM="1",
        GIT_AUTHOR_NAME="ketch bench",
        GIT_AUTHOR_EMAIL="bench@example.invalid",
        GIT_COMMITTER_NAME="ketch bench",
        GIT_COMMITTER_EMAIL="bench@example.invalid",
    )
    src = str(ROOT / "src")  # for the `python -m ketch` fallback
    env["PYTHONPATH"] = f"{src}{os.pathsep}{env['PYTHONPATH']}" if env.get("PYTHONPATH") else src
    return env


def find_tools(args: argparse.Namespace) -> list[Tool]:
    tools = []
    for name in [n for n in args.only or TOOL_NAMES if n in TOOL_NAMES]:
        if name == "ketch":
            beside = Path(sys.executable).parent / "ketch"
            argv = (
                args.ketch.split()
                if args.ketch
                else [str(beside)]
                if beside.exists()
                else [sys.executable, "-m", "ketch"]
            )
        else:
            found = args.bup or shutil.which("bup")
            if not found:
                raise SystemExit("bench: bup is not installed (make deps); or use --only ketch")
            argv = found.split()
        tools.append(Tool(name, tuple(argv)))
    return tools


def tool_version(tool: Tool, env: dict[str, str]) -> str:
    proc = subprocess.run([*tool.argv, "--version"], capture_output=True, env=env)
    out = (proc.stdout or proc.stderr).decode(errors="replace").strip()
    return out.splitlines()[0] if proc.returncode == 0 and out else "unknown"


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    p.add_argument(
        "--scale",
        type=float,
        default=1.0,
        help="corpus size factor (1.0 = 20,000-file ~150 MB tree + 1 GiB image + ~300 MB dump; "
        "lifecycle: a ~240 MB tree, ~60 MB of it rewritten daily)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"corpus cache and scratch repos (default {DEFAULT_CACHE})",
    )
    p.add_argument(
        "--only",
        action="append",
        choices=[*TOOL_NAMES, *PEER_NAMES],
        help="run only this tool (repeatable; restic and borg: the cycle, lifecycle and "
        "fsck phases)",
    )
    p.add_argument(
        "--phase", action="append", choices=list(PHASES), help="run only this phase (repeatable)"
    )
    p.add_argument(
        "--lifecycle-days",
        type=int,
        default=60,
        metavar="N",
        help="daily saves in the lifecycle phase (default 60; fewer for a smoke test)",
    )
    p.add_argument(
        "--initial-runs",
        type=int,
        default=2,
        metavar="N",
        help="cycle: initial saves of DATA per tool, each into a fresh repository; the "
        "median is shown (default 2)",
    )
    p.add_argument("--ketch", help="ketch command (default: ketch beside this python)")
    p.add_argument("--bup", help="bup command (default: bup on PATH)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON output")
    p.add_argument("--keep", action="store_true", help="keep the scratch repositories")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 10:
        p.error("--scale must be in (0, 10]")
    if args.initial_runs < 1:
        p.error("--initial-runs must be at least 1")
    if args.lifecycle_days < 1:
        p.error("--lifecycle-days must be at least 1")
    return args


def write_results(
    path: Path,
    args: argparse.Namespace,
    ctx: Context,
    rows: list[Row],
    rat: list[dict[str, object]],
) -> None:
    corpus = ctx.loaded_corpus
    result = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "scale": args.scale,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
            "loadavg_at_start": ctx.info.get("loadavg"),
        },
        "cache": CACHE_NOTE if corpus else None,
        "tools": {
            t.name: {"argv": list(t.argv), "version": tool_version(t, ctx.env)} for t in ctx.tools
        },
        "corpus": None if corpus is None else {
            "data_dir": str(corpus.data_dir),
            "bytes": corpus.size,
            "parts": [{"name": c.name, "path": str(c.path), "bytes": c.size} for c in corpus.parts],
            "tree": corpus.tree_stats,
        },
        "day": ctx.info.get("day"),
        "remote": ctx.info.get(REMOTE),
        "mirror": ctx.info.get(MIRROR),
        "lifecycle": ctx.info.get(LIFECYCLE),
        "s3": ctx.info.get(S3),
        "cycle": cycle_summary(rows),
        "rows": [asdict(r) for r in rows],
        "ratios": rat,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = tool_env()
    # The checkout's modules byte-compiled before any timing, as pip leaves them.
    compileall.compile_dir(str(ROOT / "src" / "ketch"), quiet=1)
    tools = find_tools(args)
    work_dir = args.cache_dir / "run"
    work_dir.mkdir(parents=True, exist_ok=True)
    peers = tuple(n for n in args.only or PEER_NAMES if n in PEER_NAMES)
    ctx = Context(tools=tools, cache_dir=args.cache_dir, work_dir=work_dir, env=env,
                  scale=args.scale, keep=args.keep, peers=peers, days=args.lifecycle_days,
                  initial_runs=args.initial_runs)
    load = os.getloadavg()
    ctx.info["loadavg"] = [round(x, 2) for x in load]
    if load[0] > 1.5:
        log(f"note: load average {load[0]:.2f}: other work will skew the timings")
    rows: list[Row] = []
    try:
        for name in args.phase or list(PHASES):
            rows.extend(PHASES[name](ctx))
    except RuntimeError as e:  # setup failure (e.g. init) rather than a measured one
        log(f"FAILED: {e}")
        return 2
    finally:
        if not args.keep:
            for repo in ctx.repos:
                shutil.rmtree(repo, ignore_errors=True)
    check_trees(rows)
    rat = ratios(rows)
    if rows:
        data = "" if ctx.loaded_corpus is None else f", DATA {ctx.loaded_corpus.size / MB:,.0f} MB"
        print_table(
            f"ketch, bup, restic, borg (scale {args.scale:g}{data})",
            ROW_HEADERS,
            [fmt_row(r) for r in rows],
            caption=CACHE_NOTE,
        )
    if rat:
        print_table(
            "ratios (ketch / bup; remote: ketch -r / ketch; mirror: ketch mirror push / "
            "boto3, or ketch alone; s3: ketch -r s3 / ketch, or alone), and the targets",
            RATIO_HEADERS,
            [fmt_ratio(x) for x in rat],
            caption=(
                "RSS target: ketch's peak RSS (tree), its processes together (the "
                "client's, remotely). Remote traffic: "
                "ketch's count (save --json bytes_sent + bytes_received); wire MB: on the "
                "wire, from ssh -v. Mirror traffic: push --json uploaded_bytes, restore: "
                "ketch's own count; wire MB and the download target: at a relay in front "
                "of the S3 server (HTTP headers included). s3: requests and bytes at the "
                "latency relay (HTTP heads included); needed: the compressed pack entries "
                "of every object the save reaches"
            ),
        )
    cycle = cycle_summary(rows)
    if cycle:
        print_cycle(cycle)
    life = ctx.info.get(LIFECYCLE)
    if isinstance(life, dict):
        print_table(*summary_table(life))
    write_results(args.results, args, ctx, rows, rat)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
