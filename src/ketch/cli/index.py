from __future__ import annotations

import os
from typing import Any

import click

from ketch.cli.common import open_repo, repo_option
from ketch.cli.excludeopts import exclude_options, rules_from
from ketch.index import Index
from ketch.snapshot import save_index_path
from ketch.text import plural


@click.command("index")
@repo_option
@exclude_options
@click.option("-q", "--quiet", is_flag=True)
@click.argument("paths", nargs=-1, required=True, type=click.Path(exists=False))
@click.pass_context
def command(ctx: click.Context, /, repo_dir: str | None, quiet: bool, paths: tuple[str, ...],
            **kw: Any) -> int:
    """Refresh the index for PATHS and remember their exclude rules for `save`."""
    rules = rules_from(kw)
    repo = open_repo(ctx, repo_dir)
    with Index(save_index_path(repo)) as index:
        res = index.update([os.fsencode(p) for p in paths], rules)
    for w in res.warnings:
        click.echo(f"ketch: warning: {w}", err=True)
    if not quiet:
        click.echo(f"Indexed {plural(res.paths, 'path')} ({res.changed} new or changed, "
                   f"{res.removed} removed)", err=True)
    return 1 if res.warnings else 0
