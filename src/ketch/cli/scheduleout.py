"""What `ketch schedule install|show` print, and show's exit status."""

from __future__ import annotations

import json
from typing import Any

import click

from ketch.errors import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS


def print_schedule(info: Any, *, as_json: bool = False, server: bool = False) -> None:
    if as_json:
        click.echo(json.dumps(info.as_dict(), indent=2))
        return
    if info.kind is None:
        flag = " --server" if server else ""
        click.echo(f"schedule: not installed (`ketch schedule install{flag}` installs it)")
    else:
        state = "complete" if info.units_present else "incomplete"
        click.echo(f"schedule: {info.kind} ({state}{', will not run here' if info.problem else ''})")
    for f in info.files:
        click.echo(f"  {f}")
    if info.next_run is not None:
        delay = f" + up to {info.randomized_delay} at random" if info.delay_seconds else ""
        click.echo(f"next run: {info.next_run:%a %Y-%m-%d %H:%M %Z}{delay}")
    if info.systemctl:
        click.echo(info.systemctl)
    for note in info.notes:
        click.echo(f"note: {note}")


def show_status(info: Any) -> int:
    """show's exit status: 2 when the installed entry will not fire or is not the
    config's, 1 when nothing is installed although the config enables it."""
    if info.problem or info.up_to_date is False or (info.kind and not info.units_present):
        return EXIT_FAILED
    return EXIT_WARNINGS if info.kind is None and info.enabled else EXIT_OK
