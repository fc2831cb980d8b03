"""What `ls` shows for a VFS path: the entries (with bup's hidden-name and
`.`/`..` rules), and each entry as bup 0.33's `ls` line or as a JSON row."""

from __future__ import annotations

import os
import posixpath
import stat
import time
from typing import Any

from ketch.vfs import VFS, Item

ZERO_HEX = b"0" * 40

# bup's xstat.mode_str: no s/S/t/T for setuid, setgid and sticky bits.
_TYPE_CHARS = (
    (stat.S_ISREG, "-"), (stat.S_ISDIR, "d"), (stat.S_ISCHR, "c"), (stat.S_ISBLK, "b"),
    (stat.S_ISFIFO, "p"), (stat.S_ISLNK, "l"), (stat.S_ISSOCK, "s"),
)
_PERM_BITS = (
    (stat.S_IRUSR, "r"), (stat.S_IWUSR, "w"), (stat.S_IXUSR, "x"),
    (stat.S_IRGRP, "r"), (stat.S_IWGRP, "w"), (stat.S_IXGRP, "x"),
    (stat.S_IROTH, "r"), (stat.S_IWOTH, "w"), (stat.S_IXOTH, "x"),
)


def bup_mode_string(mode: int) -> str:
    kind = next((c for test, c in _TYPE_CHARS if test(mode)), "?")
    return kind + "".join(c if mode & bit else "-" for bit, c in _PERM_BITS)


def entries(vfs: VFS, path: bytes, hidden: str | None = None) -> list[tuple[bytes, Item]]:
    """(name, item) rows `ls PATH` prints. A directory gives its entries, sorted,
    dot-names only with hidden="almost" (-A) or "all" (-a, which adds `.` and
    `..`); anything else gives one row named by the normalized PATH."""
    chain = vfs.try_resolve_chain(path)
    leaf = chain[-1][1]
    if not leaf.is_dir:
        return [(posixpath.normpath(path), leaf)]
    rows = [(it.name, it) for it in vfs.contents(leaf)]
    if hidden == "all":
        parent = chain[-2][1] if len(chain) > 1 else chain[0][1]
        rows += [(b".", vfs.fill_meta(leaf)), (b"..", parent)]
    rows.sort(key=lambda r: r[0])
    if hidden is None:
        rows = [r for r in rows if not r[0].startswith(b".")]
    return rows


def item_hash(item: Item) -> bytes:
    """What `ls -s` shows: a save's tree, a branch's head, else zeros."""
    return item.oid.hex().encode() if item.oid is not None else ZERO_HEX


def _symlink_target(item: Item) -> bytes | None:
    if item.meta is not None:
        return item.meta.symlink_target
    return item.target if item.is_symlink else None


def _size_field(vfs: VFS, item: Item) -> bytes:
    if stat.S_ISCHR(item.mode) or stat.S_ISBLK(item.mode):
        rdev = item.meta.rdev if item.meta is not None else 0
        return b"%d,%d" % (os.major(rdev), os.minor(rdev)) if rdev else b"?"
    return b"%d" % vfs.size(item)


def _owner(name: bytes, ident: int | None) -> bytes:
    if name:
        return name
    return b"?" if ident is None else b"%d" % ident


def long_line(vfs: VFS, item: Item, name: bytes) -> bytes:
    """bup's `ls -l` line: mode, user/group, size (or major,minor), mtime, name.
    Items without metadata show `?/?` and the epoch, as bup's stand-ins do."""
    item = vfs.fill_meta(item)
    meta = item.meta
    user = _owner(meta.user, meta.uid) if meta is not None else b"?"
    group = _owner(meta.group, meta.gid) if meta is not None else b"?"
    mtime = meta.mtime // 10**9 if meta is not None else 0
    when = time.strftime("%Y-%m-%d %H:%M", time.localtime(mtime)).encode()
    target = _symlink_target(item)
    if target:
        name += b" -> " + target
    return b"%-10s %-11s %11s %16s %s" % (bup_mode_string(item.mode).encode(),
                                          user + b"/" + group, _size_field(vfs, item),
                                          when, name)


def line(vfs: VFS, item: Item, name: bytes, *, long: bool, show_hash: bool) -> bytes:
    text = long_line(vfs, item, name) if long else name
    return item_hash(item) + b" " + text if show_hash else text


def _text(b: bytes | None) -> str | None:
    return None if b is None else b.decode("utf-8", "surrogateescape")


def json_row(vfs: VFS, item: Item, name: bytes) -> dict[str, Any]:
    """One entry for `ls --json`; the keys are documented in `ketch ls --help`."""
    item = vfs.fill_meta(item)
    meta = item.meta
    return {
        "name": _text(name),
        "type": item.kind,
        "mode": item.mode,
        "size": vfs.size(item),
        "mtime": meta.mtime // 10**9 if meta is not None else None,
        "user": _text(meta.user) if meta is not None else None,
        "group": _text(meta.group) if meta is not None else None,
        "oid": item.oid.hex() if item.oid is not None else None,
        "commit": item.commit.hex() if item.commit is not None else None,
        "target": _text(_symlink_target(item)),
    }
