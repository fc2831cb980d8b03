from __future__ import annotations

import sys
from typing import BinaryIO

import click

from ketch.cli.common import open_repo, out, repo_option
from ketch.cli.termprogress import TermProgress, show_progress
from ketch.errors import UsageError
from ketch.progress import NullProgress, Progress
from ketch.split import DEFAULT_FANOUT
from ketch.stream import split_to_repo
from ketch.timeparse import parse_date

LEVELS = [click.option(f"-{n}", "level_flag", flag_value=n, hidden=True) for n in range(10)]


@click.command("split")
@repo_option
@click.option("-n", "--name", default=None, help="save the result as branch NAME")
@click.option("-t", "--tree", is_flag=True, help="print the tree id")
@click.option("-c", "--commit", is_flag=True, help="print the commit id")
@click.option("-b", "--blobs", is_flag=True, help="print one blob id per chunk")
@click.option("--noop", is_flag=True, help="split, but store nothing")
@click.option("--fanout", type=click.IntRange(0), default=DEFAULT_FANOUT, show_default=True)
@click.option("--keep-boundaries", is_flag=True, help="no chunk spans two input files")
@click.option("--date", default=None, help="commit date (seconds since the epoch, or ISO 8601)")
@click.option("--compress", "level", type=click.IntRange(0, 9), default=None,
              help="zlib level 0-9 (also -0 .. -9) [1]")
@click.option("--max-pack-size", type=click.IntRange(1), default=None)
@click.option("--max-pack-objects", type=click.IntRange(1), default=None)
@click.option("-q", "--quiet", is_flag=True, help="no progress")
@click.argument("files", nargs=-1, type=click.Path(dir_okay=False, allow_dash=True))
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, name: str | None, tree: bool,
            commit: bool, blobs: bool, noop: bool, fanout: int, keep_boundaries: bool,
            date: str | None, level: int | None, max_pack_size: int | None,
            max_pack_objects: int | None, quiet: bool, files: tuple[str, ...],
            level_flag: int | None = None) -> None:
    """Split FILES (or stdin) into chunks, as bup does, and store them."""
    if not (tree or commit or blobs or name or noop):
        raise UsageError("use one or more of -b, -t, -c, -n, --noop")
    if noop and (commit or name):
        raise UsageError("--noop cannot be combined with -c or -n")
    zlevel = level if level is not None else (level_flag if level_flag is not None else 1)
    inputs: list[BinaryIO] = []
    for f in files or ("-",):
        inputs.append(sys.stdin.buffer if f == "-" else open(f, "rb"))  # noqa: SIM115
    progress: Progress = (TermProgress("Splitting")
                          if show_progress() and not quiet else NullProgress())
    stdout = out()
    res = split_to_repo(
        None if noop else open_repo(ctx, repo_dir).writable(), inputs, name=name, tree=tree,
        commit=commit, blobs=blobs, fanout=fanout, keep_boundaries=keep_boundaries,
        level=zlevel, date=parse_date(date) if date else None,
        argv=["ketch", *sys.argv[1:]],
        on_blob=lambda oid: stdout.write(oid.hex().encode() + b"\n"),
        progress=progress, max_pack_size=max_pack_size, max_pack_objects=max_pack_objects,
    )
    if tree and res.tree is not None:
        stdout.write(res.tree.hex().encode() + b"\n")
    if commit and res.commit is not None:
        stdout.write(res.commit.hex().encode() + b"\n")


for _opt in LEVELS:
    command = _opt(command)
