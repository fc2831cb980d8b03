"""The lifecycle phase: 60 daily saves, then keep 7 daily, 4 weekly, 6 monthly
and reclaim the space; ketch beside bup, restic and borg on the same days.

For each tool, on the same states of one tree (ketchbench.daily), each save
dated its day: the 60 saves (timed, for the record), then the policy applied
and the space reclaimed, each step timed with its peak RSS (tree) and the repository
size (du) before and after; then the days each tool kept (a warning when the
tools disagree, or ketch disagrees with the issue's rule), and, replaying the
same days, a fresh repository per tool holding only the days it kept. Every
save ketch kept is restored and compared with the day's tree, and ``git fsck
--strict`` checks ketch's repository after the gc.
"""

from __future__ import annotations

import datetime as dt
import json
import re
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from ketchbench.common import (
    MB,
    PEAK_LABEL,
    PEAK_NOTE,
    RSS_LIMIT_MB,
    Context,
    Measure,
    Row,
    log,
    peak_kib,
    repo_bytes,
)
from ketchbench.cycle import measure_steps
from ketchbench.daily import DailyCorpus
from ketchbench.peers import NAME, POLICY, POLICY_TEXT, Peer, Step, make_peers
from ketchbench.trees import compare_trees

LIFECYCLE = "lifecycle"  # the phase, and its rows' prefix: lifecycle:prune, ...
FRESH_SLACK = 1.10  # the gc's repository within 10% of the fresh one's size
BUP_TIME = 0.5  # prune + gc within 0.5x bup's time
RESTIC_TIME = 1.0  # and within restic's


@dataclass
class Run:
    """One tool through the phase: its repositories and what was measured."""

    peer: Peer
    repo: Path
    fresh: Path
    saves: list[Measure] = field(default_factory=list)
    parts: dict[str, float] = field(default_factory=dict)  # save seconds by command
    failures: list[str] = field(default_factory=list)
    size: dict[str, int] = field(default_factory=dict)  # saved, pruned, collected, fresh
    steps: dict[str, tuple[Measure, dict[str, float], str]] = field(default_factory=dict)
    kept: list[int] = field(default_factory=list)
    fresh_seconds: float = 0.0
    fresh_rss: int | None = None
    fresh_pss: int | None = None
    verified: list[str] = field(default_factory=list)  # ketch: problems of its restores
    fsck: str | None = None
    gc_report: object = None  # ketch gc --json

    @property
    def name(self) -> str:
        return self.peer.name


def _steps(run: Run, steps: list[Step]) -> tuple[Measure, dict[str, float], str]:
    return measure_steps(steps, run.peer.env)


def _save_days(ctx: Context, runs: list[Run], data: Path) -> int:
    """The days, each saved by every tool in turn; the bytes of all the days' trees."""
    corpus = DailyCorpus(ctx.scale)
    total = 0
    for day in range(ctx.days):
        corpus.advance()
        stats = corpus.write(data)
        total += stats.total_bytes
        if day % 10 == 0 or day == ctx.days - 1:
            log(f"{LIFECYCLE}: day {day} ({stats.total_files} files, "
                f"{stats.total_bytes / MB:,.1f} MB, {stats.written_bytes / MB:,.1f} MB written)")
        for run in runs:
            m, parts, note = _steps(run, run.peer.save(run.repo, data, day))
            run.saves.append(m)
            for k, v in parts.items():
                run.parts[k] = round(run.parts.get(k, 0.0) + v, 3)
            if note:
                run.failures.append(f"day {day}: {note}")
    return total


def _reclaim(run: Run, days: int) -> None:
    """The policy applied and the space reclaimed, each step measured."""
    run.size["saved"] = repo_bytes(run.repo)
    log(f"{run.name}: prune + gc of {run.size['saved'] / MB:,.1f} MB")
    prune = run.peer.prune(run.repo, days - 1)
    if prune:
        run.steps["prune"] = _steps(run, prune)
    run.size["pruned"] = repo_bytes(run.repo)
    run.steps["gc"] = _steps(run, run.peer.gc(run.repo))
    if run.name == "ketch":
        try:
            run.gc_report = json.loads(run.steps["gc"][0].stdout)
        except ValueError:
            pass
    run.size["collected"] = repo_bytes(run.repo)
    try:
        run.kept = run.peer.kept_days(run.repo)
    except (RuntimeError, ValueError, KeyError) as e:
        run.failures.append(f"listing the kept saves: {e}")


