"""`ketch drill`: prove the backups restorable, from the machine's config.

For every set, a random sample of the files of its latest save is restored
(ketch.jobs.drillfiles); for every dump, its latest save is loaded into what
reads it (ketch.jobs.drilldumps). The repository is opened as `ketch run`
opens it (local, ssh or an S3 mirror), everything restored goes into one
scratch directory that is removed however the drill ends (Ctrl-C and SIGTERM
included), and the report is stored in the repository on refs/ketch/drill
(ketch.jobs.drillreport). A failure pings the config's `/fail` URL and mails
as `ketch run` does; a drill that passed pings nothing (the ping check's
period is the nightly run's: a weekly drill's success must not stand in for
a missed night), and mails only with `on_success`.
"""

from __future__ import annotations

import dataclasses
import os
import random
import shutil
import socket
import tempfile
import time
from collections.abc import Callable
from functools import partial

from ketch.errors import EXIT_FAILED, KetchError
from ketch.jobs.drilldumps import drill_dump
from ketch.jobs.drillfiles import drill_set
from ketch.jobs.drillreport import DrillItem, DrillReport, store_report
from ketch.jobs.model import Config
from ketch.jobs.notify import Notifier
from ketch.progress import NullProgress, Progress
from ketch.remote.location import open_location
from ketch.vfs import VFS

ProgressFor = Callable[[str], Progress]


def _scratch_root() -> str | None:
    # Not a tmpfs /tmp when /var/tmp is there: a large chunked file may not fit in RAM.
    return os.environ.get("TMPDIR") or ("/var/tmp" if os.access("/var/tmp", os.W_OK) else None)


def run_drill(cfg: Config, *, sample: int | None = None,
              progress_for: ProgressFor | None = None, notify: bool = True,
              store: bool = True, rng: random.Random | None = None) -> DrillReport:
    progress_for = progress_for or (lambda _label: NullProgress())
    n = sample if sample is not None else cfg.drill.sample
    report = DrillReport(machine=socket.gethostname(), config=cfg.source,
                         repository=cfg.repository, sample=n,
                         started=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    t0 = time.monotonic()
    rng = rng or random.SystemRandom()
    scratch = tempfile.mkdtemp(prefix="ketch-drill.", dir=_scratch_root())
    try:
        repo = open_location(cfg.repository, endpoint_url=cfg.s3_endpoint,
                             encrypt_key=cfg.encrypt_key)
    except KetchError as e:
        shutil.rmtree(scratch, ignore_errors=True)
        report.errors.append(f"repository {cfg.repository}: {e}")
        _finish(cfg, report, t0, notify)
        return report
    try:
        vfs = VFS(repo)
        for s in cfg.sets:
            report.items.append(_one(DrillItem("set", s.name), progress_for,
                                     partial(drill_set, vfs, sample=n, scratch=scratch, rng=rng)))
        for d in cfg.dumps:
            report.items.append(_one(DrillItem("dump", d.name), progress_for,
                                     partial(drill_dump, vfs, d, scratch=scratch)))
        report.seconds = time.monotonic() - t0
        if store:
            try:
                report.stored = store_report(repo, report)
            except KetchError as e:
                report.warnings.append(f"the report could not be stored in the repository: {e}")
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
        try:
            repo.close()
        except KetchError as e:
            report.warnings.append(f"closing the repository: {e}")
    _finish(cfg, report, t0, notify)
    return report


def _finish(cfg: Config, report: DrillReport, t0: float, notify: bool) -> None:
    report.seconds = time.monotonic() - t0
    if not notify or not (cfg.notify.ping_url or cfg.notify.email):
        return
    settings = cfg.notify
    if report.exit_code != EXIT_FAILED:
        settings = dataclasses.replace(settings, ping_url=None)
    notifier = Notifier(settings, machine=report.machine)
    report.warnings.extend(notifier.finish(report.exit_code, report.text(), report.as_dict()))


def _one(item: DrillItem, progress_for: ProgressFor,
         job: Callable[[DrillItem, Progress], None]) -> DrillItem:
    t = time.monotonic()
    try:
        job(item, progress_for(f"drill {item.kind} {item.name}"))
    except KetchError as e:
        item.error = str(e)
    except OSError as e:
        where = f"{e.filename}: " if e.filename else ""
        item.error = f"{where}{e.strerror or e}"
    item.seconds = time.monotonic() - t
    return item
