"""`ketch config init|check`: write this machine's config, and test what it names."""

from __future__ import annotations

import json
import os
import sys

import click

from ketch.errors import EXIT_FAILED, UsageError
from ketch.jobs import configinit as ci
from ketch.jobs.config import (
    ConfigError,
    check_config,
    default_config_path,
    is_valid_time,
    load_config,
    render_config,
)
from ketch.jobs.configcheck import overall
from ketch.jobs.model import DEFAULT_CONFIG, BackupSet, DumpSpec
from ketch.jobs.schedule import CRON_PATH, SYSTEMD_DIR
from ketch.text import plural

_config_option = click.option(
    "-c", "--config", "config_path", metavar="FILE", default=None,
    help="the config file (default: $KETCH_CONFIG, else /etc/ketch/ketch.toml)")
_SYMBOL = {"ok": "✓", "warn": "!", "fail": "✗"}


@click.group("config")
def command() -> None:
    """Write and check this machine's backup config."""


def _valid_time(text: str) -> str:
    if not is_valid_time(text):
        raise click.BadParameter(f"expected HH:MM, e.g. 22:00, got {text!r}")
    return text


def _stdin_is_terminal() -> bool:
    return sys.stdin.isatty()


def _ask_sets(default: list[str]) -> list[BackupSet]:
    """Ask until the answer parses and names paths that exist (or the user says
    to keep missing ones)."""
    while True:
        answer = click.prompt("Which directories should be backed up? (space-separated; "
                              "NAME=PATH[,PATH...] names a set)", default=" ".join(default))
        try:
            sets = ci.parse_paths_answer(answer)
        except UsageError as e:
            click.echo(f"ketch: {e}")
            continue
        missing = ci.missing_paths(sets)
        if not missing or _keep_missing(missing):
            return sets


def _keep_missing(missing: list[str]) -> bool:
    verb, it = ("does", "it") if len(missing) == 1 else ("do", "them")
    return click.confirm(f"{', '.join(missing)}: {verb} not exist; a run fails the set "
                         f"until it does. Keep {it} anyway?", default=False)


def _refuse_missing(sets: list[BackupSet], ask: bool) -> None:
    """A set path that does not exist is an error in `run` and `config check`: here too."""
    missing = ci.missing_paths(sets)
    if not missing or (ask and _keep_missing(missing)):
        return
    verb, it = ("does", "it") if len(missing) == 1 else ("do", "them")
    raise UsageError(f"{', '.join(missing)}: {verb} not exist (a run would fail its set): "
                     f"create {it} first, or pass --allow-missing")


def _ask_dumps(found: list[DumpSpec], ask: bool) -> list[DumpSpec]:
    chosen = []
    for d in found:
        which = ", ".join(d.databases) if d.databases else "all databases"
        if not ask or click.confirm(f"Back up {d.type} on {d.host or 'localhost'} ({which})?",
                                    default=True):
            chosen.append(d)
    return chosen


@command.command("init")
@_config_option
@click.option("--repository", metavar="PATH|ssh://USER@HOST/PATH", default=None,
              help=f"where backups go (default: {ci.DEFAULT_REPOSITORY})")
@click.option("--set", "set_specs", multiple=True, metavar="NAME=PATH[,PATH...]",
              help="a backup set (repeatable; default: /etc /home /root /var/www, those present)")
@click.option("--time", "time_", metavar="HH:MM", default=None,
              callback=lambda _c, _p, v: v if v is None else _valid_time(v),
              help="when the nightly run starts (default: 22:00)")
@click.option("--no-detect", is_flag=True, help="don't look for local databases to dump")
@click.option("--force", is_flag=True, help="replace an existing config")
@click.option("--allow-missing", is_flag=True,
              help="accept --set paths that do not exist (yet); a run fails such a set")
@click.option("-y", "--yes", is_flag=True, help="ask nothing: defaults for what no flag gives")
def init(config_path: str | None, repository: str | None, set_specs: tuple[str, ...],
         time_: str | None, no_detect: bool, force: bool, allow_missing: bool,
         yes: bool) -> None:
    """Write a commented config, by flags or (on a terminal) by questions.

    Without a terminal to ask on, --repository and --set must be given, or --yes
    to take the defaults."""
    path = config_path or default_config_path()
    if not force and os.path.exists(path):  # before the questions, not after them
        raise click.UsageError(f"{path} already exists (use --force to replace it)")
    ask = _stdin_is_terminal() and not yes
    if not ask and not yes:
        # Answers piped in would be ignored; defaults would create a repository
        # nobody asked for.
        missing = [flag for flag, given in (("--repository", repository), ("--set", set_specs))
                   if not given]
        if missing:
            raise UsageError(f"no terminal to ask on: give {' and '.join(missing)}, or --yes "
                             "to take the defaults")
    if repository is None and ask:
        repository = click.prompt("Where should backups go? A local directory, or "
                                  "ssh://USER@HOST/PATH", default=ci.DEFAULT_REPOSITORY)
    repository = ci.normalize_repository(repository or ci.DEFAULT_REPOSITORY)
    if set_specs:
        sets = [ci.parse_set_option(s) for s in set_specs]
        if not allow_missing:
            _refuse_missing(sets, ask)
    elif ask:
        sets = _ask_sets(ci.existing_paths())
    else:
        sets = ci.sets_for_paths(ci.existing_paths())
    dumps: list[DumpSpec] = []
    if not no_detect:
        found, why = ci.detect_dumps()
        if why:
            click.echo(f"ketch: {why}", err=True)
        if found and not ask and not yes:
            kinds = ", ".join(sorted({d.type for d in found}))
            raise UsageError(f"found local databases to dump ({kinds}) and no terminal to ask "
                             "on: pass --yes to back them up, or --no-detect")
        dumps = _ask_dumps(found, ask)
        if ask and not found and not why:
            click.echo("No local MySQL/MariaDB or PostgreSQL server found to dump.")
    if time_ is None and ask:
        time_ = click.prompt("When should the nightly backup start? (HH:MM)", default="22:00",
                             value_proc=_valid_time)
    cfg = ci.new_config(repository, sets, dumps, time_ or "22:00")
    ci.write_config(path, render_config(cfg), force=force)
    click.echo(f"Wrote {path}")
    created = ci.ensure_repository(cfg.repository)
    if created:
        click.echo(created)
    click.echo("Next steps:")
    for step in ci.next_steps(path, DEFAULT_CONFIG, cfg.repository):
        click.echo(f"  {step}")


@command.command("check")
@_config_option
@click.option("--json", "as_json", is_flag=True, help="print the results as JSON")
@click.option("--systemd-dir", default=SYSTEMD_DIR, show_default=True, metavar="DIR",
              help="where `ketch schedule install` put the timer's unit files")
@click.option("--cron-file", default=CRON_PATH, show_default=True, metavar="FILE",
              help="where `ketch schedule install` put the cron entry")
def check(config_path: str | None, as_json: bool, systemd_dir: str, cron_file: str) -> int:
    """Validate the config and test that what it names is reachable.

    Exit status: 0 all ok, 1 warnings only, 2 a failure or an invalid config."""
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
