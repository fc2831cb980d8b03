#!/usr/bin/env python3
"""ketch vs bup, side by side, on the same deterministic corpus (see corpus.py).

    make bench                                  # full size: 1 GiB + ~300 MB
    .venv/bin/python bench/bench.py --scale 0.1 # quick run
    .venv/bin/python bench/bench.py --only bup  # one tool only

Each phase is a function ``(Context) -> list[Row]``, listed in PHASES; a later
phase (save, re-save, restore) is one more function. Every command runs under
``/usr/bin/time`` for its own peak RSS. Rows of the same (phase, item) from
different tools must agree on the tree id. Results go to a table on stdout and
to ``bench/results/latest.json``. Exit status: 0 ok, 1 a command failed or the
tools disagreed, 2 bad setup.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

from corpus import CorpusFile, ensure_corpus

try:
    from rich.console import Console
    from rich.table import Table
except ImportError:  # plain output without rich
    Console = None  # type: ignore[assignment,misc]
    Table = None  # type: ignore[assignment,misc]

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("KETCH_BENCH_DIR", "/var/tmp/ketch-bench"))
DEFAULT_RESULTS = ROOT / "bench" / "results" / "latest.json"
GNU_TIME = "/usr/bin/time"
TOOL_NAMES = ("ketch", "bup")


def log(msg: str) -> None:
    print(f"==> {msg}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------
# running and measuring commands


@dataclass(frozen=True)
class Tool:
    name: str
    argv: tuple[str, ...]  # the command, before ``-d REPO``

    def cmd(self, repo: Path, *args: str) -> list[str]:
        return [*self.argv, "-d", str(repo), *args]


@dataclass
class Measure:
    seconds: float
    max_rss_kib: int | None
    returncode: int
    stdout: bytes
    stderr: bytes


def _parse_gnu_time(text: str) -> int | None:
    """Peak RSS (KiB) from ``-f '%e %M'`` output; its last line (after any
    'Command exited with non-zero status N' line)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if lines and len(lines[-1]) == 2 and lines[-1][1].isdigit():
        return int(lines[-1][1])
    return None


def measure(cmd: Sequence[str], env: dict[str, str], stdin: Path | None = None) -> Measure:
    """Run ``cmd``: wall time, peak RSS of that command alone, output."""
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryDirectory(prefix="bench-time-") as tmp:
        time_out = Path(tmp) / "time"
        full = [GNU_TIME, "-f", "%e %M", "-o", str(time_out), *cmd] if use_time else list(cmd)
        before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
        with open(stdin or os.devnull, "rb") as inp:
            t0 = time.perf_counter()
            proc = subprocess.run(full, stdin=inp, capture_output=True, env=env)
            seconds = time.perf_counter() - t0
        rss: int | None
        if use_time:
            rss = _parse_gnu_time(time_out.read_text()) if time_out.exists() else None
        else:  # a max over all children so far: only meaningful when it grew
            after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
            rss = after if after > before else None
    return Measure(seconds, rss, proc.returncode, proc.stdout, proc.stderr)


def run_ok(cmd: Sequence[str], env: dict[str, str]) -> str:
    proc = subprocess.run(cmd, capture_output=True, env=env)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}): {err}")
    return proc.stdout.decode(errors="replace").strip()


def repo_bytes(repo: Path) -> int:
    """``du -sb``: apparent size of everything in the repository."""
    try:
        return int(
            subprocess.run(
                ["du", "-sb", str(repo)], capture_output=True, check=True
            ).stdout.split()[0]
        )
    except (OSError, subprocess.CalledProcessError, ValueError, IndexError):
        return sum(p.stat().st_size for p in repo.rglob("*") if p.is_file())


def rev_parse(repo: Path, rev: str, env: dict[str, str]) -> str | None:
    proc = subprocess.run(
        ["git", f"--git-dir={repo}", "rev-parse", "--verify", "-q", rev],
        capture_output=True,
        env=env,
    )
    if proc.returncode != 0:
        return None
    return proc.stdout.decode().strip() or None


