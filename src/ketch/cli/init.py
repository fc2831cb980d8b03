from __future__ import annotations

import click

from ketch.cli.common import open_repo, remote_of, repo_option, repo_path
from ketch.errors import NotARepository, UsageError
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
            _check_default(ctx, remote)
            return
        open_repo(ctx, None, create=True)
        click.echo(f"Initialized ketch repository at {remote}", err=True)
        return
    path = repo_path(ctx, repo_dir)
    created = init_repository(path)
    click.echo(f"{'Initialized' if created else 'Reinitialized existing'} ketch repository in {path}",
               err=True)


def _check_default(ctx: click.Context, remote: str) -> None:
    """`init -r host:` names no path: the server's default repository, which for
    a setup-client key is the one it is confined to and already exists."""
    repo = open_repo(ctx, None)
    try:
        next(repo.iter_refs(), None)
    except NotARepository:
        raise UsageError(f"{remote}: the server has no default repository; name the one to "
                         "create, e.g. HOST:/srv/ketch/NAME") from None
    click.echo(f"Using existing ketch repository at {remote} (the server's default)", err=True)
