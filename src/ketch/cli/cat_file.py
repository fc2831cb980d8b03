from __future__ import annotations

import click

from ketch.cli.common import open_repo, out, repo_option
from ketch.git import objects as gobj
from ketch.stream import iter_blob_data, resolve_path


@click.command("cat-file")
@repo_option
@click.option("-t", "show_type", is_flag=True, help="print the object's type")
@click.option("-s", "show_size", is_flag=True, help="print the object's size")
@click.argument("spec")
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, show_type: bool, show_size: bool,
            spec: str) -> None:
    """Print an object: ID, REF, or REF:PATH (chunked files are joined)."""
    repo = open_repo(ctx, repo_dir)
    mode, oid = resolve_path(repo, spec.encode("utf-8", "surrogateescape"))
    t, data = repo.read(oid)
    stdout = out()
    if show_type:
        stdout.write(gobj.TYPE_NAMES[t] + b"\n")
    elif show_size:
        stdout.write(b"%d\n" % len(data))
    elif t == gobj.TREE and mode != gobj.MODE_FILE:
        for e in gobj.decode_tree(data):
            kind = b"tree" if e.mode == gobj.MODE_TREE else b"blob"
            stdout.write(b"%06o %s %s\t%s\n" % (e.mode, kind, e.oid.hex().encode(), e.name))
    elif t == gobj.TREE:
        for block in iter_blob_data(repo, oid):
            stdout.write(block)
    else:
        stdout.write(data)
