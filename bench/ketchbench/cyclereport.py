"""The cycle's four tools side by side: per step a table of bup, restic, borg
and ketch, ketch's time over the faster of borg and restic, its growth and
size over bup's, its peak RSS, and the issue's targets (issue 13).

The RSS figure shown and judged is the "peak RSS (tree)" (common.PEAK_NOTE):
the larger of the biggest single process's peak RSS and the sampled peak of
the whole process tree's PSS, so that ketch's forked workers count together."""

from __future__ import annotations

from ketchbench.common import MB, PEAK_LABEL, PEAK_NOTE, Row
from ketchbench.cycle import CYCLE_STEPS
from ketchbench.report import Target, print_table

ORDER = ("bup", "restic", "borg", "ketch")  # the columns
BEST_OF = ("restic", "borg")  # the peers ketch must beat
LABELS = {
    "save-initial": "initial save, warm cache",
    "resave": "no-change save",
    "save-day": "save after one day",
    "restore": "full restore, page cache dropped",
}
RSS_MIB = 100.0
TIME = Target("time_per_best_peer", "<=", 1.0, "time ≤1× best of borg/restic")
GROWTH = Target("growth_per_bup", "<=", 1.05, "growth ≤1.05× bup")
SIZE = Target("size_per_bup", "<=", 1.02, "repo size ≤1.02× bup")
RSS = Target("ketch_rss_mib", "<=", RSS_MIB, f"{PEAK_LABEL} ≤{RSS_MIB:g} MiB")
TARGETS = {
    "save-initial": [TIME, SIZE, RSS],
    "resave": [TIME, RSS],
    "save-day": [TIME, GROWTH, SIZE, RSS],
    "restore": [TIME, RSS],
}


def _div(a: float | int | None, b: float | int | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def _mib(kib: int | None) -> float | None:
    return None if kib is None else round(kib / 1024, 1)


def _tool(r: Row) -> dict[str, object]:
    return {
        "seconds": r.seconds,
        "runs": r.runs,
        "mb_per_s": r.mb_per_s,
        "cpu_seconds": r.cpu_seconds,
        "cpu_per_wall": _div(r.cpu_seconds, r.seconds),
        "max_rss_mib": _mib(r.max_rss_kib),  # the biggest single process
        "tree_pss_mib": _mib(r.tree_pss_kib),  # the whole process tree
        "peak_mib": _mib(r.peak_kib),  # PEAK_LABEL: the larger of the two
        "repo_bytes": r.repo_bytes,
        "repo_growth": r.repo_growth,
        "ok": r.ok,
        "verified": r.verified,
        "cold_cache": r.cold_cache,
        "note": r.note,
    }


def cycle_summary(rows: list[Row]) -> list[dict[str, object]]:
    """For each step of the cycle that ran: every tool's figures, the ratios
    and ketch's targets (a ratio of a failed row is None, its target missed)."""
    out: list[dict[str, object]] = []
    for step in CYCLE_STEPS:
        by_tool = {r.tool: r for r in rows if r.phase == step and r.item == "data"}
        if not by_tool:
            continue
        ketch, bup = by_tool.get("ketch"), by_tool.get("bup")
        peers = [by_tool[n] for n in BEST_OF if n in by_tool and by_tool[n].ok]
        best = min(peers, key=lambda r: r.seconds, default=None)
        good = ketch if ketch is not None and ketch.ok else None
        base = bup if bup is not None and bup.ok else None
        ratios: dict[str, object] = {
            "best_peer": None if best is None else best.tool,
            "time_per_best_peer": _div(good.seconds, best.seconds) if good and best else None,
            "growth_per_bup": _div(good.repo_growth, base.repo_growth) if good and base
            else None,
            "size_per_bup": _div(good.repo_bytes, base.repo_bytes) if good and base else None,
            "ketch_rss_mib": _mib(good.peak_kib) if good else None,  # PEAK_LABEL
        }
        targets = [] if ketch is None else [
            t.check(ratios) if good else {"target": t.label, "value": "failed", "met": False}
            for t in TARGETS[step]
        ]
        n = max(len(r.runs or []) for r in by_tool.values())
        out.append({
            "step": step,
            "label": LABELS[step] + (f" (median of {n})" if n > 1 else ""),
            "tools": {n: _tool(by_tool[n]) for n in ORDER if n in by_tool},
            **ratios,
            "targets": targets,
        })
    return out


def _num(v: object, fmt: str = "{:,.2f}") -> str:
    return fmt.format(v) if isinstance(v, int | float) else "-"


def _mark(t: dict[str, object]) -> str:
    return f"{'✓' if t['met'] else '✗'} {t['target']}: {_num(t['value'], '{:.3g}')}"


STEP_HEADERS = ["tool", "seconds", "runs", "MB/s", "CPU s", "CPU/wall", f"{PEAK_LABEL} MiB",
                "repo MB", "growth MB", "status"]
SUMMARY_HEADERS = ["step", *ORDER, "ketch ÷ best peer", "growth ÷ bup", "size ÷ bup",
                   f"ketch {PEAK_LABEL} MiB"]


def print_cycle(summary: list[dict[str, object]]) -> None:
    """A table per step, then the steps against each other, as in the issue."""
    for s in summary:
        tools = s["tools"]
        assert isinstance(tools, dict)
        body = []
        for name, t in tools.items():
            runs = t["runs"]
            status = "ok" if t["ok"] else f"FAIL {t['note']}"
            if t["verified"]:
                status += f", {t['verified']}"
            if t["cold_cache"] is False:
                status += ", page cache NOT dropped"
            body.append([
                name, _num(t["seconds"]),
                " / ".join(f"{x:.2f}" for x in runs) if isinstance(runs, list) else "",
                _num(t["mb_per_s"], "{:,.1f}"), _num(t["cpu_seconds"]),
                _num(t["cpu_per_wall"]), _num(t["peak_mib"], "{:,.0f}"),
                _num(_mb(t["repo_bytes"]), "{:,.1f}"), _num(_mb(t["repo_growth"]), "{:,.1f}"),
                status,
            ])
        targets = s["targets"]
        assert isinstance(targets, list)
        caption = "; ".join(_mark(t) for t in targets) + f"\n{PEAK_NOTE}"
        best = s["best_peer"]
        print_table(f"cycle: {s['label']} (best peer: {best or '-'})", STEP_HEADERS, body,
                    caption=caption)
    print_table("cycle: ketch beside bup, restic and borg (seconds; growth MB after the day)",
                SUMMARY_HEADERS, [_summary_line(s) for s in summary],
                caption="ratios: ketch's time over the faster of borg and restic; ketch's "
                        "repository growth and size over bup's")


def _mb(n: object) -> float | None:
    return n / MB if isinstance(n, int) else None


def _summary_line(s: dict[str, object]) -> list[str]:
    tools = s["tools"]
    assert isinstance(tools, dict)
    cells = []
    for name in ORDER:
        t = tools.get(name)
        if t is None:
            cells.append("-")
            continue
        cell = f"{t['seconds']:.2f} s" if t["ok"] else "failed"
        if s["step"] == "save-day" and t["ok"]:
            cell += f", +{_num(_mb(t['repo_growth']), '{:,.1f}')} MB"
        cells.append(cell)
    return [str(s["label"]), *cells, _num(s["time_per_best_peer"], "{:.2f}×"),
            _num(s["growth_per_bup"], "{:.3f}"), _num(s["size_per_bup"], "{:.3f}"),
            _num(s["ketch_rss_mib"], "{:,.0f}")]
