"""The `NAME/DATE/path` view for the browser: a directory's rows as `ls -l`
gives them, a file shown as text when it is small text, a file's bytes, and a
directory as a tar stream.

Names are bytes: a file called `<script>` or one whose name is not UTF-8 is
shown escaped (the templates escape; `display` makes undecodable bytes
visible) and reached through a percent-encoding of its exact bytes, so it can
still be downloaded.
"""

from __future__ import annotations

import os
import stat
import tarfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from urllib.parse import quote

from ketch.listing import bup_mode_string, entries, json_row
from ketch.vfs import VFS, Item, show_path

TEXT_LIMIT = 1 << 20  # shown inline up to this size; past it, a download
TAR_BLOCK = 512


# A name as text: undecodable bytes and control characters as \xNN, so that a
# newline in a name cannot break a line of the page.
display = show_path


def href(path: bytes) -> str:
    """A path's bytes as a URL path (every byte outside [A-Za-z0-9._~/-] encoded)."""
    return quote(path, safe="/")


@dataclass(frozen=True)
class Row:
    name: str  # display form
    href: str  # the entry's path, URL-encoded, relative to the machine
    kind: str
    is_dir: bool
    mode: str
    size: int
    mtime: int | None
    user: str
    group: str
    target: str | None

    @property
    def when(self) -> str:
        return "" if self.mtime is None else time.strftime("%Y-%m-%d %H:%M",
                                                           time.localtime(self.mtime))


def rows(vfs: VFS, path: bytes) -> tuple[list[Row], list[dict[str, object]]]:
    """A directory's entries (dot-names included, `.`/`..` not), for the page and
    for the API."""
    out = []
    api = []
    base = path.rstrip(b"/")
    for name, item in entries(vfs, path, hidden="almost"):
        j = json_row(vfs, item, name)
        full = (base + b"/" + name) if base else name
        target = j["target"]
        out.append(Row(display(name), href(full), item.kind, item.is_dir,
                       bup_mode_string(item.mode), int(j["size"] or 0),  # type: ignore[call-overload]
                       j["mtime"],  # type: ignore[arg-type]
                       display(item.meta.user) if item.meta and item.meta.user else str(
                           item.meta.uid if item.meta else "?"),
                       display(item.meta.group) if item.meta and item.meta.group else str(
                           item.meta.gid if item.meta else "?"),
                       display(target.encode("utf-8", "surrogateescape"))
                       if isinstance(target, str) else None))
        j["path"] = full.decode("utf-8", "surrogateescape")
        api.append(j)
    return out, api


def text_of(vfs: VFS, item: Item, limit: int = TEXT_LIMIT) -> str | None:
    """The file's content as text when it is at most `limit` bytes of UTF-8
    without NULs; None otherwise (the page then offers a download)."""
    if vfs.size(item) > limit:
        return None
    data = b"".join(d for _, d in vfs.iter_content(item))
    if b"\0" in data:
        return None
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return None


def content(vfs: VFS, item: Item) -> Iterator[bytes]:
    for _, data in vfs.iter_content(item):
        yield data


def attachment(name: bytes) -> str:
    """A Content-Disposition header that keeps the name exact (RFC 6266's
    filename*) and gives old clients a plain ASCII stand-in."""
    plain = "".join(c if 32 <= ord(c) < 127 and c not in '"\\;%' else "_"
                    for c in name.decode("latin-1")) or "download"
    return f"attachment; filename=\"{plain}\"; filename*=UTF-8''{quote(name, safe='')}"


def _tarinfo(vfs: VFS, path: bytes, item: Item) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(path.decode("utf-8", "surrogateescape"))
    meta = item.meta
    mode = meta.mode if meta is not None and meta.mode else item.mode
    ti.mode = stat.S_IMODE(mode)
    if meta is not None:
        ti.uid, ti.gid = meta.uid or 0, meta.gid or 0
        ti.uname = meta.user.decode("utf-8", "surrogateescape")
        ti.gname = meta.group.decode("utf-8", "surrogateescape")
        ti.mtime = meta.mtime // 10**9
    if item.is_dir:
        ti.type = tarfile.DIRTYPE
    elif item.is_symlink:
        ti.type = tarfile.SYMTYPE
        ti.linkname = vfs.readlink(item).decode("utf-8", "surrogateescape")
    elif stat.S_ISFIFO(mode):
        ti.type = tarfile.FIFOTYPE
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        ti.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
        rdev = meta.rdev if meta is not None else 0
        ti.devmajor, ti.devminor = os.major(rdev), os.minor(rdev)
    elif item.kind == "socket":
        raise _Skip
    else:
        ti.type = tarfile.REGTYPE
        ti.size = vfs.size(item)
    return ti


class _Skip(Exception):
    """A socket: tar has no type for it (GNU tar skips them too)."""


def tar_stream(vfs: VFS, item: Item, top: bytes) -> Iterator[bytes]:
    """The directory as a POSIX (pax) tar, produced as it is read: headers from
    the tree, each file's blobs as they come, nothing held whole. Entries are
    named under `top` (the directory's own name)."""
    for rel, child in vfs.walk(item):
        child = vfs.fill_meta(child)
        path = top + (b"/" + rel if rel else b"")
        try:
            ti = _tarinfo(vfs, path, child)
        except _Skip:
            continue
        yield ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        if ti.type == tarfile.REGTYPE:
            sent = 0
            for data in content(vfs, child):
                sent += len(data)
                yield data
            if sent != ti.size:  # the tree and its size disagree: stop rather than lie
                raise OSError(f"{display(path)}: {sent} bytes read, {ti.size} expected")
            if sent % TAR_BLOCK:
                yield b"\0" * (TAR_BLOCK - sent % TAR_BLOCK)
    yield b"\0" * (2 * TAR_BLOCK)