def expected_days(days: list[int]) -> list[int]:
    """The issue's rule: the newest save, and for each policy the newest save
    of each of its N most recent periods that have a save (ISO weeks)."""
    def key(period: str, day: int) -> tuple[int, ...]:
        d = dt.datetime.fromtimestamp(DailyCorpus.when(day), dt.UTC).date()
        return {"daily": (d.year, d.month, d.day), "weekly": d.isocalendar()[:2],
                "monthly": (d.year, d.month)}[period]

    newest_first = sorted(days, reverse=True)
    keep = set(newest_first[:1])
    for period, n in POLICY:
        seen: list[tuple[int, ...]] = []
        for day in newest_first:
            k = key(period, day)
            if k not in seen:
                if len(seen) == n:
                    break
                seen.append(k)
                keep.add(day)
    return sorted(keep)


def _date(day: int) -> str:
    return dt.datetime.fromtimestamp(DailyCorpus.when(day), dt.UTC).strftime("%m-%d")


def _agreement(runs: list[Run], days: int) -> list[str]:
    """Warnings where the tools keep different days than ketch (or the first
    tool), and where ketch differs from the issue's rule."""
    warnings = []
    rule = expected_days(list(range(days)))
    ref = next((r for r in runs if r.name == "ketch"), runs[0])
    if ref.name == "ketch" and ref.kept != rule:
        warnings.append(f"ketch kept {_days(ref.kept)}, the issue's rule keeps {_days(rule)}")
    for run in runs:
        if run is not ref and run.kept != ref.kept:
            only = sorted(set(run.kept) - set(ref.kept))
            not_ = sorted(set(ref.kept) - set(run.kept))
            warnings.append(
                f"{run.name} kept {len(run.kept)} saves, {ref.name} {len(ref.kept)}: "
                f"{run.name} also {_days(only) or '-'}, not {_days(not_) or '-'}"
            )
    return warnings


def _days(days: list[int]) -> str:
    return " ".join(_date(d) for d in days)


def _restore_ok(ctx: Context, run: Run, data: Path, day: int) -> None:
    """``ketch restore`` of the save of ``day`` from the collected repository,
    compared with the day's tree (``data`` now)."""
    out = ctx.work_dir / "lifecycle-restore"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    save = dt.datetime.fromtimestamp(DailyCorpus.when(day), dt.UTC).strftime("%Y-%m-%d-%H%M%S")
    cmd = [*run.peer.argv, "-d", str(run.repo), "restore", "-C", str(out), f"{NAME}/{save}{data}"]
    proc = subprocess.run(cmd, capture_output=True, env=run.peer.env)
    if proc.returncode != 0:
        err = proc.stderr.decode(errors="replace").strip().splitlines() or ["?"]
        run.verified.append(f"{_date(day)}: restore exit {proc.returncode}: {err[-1]}")
    else:
        problems = compare_trees(data, out / data.name)
        run.verified += [f"{_date(day)}: {p}" for p in problems[:3]]
    shutil.rmtree(out, ignore_errors=True)


def _fresh(ctx: Context, runs: list[Run], data: Path) -> None:
    """The same days again: each tool saves the days it kept into a fresh
    repository; ketch's kept saves are restored and compared on the way."""
    wanted = {d for r in runs for d in r.kept}
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir()
    corpus = DailyCorpus(ctx.scale)
    for day in range(max(wanted, default=-1) + 1):
        corpus.advance()
        if day not in wanted:
            continue
        corpus.write(data)
        for run in runs:
            if day not in run.kept:
                continue
            m, _, note = _steps(run, run.peer.save(run.fresh, data, day))
            run.fresh_seconds += m.seconds
            run.fresh_rss = _rss(m, Measure(0, run.fresh_rss, 0, b"", b""))
            run.fresh_pss = _pss(m, Measure(0, None, 0, b"", b"", tree_pss_kib=run.fresh_pss))
            if note:
                run.failures.append(f"fresh, day {day}: {note}")
            if run.name == "ketch":
                _restore_ok(ctx, run, data, day)
    for run in runs:
        run.size["fresh"] = repo_bytes(run.fresh)


