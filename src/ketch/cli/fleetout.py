"""What `prune --all ROOT` and `gc --all ROOT` print: one line per machine and
a total (the nightly job appends it to its log), or the report as JSON."""

from __future__ import annotations

import json

import click

from ketch.lifecycle.fleet import FleetReport


def render_fleet(report: FleetReport, as_json: bool) -> int:
    if as_json:
        click.echo(json.dumps(report.as_dict(), indent=2))
    else:
        click.echo(report.text())
    return report.exit_code
