from __future__ import annotations

import os
import sys

import click

from ketch.cli.common import open_repo, repo_option, where
from ketch.errors import NotARepository, UsageError
from ketch.localrepo import init_repository
from ketch.remote.location import is_remote


@click.command("init")
@repo_option
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None) -> None:
    """Create a repository (a bare git repository bup also reads).

    Which one: -d DIR, -r REMOTE, $KETCH_DIR, the repository of the machine's
    config ($KETCH_CONFIG, else /etc/ketch/ketch.toml), else ~/.ketch.
    """
    w = where(ctx, repo_dir)
    if w.kind == "remote" or (w.kind == "auto" and is_remote(w.location)):
        from ketch.remote.location import is_store_url
        from ketch.remote.spec import parse_remote

        if not is_store_url(w.location) and not parse_remote(w.location).path:
            _check_default(ctx, repo_dir, w.location)
            return
        repo = open_repo(ctx, repo_dir, create=True)
        said = "Reinitialized existing" if repo.created is False else "Initialized"
        click.echo(f"{said} ketch repository at {w.location}", err=True)
        return
    path = os.path.expanduser(w.location)
    if w.source == w.config_path and sys.stderr.isatty():
        click.echo(f"ketch: using repository {path} from {w.source}", err=True)
    created = init_repository(path)
    click.echo(f"{'Initialized' if created else 'Reinitialized existing'} ketch repository in {path}",
               err=True)


def _check_default(ctx: click.Context, repo_dir: str | None, remote: str) -> None:
    """`init -r host:` names no path: the server's default repository, which for
    a setup-client key is the one it is confined to and already exists."""
    repo = open_repo(ctx, repo_dir)
    try:
        next(repo.iter_refs(), None)
    except NotARepository:
        raise UsageError(f"{remote}: the server has no default repository; name the one to "
                         "create, e.g. HOST:/srv/ketch/NAME") from None
    click.echo(f"Using existing ketch repository at {remote} (the server's default)", err=True)
