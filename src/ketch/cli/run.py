from __future__ import annotations

import json
import socket

import click

from ketch.cli.termprogress import TermProgress, show_progress
from ketch.progress import NullProgress, Progress


@click.command("run")
@click.option("-c", "--config", "config_path", metavar="FILE", default=None,
              help="the machine's config (default: $KETCH_CONFIG, else /etc/ketch/ketch.toml)")
@click.option("--json", "as_json", is_flag=True, help="print the run report as JSON")
@click.option("-q", "--quiet", is_flag=True, help="no progress, report only on failure")
@click.option("--no-notify", is_flag=True, help="do not ping or mail this time")
@click.argument("names", nargs=-1)
def command(config_path: str | None, as_json: bool, quiet: bool, no_notify: bool,
            names: tuple[str, ...]) -> int:
    """Run every backup set and dump of the config (or only NAMES), once."""
    from ketch.jobs.config import default_config_path, load_config
    from ketch.jobs.notify import Notifier
    from ketch.jobs.runner import default_log_path, run_jobs

    cfg = load_config(config_path or default_config_path())
    tty = show_progress() and not quiet and not as_json

    def progress_for(label: str) -> Progress:
        return TermProgress(label) if tty else NullProgress()

    notifier = None
    if not no_notify and (cfg.notify.ping_url or cfg.notify.email):
        notifier = Notifier(cfg.notify, machine=socket.gethostname())
    report = run_jobs(cfg, only=list(names) or None, progress_for=progress_for,
                      notifier=notifier, log_path=default_log_path(cfg))
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    elif not quiet:
        click.echo(report.text())
    elif report.exit_code:
        # Quiet is for cron and systemd: what goes wrong must reach stderr, the
        # stream cron mails.
        click.echo(report.text(), err=True)
    return report.exit_code
