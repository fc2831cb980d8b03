"""`ketch config init|check`: write this machine's config (cli/config_init.py), and
test what it names."""

from __future__ import annotations

import json
import sys

import click

from ketch.cli.config_init import config_option, init
from ketch.errors import EXIT_FAILED
from ketch.jobs.config import (
    ConfigError,
    check_config,
    default_config_path,
    load_config,
)
from ketch.jobs.configcheck import CheckResult, overall
from ketch.jobs.schedule import CRON_PATH, SYSTEMD_DIR
from ketch.text import plural

_SYMBOL = {"ok": "✓", "warn": "!", "fail": "✗"}


@click.group("config")
def command() -> None:
    """Write and check this machine's backup config."""


command.add_command(init)


@command.command("check")
@config_option
@click.option("--server", is_flag=True,
              help="check the backup server's config (-c default: $KETCH_SERVER_CONFIG, else "
                   "/etc/ketch/server.toml): its root, its mirror's key and the key's copy")
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option("--systemd-dir", default=SYSTEMD_DIR, show_default=True, metavar="DIR",
              help="where `ketch schedule install` put the timer's unit files")
@click.option("--cron-file", default=CRON_PATH, show_default=True, metavar="FILE",
              help="where `ketch schedule install` put the cron entry")
def check(config_path: str | None, server: bool, as_json: bool, systemd_dir: str,
          cron_file: str) -> int:
    """Validate the config and test that what it names is reachable.

    Exit status: 0 all ok, 1 warnings only, 2 a failure or an invalid config."""
    if server:
        return _check_server(config_path, as_json)
    path = config_path or default_config_path()
    try:
        cfg = load_config(path)
    except ConfigError as e:
        for issue in e.issues:
            click.echo(f"ketch: error: {issue}", err=True)
        if as_json:
            click.echo(json.dumps({"config": path, "errors": [i.as_dict() for i in e.issues],
                                   "checks": [], "status": "fail"}, indent=2))
        return EXIT_FAILED
    if as_json or not sys.stderr.isatty():
        results = check_config(cfg, cron_path=cron_file, systemd_dir=systemd_dir)
    else:
        from ketch.cli.meter import StatusLine  # rich: on a terminal only

        line = StatusLine()
        try:
            results = check_config(cfg, progress=lambda what: line.show(f"checking {what}…"),
                                   cron_path=cron_file, systemd_dir=systemd_dir)
        finally:
            line.close()
    return _render(path, results, as_json)


def _check_server(config_path: str | None, as_json: bool) -> int:
    from ketch.jobs.configcheck import check_server_config
    from ketch.lifecycle.serverconfig import default_server_config_path, load_server_config

    path = config_path or default_server_config_path()
    return _render(path, check_server_config(load_server_config(path)), as_json)


def _render(path: str, results: list[CheckResult], as_json: bool) -> int:
    status, code = overall(results)
    if as_json:
        click.echo(json.dumps({"config": path, "errors": [], "status": status,
                               "checks": [r.as_dict() for r in results]}, indent=2))
        return code
    for r in results:
        click.echo(f"{_SYMBOL[r.status]} {r.what}: {r.detail}" if r.detail else
                   f"{_SYMBOL[r.status]} {r.what}")
    counts = {s: sum(r.status == s for r in results) for s in ("ok", "warn", "fail")}
    click.echo(f"{path}: {counts['ok']} ok, {plural(counts['warn'], 'warning')}, "
               f"{counts['fail']} failed")
    return code
