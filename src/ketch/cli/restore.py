from __future__ import annotations

import time
from collections.abc import Callable

import click

from ketch.cli.common import open_repo, repo_option
from ketch.cli.termprogress import TermProgress, show_progress
from ketch.errors import EXIT_OK, EXIT_WARNINGS
from ketch.progress import NullProgress, Progress
from ketch.restore import RestoreResult, RestoreVerifyError, restore
from ketch.text import plural
from ketch.vfs import VFS, show_path


class _WarnOnly(NullProgress):
    """No meter (not a terminal, or -q), but warnings still reach the user."""

    def warn(self, message: str) -> None:
        super().warn(message)
        click.echo(message, err=True)


def _summary(r: RestoreResult, seconds: float) -> str:
    others = [
        plural(n, what, grouped=True) for n, what in (
            (r.symlinks, "symlink"), (r.specials, "special file"), (r.hardlinks, "hardlink"),
        ) if n
    ]
    extra = f" ({', '.join(others)})" if others else ""
    if r.overwritten:
        extra += f", {r.overwritten:,} overwritten"
    if r.kept:
        extra += f", {r.kept:,} kept (--no-clobber)"
    rate = r.bytes / seconds / 1e6 if seconds > 0 else 0.0
    return (f"restored {plural(r.files, 'file', grouped=True)}, "
            f"{plural(r.dirs, 'dir', grouped=True)}{extra}, "
            f"{r.bytes / 1e6:,.1f} MB in {seconds:.1f}s ({rate:,.1f} MB/s)")



@click.command("restore")
@repo_option
@click.option("-C", "--outdir", default=".", metavar="DIR", type=click.Path(file_okay=False),
              help="restore into DIR (created if missing; default: the current directory)")
@click.option("--numeric-ids", is_flag=True,
              help="restore owners by uid/gid, ignoring the saved user and group names")
@click.option("--no-clobber", is_flag=True,
              help="keep files already in the output directory (default: overwrite them)")
@click.option("-v", "--verbose", is_flag=True,
              help="name each existing path overwritten (or kept, with --no-clobber)")
@click.option("-q", "--quiet", is_flag=True, help="no progress meter and no summary")
@click.argument("paths", nargs=-1, required=True)
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, outdir: str, numeric_ids: bool,
            no_clobber: bool, verbose: bool, quiet: bool, paths: tuple[str, ...]) -> int:
    """Restore PATHs (e.g. NAME/latest/home/me) from saves into the output directory.

    NAME/latest/DIR recreates DIR inside the output directory, NAME/latest/DIR/
    restores DIR's contents there; a file restores under its own name. Every file
    is checked against its object ids while it is written. What is already
    there is overwritten (the summary counts it; -v names it), except a
    non-empty directory, which is never removed; --no-clobber keeps it all.
    """
    repo = open_repo(ctx, repo_dir)
    progress: Progress = (
        TermProgress("Restoring") if show_progress() and not quiet else _WarnOnly()
    )
    line: Callable[[str], None] = (  # on a terminal: above the meter
        progress.note if isinstance(progress, TermProgress)
        else lambda message: click.echo(message, err=True))

    def say(what: str) -> Callable[[bytes], None] | None:
        def tell(path: bytes) -> None:
            line(f"{what}: {show_path(path)}")
        return tell if verbose else None

    t0 = time.monotonic()
    try:
        result = restore(
            VFS(repo),
            [p.encode("utf-8", "surrogateescape") for p in paths],
            outdir,
            numeric_ids=numeric_ids,
            progress=progress,
            no_clobber=no_clobber,
            on_overwrite=say("overwritten"),
            on_keep=say("kept"),
        )
    except RestoreVerifyError as e:
        if not quiet:
            click.echo(_summary(e.result, time.monotonic() - t0), err=True)
        raise
    if not quiet:
        click.echo(_summary(result, time.monotonic() - t0), err=True)
    return EXIT_WARNINGS if result.warnings else EXIT_OK