def _fsck(run: Run) -> None:
    proc = subprocess.run(["git", f"--git-dir={run.repo}", "fsck", "--strict", "--no-progress"],
                          capture_output=True, env=run.peer.env)
    lines = (proc.stdout + proc.stderr).decode(errors="replace").strip().splitlines()
    bad = [ln for ln in lines if not re.match(r"(dangling|notice)\b", ln)]
    run.fsck = "clean" if proc.returncode == 0 and not bad else f"{len(bad)} problems: {bad[:2]}"


def _rss(*ms: Measure | None) -> int | None:
    vals = [m.max_rss_kib for m in ms if m is not None and m.max_rss_kib is not None]
    return max(vals, default=None)


def _pss(*ms: Measure | None) -> int | None:
    vals = [m.tree_pss_kib for m in ms if m is not None and m.tree_pss_kib is not None]
    return max(vals, default=None)


def _rows(run: Run, data_bytes: int, days: int) -> list[Row]:
    def row(step: str, seconds: float, rss: tuple[int | None, int | None], size: int,
            before: int | None, parts: dict[str, float], note: str = "",
            bytes_in: int = 0) -> Row:
        return Row(phase=f"{LIFECYCLE}:{step}", tool=run.name, item=f"{days} days",
                   bytes_in=bytes_in, seconds=round(seconds, 3),
                   mb_per_s=round(bytes_in / MB / seconds, 2) if bytes_in and seconds else 0.0,
                   max_rss_kib=rss[0], repo_bytes=size, tree=None, ok=not note, note=note,
                   repo_growth=None if before is None else size - before, parts=parts,
                   tree_pss_kib=rss[1])

    saves = sum(m.seconds for m in run.saves)
    save_fail = "; ".join(f for f in run.failures if f.startswith("day "))[:300]
    rows = [row("saves", saves, (_rss(*run.saves), _pss(*run.saves)), run.size["saved"], None,
                run.parts, save_fail, data_bytes)]
    before = run.size["saved"]
    for step, size_key in (("prune", "pruned"), ("gc", "collected")):
        if step in run.steps:
            m, parts, note = run.steps[step]
            rows.append(row(step, m.seconds, (m.max_rss_kib, m.tree_pss_kib), run.size[size_key],
                            before, parts, note))
            before = run.size[size_key]
    measured = [run.steps[s] for s in ("prune", "gc") if s in run.steps]
    notes = [n for _, _, n in measured if n]
    notes += [f for f in run.failures if f.startswith("listing")]
    if run.verified:
        notes.append(f"kept saves differ: {'; '.join(run.verified[:3])}")
    if run.fsck not in (None, "clean"):
        notes.append(f"git fsck: {run.fsck}")
    total = row("prune+gc", sum(m.seconds for m, _, _ in measured),
                (_rss(*(m for m, _, _ in measured)), _pss(*(m for m, _, _ in measured))),
                run.size["collected"], run.size["saved"],
                {k: v for _, parts, _ in measured for k, v in parts.items()}, "; ".join(notes))
    if run.name == "ketch":
        total.verified = f"{len(run.kept)} kept saves restored, " + (
            "identical" if not run.verified else f"{len(run.verified)} differences"
        ) + f"; fsck {run.fsck}"
    fresh_fail = "; ".join(f for f in run.failures if f.startswith("fresh"))[:300]
    rows += [total, row("fresh", run.fresh_seconds, (run.fresh_rss, run.fresh_pss),
                        run.size["fresh"], None, {}, fresh_fail)]
    return rows


