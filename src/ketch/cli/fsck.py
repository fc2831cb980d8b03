from __future__ import annotations

import json
import os

import click

from ketch.cli.common import open_repo, repo_option, where
from ketch.cli.fleetout import render_fleet
from ketch.cli.fsckout import text
from ketch.cli.termprogress import PhaseMeter, show_progress
from ketch.errors import UsageError
from ketch.integrity.fleetcheck import fsck_all
from ketch.integrity.fsck import FsckRun
from ketch.integrity.fsckrecord import store_fsck_report
from ketch.interrupt import reported_as


@click.command("fsck")
@repo_option
@click.option("--all", "root", metavar="ROOT", default=None,
              help="every repository under ROOT (on the backup server)")
@click.option("--quick", is_flag=True,
              help="only the idx files, pack sizes and trailers, caches and refs (seconds)")
@click.option("--read-data", "read_data", type=click.FloatRange(0, 100), is_flag=False,
              flag_value=100.0, default=0.0, metavar="[=PERCENT]",
              help="also inflate and hash every object of PERCENT of the packs, chosen "
                   "at random [default: 100 when given]")
@click.option("-g", "generate", is_flag=True,
              help="write par2 recovery data for every intact pack that lacks it")
@click.option("--repair", is_flag=True,
              help="repair damaged packs from their par2 data and check them again; "
                   "rebuild damaged midx and bloom files")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON on stdout")
@click.option("-q", "--quiet", is_flag=True, help="no progress; only problems are printed")
@click.pass_context
@reported_as("interrupted (fsck changed nothing)")
def command(ctx: click.Context, /, repo_dir: str | None, root: str | None, quick: bool,
            read_data: float, generate: bool, repair: bool, as_json: bool,
            quiet: bool) -> int:
    """Check a repository: packs, idx, midx and bloom files, refs, and every
    object every save needs.

    Exit 0 when all is well, 1 for warnings only (a stale cache), 2 when
    something is damaged or missing. Each damaged object is named once, by
    the first save and path that need it. Over ssh the server does the
    reading; in a bucket (a mirror or a repository of its own) it is `mirror verify`'s check.

    The result is kept in the repository (refs/ketch/fsck) where it may be
    written, for the backup server's dashboard.
    """
    meter = PhaseMeter() if show_progress() and not quiet else None
    job = FsckRun(quick=quick, read_data=read_data, generate=generate, repair=repair,
                  progress=meter)
    if root is not None:
        if repo_dir is not None or ctx.meta.get("ketch.remote"):
            raise UsageError("give -d/-r or --all ROOT, not both")
        return render_fleet(fsck_all(root, job), as_json)
    repo = open_repo(ctx, repo_dir)
    report = repo.check_integrity(job)
    stored = store_fsck_report(repo, report, job.options)
    w = where(ctx, repo_dir)
    if (stored or job.writes) and w.kind != "remote" and os.path.isdir(w.location):
        from ketch.lifecycle.fleet import give_back

        # Run as root on the backup server, in a machine's repository: what this
        # wrote must stay writable by that machine's server, which runs as its owner.
        give_back(w.location)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not quiet or report["problems"] or report.get("repairs"):
        click.echo(text(report))
    return int(report["exit_code"])
