"""Retention and gc on a backup server: every repository under ROOT (one per
machine, as `ketch server setup-client --root ROOT` lays them out), each with
the policy the server config gives its machine. `ketch prune --all ROOT` and
`ketch gc --all ROOT` render the reports returned here.

One repository failing (not a repository any more, a full disk) is reported
and the others are still done; a machine the config has no policy for is
skipped and listed as such: keeping every save is never an error.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from typing import Any

from ketch.errors import EXIT_FAILED, EXIT_OK, KetchError, UsageError
from ketch.lifecycle.gc import collect
from ketch.lifecycle.gcreport import GcProgress
from ketch.lifecycle.prune import PruneReport, prune
from ketch.lifecycle.serverconfig import ServerConfig
from ketch.localrepo import LocalRepository
from ketch.progress import Progress
from ketch.text import plural


def find_repositories(root: str) -> list[str]:
    """Every repository directly under `root` (a directory holding objects/ and refs/)."""
    try:
        names = sorted(os.listdir(root))
    except OSError as e:
        raise UsageError(f"{root}: {e.strerror}") from None
    return [os.path.join(root, n) for n in names
            if all(os.path.isdir(os.path.join(root, n, d)) for d in ("objects", "refs"))]


def prune_counts(report: PruneReport) -> tuple[int, int]:
    """(saves kept, saves removed) over the branches of a prune report."""
    kept = removed = 0
    for branch in report.branches:
        for d in branch.decisions:
            kept += d.keep
            removed += not d.keep
    return kept, removed


def mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


@dataclass
class MachineResult:
    """What was done to one machine's repository."""

    machine: str  # the repository's directory name under ROOT
    path: str
    status: str  # "done", "skipped" or "failed"
    summary: str = ""  # one line: what was done, why skipped, or the error
    exit_code: int = EXIT_OK
    report: dict[str, Any] | None = None  # the prune or gc report, as its --json gives it


@dataclass
class FleetReport:
    """`ketch prune --all` / `ketch gc --all`: one line per machine, and a total."""

    action: str  # "prune" or "gc"
    root: str
    dry_run: bool = False
    machines: list[MachineResult] = field(default_factory=list)
    seconds: float = 0.0
    totals: dict[str, int] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return max((m.exit_code for m in self.machines), default=EXIT_OK)

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        return d

    def text(self) -> str:
        done = sum(m.status == "done" for m in self.machines)
        head = (f"{self.action} --all {self.root}{' (dry run)' if self.dry_run else ''}: "
                f"{plural(done, 'repository', 'repositories')} done")
        if skipped := sum(m.status == "skipped" for m in self.machines):
            head += f", {skipped} skipped"
        if failed := sum(m.status == "failed" for m in self.machines):
            head += f", {failed} failed"
        lines = [f"{head} ({self.seconds:.1f} s)"]
        width = max((len(m.machine) for m in self.machines), default=0)
        for m in self.machines:
            state = {"done": "", "skipped": "skipped: ", "failed": "FAILED: "}[m.status]
            lines.append(f"  {m.machine.ljust(width)}  {state}{m.summary}")
        if not self.machines:
            lines.append(f"  no repositories under {self.root}")
        if self.action == "prune" and self.totals:
            lines.append(f"total: {plural(self.totals['kept'], 'save')} kept, "
                         f"{self.totals['removed']} {'to remove' if self.dry_run else 'removed'}")
        elif self.totals:
            lines.append(f"total: {mb(self.totals['bytes_reclaimed'])} "
                         f"{'reclaimable' if self.dry_run else 'reclaimed'}")
        return "\n".join(lines)


def each_repository(root: str, report: FleetReport,
                    job: Callable[[str, LocalRepository], MachineResult | None]
                    ) -> FleetReport:
    """Run `job` on every repository under `root` (prune, gc, fsck): one result
    each in `report`, a repository that cannot be opened reported, not fatal."""
    t0 = time.monotonic()
    for path in find_repositories(root):
        name = os.path.basename(path)
        try:
            repo = LocalRepository(path)
            try:
                result = job(name, repo)
            finally:
                repo.close()
                give_back(path)
        except (KetchError, OSError) as e:
            why = f"{e.strerror}" if isinstance(e, OSError) and e.strerror else str(e)
            where = f"{e.filename}: " if isinstance(e, OSError) and e.filename else ""
            result = MachineResult(name, path, "failed", where + why, EXIT_FAILED)
        if result is not None:
            report.machines.append(result)
    report.seconds = time.monotonic() - t0
    return report


def give_back(repo_path: str) -> None:
    """Run as root in a repository that belongs to another user (the machine's
    forced-command server runs as it), give back what was just written: a
    root-owned reflog, ref directory or lease file would refuse that server."""
    if os.geteuid() != 0:
        return
    st = os.stat(repo_path)
    if st.st_uid == 0:
        return
    for top, dirs, files in os.walk(repo_path):
        for name in (*dirs, *files):
            p = os.path.join(top, name)
            try:
                if os.lstat(p).st_uid != st.st_uid:
                    os.lchown(p, st.st_uid, st.st_gid)
            except FileNotFoundError:  # a save's temporary file, gone meanwhile
                continue


def prune_all(root: str, config: ServerConfig, *, dry_run: bool = False,
              progress: Progress | None = None) -> FleetReport:
    """Prune every branch of every repository under `root` with its machine's policy."""
    report = FleetReport("prune", root, dry_run, totals={"kept": 0, "removed": 0})

    def one(name: str, repo: LocalRepository) -> MachineResult:
        policy = config.policy_for(name)
        if policy is None:
            where = f" in {config.source}" if config.source else ""
            return MachineResult(name, repo.path, "skipped",
                                 f"no [machine.{name}] and no [retention]{where}")
        if policy.empty:
            table = f"[machine.{name}]" if name in config.machines else "[retention]"
            return MachineResult(name, repo.path, "skipped",
                                 f"{table} keeps every save (it sets no keep-* key)")
        got = prune(repo, None, policy, dry_run=dry_run, progress=progress)
        kept, removed = prune_counts(got)
        report.totals["kept"] += kept
        report.totals["removed"] += removed
        branches = plural(len(got.branches), "branch", "branches")
        verb = "to remove" if dry_run else "removed"
        summary = f"{branches}: {plural(kept, 'save')} kept, {removed} {verb}"
        summary += "".join(f"; {problem}" for problem in [*got.errors, *got.warnings])
        return MachineResult(name, repo.path, "done", summary, got.exit_code, got.as_dict())

    return each_repository(root, report, one)


def gc_all(root: str, *, threshold: float, dry_run: bool = False,
           progress: GcProgress | None = None, par2: bool = False) -> FleetReport:
    """Collect the garbage of every repository under `root`."""
    report = FleetReport("gc", root, dry_run, totals={"bytes_before": 0, "bytes_after": 0,
                                                      "bytes_reclaimed": 0})

    def one(name: str, repo: LocalRepository) -> MachineResult:
        got = collect(repo, threshold=threshold, dry_run=dry_run, progress=progress, par2=par2)
        d = got.as_dict()
        for key in report.totals:
            report.totals[key] += int(d.get(key, 0))
        verb = "reclaimable" if dry_run else "reclaimed"
        summary = (f"{mb(d.get('bytes_reclaimed', 0))} {verb} "
                   f"({mb(d.get('bytes_before', 0))} -> {mb(d.get('bytes_after', 0))})")
        summary += "".join(f"; {w}" for w in got.warnings)
        return MachineResult(name, repo.path, "done", summary, got.exit_code, d)

    return each_repository(root, report, one)

