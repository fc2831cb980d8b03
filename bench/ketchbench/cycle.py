"""The cycle phase: save-initial (twice, each into a fresh repository: the
median), resave, save-day and a verified restore of DATA, with the page cache
dropped, by ketch, bup, restic and borg in turn, step by step, on one copy."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import statistics
import subprocess
from dataclasses import dataclass, replace
from pathlib import Path

from corpus import DayStats, mutate_day

from ketchbench.common import (
    BRANCH,
    MB,
    Context,
    Measure,
    Row,
    Tool,
    drop_caches,
    failure,
    log,
    measure,
    repo_bytes,
    rev_parse,
    ssh_transferred,
)
from ketchbench.peers import Peer, make_peers
from ketchbench.trees import compare_trees


def copy_data(src: Path, dst: Path) -> None:
    """A private copy of DATA (the day's changes must not touch the cache)."""
    shutil.rmtree(dst, ignore_errors=True)
    subprocess.run(["cp", "-a", "--reflink=auto", str(src), str(dst)], check=True)


def warm(root: Path) -> int:
    """Read every regular file under ``root`` (page cache warm for both tools),
    list every directory and read every symlink, so that relatime has settled
    all atimes (saved in .bupm) before either tool looks; the bytes of regular
    files, the 'size of DATA' the MB/s are computed from."""
    total = 0
    buf = bytearray(1 << 20)
    for dirpath, dirnames, filenames in os.walk(root):
        for name in [*dirnames, *filenames]:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if stat.S_ISLNK(st.st_mode):
                os.readlink(path)
            if not stat.S_ISREG(st.st_mode):
                continue
            total += st.st_size
            with open(path, "rb", buffering=0) as f:
                while f.readinto(buf):
                    pass
    os.sync()
    return total


def measure_steps(
    steps: list[tuple[str, list[str]]], env: dict[str, str], cwd: Path | None = None
) -> tuple[Measure, dict[str, float], str]:
    """Run the commands in turn (all of them, even after a failure): total
    seconds and CPU seconds, max peak RSS and tree PSS, seconds per step, and
    the failures."""
    parts: dict[str, float] = {}
    rss: list[int] = []
    pss: list[int] = []
    cpu: list[float | None] = []
    failures: list[str] = []
    code = 0
    out, err = b"", b""
    for label, cmd in steps:
        os.sync()
        m = measure(cmd, env, cwd=cwd)
        parts[label] = round(m.seconds, 3)
        cpu.append(m.cpu_seconds)
        if m.max_rss_kib is not None:
            rss.append(m.max_rss_kib)
        if m.tree_pss_kib is not None:
            pss.append(m.tree_pss_kib)
        if m.returncode != 0:
            failures.append(f"{label}: {failure(m)}")
            code = code or m.returncode
        out, err = out + m.stdout, err + m.stderr
    total_cpu = None if None in cpu else round(sum(c or 0.0 for c in cpu), 2)
    total = Measure(sum(parts.values()), max(rss, default=None), code, out, err, total_cpu,
                    max(pss, default=None))
    return total, parts, "; ".join(failures)


@dataclass
class CycleState:
    """One tool's repository in the cycle, and its size before the next step.

    In the remote phase also one way of reaching a repository: with ``url``,
    the commands run the tool's client against ``url`` (``repo`` is then the
    server's repository, on this machine, for sizes and tree ids)."""

    tool: Tool
    repo: Path
    size: int
    label: str = ""  # the rows' tool column (default: the tool's name)
    env: dict[str, str] | None = None  # default: the context's
    url: str | None = None  # ssh://127.0.0.1:PORT/REPO
    client_dir: Path | None = None  # bup's client-side BUP_DIR (index, index-cache)
    ssh_log: Path | None = None  # ssh -v -E's log: bytes on the wire
    peer: Peer | None = None  # restic or borg: their commands, not the tool's
    last: str = ""  # the peer's newest save: what the restore restores

    @property
    def name(self) -> str:
        return self.label or self.tool.name

    def cmd(self, sub: str, *args: str) -> list[str]:
        """The tool's ``sub`` command on this repository, local or remote."""
        if self.url is None:
            return self.tool.cmd(self.repo, sub, *args)
        remote = [] if sub == "index" else ["-r", self.url]  # bup's index is local
        if self.client_dir is not None:
            return self.tool.cmd(self.client_dir, sub, *remote, *args)
        return [*self.tool.argv, sub, *remote, *args]


def run_steps(
    ctx: Context, st: CycleState, steps: list[tuple[str, list[str]]], cwd: Path | None = None
) -> tuple[Measure, dict[str, float], str, int | None]:
    """measure_steps in ``st``'s environment, and the bytes its ssh
    connections carried (None when local)."""
    if st.ssh_log is None:
        return (*measure_steps(steps, st.env or ctx.env, cwd), None)
    st.ssh_log.write_bytes(b"")
    m, parts, note = measure_steps(steps, st.env or ctx.env, cwd)
    return m, parts, note, ssh_transferred(st.ssh_log)


def cycle_row(
    phase: str, st: CycleState, data_bytes: int, m: Measure, parts: dict[str, float], note: str
) -> Row:
    size = repo_bytes(st.repo)
    growth, st.size = size - st.size, size
    return Row(
        phase=phase,
        tool=st.name,
        item="data",
        bytes_in=data_bytes,
        seconds=round(m.seconds, 3),
        mb_per_s=round(data_bytes / MB / m.seconds, 2) if m.seconds > 0 else 0.0,
        max_rss_kib=m.max_rss_kib,
        repo_bytes=size,
        tree=None,
        ok=not note,
        note=note,
        repo_growth=growth,
        parts=parts,
        cpu_seconds=m.cpu_seconds,
        tree_pss_kib=m.tree_pss_kib,
    )


def save_step(ctx: Context, phase: str, st: CycleState, data: Path, data_bytes: int) -> Row:
    """Each tool's whole save procedure; the row is its sum. bup needs ``index
    DATA`` then ``save -n bench DATA``. ketch's save walks the paths it is given
    itself and uses its index only as a cache, so ``ketch save`` is its whole
    procedure (``ketch index`` is optional; see README)."""
    tool = st.tool
    as_json = ["--json"] if tool.name == "ketch" else []  # bytes_new, traffic
    steps = [("save", st.cmd("save", "-n", BRANCH, *as_json, str(data)))]
    if st.peer is not None:
        st.last = phase
        steps = st.peer.backup(st.repo, data, phase)
    elif tool.name == "bup":
        steps.insert(0, ("index", st.cmd("index", str(data))))
    log(f"{st.name} {phase}: {' + '.join(n for n, _ in steps)} {data} "
        f"({data_bytes / MB:,.0f} MB)")
    m, parts, note, wire = run_steps(ctx, st, steps)
    row = cycle_row(phase, st, data_bytes, m, parts, note)
    row.wire_bytes = wire
    if as_json and m.returncode == 0:
        _add_summary(row, m.stdout)
    if st.peer is not None:  # no git tree to compare
        return row
    # The tree of DATA itself (the save's root holds /var, /var/tmp... whose
    # atimes the run itself moves); bup names directories as they are.
    row.tree = rev_parse(st.repo, f"{BRANCH}:{str(data).lstrip('/')}", ctx.env)
    if row.ok and row.tree is None:
        row.ok, row.note = False, f"no {BRANCH}:{data} after the save"
    return row


def _add_summary(row: Row, stdout: bytes) -> None:
    """bytes_new, traffic and the root tree from ``ketch save --json``."""
    try:
        summary = json.loads(stdout)
    except ValueError:
        row.ok, row.note = False, "save --json printed no JSON summary"
        return
    row.bytes_new = summary.get("bytes_new")
    row.save_tree = summary.get("tree")
    if "bytes_sent" in summary:
        row.traffic = summary["bytes_sent"] + summary["bytes_received"]


def restore_step(
    ctx: Context, st: CycleState, data: Path, data_bytes: int, phase: str = "restore",
    cold: bool = False,
) -> Row:
    """``restore -C OUT bench/latest/DATA`` into a fresh OUT (restic: ``restore
    latest --target OUT``, borg: ``extract`` in OUT), after dropping the page
    cache if ``cold``, then (untimed) a comparison of the copy with DATA."""
    tool = st.tool
    out = ctx.work_dir / re.sub(r"[^\w.-]+", "-", f"{phase}-{st.name}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    if st.peer is not None:
        steps = st.peer.extract(st.repo, st.last, out)
        restored = out / str(data).lstrip("/")  # both keep the absolute path
    else:
        # bup wants an absolute VFS path; ketch's form has no leading slash.
        ref = f"{'/' if tool.name == 'bup' else ''}{BRANCH}/latest{data}"
        steps = [("restore", st.cmd("restore", "-C", str(out), ref))]
        restored = out / data.name
    log(f"{st.name} restore into {out}" + (" (page cache dropped)" if cold else ""))
    dropped = drop_caches() if cold else None
    if cold and not dropped:
        log("cannot drop the page cache (not root): the restore starts warm")
    m, parts, note, wire = run_steps(ctx, st, steps, cwd=out)
    row = cycle_row(phase, st, data_bytes, m, parts, note)
    row.wire_bytes = wire
    row.cold_cache = dropped
    if restored.is_dir():
        log(f"verifying {restored} against {data}")
        problems = compare_trees(data, restored)
        row.verified = "identical" if not problems else f"{len(problems)} differences"
        if problems:
            row.ok = False
            shown = "; ".join(problems[:3]) + ("; ..." if len(problems) > 3 else "")
            row.note = (row.note + "; " if row.note else "") + f"restore differs: {shown}"
            for p in problems[:20]:
                log(f"  {st.name} restore: {p}")
    else:
        row.verified = "nothing restored"
        row.ok = False
        row.note = row.note or f"{restored} was not created"
    if not ctx.keep:
        shutil.rmtree(out, ignore_errors=True)
    return row


CYCLE_STEPS = ("save-initial", "resave", "save-day", "restore")


def _fresh_states(ctx: Context, peers: list[Peer], name: str) -> list[CycleState]:
    """A fresh repository per tool: ketch and bup, then restic and borg."""
    states = [
        CycleState(t, repo := ctx.fresh_repo(t, name), repo_bytes(repo)) for t in ctx.tools
    ]
    for peer in peers:
        repo = ctx.work_dir / f"{name}-{peer.name}"
        shutil.rmtree(repo, ignore_errors=True)
        ctx.repos.append(repo)
        peer.init(repo)
        states.append(CycleState(Tool(peer.name, peer.argv), repo, repo_bytes(repo),
                                 env=peer.env, peer=peer))
    return states


def _median_row(rows: list[Row]) -> Row:
    """The last of the runs (its repository goes on), with the median of their
    seconds and CPU, the highest peak RSS and tree PSS, and every run's seconds."""
    last = rows[-1]
    seconds = statistics.median(r.seconds for r in rows)
    cpus = [r.cpu_seconds for r in rows if r.cpu_seconds is not None]
    rss = [r.max_rss_kib for r in rows if r.max_rss_kib is not None]
    pss = [r.tree_pss_kib for r in rows if r.tree_pss_kib is not None]
    notes = [f"run {i}: {r.note}" for i, r in enumerate(rows, 1) if r.note]
    trees = {r.tree for r in rows}
    if len(trees) > 1:
        notes.append("the runs saved different trees")
    return replace(
        last,
        seconds=round(seconds, 3),
        mb_per_s=round(last.bytes_in / MB / seconds, 2) if seconds > 0 else 0.0,
        cpu_seconds=round(statistics.median(cpus), 2) if len(cpus) == len(rows) else None,
        max_rss_kib=max(rss, default=None),
        tree_pss_kib=max(pss, default=None),
        parts={k: round(statistics.median(r.parts.get(k, 0.0) for r in rows), 3)
               for k in last.parts},
        runs=[r.seconds for r in rows],
        ok=all(r.ok for r in rows) and len(trees) == 1,
        note="; ".join(notes),
    )


def phase_cycle(ctx: Context) -> list[Row]:
    """The whole backup cycle of DATA, the tools interleaved step by step on
    the same copy: save-initial (twice, into two fresh repositories per tool;
    the second goes on), resave, (the day's changes) save-day, restore."""
    data = ctx.work_dir / "data"
    log(f"copying {ctx.corpus.data_dir} to {data}")
    copy_data(ctx.corpus.data_dir, data)
    ctx.repos.append(data)
    data_bytes = warm(data)
    home = ctx.work_dir / "cycle-home"  # restic's password and cache, borg's base dir
    shutil.rmtree(home, ignore_errors=True)
    ctx.repos.append(home)
    made, missing = make_peers([], ctx.peers, ctx.env, home)
    for why in missing:
        log(f"cycle: {why}")
    runs: list[list[Row]] = [[] for _ in [*ctx.tools, *made]]
    for n in range(1, ctx.initial_runs):
        first = _fresh_states(ctx, made, f"cycle-{n}")
        for got, st in zip(runs, first, strict=True):
            got.append(save_step(ctx, "save-initial", st, data, data_bytes))
        for st in first:  # its figures are taken: space back for the rest
            shutil.rmtree(st.repo, ignore_errors=True)
    states = _fresh_states(ctx, made, "cycle")
    rows = [_median_row([*got, save_step(ctx, "save-initial", st, data, data_bytes)])
            for got, st in zip(runs, states, strict=True)]
    rows += [save_step(ctx, "resave", st, data, data_bytes) for st in states]
    log(f"applying the day's changes to {data}")
    day: DayStats = mutate_day(data, ctx.scale)
    ctx.info["day"] = day.as_dict()
    data_bytes = warm(data)
    for st in states:
        row = save_step(ctx, "save-day", st, data, data_bytes)
        row.changed_bytes = day.changed_bytes
        rows.append(row)
    rows += [restore_step(ctx, st, data, data_bytes, cold=True) for st in states]
    return rows
