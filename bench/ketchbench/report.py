"""Comparison with the targets, and output: the tables and the results file.

Memory is judged on the "peak RSS (tree)" (common.PEAK_NOTE): the larger of
the biggest single process's peak RSS and the sampled peak of the whole
process tree's PSS, so that a command's forked workers count together."""

from __future__ import annotations

import shutil
from dataclasses import dataclass

from ketchbench.common import MB, PEAK_LABEL, RSS_LIMIT_MB, Row
from ketchbench.lifecycle import BUP_TIME, LIFECYCLE
from ketchbench.mirror import BOTO3, MIRROR, MIRROR_PUSH
from ketchbench.remote import REMOTE
from ketchbench.s3phase import DIRECT, LOCAL, NOT_SUPPORTED, RELAYED_PHASE, S3

try:
    from rich.console import Console
    from rich.table import Table
except ImportError:  # plain output without rich
    Console = None  # type: ignore[assignment,misc]
    Table = None  # type: ignore[assignment,misc]

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


@dataclass(frozen=True)
class Target:
    """One goal of the issue: ``metric`` (a key of the ratio dict) ``op`` ``bound``."""

    metric: str
    op: str  # ">=", "<=" or "<"
    bound: float
    label: str

    def check(self, ratio: dict[str, object]) -> dict[str, object]:
        value = ratio.get(self.metric)
        met: bool | None = None
        if isinstance(value, int | float):
            met = {
                ">=": value >= self.bound,
                "<=": value <= self.bound,
                "<": value < self.bound,
            }[self.op]
        return {"target": self.label, "value": value, "met": met}


SPEED_4X = Target("throughput", ">=", 4.0, "speed ≥4×")
RSS_TARGET = Target("ketch_rss_mb", "<=", RSS_LIMIT_MB, f"{PEAK_LABEL} ≤{RSS_LIMIT_MB:g} MB")
TARGETS: dict[str, list[Target]] = {
    "save-initial": [SPEED_4X],
    "resave": [Target("time", "<=", 0.5, "time ≤0.5×")],
    "save-day": [SPEED_4X, Target("repo_growth", "<=", 1.05, "growth ≤1.05×")],
    "restore": [SPEED_4X],
    # the remote phase: ketch's client against ketch locally, same DATA
    f"{REMOTE}:save-initial": [Target("time", "<=", 1.3, "time ≤1.3×")],
    f"{REMOTE}:resave": [Target("traffic_pct_of_data", "<", 1.0, "traffic <1% of DATA")],
    f"{REMOTE}:save-day": [Target("traffic_per_new", "<", 2.0, "traffic <2× local new")],
    # the mirror phase: ketch mirror push against boto3's upload_file of the same files
    f"{MIRROR}:push": [Target("throughput", ">=", 0.8, "MB/s ≥0.8× boto3")],
    # and targets on a row alone (SOLO)
    f"{MIRROR}:repush": [Target("traffic_mb", "<=", 0.0, "uploads nothing")],
    f"{MIRROR}:restore": [Target("downloaded_mb", "<=", 5.0, "downloaded ≤5 MB")],
    # the s3 phase: ketch -r s3://... against ketch on a local repository
    f"{S3}:save-initial": [Target("throughput", ">=", 0.8, "MB/s ≥0.8× local")],
    f"{S3}:save-day": [Target("traffic_per_growth", "<=", 1.1, "upload ≤1.1× local growth")],
    f"{S3}:restore": [Target("throughput", ">=", 0.7, "MB/s ≥0.7× local")],
    # and alone, through the latency relay
    f"{S3}:{RELAYED_PHASE}": [
        Target("mb_per_s", ">=", 50.0, "MB/s ≥50"),
        Target("downloaded_per_needed", "<=", 1.1, "download ≤1.1× needed"),
        Target("requests_per_allowed", "<=", 1.0, "requests ≤ needed/4 MiB + idx GETs + 10"),
    ],
    f"{S3}:one-file": [Target("downloaded_mb", "<=", 2.0, "downloaded ≤2 MB"),
                        Target("requests", "<=", 20, "requests ≤20")],
    # the lifecycle phase: restic's, and the size against a fresh repository, in its own table
    f"{LIFECYCLE}:prune+gc": [Target("time", "<=", BUP_TIME, f"time ≤{BUP_TIME:g}×")],
}
# The pairs of tools the ratios compare, numerator first: ketch with bup
# (split, cycle), ketch's client with ketch locally (remote), ketch's mirror
# push with boto3 (mirror), ketch -r s3:// with ketch locally (s3).
COMPARISONS = (("ketch", "bup"), ("ketch -r", "ketch"), (MIRROR_PUSH, BOTO3), (DIRECT, LOCAL))
# Phases whose targets are on one row alone, with nothing to compare it with.
SOLO = (f"{MIRROR}:repush", f"{MIRROR}:restore", f"{S3}:{RELAYED_PHASE}", f"{S3}:one-file",
        f"{S3}:fleet")


