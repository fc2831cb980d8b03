from __future__ import annotations

import click

from ketch.cli.common import open_repo, remote_of, repo_option, repo_path
from ketch.errors import UsageError
from ketch.repo import init_repository


@click.command("init")
@repo_option
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None) -> None:
    """Create a repository (a bare git repository bup also reads)."""
    remote = remote_of(ctx, repo_dir)
    if remote is not None:
        from ketch.remote.spec import parse_remote

        if not parse_remote(remote).path:
            raise UsageError("ketch init -r needs a repository path, e.g. HOST:/srv/ketch/NAME")
        open_repo(ctx, None, create=True)
        click.echo(f"Initialized ketch repository at {remote}", err=True)
        return
    path = repo_path(ctx, repo_dir)
    created = init_repository(path)
    click.echo(f"{'Initialized' if created else 'Reinitialized existing'} ketch repository in {path}",
               err=True)