def phase_lifecycle(ctx: Context) -> list[Row]:
    """The daily saves, the policy, the gc, and the fresh repositories; each
    tool's rows, and a summary with the issue's targets in ctx.info."""
    home = ctx.work_dir / "lifecycle-home"
    shutil.rmtree(home, ignore_errors=True)
    peers, missing = make_peers(ctx.tools, ctx.peers, ctx.env, home)
    for why in missing:
        log(f"{LIFECYCLE}: without {why}")
    if not peers:
        return []
    data = ctx.work_dir / "lifecycle-data"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    ctx.repos += [home, data]
    runs = []
    for peer in peers:
        repo, fresh = (ctx.work_dir / f"{LIFECYCLE}-{x}{peer.name}" for x in ("", "fresh-"))
        for r in (repo, fresh):
            shutil.rmtree(r, ignore_errors=True)
            peer.init(r)
            ctx.repos.append(r)
        runs.append(Run(peer, repo, fresh))
    log(f"{LIFECYCLE}: {ctx.days} daily saves by {', '.join(r.name for r in runs)} into {data}")
    data_bytes = _save_days(ctx, runs, data)
    for run in runs:
        _reclaim(run, ctx.days)
    warnings = _agreement(runs, ctx.days)
    for w in warnings:
        log(f"{LIFECYCLE}: warning: {w}")
    log(f"{LIFECYCLE}: fresh repositories of the kept saves (replaying the days)")
    _fresh(ctx, runs, data)
    for run in runs:
        if run.name == "ketch":
            _fsck(run)
    rows = [r for run in runs for r in _rows(run, data_bytes, ctx.days)]
    ctx.info[LIFECYCLE] = summary(ctx, runs, rows, warnings)
    return rows


def _total(rows: list[Row], tool: str) -> Row | None:
    return next((r for r in rows if r.tool == tool and r.phase == f"{LIFECYCLE}:prune+gc"), None)


def _ratio(a: float | None, b: float | None) -> float | None:
    return round(a / b, 3) if a is not None and b else None


def targets(rows: list[Row], ketch: Run | None) -> list[dict[str, object]]:
    """The issue's targets for this phase: met, missed ("failed": ketch's
    prune + gc, or the other tool's, failed), or None: not measured (a tool
    left out)."""
    k, bup, restic = (_total(rows, t) for t in ("ketch", "bup", "restic"))
    fresh = next((r for r in rows if r.tool == "ketch" and r.phase == f"{LIFECYCLE}:fresh"), None)
    out: list[dict[str, object]] = []

    def add(label: str, num: Row | None, den: Row | None, value: float | None,
            bound: float) -> None:
        if num is None or den is None:
            out.append({"target": label, "value": None, "met": None})
        elif not (num.ok and den.ok):
            out.append({"target": label, "value": "failed", "met": False})
        else:
            out.append({"target": label, "value": value,
                        "met": None if value is None else value <= bound})

    add(f"ketch gc's repository ≤{FRESH_SLACK:g}× the fresh one's", k, fresh,
        _ratio(k and k.repo_bytes, fresh and fresh.repo_bytes), FRESH_SLACK)
    add(f"prune + gc time ≤{BUP_TIME:g}× bup's", k, bup,
        _ratio(k and k.seconds, bup and bup.seconds), BUP_TIME)
    add("prune + gc time ≤ restic's", k, restic,
        _ratio(k and k.seconds, restic and restic.seconds), RESTIC_TIME)
    peak = None if k is None else k.peak_kib
    rss = None if peak is None else round(peak * 1024 / MB, 1)
    add(f"ketch's {PEAK_LABEL} ≤{RSS_LIMIT_MB:g} MB", k, k, rss, RSS_LIMIT_MB)
    if k is not None and ketch is not None:
        out.append({"target": "no save lost: every kept save restores, fsck clean",
                    "value": k.verified, "met": not ketch.verified and ketch.fsck == "clean"})
    return out