def ratios(rows: list[Row]) -> list[dict[str, object]]:
    """For each (phase, item) both tools of a COMPARISONS pair ran, the one
    over the other, and the targets (a failed row misses them all); for each
    row of a SOLO phase, its targets alone (and so for a "not supported yet"
    row with nothing to compare it with)."""
    by_key = {(r.phase, r.item, r.tool): r for r in rows}
    out = []
    for r in rows:
        paired = [compare(r, by_key[(r.phase, r.item, den)]) for num, den in COMPARISONS
                  if r.tool == num and (r.phase, r.item, den) in by_key]
        out += paired
        if r.phase in SOLO or (not paired and r.note.startswith(NOT_SUPPORTED)):
            out.append(compare(r, None))
    return out


def _mb_of(n: int | None) -> float | None:
    return None if n is None else round(n / MB, 3)


def compare(r: Row, b: Row | None) -> dict[str, object]:
    """Row ``r`` over row ``b`` of the same step (None: ``r`` alone, no
    ratios), and ``r``'s targets."""
    targets = [*TARGETS.get(r.phase, []), RSS_TARGET]
    compared = r.tool if b is None else f"{r.tool} / {b.tool}"
    if r.note.startswith(NOT_SUPPORTED):  # not a failure: ketch cannot do it yet
        return {
            "phase": r.phase,
            "item": r.item,
            "compared": compared,
            "both_ok": False,
            "targets": [{"target": t.label, "value": NOT_SUPPORTED, "met": None}
                        for t in targets],
        }
    if not (r.ok and (b is None or b.ok)):  # no ratios of a failed step, every target missed
        return {
            "phase": r.phase,
            "item": r.item,
            "compared": compared,
            "both_ok": False,
            "targets": [{"target": t.label, "value": "failed", "met": False} for t in targets],
        }
    if b is None:  # an empty row to divide by: every ratio comes out None
        b = Row(phase=r.phase, tool="", item=r.item, bytes_in=0, seconds=0.0, mb_per_s=0.0,
                max_rss_kib=None, repo_bytes=None, tree=None, ok=True)
    x: dict[str, object] = {
        "phase": r.phase,
        "item": r.item,
        "compared": compared,
        "throughput": _ratio(r.mb_per_s, b.mb_per_s),
        "time": _ratio(r.seconds, b.seconds),
        "repo_size": _ratio(r.repo_bytes, b.repo_bytes),
        "repo_growth": _ratio(r.repo_growth, b.repo_growth),
        "max_rss": _ratio(r.peak_kib, b.peak_kib),  # PEAK_LABEL's, both
        # PEAK_LABEL, what RSS_TARGET judges; and of it, the whole tree's PSS alone
        "ketch_rss_mb": None if r.peak_kib is None else round(r.peak_kib * 1024 / MB, 1),
        "ketch_tree_pss_mb": None if r.tree_pss_kib is None
        else round(r.tree_pss_kib * 1024 / MB, 1),
        "same_tree": None if r.tree is None and b.tree is None else r.tree == b.tree,
        # remote: ketch's count of the traffic, per byte of DATA / of local new objects
        "traffic_pct_of_data": _ratio(None if r.traffic is None else 100 * r.traffic,
                                      r.bytes_in),
        "traffic_per_new": _ratio(r.traffic, b.bytes_new),
        # mirror: what a push uploaded, what a restore downloaded (MB, not ratios)
        "traffic_mb": _mb_of(r.traffic),
        "downloaded_mb": _mb_of(r.downloaded),
        # s3: a save's upload over the local save's growth; a relayed restore's
        # MB/s, download over what it needed, requests over their allowance
        "traffic_per_growth": _ratio(r.traffic, b.repo_growth),
        "mb_per_s": r.mb_per_s,
        "downloaded_per_needed": _ratio(r.downloaded, r.needed),
        "requests_per_allowed": _ratio(r.requests, r.allowed_requests),
        "requests": r.requests,
        "both_ok": True,
    }
    x["targets"] = [t.check(x) for t in targets]
    return x


