"""`ketch drill`: restore drills of the machine's config (ketch.jobs.drill)."""

from __future__ import annotations

import json

import click

from ketch.cli.termprogress import TermProgress, show_progress
from ketch.errors import UsageError
from ketch.progress import NullProgress, Progress


@click.command("drill")
@click.option("-c", "--config", "config_path", metavar="FILE", default=None,
              help="the machine's config (default: $KETCH_CONFIG, else /etc/ketch/ketch.toml)")
@click.option("--sample", type=int, default=None, metavar="N",
              help="files restored per set (default: [drill] sample, else 100)")
@click.option("--json", "as_json", is_flag=True, help="print the drill report as JSON")
@click.option("-q", "--quiet", is_flag=True, help="no progress, report only on failure")
@click.option("--no-notify", is_flag=True, help="do not ping or mail this time")
def command(config_path: str | None, sample: int | None, as_json: bool, quiet: bool,
            no_notify: bool) -> int:
    """Prove the backups restorable: restore a random sample of every set's latest
    save (at least one large chunked file), compare it with the live files (or
    re-hash every object of a file that changed since), and load every database
    dump into a throwaway server from this machine's binaries.

    The report is printed and stored in the repository (refs/ketch/drill).
    Exit status: 0 all passed, 1 warnings (e.g. no database server binary to
    load a dump into), 2 a failure (which pings /fail and mails, as `ketch run`)."""
    from ketch.jobs.config import default_config_path, load_config
    from ketch.jobs.drill import run_drill

    if sample is not None and sample < 1:
        raise UsageError(f"--sample {sample}: restore at least 1 file per set")
    cfg = load_config(config_path or default_config_path())
    tty = show_progress() and not quiet and not as_json

    def progress_for(label: str) -> Progress:
        return TermProgress(label) if tty else NullProgress()

    report = run_drill(cfg, sample=sample, progress_for=progress_for, notify=not no_notify)
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif not quiet:
        click.echo(report.text())
    elif report.exit_code:
        # cron mails what reaches stderr
        click.echo(report.text(), err=True)
    return report.exit_code
