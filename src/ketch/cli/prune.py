"""`ketch prune`: apply a retention policy to branches (ketch.lifecycle.prune)."""

from __future__ import annotations

import json
import os
import sys
import time

import click

from ketch.cli.common import open_repo, repo_option
from ketch.cli.fleetout import render_fleet
from ketch.errors import UsageError
from ketch.interrupt import reported_as
from ketch.lifecycle.fleet import prune_all
from ketch.lifecycle.policy import KeepPolicy, parse_duration
from ketch.lifecycle.prune import PruneReport, prune
from ketch.lifecycle.serverconfig import load_server_config
from ketch.repo import Repository
from ketch.text import plural
from ketch.vfs import SAVE_NAME_FORMAT

_COUNTS = ("last", "hourly", "daily", "weekly", "monthly", "yearly")
_PERIOD = {"hourly": "hour", "daily": "day", "weekly": "ISO week", "monthly": "month",
           "yearly": "year"}


def _keep_options(f: click.decorators.FC) -> click.decorators.FC:
    f = click.option("--keep-within", "within", metavar="DURATION", default=None,
                     help="keep every save not older than DURATION before the newest one "
                          "(12h, 30d, 2w, 6m, 1y, 1y6m)")(f)
    for name in reversed(_COUNTS):
        what = "N newest saves" if name == "last" else (
            f"newest save of each of the N latest {_PERIOD[name]}s that have one")
        f = click.option(f"--keep-{name}", name, metavar="N", type=click.IntRange(min=0),
                         default=0, help=f"keep the {what}")(f)
    return f


def _policy(counts: dict[str, int], within: str | None) -> KeepPolicy:
    policy = KeepPolicy(**counts, within=parse_duration(within) if within else 0.0)
    if policy.empty:
        # restic refuses too: without a policy only the newest save would stay.
        raise UsageError("no keep option given (e.g. --keep-daily 7): refusing to remove "
                         "every save but the newest")
    return policy


def _print_saves(report: PruneReport) -> None:
    for b in report.branches:
        click.echo(f"{b.name}: {plural(len(b.decisions), 'save')}, keep {b.kept}, "
                   f"remove {b.removed}")
        for d in b.decisions:
            what = f"keep    {', '.join(d.reasons)}" if d.keep else "remove"
            when = time.strftime(SAVE_NAME_FORMAT, time.localtime(d.time))
            click.echo(f"  {when}  {d.commit.hex()[:8]}  {what}")


def _print_summary(report: PruneReport) -> None:
    for b in report.branches:
        done = "left as it was" if not b.removed else f"removed {plural(b.removed, 'save')}"
        click.echo(f"{b.name}: kept {plural(b.kept, 'save')}, {done}", err=True)


def prune_repository(repo: Repository, names: list[str] | None, policy: KeepPolicy, *,
                     dry_run: bool, as_json: bool) -> int:
    """Prune one repository and tell the user: the exit code. (A server mode
    over many repositories calls this once for each.)"""
    report = prune(repo.writable(), names, policy, dry_run=dry_run)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif dry_run:
        _print_saves(report)
    elif sys.stderr.isatty():  # cron hears only warnings and errors
        _print_summary(report)
    for w in report.warnings:
        click.echo(f"ketch: warning: {w}", err=True)
    for e in report.errors:
        click.echo(f"ketch: error: {e}", err=True)
    return report.exit_code


@click.command("prune", short_help="Remove the saves a retention policy does not keep.")
@repo_option
@click.option("--all", "all_branches", is_flag=True, help="every branch of the repository")
@_keep_options
@click.option("--dry-run", is_flag=True,
              help="change nothing; list every save with keep (and why) or remove")
@click.option("--json", "as_json", is_flag=True, help="print the decisions and summary as JSON")
@click.argument("names", nargs=-1, metavar="[NAME... | --all [ROOT]]")
@click.pass_context
@reported_as("interrupted (the branches pruned so far stay so; the others are as they were)")
def command(ctx: click.Context, /, repo_dir: str | None, all_branches: bool, within: str | None,
            dry_run: bool, as_json: bool, names: tuple[str, ...], **counts: int) -> int:
    """Remove the saves of branches NAME... (or --all) that no keep option keeps.

    The newest save is always kept. --keep-daily N keeps the newest save of
    each of the N latest days (local time) that have a save, and so do the
    hourly, weekly (ISO weeks), monthly and yearly options for theirs;
    --keep-last N keeps the N newest saves; --keep-within D keeps the saves not
    older than D before the newest one. A save any option keeps is kept. The
    kept saves stay as they were (tree, date, message); `ketch gc` frees the
    space of the others.

    On the backup server, `--all ROOT` prunes every repository under ROOT, each
    with its machine's policy from /etc/ketch/server.toml ($KETCH_SERVER_CONFIG).
    """
    if all_branches and len(names) == 1 and repo_dir is None and (
            "/" in names[0] or os.path.isdir(names[0])):
        # The backup server's nightly job: each machine's policy from server.toml.
        if within is not None or any(counts.values()):
            raise UsageError("prune --all ROOT takes each machine's policy from the server "
                             "config; no keep options")
        return render_fleet(prune_all(names[0], load_server_config(), dry_run=dry_run),
                            as_json)
    policy = _policy(counts, within)
    if all_branches and names:
        raise UsageError("give branch NAMEs or --all, not both (on the backup server, "
                         "--all ROOT: every repository under ROOT)")
    if not all_branches and not names:
        raise UsageError("give the branches to prune (NAME...), or --all for every branch")
    return prune_repository(open_repo(ctx, repo_dir), None if all_branches else list(names),
                            policy, dry_run=dry_run, as_json=as_json)
