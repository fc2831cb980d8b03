from __future__ import annotations

import time

import click

from ketch.cli.common import TermProgress, open_repo, repo_option, show_progress
from ketch.errors import EXIT_OK, EXIT_WARNINGS
from ketch.progress import NullProgress, Progress
from ketch.restore import RestoreResult, RestoreVerifyError, restore
from ketch.vfs import VFS


class _WarnOnly(NullProgress):
    """No meter (not a terminal, or -q), but warnings still reach the user."""

    def warn(self, message: str) -> None:
        super().warn(message)
        click.echo(message, err=True)


def _summary(r: RestoreResult, seconds: float) -> str:
    others = [
        f"{n} {what}" for n, what in (
            (r.symlinks, "symlinks"), (r.specials, "special files"), (r.hardlinks, "hardlinks"),
        ) if n
    ]
    extra = f" ({', '.join(others)})" if others else ""
    rate = r.bytes / seconds / 1e6 if seconds > 0 else 0.0
    return (f"restored {r.files} files, {r.dirs} dirs{extra}, "
            f"{r.bytes / 1e6:,.1f} MB in {seconds:.1f}s ({rate:,.1f} MB/s)")


@click.command("restore")
@repo_option
@click.option("-C", "--outdir", default=".", metavar="DIR", type=click.Path(file_okay=False),
              help="restore into DIR (created if missing; default: the current directory)")
@click.option("--numeric-ids", is_flag=True,
              help="restore owners by uid/gid, ignoring the saved user and group names")
@click.option("-q", "--quiet", is_flag=True, help="no progress meter and no summary")
@click.argument("paths", nargs=-1, required=True)
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, outdir: str, numeric_ids: bool,
            quiet: bool, paths: tuple[str, ...]) -> int:
    """Restore PATHs (e.g. NAME/latest/home/me) from saves into the output directory.

    NAME/latest/DIR recreates DIR inside the output directory, NAME/latest/DIR/
    restores DIR's contents there; a file restores under its own name. Every file
    is checked against its object ids while it is written.
    """
    repo = open_repo(ctx, repo_dir)
    progress: Progress = (
        TermProgress("Restoring") if show_progress() and not quiet else _WarnOnly()
    )
    t0 = time.monotonic()
    try:
        result = restore(
            VFS(repo),
            [p.encode("utf-8", "surrogateescape") for p in paths],
            outdir,
            numeric_ids=numeric_ids,
            progress=progress,
        )
    except RestoreVerifyError as e:
        if not quiet:
            click.echo(_summary(e.result, time.monotonic() - t0), err=True)
        raise
    if not quiet:
        click.echo(_summary(result, time.monotonic() - t0), err=True)
    return EXIT_WARNINGS if result.warnings else EXIT_OK
