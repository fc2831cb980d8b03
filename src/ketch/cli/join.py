from __future__ import annotations

from typing import BinaryIO, cast

import click

from ketch.cli.common import open_repo, out, repo_option
from ketch.stream import join


@click.command("join")
@repo_option
@click.option("-o", "output", type=click.Path(dir_okay=False, allow_dash=True), default="-",
              help="write to this file instead of stdout")
@click.argument("refs", nargs=-1, required=True)
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, output: str, refs: tuple[str, ...]) -> None:
    """Write the bytes stored by `split` (a branch, commit, tree or blob id) to stdout."""
    repo = open_repo(ctx, repo_dir)
    target: BinaryIO
    with click.open_file(output, "wb") as dest:
        target = out() if output == "-" else cast(BinaryIO, dest)
        for ref in refs:
            join(repo, ref.encode("utf-8", "surrogateescape"), target)
        target.flush()
