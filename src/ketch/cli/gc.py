from __future__ import annotations

import json
import os
from typing import Any

import click

from ketch.cli.common import open_repo, repo_option
from ketch.cli.fleetout import render_fleet
from ketch.cli.termprogress import PhaseMeter, show_progress
from ketch.errors import EXIT_WARNINGS, UsageError
from ketch.interrupt import reported_as
from ketch.lifecycle.fleet import gc_all
from ketch.lifecycle.gc import DEFAULT_WAIT, GcRun
from ketch.lifecycle.serverconfig import (
    DEFAULT_THRESHOLD,
    default_server_config_path,
    load_server_config,
)
from ketch.text import plural


def _size(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def summary(report: dict[str, Any]) -> str:
    """The report (GcReport.as_dict) in a few lines."""
    before, after = report["bytes_before"], report["bytes_after"]
    reclaimed = report["bytes_reclaimed"]
    would = "would reclaim" if report["dry_run"] else "reclaimed"
    share = 100.0 * reclaimed / before if before else 0.0
    lines = [
        f"{_size(before)} before, {_size(after)} after: {would} {_size(reclaimed)} "
        f"({share:.1f}%) in {report['seconds']:.1f} s",
        f"{plural(report['objects_live'], 'object', grouped=True)} live, "
        f"{plural(report['objects_dropped'], 'object', grouped=True)} dropped; "
        f"{plural(report['packs_rewritten'], 'pack', grouped=True)} rewritten, "
        f"{plural(report['packs_deleted'], 'pack', grouped=True)} deleted "
        f"of {report['packs_before']}",
    ]
    if report["objects_rescued"]:
        lines.append(f"{plural(report['objects_rescued'], 'object', grouped=True)} rescued "
                     "(saves reused them while gc ran)")
    if report["recovered_packs"]:
        lines.append("finished an interrupted gc: "
                     f"{plural(report['recovered_packs'], 'pack')} deleted")
    head = "gc (dry run): " if report["dry_run"] else "gc: "
    return "\n".join(head + line if i == 0 else "    " + line for i, line in enumerate(lines))


@click.command("gc")
@repo_option
@click.option("--all", "root", metavar="ROOT", default=None,
              help="every repository under ROOT (the backup server's nightly job)")
@click.option("--threshold", type=float, default=None, metavar="PCT",
              help="rewrite the packs where garbage is more than PCT percent of the bytes "
                   "[default: 10, or the server config's with --all]")
@click.option("--dry-run", is_flag=True, help="mark and report what would be reclaimed; "
              "change nothing")
@click.option("--wait", "wait", default=DEFAULT_WAIT, show_default=True, metavar="SECONDS",
              help="how long to wait for saves that started before gc")
@click.option("--par2", is_flag=True, help="make recovery data (par2) for the packs gc writes")
@click.option("-q", "--quiet", is_flag=True, help="no progress and no summary")
@click.option("--json", "as_json", is_flag=True, help="print the report as JSON on stdout")
@click.pass_context
@reported_as("interrupted (nothing is lost: the next gc finishes the job)")
def command(ctx: click.Context, /, repo_dir: str | None, root: str | None,
            threshold: float | None, dry_run: bool, wait: float, par2: bool, quiet: bool,
            as_json: bool) -> int:
    """Delete what no branch or tag reaches, and give the space back.

    Saves may run meanwhile: see "How gc stays safe" in the README. Quiet
    unless on a terminal (cron mails nothing), except for warnings.
    """
    meter = PhaseMeter() if show_progress() and not quiet else None
    if root is not None:
        if repo_dir is not None:
            raise UsageError("give -d/-r or --all ROOT, not both")
        if threshold is None:
            threshold = load_server_config().gc_threshold if os.path.exists(
                default_server_config_path()) else DEFAULT_THRESHOLD
        return render_fleet(gc_all(root, threshold=threshold, dry_run=dry_run,
                                   progress=meter, par2=par2), as_json)
    job = GcRun(threshold=DEFAULT_THRESHOLD if threshold is None else threshold,
                dry_run=dry_run, wait=wait, progress=meter, par2=par2)
    report = open_repo(ctx, repo_dir).writable().collect_garbage(job)
    for warning in report["warnings"]:
        click.echo(f"ketch: warning: {warning}", err=True)
    if as_json:
        click.echo(json.dumps(report, indent=2))
    elif not quiet and (meter is not None or dry_run):
        click.echo(summary(report), err=True)
    return EXIT_WARNINGS if report["warnings"] else 0
