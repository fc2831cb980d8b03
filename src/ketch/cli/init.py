from __future__ import annotations

import click

from ketch.cli.common import repo_option, repo_path
from ketch.repo import init_repository


@click.command("init")
@repo_option
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None) -> None:
    """Create a repository (a bare git repository bup also reads)."""
    path = repo_path(ctx, repo_dir)
    created = init_repository(path)
    click.echo(f"{'Initialized' if created else 'Reinitialized existing'} ketch repository in {path}",
               err=True)
