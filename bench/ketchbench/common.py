"""Running and measuring commands, and the rows and context every phase shares."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO

from corpus import Corpus, CorpusFile, ensure_corpus

ROOT = Path(__file__).resolve().parents[2]  # the checkout: bench/ketchbench/common.py
DEFAULT_CACHE = Path(os.environ.get("KETCH_BENCH_DIR", "/var/tmp/ketch-bench"))
DEFAULT_RESULTS = ROOT / "bench" / "results" / "latest.json"
GNU_TIME = "/usr/bin/time"
TOOL_NAMES = ("ketch", "bup")
BRANCH = "bench"  # the cycle phase's save name
MB = 1_000_000
RSS_LIMIT_MB = 150.0  # ketch's peak RSS target, everywhere (decimal MB, like MB/s)
TREE_INTERVAL = 0.05  # seconds between two samples of the command's process tree
PEAK_LABEL = "peak RSS (tree)"  # the figure the RSS targets are judged on: peak_kib
PEAK_NOTE = (
    f"{PEAK_LABEL}: the larger of the biggest single process's peak RSS and the peak, "
    f"sampled every {TREE_INTERVAL * 1000:g} ms, of the whole process tree's PSS "
    "(forked workers counted)"
)
CACHE_NOTE = (
    "page cache warm for every tool's saves: DATA read once before timing (again after "
    "the day's changes); sync before every measured step; the cycle's restores start "
    "with the page cache dropped (as root)"
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
    cpu_seconds: float | None = None  # user + system, the command and its children
    # the peak of the PSS summed over the command's process tree (TreeSampler)
    tree_pss_kib: int | None = None

    @property
    def peak_kib(self) -> int | None:
        return peak_kib(self.max_rss_kib, self.tree_pss_kib)


def peak_kib(max_rss_kib: int | None, tree_pss_kib: int | None) -> int | None:
    """The figure an RSS target is judged on: the larger of the biggest single
    process's peak RSS (wait4's ru_maxrss, GNU time's %M) and the sampled peak
    of the whole tree's PSS, so that forked workers count together."""
    vals = [v for v in (max_rss_kib, tree_pss_kib) if v is not None]
    return max(vals, default=None)


def _children(pid: int) -> list[int]:
    """The children of ``pid``: /proc/PID/task/*/children (a thread's
    children are listed under that thread), else a walk of /proc/*/stat."""
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return []
    kids: list[int] = []
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/children", "rb") as f:
                kids += [int(x) for x in f.read().split()]
        except FileNotFoundError:
            if not os.path.exists(f"/proc/{pid}/task/{tid}"):
                continue  # the thread is gone
            return [c for c, ppid in _ppids().items() if ppid == pid]  # no children files
        except (OSError, ValueError):
            continue
    return kids


def _ppids() -> dict[int, int]:
    """Every process's parent, from /proc/*/stat (the field after the
    parenthesised name, which may itself hold spaces and parentheses)."""
    out: dict[int, int] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                stat = f.read()
            out[int(name)] = int(stat[stat.rindex(b")") + 2 :].split()[1])
        except (OSError, ValueError, IndexError):
            continue
    return out


def _pss_kib(pid: int) -> int | None:
    """The ``Pss:`` of /proc/PID/smaps_rollup (kB), None when unreadable (the
    process is gone, or is a zombie)."""
    try:
        with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
            for line in f:
                if line.startswith(b"Pss:"):
                    return int(line.split()[1])
    except (OSError, ValueError, IndexError):
        pass
    return None


class TreeSampler:
    """While in its ``with``, samples every ``interval`` seconds, on a thread,
    the process tree under ``root`` (``root`` itself too when
    ``include_root``): the sum of every process's PSS, whose peak is
    ``peak_kib`` (None if no process was ever read). PSS shares each page
    among the processes mapping it, so pages a fork left shared count once.
    Processes that exit between two reads are skipped; a peak shorter than the
    interval may be missed."""

    def __init__(self, root: int, include_root: bool = True,
                 interval: float = TREE_INTERVAL) -> None:
        self.root = root
        self.include_root = include_root
        self.interval = interval
        self.peak_kib: int | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="tree-pss", daemon=True)

    def __enter__(self) -> TreeSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while True:
            self.sample()
            if self._stop.wait(self.interval):
                return

    def sample(self) -> int | None:
        """One sum over the tree as it is now (None: nothing read), and the peak."""
        todo = [self.root] if self.include_root else _children(self.root)
        seen: set[int] = set()
        total: int | None = None
        while todo:
            pid = todo.pop()
            if pid in seen:
                continue
            seen.add(pid)
            pss = _pss_kib(pid)
            if pss is not None:
                total = (total or 0) + pss
            todo += _children(pid)
        if total is not None and (self.peak_kib is None or total > self.peak_kib):
            self.peak_kib = total
        return total


def _parse_gnu_time(text: str) -> tuple[int | None, float | None]:
    """Peak RSS (KiB) and CPU seconds (user + system) from ``-f '%e %M %U %S'``
    output; its last line (after any 'Command exited with non-zero status N' line)."""
    lines = [ln.split() for ln in text.splitlines() if ln.strip()]
    if lines and len(lines[-1]) == 4 and lines[-1][1].isdigit():
        try:
            return int(lines[-1][1]), round(float(lines[-1][2]) + float(lines[-1][3]), 2)
        except ValueError:
            return int(lines[-1][1]), None
    return None, None


