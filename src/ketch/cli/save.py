from __future__ import annotations

import json
import os
import sys
import threading
from typing import Any

import click

from ketch.cli.common import open_repo, repo_option
from ketch.cli.excludeopts import exclude_options, rules_from
from ketch.cli.scan import scan_in_background
from ketch.cli.termprogress import TermProgress, show_progress
from ketch.errors import UsageError
from ketch.excludes import ExcludeRules
from ketch.index import Index
from ketch.integrity.protect import protect_new_packs
from ketch.interrupt import reported_as
from ketch.progress import NullProgress, Progress
from ketch.save import SaveOptions, save
from ketch.snapshot import save_index_path
from ketch.text import plural
from ketch.timeparse import parse_date


class _SaveMeter(TermProgress):
    """The meter, with a total from a stat walk running beside the save. The
    index's sizes (given to `start` by the save) are only the first estimate: they
    cover what the last save saw, which after an interrupted first save is a part."""

    def __init__(self, jobs: list[tuple[str, ExcludeRules]]) -> None:
        super().__init__("Saving")
        self._jobs = jobs
        self._stop: threading.Event | None = None

    def start(self, total_bytes: int | None, total_files: int | None = None) -> None:
        super().start(total_bytes, total_files)
        if self._stop is None:
            self._stop = scan_in_background(self._jobs, self._set_total)

    def _set_total(self, total: int) -> None:
        self.total = total

    def finish(self) -> None:
        if self._stop is not None:
            self._stop.set()
        super().finish()


def _graft(value: str) -> tuple[str, str]:
    old, sep, new = value.partition("=")
    if not sep or not old or not new:
        raise UsageError(f"--graft needs OLD=NEW, got {value}")
    return old, new


@click.command("save")
@repo_option
@click.option("-n", "--name", required=True, help="branch to add this save to")
@click.option("--date", default=None, help="save date (seconds since the epoch, or ISO 8601)")
@click.option("--strip", is_flag=True, help="store each PATH's contents at the archive root")
@click.option("--strip-path", default=None, metavar="P", help="remove prefix P from paths")
@click.option("--graft", multiple=True, metavar="OLD=NEW", help="store OLD as NEW")
@exclude_options
@click.option("--compress", "level", type=click.IntRange(0, 9), default=1, show_default=True)
@click.option("--no-index", is_flag=True, help="read every file (ignore the index)")
@click.option("--par2", is_flag=True, help="make recovery data (par2) for each new pack")
@click.option("-q", "--quiet", is_flag=True, help="no progress")
@click.option("--json", "as_json", is_flag=True, help="print the summary as JSON on stdout")
@click.argument("paths", nargs=-1, required=True)
@click.pass_context
@reported_as("interrupted (what was written so far is kept: the next save reuses it)")
def command(ctx: click.Context, /, repo_dir: str | None, name: str, date: str | None,
            strip: bool, strip_path: str | None, graft: tuple[str, ...], level: int,
            no_index: bool, par2: bool, quiet: bool, as_json: bool, paths: tuple[str, ...],
            **kw: Any) -> int:
    """Save PATHS (exactly these, recursively) as a new save on branch NAME."""
    opts = SaveOptions(name=name, paths=list(paths), strip=strip, strip_path=strip_path,
                       grafts=[_graft(g) for g in graft], rules=rules_from(kw),
                       date=parse_date(date) if date else None, level=level,
                       argv=["ketch", *sys.argv[1:]])
    repo = open_repo(ctx, repo_dir).writable()
    late: list[str] = []  # warnings after the save's meter has ended (parity)
    if par2:
        protect_new_packs(repo, late.append)
    meter = show_progress() and not quiet
    progress: Progress = NullProgress()
    if no_index:
        if meter:
            progress = _SaveMeter([(p, opts.rules) for p in paths])
            progress.start(None)  # the save calls it only with an index
        res = save(repo, opts, progress=progress)
    else:
        with Index(save_index_path(repo)) as index:
            if meter:
                progress = _SaveMeter([
                    (p, opts.rules.merged(index.rules_for(os.fsencode(os.path.abspath(p)))))
                    for p in paths])
            res = save(repo, opts, index=index, progress=progress)
    for w in late if isinstance(progress, TermProgress) else res.warnings + late:
        click.echo(f"ketch: warning: {w}", err=True)
    res.warnings += late
    if as_json:
        summary = res.as_dict()
        traffic = repo.traffic()
        if traffic is not None:
            summary["bytes_sent"], summary["bytes_received"] = traffic
        click.echo(json.dumps(summary, indent=2))
    if not quiet:
        rate = res.bytes_read / res.seconds / 1e6 if res.seconds else 0.0
        click.echo(f"Saved {name}: {plural(res.files, 'file', grouped=True)}, "
                   f"{plural(res.dirs, 'dir', grouped=True)}, "
                   f"{res.bytes_read / 1e6:,.1f} MB read, {res.bytes_new / 1e6:,.1f} MB new, "
                   f"{res.seconds:.1f} s ({rate:,.1f} MB/s)"
                   + (f", {plural(len(res.warnings), 'warning')}" if res.warnings else ""),
                   err=True)
    return res.exit_code
