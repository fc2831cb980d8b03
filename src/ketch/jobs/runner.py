"""`ketch run`: every backup set and dump of a machine's config, once, under a
lock, with one report (text, JSON, log file) and notifications.

First the config itself is saved, onto branch `ketch-config` (jobs.configsave),
so that a new machine finds it by the lost one's name. A failure in one item
(a set or a dump) is recorded and the others still run;
the run's exit code is the worst of them: 0 ok, 1 warnings, 2 failed. A dump
that fails records nothing, so the previous good save stays `latest`.

After the saves, each item with a retention policy whose save succeeded is
pruned (a failing item's history is left alone until it saves again), and if
that removed anything, the repository's garbage is collected. A repository
that may not lose saves (an S3 mirror, a backup server's append-only key) gets
a note, not a failure: retention is applied where that repository is written.

Then, while the repository is still open, the report is committed onto its
`refs/ketch/run` (ketch.reportlog): the backup server's dashboard learns how
each machine's run went, failed and interrupted runs above all, from the
repositories alone. A repository that cannot be written (an S3 mirror) gets a
note; any other failure to store it is a warning of the run, never its end.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from functools import partial
from typing import Any, Protocol

from ketch import reportlog
from ketch.errors import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS, KetchError, UsageError
from ketch.excludes import ExcludeRules
from ketch.index import Index
from ketch.integrity.protect import protect_new_packs
from ketch.jobs.configsave import CONFIG_SET, config_paths
from ketch.jobs.model import BackupSet, Config, DumpSpec
from ketch.jobs.retention import RetentionReport, apply_retention
from ketch.progress import NullProgress, Progress
from ketch.remote.location import open_location
from ketch.repo import ReadOnlyRepository, Repository
from ketch.save import SaveOptions, save
from ketch.snapshot import save_index_path
from ketch.text import plural

ProgressFor = Callable[[str], Progress]


class Notifier(Protocol):
    def start(self) -> list[str]: ...
    def finish(self, exit_code: int, summary: str, report: dict[str, object]) -> list[str]: ...


class RunLocked(KetchError):
    """Another run of the same config is still going."""


@dataclass
class ItemReport:
    kind: str  # "set" or "dump"
    name: str
    ok: bool = True
    files: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    seconds: float = 0.0
    commit: str | None = None
    warnings: list[str] = field(default_factory=list)
    error: str | None = None


@dataclass
class RunReport:
    machine: str
    config: str
    repository: str
    started: str
    seconds: float = 0.0
    items: list[ItemReport] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)  # not tied to one item
    warnings: list[str] = field(default_factory=list)
    retention: list[RetentionReport] = field(default_factory=list)  # per pruned branch
    gc: dict[str, Any] | None = None  # the gc after a prune that removed saves
    notes: list[str] = field(default_factory=list)  # worth saying, but no problem
    config_commit: str | None = None  # the save of the config (branch ketch-config)

    @property
    def exit_code(self) -> int:
        if self.errors or any(not i.ok for i in self.items):
            return EXIT_FAILED
        if self.warnings or any(i.warnings for i in self.items) or \
                any(r.error for r in self.retention):
            return EXIT_WARNINGS
        return EXIT_OK

    @property
    def status(self) -> str:
        return {EXIT_OK: "OK", EXIT_WARNINGS: "WARNINGS"}.get(self.exit_code, "FAILED")

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        d["status"] = self.status
        return d

    def text(self) -> str:
        lines = [f"ketch run on {self.machine}: {self.status} "
                 f"({plural(len(self.items), 'item')}, {self.seconds:.1f} s) -> {self.repository}"]
        for i in self.items:
            state = "ok" if i.ok else "FAILED"
            lines.append(f"  {i.kind} {i.name}: {state}, {plural(i.files, 'file', grouped=True)}, "
                         f"{i.bytes_read / 1e6:,.1f} MB read, {i.bytes_new / 1e6:,.1f} MB new, "
                         f"{i.seconds:.1f} s" + (f", {plural(len(i.warnings), 'warning')}" if i.warnings
                                                 else ""))
            if i.error:
                lines.append(f"    error: {i.error}")
            lines.extend(f"    warning: {w}" for w in i.warnings[:20])
            if len(i.warnings) > 20:
                lines.append(f"    ... and {len(i.warnings) - 20} more warnings")
        if self.config_commit:
            lines.append(f"  config: saved on {CONFIG_SET}")
        for r in self.retention:
            lines.append(f"  retention {r.kind} {r.name}: " + (
                f"not pruned: {r.error}" if r.error else
                f"kept {plural(r.kept, 'save')}, removed {r.removed}"))
        if self.gc is not None:
            lines.append(f"  gc: {self.gc.get('bytes_reclaimed', 0) / 1e6:,.1f} MB reclaimed "
                         f"({self.gc.get('bytes_before', 0) / 1e6:,.1f} MB -> "
                         f"{self.gc.get('bytes_after', 0) / 1e6:,.1f} MB)")
        lines.extend(f"  error: {e}" for e in self.errors)
        lines.extend(f"  warning: {w}" for w in self.warnings)
        lines.extend(f"  note: {n}" for n in self.notes)
        return "\n".join(lines)


def default_lock_path(cfg: Config) -> str:
    if cfg.lock_file:
        return cfg.lock_file
    key = hashlib.sha1(os.path.abspath(cfg.source or "ketch").encode()).hexdigest()[:12]
    for d in ("/run/lock", os.environ.get("XDG_RUNTIME_DIR") or "", "/tmp"):
        if d and os.access(d, os.W_OK):
            return os.path.join(d, f"ketch-{key}.lock")
    return os.path.join("/tmp", f"ketch-{key}.lock")


def default_log_path(cfg: Config) -> str:
    if cfg.log_file:
        return cfg.log_file
    if os.geteuid() == 0:
        return "/var/log/ketch/ketch.log"
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"),
                                                             ".local", "state")
    return os.path.join(state, "ketch", "ketch.log")


@contextmanager
def run_lock(path: str) -> Iterator[None]:
    """An flock held for the run; a second run fails at once instead of piling up."""
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno not in (errno.EWOULDBLOCK, errno.EACCES):
                raise
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip()
            raise RunLocked(f"another ketch run is in progress (lock {path}"
                            + (f" held by pid {holder})" if holder else ")")) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"{os.getpid()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def _select(cfg: Config, only: list[str] | None) -> tuple[list[BackupSet], list[DumpSpec]]:
    if not only:
        return list(cfg.sets), list(cfg.dumps)
    known = {s.name for s in cfg.sets} | {d.name for d in cfg.dumps}
    unknown = [n for n in only if n not in known]
    if unknown:
        raise UsageError(f"no set or dump named {', '.join(unknown)} in {cfg.source} "
                         f"(have: {', '.join(sorted(known)) or 'none'})")
    return ([s for s in cfg.sets if s.name in only], [d for d in cfg.dumps if d.name in only])


def _run_set(repo: Repository, cfg: Config, s: BackupSet, progress: Progress) -> ItemReport:
    item = ItemReport("set", s.name)
    rules = ExcludeRules.build(s.exclude, s.exclude_from, s.exclude_rx, s.exclude_if_present,
                               s.one_file_system)
    opts = SaveOptions(name=s.name, paths=list(s.paths), rules=rules, level=cfg.compress,
                       argv=["ketch", "run", "--config", cfg.source, s.name])
    with Index(save_index_path(repo)) as index:
        res = save(repo.writable(), opts, index=index, progress=progress)
    item.files, item.bytes_read, item.bytes_new = res.files, res.bytes_read, res.bytes_new
    item.commit = res.commit.hex()
    item.warnings = list(res.warnings)
    return item


def _save_config(repo: Repository, cfg: Config, paths: list[str], report: RunReport,
                 progress_for: ProgressFor) -> None:
    """The config's own save. Not an item of the run (those are the config's):
    a problem with it is a warning, since the backups themselves go on; a
    read-only repository's is left to the sets' own failures."""
    try:
        item = _run_set(repo, cfg, BackupSet(CONFIG_SET, paths),
                        progress_for(f"set {CONFIG_SET}"))
    except ReadOnlyRepository:
        return
    except (KetchError, OSError) as e:
        report.warnings.append(f"the config was not saved: {_why(e)}")
        return
    report.config_commit = item.commit
    report.warnings += [f"saving the config: {w}" for w in item.warnings]


def _run_dump(repo: Repository, cfg: Config, spec: DumpSpec, progress: Progress) -> ItemReport:
    from ketch.jobs.dumps import run_dump

    res = run_dump(repo.writable(), spec, level=cfg.compress, progress=progress)
    item = ItemReport("dump", res.name)
    item.files = len(res.files)
    item.bytes_read, item.bytes_new = res.bytes_read, res.bytes_new
    item.commit = res.commit.hex() if res.commit else None
    item.warnings = list(res.warnings)
    return item


def run_jobs(cfg: Config, *, only: list[str] | None = None,
             progress_for: ProgressFor | None = None, notifier: Notifier | None = None,
             log_path: str | None = None) -> RunReport:
    """Run the config's sets and dumps (or only those named), notify, log, report."""
    progress_for = progress_for or (lambda _label: NullProgress())
    sets, dumps = _select(cfg, only)
    report = RunReport(machine=socket.gethostname(), config=cfg.source,
                       repository=cfg.repository,
                       started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    t0 = time.monotonic()
    running: list[str] = []  # the item under way, for the log of an interrupted run
    try:
        with run_lock(default_lock_path(cfg)):
            if notifier is not None:
                report.warnings.extend(notifier.start())
            _run_items(cfg, report, sets, dumps, progress_for, running, t0)
            report.seconds = time.monotonic() - t0
            if notifier is not None:
                report.warnings.extend(notifier.finish(report.exit_code, report.text(),
                                                       report.as_dict()))
            _log(log_path, report)
    except RunLocked as e:
        # The log is where an admin looks for last night's run: a run that did
        # not happen must be there too.
        report.errors.append(str(e))
        report.seconds = time.monotonic() - t0
        _log(log_path, report)
        raise
    except KeyboardInterrupt:  # SIGINT, or SIGTERM turned into it
        _interrupted(report, running)
        report.seconds = time.monotonic() - t0
        _log(log_path, report)
        raise
    return report


def _log(log_path: str | None, report: RunReport) -> None:
    if log_path and (problem := write_log(log_path, report)):
        report.warnings.append(problem)


def _interrupted(report: RunReport, running: list[str]) -> None:
    during = f" during {running[-1]}" if running else ""
    message = f"interrupted{during}: the run did not finish"
    if message not in report.errors:  # said already, in the report stored in the repository
        report.errors.append(message)


def _run_items(cfg: Config, report: RunReport, sets: list[BackupSet], dumps: list[DumpSpec],
               progress_for: ProgressFor, running: list[str], t0: float) -> None:
    reopen = partial(open_location, cfg.repository, endpoint_url=cfg.s3_endpoint,
                     encrypt_key=cfg.encrypt_key)
    try:
        repo = reopen()
    except KetchError as e:
        report.errors.append(f"repository {cfg.repository}: {e}")
        return
    try:
        if cfg.par2:
            try:
                protect_new_packs(repo.writable(), report.warnings.append)
            except KetchError as e:
                report.warnings.append(f"par2: the new packs will have no parity: {e}")
        if paths := config_paths(cfg):
            # First: the smallest save, and the one a new machine needs first.
            running.append(f"set {CONFIG_SET}")
            _save_config(repo, cfg, paths, report, progress_for)
        for s in sets:
            running.append(f"set {s.name}")
            report.items.append(_one("set", s.name, progress_for,
                                     partial(_run_set, repo, cfg, s)))
        for d in dumps:
            running.append(f"dump {d.name}")
            report.items.append(_one("dump", d.name, progress_for,
                                     partial(_run_dump, repo, cfg, d)))
        running.clear()
        saved = {(i.kind, i.name) for i in report.items if i.ok}
        if report.config_commit:
            saved.add(("set", CONFIG_SET))
        policies = [("set", CONFIG_SET, cfg.retention)] + \
                   [("set", s.name, cfg.retention_of(s)) for s in sets] + \
                   [("dump", d.name, cfg.retention_of(d)) for d in dumps]
        running.append("retention")
        done = apply_retention(repo, [p for p in policies if p[2]], saved, progress_for,
                               par2=cfg.par2)
        report.retention, report.gc = done.branches, done.gc
        report.warnings.extend(done.warnings)
        report.notes.extend(done.notes)
        running.clear()
    except KeyboardInterrupt:
        # An interrupted run is one the dashboard must show: its report is
        # stored before the interruption goes on (a second signal cuts that short).
        _interrupted(report, running)
        report.seconds = time.monotonic() - t0
        store_report(repo, report, reopen)
        raise
    else:
        report.seconds = time.monotonic() - t0
        store_report(repo, report)
    finally:
        try:
            repo.close()
        except KetchError as e:
            report.warnings.append(f"closing the repository: {e}")


def store_report(repo: Repository, report: RunReport,
                 reopen: Callable[[], Repository] | None = None) -> str | None:
    """Commit the report onto refs/ketch/run; its id, or None with a note (the
    repository is read-only) or a warning (anything else) on the report.
    `reopen`: where `repo` failed, a second try through a new one (an
    interrupted run's: an interrupt cuts a server's session, whose stream may
    have stopped in the middle of an object)."""
    try:
        commit = reportlog.store(repo, "run", report.as_dict(), report.status)
    except ReadOnlyRepository as e:
        report.notes.append(f"run report not stored in the repository: {e}")
        return None
    except Exception as e:
        # Whatever went wrong, the saves are done: the notification and the log
        # line that follow must still go out, so this cannot end the run.
        problem = e
    else:
        try:
            # Housekeeping after a commit, as after a save's: with par2 on, the
            # report's pack gets its parity like every other pack.
            repo.writable().maintain()
        except Exception as e:
            report.warnings.append(f"after storing the run report: {_why(e)}")
        return commit
    if reopen is not None:
        try:
            with reopen() as again:
                return reportlog.store(again, "run", report.as_dict(), report.status)
        except Exception:
            pass  # the first failure is the one worth telling
    report.warnings.append(f"run report not stored: {_why(problem)}")
    return None


def _why(e: Exception) -> str:
    if isinstance(e, OSError) and not isinstance(e, KetchError):
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
    return str(e) or type(e).__name__


def _one(kind: str, name: str, progress_for: ProgressFor,
         job: Callable[[Progress], ItemReport]) -> ItemReport:
    t = time.monotonic()
    try:
        item = job(progress_for(f"{kind} {name}"))
    except KetchError as e:
        item = ItemReport(kind, name, ok=False, error=str(e))
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        item = ItemReport(kind, name, ok=False, error=f"{where}{e.strerror or e}")
    item.seconds = time.monotonic() - t
    return item


def write_log(path: str, report: RunReport) -> str | None:
    """Append the text report and one JSON line; a warning text if that failed."""
    try:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        with open(path, "a") as f:
            f.write(f"--- {report.started}\n{report.text()}\n")
            f.write("json: " + json.dumps(report.as_dict(), sort_keys=True) + "\n")
    except OSError as e:
        return f"cannot write the log {path}: {e.strerror}"
    return None
