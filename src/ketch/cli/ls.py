from __future__ import annotations

import json
import os

import click

from ketch import listing
from ketch.cli.common import open_repo, out, repo_option
from ketch.errors import EXIT_FAILED, UsageError
from ketch.vfs import VFS, NotADirectory, PathNotFound, SymlinkLoop


@click.command("ls")
@repo_option
@click.option("-l", "long", is_flag=True,
              help="long listing: mode, user/group, size, mtime, name (as bup ls -l)")
@click.option("-a", "--all", "show_all", is_flag=True,
              help="show hidden entries (.tag, dot files) and . and ..")
@click.option("-A", "--almost-all", is_flag=True, help="show hidden entries except . and ..")
@click.option("-s", "--hash", "show_hash", is_flag=True,
              help="show each entry's id first (a save's tree, a branch's head commit)")
@click.option("--json", "as_json", is_flag=True, help="print a JSON list (see below)")
@click.argument("paths", nargs=-1)
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, long: bool, show_all: bool,
            almost_all: bool, show_hash: bool, as_json: bool, paths: tuple[str, ...]) -> int:
    """List paths of the repository the way `bup ls` does.

    PATH is `/` (the branches; the default), `NAME` (its saves and `latest`),
    or `NAME/DATE/...` / `NAME/latest/...` (inside a save). A directory lists
    its entries, anything else lists itself. Save names use the local TZ.
    Several PATHs are listed one after another under `PATH:` headings; one
    that can't be listed is reported and the exit status is 2.

    \b
    --json (one PATH only) prints a list of objects with these keys:
      name   entry name (non-UTF-8 bytes as U+DC80..U+DCFF, Python's surrogateescape)
      type   root, tags, branch, save, latest, dir, file, symlink, fifo,
             socket, chardev or blockdev
      mode   st_mode, type bits included (bup's defaults without metadata)
      size   bytes (0 for directories and special files)
      mtime  seconds since the epoch, or null without metadata
      user   owner name, or null without metadata; group likewise
      oid    hex id (a save's tree, a branch's head commit), or null
      commit a save's or branch's commit id, else null
      target a symlink's (or latest's) target, else null
    """
    if as_json and len(paths) > 1:
        raise UsageError("--json lists one PATH")
    vfs = VFS(open_repo(ctx, repo_dir))
    hidden = "all" if show_all else "almost" if almost_all else None
    stdout = out()
    status = 0
    for n, path in enumerate(paths or ("/",)):
        if len(paths) > 1:
            stdout.write(os.fsencode(path) + b":\n")
        try:
            rows = listing.entries(vfs, os.fsencode(path), hidden)
        except (PathNotFound, NotADirectory, SymlinkLoop) as e:
            # Like bup: report it, go on with the other paths, fail at the end.
            stdout.flush()
            click.echo(f"ketch: error: {e}", err=True)
            status = EXIT_FAILED
            continue
        if as_json:
            click.echo(json.dumps([listing.json_row(vfs, item, name) for name, item in rows],
                                  indent=2))
            continue
        for name, item in rows:
            stdout.write(listing.line(vfs, item, name, long=long, show_hash=show_hash) + b"\n")
        if n < len(paths) - 1:
            stdout.write(b"\n")
    return status