def _mb(n: int | None, digits: int = 1) -> str:
    return "-" if n is None else f"{n / MB:,.{digits}f}"


def fmt_row(r: Row) -> list[str]:
    status = f"FAIL {r.note}"
    if r.ok:  # an ok row's note is a remark (check_save_trees)
        status = ", ".join(x for x in ("ok", r.verified, r.note) if x)
    parts = " + ".join(f"{k} {v:.2f}" for k, v in r.parts.items()) if len(r.parts) > 1 else ""
    return [
        r.phase,
        r.item,
        r.tool,
        f"{r.seconds:.2f}",
        parts,
        f"{r.mb_per_s:.1f}",
        "-" if r.cpu_seconds is None else f"{r.cpu_seconds:.2f}",
        _mb(r.changed_bytes),
        _mb(r.bytes_new),
        _mb(r.traffic, 3),
        _mb(r.wire_bytes, 3),
        _mb(None if r.peak_kib is None else r.peak_kib * 1024),
        _mb(r.repo_bytes),
        _mb(r.repo_growth),
        (r.tree or "-")[:12],
        status,
    ]


def _fmt_target(t: dict[str, object]) -> str:
    mark = "✓" if t["met"] else "–" if t["value"] == NOT_SUPPORTED else "✗"
    value = t["value"]
    shown = f"{value:.3g}" if isinstance(value, int | float) else str(value or "-")
    return f"{mark} {t['target']}: {shown}"


def fmt_ratio(x: dict[str, object]) -> list[str]:
    def f(v: object) -> str:
        return "-" if v is None else f"{v}"

    same = x.get("same_tree")
    targets = x["targets"]
    assert isinstance(targets, list)
    return [
        f(x["phase"]),
        f(x["item"]),
        f(x.get("compared")),
        f(x.get("throughput")),
        f(x.get("time")),
        f(x.get("repo_size")),
        f(x.get("repo_growth")),
        f(x.get("max_rss")),
        "-" if same is None else "yes" if same else "NO",
        "\n".join(_fmt_target(t) for t in targets),
    ]


ROW_HEADERS = [
    "phase",
    "item",
    "tool",
    "seconds",
    "of which",
    "MB/s",
    "CPU s",
    "changed MB",
    "new MB",
    "traffic MB",
    "wire MB",
    f"{PEAK_LABEL} MB",
    "repo MB",
    "growth MB",
    "tree",
    "status",
]
RATIO_HEADERS = [
    "phase",
    "item",
    "compared",
    "MB/s",
    "time",
    "repo size",
    "repo growth",
    PEAK_LABEL,
    "same tree",
    "targets",
]


def print_table(title: str, headers: list[str], body: list[list[str]], caption: str = "") -> None:
    left = ("phase", "step", "item", "tool", "of which", "status", "compared", "targets")
    if Console is not None and Table is not None:
        table = Table(title=title, caption=caption or None)
        for h in headers:
            table.add_column(
                h,
                justify="left" if h in left else "right",
                no_wrap=h != "status",
                min_width=30 if h == "status" else None,
            )
        for line in body:
            table.add_row(*line)
        # As wide as the table needs (a status of up to ~60 characters on one
        # line), at least 200 columns.
        natural = Console(width=1000).measure(table).maximum
        width = max(200, shutil.get_terminal_size().columns, min(natural, 240))
        Console(width=width).print(table)
        return
    body = [[c.replace("\n", "; ") for c in line] for line in body]
    widths = [max(len(c) for c in col) for col in zip(headers, *body, strict=False)]
    print(f"\n{title}")
    for line in [headers, *body]:
        print("  ".join(c.rjust(w) for c, w in zip(line, widths, strict=True)))
    if caption:
        print(caption)