# ---------------------------------------------------------------------------
# phases


@dataclass
class Row:
    phase: str
    tool: str
    item: str
    bytes_in: int
    seconds: float
    mb_per_s: float
    max_rss_kib: int | None
    repo_bytes: int | None
    tree: str | None
    ok: bool
    note: str = ""


@dataclass
class Context:
    tools: list[Tool]
    corpus: list[CorpusFile]
    work_dir: Path
    env: dict[str, str]
    keep: bool = False
    repos: list[Path] = field(default_factory=list)

    def fresh_repo(self, tool: Tool, phase: str) -> Path:
        repo = self.work_dir / f"{phase}-{tool.name}"
        shutil.rmtree(repo, ignore_errors=True)
        run_ok(tool.cmd(repo, "init"), self.env)
        self.repos.append(repo)
        return repo


def row_from(
    phase: str, tool: Tool, item: CorpusFile, m: Measure, repo: Path, tree: str | None
) -> Row:
    ok = m.returncode == 0 and tree is not None
    note = "" if ok else (m.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
    if m.returncode != 0:
        note = f"exit {m.returncode}: {note}"
    return Row(
        phase=phase,
        tool=tool.name,
        item=item.name,
        bytes_in=item.size,
        seconds=round(m.seconds, 3),
        mb_per_s=round(item.size / 1e6 / m.seconds, 2),
        max_rss_kib=m.max_rss_kib,
        repo_bytes=repo_bytes(repo),
        tree=tree,
        ok=ok,
        note=note,
    )


def phase_split(ctx: Context) -> list[Row]:
    """Fresh repo per tool; ``split -n NAME FILE`` for each corpus file in turn.

    repo_bytes is the repository size after that step (cumulative)."""
    rows = []
    for tool in ctx.tools:
        repo = ctx.fresh_repo(tool, "split")
        for item in ctx.corpus:
            log(f"{tool.name} split -n {item.name} ({item.size / 1e6:.0f} MB)")
            m = measure(tool.cmd(repo, "split", "-n", item.name, str(item.path)), ctx.env)
            tree = rev_parse(repo, f"{item.name}^{{tree}}", ctx.env) if m.returncode == 0 else None
            rows.append(row_from("split", tool, item, m, repo, tree))
    return rows


Phase = Callable[[Context], list[Row]]
PHASES: dict[str, Phase] = {
    "split": phase_split,
}


# ---------------------------------------------------------------------------
# comparison and output


def check_trees(rows: list[Row]) -> None:
    """Mark rows whose tree differs from another tool's for the same step."""
    groups: dict[tuple[str, str], list[Row]] = {}
    for r in rows:
        groups.setdefault((r.phase, r.item), []).append(r)
    for group in groups.values():
        trees = {r.tree for r in group if r.tree}
        if len(trees) > 1:
            for r in group:
                r.ok = False
                r.note = (r.note + "; " if r.note else "") + "tree ids differ between tools"


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def ratios(rows: list[Row]) -> list[dict[str, object]]:
    """ketch/bup for each (phase, item) both tools ran."""
    by_key = {(r.phase, r.item, r.tool): r for r in rows}
    out: list[dict[str, object]] = []
    for r in rows:
        if r.tool != "ketch" or (r.phase, r.item, "bup") not in by_key:
            continue
        b = by_key[(r.phase, r.item, "bup")]
        out.append(
            {
                "phase": r.phase,
                "item": r.item,
                "throughput": _ratio(r.mb_per_s, b.mb_per_s),
                "repo_size": _ratio(r.repo_bytes, b.repo_bytes),
                "max_rss": _ratio(r.max_rss_kib, b.max_rss_kib),
                "same_tree": r.tree is not None and r.tree == b.tree,
            }
        )
    return out


def _fmt_row(r: Row) -> list[str]:
    def mib(n: int | None, div: int) -> str:
        return "-" if n is None else f"{n / div:,.1f}"

    status = "ok" if r.ok else f"FAIL {r.note}"
    return [
        r.phase,
        r.item,
        r.tool,
        f"{r.seconds:.2f}",
        f"{r.mb_per_s:.1f}",
        mib(r.max_rss_kib, 1024),
        mib(r.repo_bytes, 1 << 20),
        (r.tree or "-")[:12],
        status,
    ]


def _fmt_ratio(x: dict[str, object]) -> list[str]:
    def f(v: object) -> str:
        return "-" if v is None else f"{v}"

    return [
        f(x["phase"]),
        f(x["item"]),
        f(x["throughput"]),
        f(x["repo_size"]),
        f(x["max_rss"]),
        "yes" if x["same_tree"] else "NO",
    ]


ROW_HEADERS = [
    "phase",
    "item",
    "tool",
    "seconds",
    "MB/s",
    "peak RSS MiB",
    "repo MiB",
    "tree",
    "status",
]
RATIO_HEADERS = [
    "phase",
    "item",
    "throughput ketch/bup",
    "repo size ketch/bup",
    "peak RSS ketch/bup",
    "same tree",
]


def print_table(title: str, headers: list[str], body: list[list[str]]) -> None:
    if Console is not None and Table is not None:
        table = Table(title=title)
        for h in headers:
            table.add_column(h, justify="left" if h in ("phase", "item", "tool") else "right")
        for line in body:
            table.add_row(*line)
        Console(width=max(120, shutil.get_terminal_size().columns)).print(table)
        return
    widths = [max(len(c) for c in col) for col in zip(headers, *body, strict=False)]
    print(f"\n{title}")
    for line in [headers, *body]:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))


