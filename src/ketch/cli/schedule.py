"""`ketch schedule install|remove|show`: the nightly `ketch run` as a systemd
timer, or a cron entry where systemd is not running (ketch.jobs.schedule);
with `--server`, the backup server's nightly prune + gc of every repository."""

from __future__ import annotations

import os
from typing import Any

import click

from ketch.cli.scheduleout import print_schedule, show_status
from ketch.errors import KetchError, UsageError
from ketch.jobs.model import DEFAULT_CONFIG, Schedule


# ketch.jobs.config is imported in these, not at the top, so that `ketch schedule
# --help` does not pay for the TOML loader.
def _default_config() -> str:
    from ketch.jobs.config import default_config_path

    return default_config_path()


def _schedule_of(config: str) -> Schedule:
    from ketch.jobs.config import load_config

    return load_config(config).schedule


def _drill_of(config: str, server: bool) -> str | None:
    """The restore drill's schedule, installed beside the nightly run."""
    from ketch.jobs.config import load_config

    return None if server else load_config(config).drill.scheduled


def _job(config: str | None, server: bool, root: str | None) -> tuple[str, Schedule, Any]:
    """(config path, schedule, the server's job or None)."""
    if root is not None and not server:
        raise UsageError("ROOT is for --server (the backup server's repositories)")
    if server:
        from ketch.jobs.serverjob import server_job

        return server_job(config, root)
    config = os.path.abspath(config or _default_config())
    return config, _schedule_of(config), None


def _where(server: bool, cron_file: str | None) -> dict[str, Any]:
    from ketch.jobs.schedule import CRON_PATH, SERVER_CRON_PATH, SERVER_UNIT, UNIT

    return {"cron_path": cron_file or (SERVER_CRON_PATH if server else CRON_PATH),
            "unit": SERVER_UNIT if server else UNIT}


def _config_option(f: Any) -> Any:
    return click.option("-c", "--config", "config", metavar="FILE", default=None,
                        help="the machine's config (default: $KETCH_CONFIG, else "
                             f"{DEFAULT_CONFIG}); with --server, the server's "
                             "(default: $KETCH_SERVER_CONFIG, else /etc/ketch/server.toml)")(f)


def _server_option(f: Any) -> Any:
    return click.option("--server", is_flag=True,
                        help="the backup server's nightly prune + gc of the repositories "
                             "under ROOT, instead of this machine's backup")(f)


def _dirs(f: Any) -> Any:
    f = click.option("--systemd-dir", default="/etc/systemd/system", show_default=True,
                     metavar="DIR", help="where the timer's unit files go")(f)
    return click.option("--cron-file", default=None, metavar="FILE",
                        help="where the cron entry goes (default: /etc/cron.d/ketch; "
                             "with --server, /etc/cron.d/ketch-retention)")(f)


@click.group("schedule")
def command() -> None:
    """Run the backup every night: a systemd timer (cron where there is no systemd)."""


@command.command("install")
@_config_option
@_server_option
@click.argument("root", metavar="[ROOT]", required=False)
@click.option("--cron", "use_cron", is_flag=True,
              help="write a cron entry even where systemd is running")
@_dirs
def install_cmd(config: str | None, server: bool, root: str | None, use_cron: bool,
                systemd_dir: str, cron_file: str | None) -> None:
    """Install (or update) the nightly `ketch run` of the config's [schedule],
    and the restore drill (`ketch drill`) at its [drill] schedule.

    With --server: on the backup server, `ketch prune --all ROOT` then `ketch gc
    --all ROOT` nightly at the server config's [schedule] time (ROOT: the
    server config's root when not given)."""
    from ketch.jobs.schedule import install

    config, sched, job = _job(config, server, root)
    where = _where(server, cron_file)
    info = install(config, sched, systemd_dir=systemd_dir, **where, server=job,
                   use_systemd=False if use_cron else None, drill=_drill_of(config, server))
    if info.problem:
        # Written anyway, so that starting the daemon is all that is left to do;
        # but no "next run" that will never come.
        for f in info.files:
            click.echo(f"wrote {f}, but it will not run")
        raise KetchError(info.problem)
    print_schedule(info, server=server)


@command.command("remove")
@_server_option
@_dirs
def remove_cmd(server: bool, systemd_dir: str, cron_file: str | None) -> None:
    """Disable the timer and delete its files (or the cron entry)."""
    from ketch.jobs.schedule import remove

    info = remove(systemd_dir=systemd_dir, **_where(server, cron_file))
    for f in info.files:
        click.echo(f"removed {f}")
    for note in info.notes:
        click.echo(f"note: {note}")


@command.command("show")
@_config_option
@_server_option
@click.argument("root", metavar="[ROOT]", required=False)
@_dirs
@click.option("--json", "as_json", is_flag=True, help="print JSON")
def show_cmd(config: str | None, server: bool, root: str | None, systemd_dir: str,
             cron_file: str | None, as_json: bool) -> int:
    """What is installed, whether it will run here, and when it runs next.

    Exit status: 0 installed and matching the config, 1 not installed, 2 it will
    not run here or differs from the config."""
    from ketch.jobs.schedule import show

    config, sched, job = _job(config, server, root)
    info = show(config, sched, systemd_dir=systemd_dir, **_where(server, cron_file), server=job,
                drill=_drill_of(config, server))
    print_schedule(info, as_json=as_json, server=server)
    if info.problem and not as_json:
        click.echo(f"ketch: error: {info.problem}", err=True)
    return show_status(info)
