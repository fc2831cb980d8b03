from __future__ import annotations

import os

import click

from ketch.cli.common import open_repo, out, repo_option
from ketch.errors import UsageError
from ketch.git import objects as gobj
from ketch.repo import Repository
from ketch.stream import iter_blob_data, resolve_path
from ketch.vfs import VFS, IsADirectory, show_path


def _is_vfs_path(spec: bytes) -> bool:
    # `refs/heads/x` is a ref, not branch "refs"; REF:PATH has a colon.
    return b"/" in spec and b":" not in spec and not spec.lstrip(b"/").startswith(b"refs/")


@click.command("cat-file")
@repo_option
@click.option("-t", "show_type", is_flag=True, help="print the object's type (VFS: its kind)")
@click.option("-s", "show_size", is_flag=True, help="print the object's size")
@click.option("--meta", "show_meta", is_flag=True,
              help="VFS paths: print the entry's metadata record (as bup cat-file --meta)")
@click.option("--bupm", "show_bupm", is_flag=True,
              help="VFS paths: print the directory's raw .bupm")
@click.argument("spec")
@click.pass_context
def command(ctx: click.Context, repo_dir: str | None, show_type: bool, show_size: bool,
            show_meta: bool, show_bupm: bool, spec: str) -> None:
    """Print an object: ID, REF, REF:PATH, or a VFS path NAME/DATE/PATH.

    \b
    ID, REF and REF:PATH name git objects (chunked files are joined).
    NAME/latest/PATH or /NAME/DATE/PATH (a '/' and no ':') is resolved the way
    `ketch ls` shows it, without following a final symlink, and prints the
    file's content.
    """
    raw = os.fsencode(spec)
    repo = open_repo(ctx, repo_dir)
    if _is_vfs_path(raw):
        _cat_vfs(VFS(repo), raw, show_type, show_size, show_meta, show_bupm)
    elif show_meta or show_bupm:
        raise UsageError("--meta and --bupm need a VFS path (NAME/DATE/PATH)")
    else:
        _cat_object(repo, raw, show_type, show_size)


def _cat_vfs(vfs: VFS, path: bytes, show_type: bool, show_size: bool, show_meta: bool,
             show_bupm: bool) -> None:
    if show_meta and show_bupm:
        raise UsageError("--meta and --bupm are incompatible")
    item = vfs.resolve(path, follow=False)
    stdout = out()
    if show_type:
        stdout.write(item.kind.encode() + b"\n")
    elif show_size:
        stdout.write(b"%d\n" % vfs.size(item))
    elif show_meta:
        stdout.write(vfs.meta_record(item))
    elif show_bupm:
        stdout.write(vfs.bupm(item))
    elif item.is_dir:
        raise IsADirectory(f"{show_path(path)}: is a directory")
    elif item.kind != "file":
        raise UsageError(f"{show_path(path)}: is not a regular file ({item.kind})")
    else:
        for _, data in vfs.iter_content(item):
            stdout.write(data)


def _cat_object(repo: Repository, spec: bytes, show_type: bool, show_size: bool) -> None:
    mode, oid = resolve_path(repo, spec)
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
