from __future__ import annotations

import json

import click

from ketch.cli.common import open_repo, repo_option
from ketch.listing import list_branches


@click.command("ls")
@repo_option
@click.option("-l", "long", is_flag=True, help="long listing: id and date of the latest save")
@click.option("--json", "as_json", is_flag=True, help="machine-readable output")
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, long: bool, as_json: bool) -> None:
    """List the branches (named backups) in the repository."""
    repo = open_repo(ctx, repo_dir)
    rows = list_branches(repo)
    if as_json:
        click.echo(json.dumps([r.as_dict() for r in rows], indent=2))
        return
    for r in rows:
        if long:
            click.echo(f"{r.commit.hex()[:12]}  {r.date_text}  {r.name}")
        else:
            click.echo(r.name)