def summary(ctx: Context, runs: list[Run], rows: list[Row],
            warnings: list[str]) -> dict[str, object]:
    """What goes to the results JSON (and the summary table)."""
    ketch = _total(rows, "ketch")
    tools: dict[str, object] = {}
    for run in runs:
        total = _total(rows, run.name)
        assert total is not None
        steps = {s: {"seconds": round(m.seconds, 3), "max_rss_kib": m.max_rss_kib,
                     "tree_pss_kib": m.tree_pss_kib, "ok": not note}
                 for s, (m, _, note) in run.steps.items()}
        tools[run.name] = {
            "how": run.peer.how,
            "saves_seconds": round(sum(m.seconds for m in run.saves), 3),
            "saves_max_rss_kib": _rss(*run.saves),
            "saves_tree_pss_kib": _pss(*run.saves),
            "steps": steps,
            "prune_gc_seconds": total.seconds,
            "prune_gc_max_rss_kib": total.max_rss_kib,
            "prune_gc_tree_pss_kib": total.tree_pss_kib,
            "repo_bytes": dict(run.size),
            "vs_fresh": _ratio(run.size["collected"], run.size["fresh"]),
            "kept": len(run.kept),
            "kept_days": run.kept,  # 0: the first day
            "kept_dates": [_date(d) for d in run.kept],
            "ketch_time_ratio": None if ketch is None else _ratio(ketch.seconds, total.seconds),
            "ketch_rss_ratio": None if ketch is None else _ratio(ketch.peak_kib,
                                                                 total.peak_kib),
            "ok": total.ok,
        }
        if run.gc_report is not None:
            tools[run.name]["gc_report"] = run.gc_report
    return {
        "policy": f"keep {POLICY_TEXT}",
        "days": ctx.days,
        "first_day": dt.datetime.fromtimestamp(DailyCorpus.when(0), dt.UTC).isoformat(),
        "scale": ctx.scale,
        "rule_keeps": [_date(d) for d in expected_days(list(range(ctx.days)))],
        "tools": tools,
        "warnings": warnings,
        "targets": targets(rows, next((r for r in runs if r.name == "ketch"), None)),
    }


def _mb(n: object) -> str:
    return f"{n / MB:,.1f}" if isinstance(n, int) else "-"


def _rss_mb(step: dict[str, object] | None) -> str:
    """The step's PEAK_LABEL (peak_kib), MB."""
    if step is None:
        return "-"
    rss, pss = step["max_rss_kib"], step.get("tree_pss_kib")
    kib = peak_kib(rss if isinstance(rss, int) else None, pss if isinstance(pss, int) else None)
    return "-" if kib is None else _mb(kib * 1024)


def _x(v: object) -> str:
    return f"{v:.3g}" if isinstance(v, float | int) else "-"


def summary_table(info: dict[str, object]) -> tuple[str, list[str], list[list[str]], str]:
    """(title, headers, body, caption) of the summary, for report.print_table."""
    headers = ["tool", "saves s", "prune s", "gc s", "prune+gc s", f"prune {PEAK_LABEL} MB",
               f"gc {PEAK_LABEL} MB", "repo MB",
               "pruned MB", "gc MB", "fresh MB", "gc/fresh", "kept", "ketch/tool time",
               "ketch/tool RSS"]
    body = []
    tools = info["tools"]
    assert isinstance(tools, dict)
    for name, t in tools.items():
        steps, size = t["steps"], t["repo_bytes"]
        body.append([
            name + ("" if t["ok"] else " FAILED"), f"{t['saves_seconds']:.1f}",
            _x(steps.get("prune", {}).get("seconds")), _x(steps["gc"]["seconds"]),
            _x(t["prune_gc_seconds"]), _rss_mb(steps.get("prune")), _rss_mb(steps["gc"]),
            _mb(size.get("saved")), _mb(size.get("pruned")), _mb(size.get("collected")),
            _mb(size.get("fresh")), _x(t["vs_fresh"]), str(t["kept"]),
            _x(t["ketch_time_ratio"]), _x(t["ketch_rss_ratio"]),
        ])
    marks = []
    for tg in info["targets"]:  # type: ignore[attr-defined]
        mark = {True: "✓", False: "✗", None: "?"}[tg["met"]]
        value = tg["value"]
        shown = value if isinstance(value, str) else "not measured" if value is None else _x(value)
        marks.append(f"{mark} {tg['target']}: {shown}")
    warnings = info["warnings"]
    assert isinstance(warnings, list)
    caption = "\n".join([*marks, PEAK_NOTE, *(f"warning: {w}" for w in warnings)])
    title = (f"{LIFECYCLE}: {info['days']} daily saves, then keep {POLICY_TEXT}; prune + gc "
             f"(restic: forget --prune, one command) — scale {info['scale']:g}")
    return title, headers, body, caption