def measure(
    cmd: Sequence[str], env: dict[str, str], stdin: Path | None = None, cwd: Path | None = None
) -> Measure:
    """Run ``cmd`` (in ``cwd``): wall time, peak RSS and CPU time of that
    command alone (the peak RSS of its biggest process, not of them all), the
    peak PSS of its whole process tree (TreeSampler), output."""
    use_time = os.access(GNU_TIME, os.X_OK)
    with tempfile.TemporaryDirectory(prefix="bench-time-") as tmp:
        time_out = Path(tmp) / "time"
        full = (
            [GNU_TIME, "-f", "%e %M %U %S", "-o", str(time_out), *cmd] if use_time else list(cmd)
        )
        with open(stdin or os.devnull, "rb") as inp:
            t0 = time.perf_counter()
            if use_time:
                with subprocess.Popen(
                    full, stdin=inp, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env,
                    cwd=cwd,
                ) as proc:
                    # GNU time is the root: the tree is its child's
                    with TreeSampler(proc.pid, include_root=False) as tree:
                        try:
                            out, err = proc.communicate()
                        except BaseException:  # as subprocess.run does
                            proc.kill()
                            raise
                        seconds = time.perf_counter() - t0
                rss, cpu = (
                    _parse_gnu_time(time_out.read_text()) if time_out.exists() else (None, None)
                )
                return Measure(seconds, rss, proc.returncode, out, err, cpu, tree.peak_kib)
            return _measure_wait4(full, inp, env, Path(tmp), t0, cwd)


def drop_caches() -> bool:
    """``sync; echo 3 > /proc/sys/vm/drop_caches``: the next reads come from
    the disk. False when not allowed (not root)."""
    os.sync()
    try:
        with open("/proc/sys/vm/drop_caches", "w") as f:
            f.write("3\n")
        return True
    except OSError:
        return False


def _measure_wait4(
    cmd: list[str], inp: IO[bytes], env: dict[str, str], tmp: Path, t0: float,
    cwd: Path | None = None,
) -> Measure:
    """Without GNU time: the child's own rusage from wait4 (RUSAGE_CHILDREN's
    ru_maxrss is a maximum over every child so far, not this one's peak). A
    floor of this process's own size: the child counts from the fork. The
    tree's PSS as in measure(), from the command itself down."""
    with open(tmp / "out", "w+b") as out, open(tmp / "err", "w+b") as err:
        proc = subprocess.Popen(cmd, stdin=inp, stdout=out, stderr=err, env=env, cwd=cwd)
        with TreeSampler(proc.pid) as tree:
            _, status, usage = os.wait4(proc.pid, 0)
            seconds = time.perf_counter() - t0
        proc.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        cpu = round(usage.ru_utime + usage.ru_stime, 2)
        return Measure(seconds, usage.ru_maxrss, proc.returncode, out.read(), err.read(), cpu,
                       tree.peak_kib)


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
    cpu_seconds: float | None = None  # user + system of the step's commands
    runs: list[float] | None = None  # cycle save-initial: seconds of each run (median shown)
    cold_cache: bool | None = None  # cycle restore: the page cache was dropped before it
    tree_pss_kib: int | None = None  # the peak PSS of the step's process trees (TreeSampler)
    # s3 restores: the bytes of the pack entries the restore needs, and the
    # requests it may make for them (needed / 4 MiB + idx reads + 10)
    needed: int | None = None
    allowed_requests: int | None = None

    @property
    def peak_kib(self) -> int | None:
        """What the RSS targets are judged on (PEAK_LABEL): see peak_kib()."""
        return peak_kib(self.max_rss_kib, self.tree_pss_kib)


@dataclass
class Context:
    tools: list[Tool]  # ketch and bup
    cache_dir: Path  # where the corpus is generated and cached
    work_dir: Path
    env: dict[str, str]
    scale: float = 1.0
    keep: bool = False
    peers: tuple[str, ...] = ()  # the other tools (cycle, lifecycle, fsck): restic, borg
    days: int = 60  # the lifecycle phase's daily saves
    initial_runs: int = 2  # the cycle's save-initial: runs into fresh repositories (median)
    repos: list[Path] = field(default_factory=list)  # scratch, removed unless --keep
    info: dict[str, object] = field(default_factory=dict)  # extra facts for the JSON
    loaded_corpus: Corpus | None = None  # DATA, once a phase asked for it

    @property
    def corpus(self) -> Corpus:
        """DATA, generated (or found in the cache) on first use: the lifecycle
        phase makes its own corpus, and alone needs none of this one."""
        if self.loaded_corpus is None:
            self.loaded_corpus = ensure_corpus(self.cache_dir, self.scale, log)
        return self.loaded_corpus

    def fresh_repo(self, tool: Tool, phase: str) -> Path:
        repo = self.work_dir / f"{phase}-{tool.name}"
        shutil.rmtree(repo, ignore_errors=True)
        run_ok(tool.cmd(repo, "init"), self.env)
        self.repos.append(repo)
        return repo


def failure(m: Measure) -> str:
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
        note = failure(m)
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
        tree_pss_kib=m.tree_pss_kib,
    )


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