# ---------------------------------------------------------------------------
# setup and main


def tool_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("KETCH_DIR", "BUP_DIR")}
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
    for name in args.only or TOOL_NAMES:
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
        help="corpus size factor (1.0 = 1 GiB image + ~300 MB dump)",
    )
    p.add_argument(
        "--cache-dir",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"corpus cache and scratch repos (default {DEFAULT_CACHE})",
    )
    p.add_argument(
        "--only", action="append", choices=TOOL_NAMES, help="run only this tool (repeatable)"
    )
    p.add_argument(
        "--phase", action="append", choices=list(PHASES), help="run only this phase (repeatable)"
    )
    p.add_argument("--ketch", help="ketch command (default: ketch beside this python)")
    p.add_argument("--bup", help="bup command (default: bup on PATH)")
    p.add_argument("--results", type=Path, default=DEFAULT_RESULTS, help="JSON output")
    p.add_argument("--keep", action="store_true", help="keep the scratch repositories")
    args = p.parse_args(argv)
    if not 0 < args.scale <= 10:
        p.error("--scale must be in (0, 10]")
    return args


def write_results(
    path: Path,
    args: argparse.Namespace,
    ctx: Context,
    rows: list[Row],
    rat: list[dict[str, object]],
) -> None:
    result = {
        "timestamp": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
        "scale": args.scale,
        "machine": {
            "python": platform.python_version(),
            "platform": platform.platform(),
            "cpus": os.cpu_count(),
        },
        "tools": {
            t.name: {"argv": list(t.argv), "version": tool_version(t, ctx.env)} for t in ctx.tools
        },
        "corpus": [{"name": c.name, "path": str(c.path), "bytes": c.size} for c in ctx.corpus],
        "rows": [asdict(r) for r in rows],
        "ratios": rat,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")
    log(f"results written to {path}")


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    env = tool_env()
    tools = find_tools(args)
    corpus = ensure_corpus(args.cache_dir, args.scale, log)
    work_dir = args.cache_dir / "run"
    work_dir.mkdir(parents=True, exist_ok=True)
    ctx = Context(tools=tools, corpus=corpus, work_dir=work_dir, env=env, keep=args.keep)
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
    print_table(f"ketch vs bup (scale {args.scale:g})", ROW_HEADERS, [_fmt_row(r) for r in rows])
    if rat:
        print_table("ratios (ketch / bup)", RATIO_HEADERS, [_fmt_ratio(x) for x in rat])
    write_results(args.results, args, ctx, rows, rat)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
