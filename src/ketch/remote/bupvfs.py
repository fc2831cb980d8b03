"""The server side of bup 0.33's `resolve` command (bup-format.md 6.4).

A bup client (`bup ls -r`, `bup restore -r`) sends a path, and optionally the
resolution of a parent directory, and receives the path's resolution in bup's
own VFS vocabulary: a list of (name, item) pairs from the root, where an item
is one of bup's namedtuples (`Item`, `Chunky`, `FakeLink`, `Root`, `Tags`,
`RevList`, `Commit`) carrying either a metadata record stream or a bare mode.

The items and their wire form are ketch.remote.bupitem's.  The walk mirrors
`bup.vfs._resolve_path` step for step, on top of ketch's VFS, because the
client does its own follow-up reads (`cat-batch`) from the oids it gets here:
the kinds, oids, metadata and even the error texts have to be bup's. bup's VFS
cache is global to a server process, so a few results in bup depend on which
requests came earlier in the session; this module answers as bup does with a
cold cache.
"""

from __future__ import annotations

import dataclasses
import errno
import re
import stat
import time
from collections.abc import Callable, Sequence

from ketch.buptree import demangle
from ketch.git import objects as gobj
from ketch.metadata import Metadata
from ketch.remote.bupitem import (
    FIELDS,
    ROOT_ITEM,
    TAGS_ITEM,
    BupIOError,
    BupItem,
    Reader,
    Resolution,
    ResolveError,
    encode_ioerror,
    encode_resolution,
)
from ketch.vfs import (
    DEFAULT_DIR_MODE,
    DEFAULT_FILE_MODE,
    DEFAULT_SYMLINK_MODE,
    ROOT,
    TAGS,
    VFS,
)
from ketch.vfs import Item as VfsItem

WANT_META = 1
FOLLOW = 2
HAVE_PARENT = 4

# bup raises ELOOP at a symlink met after more than this many hops.
MAX_HOPS = 100
# bup's `item_types`, which a parent may hold: a FakeLink is not among them.
_PARENT_KINDS = frozenset(FIELDS) - {"FakeLink"}
# bup's `real_tree_types`: the kinds whose oid is a git tree.
_TREE_KINDS = frozenset({"Item", "Commit"})

_SLASHES = re.compile(rb"//+")


# -- bup's reprs, for messages --------------------------------------------------


def _mode_str(mode: int) -> str:
    # bup's xstat.mode_str: no s/S/t/T, unlike stat.filemode.
    kind = "?"
    for test, letter in ((stat.S_ISREG, "-"), (stat.S_ISDIR, "d"), (stat.S_ISCHR, "c"),
                         (stat.S_ISBLK, "b"), (stat.S_ISFIFO, "p"), (stat.S_ISLNK, "l"),
                         (stat.S_ISSOCK, "s")):
        if test(mode):
            kind = letter
            break
    bits = "".join(c if mode & (1 << (8 - i)) else "-" for i, c in enumerate("rwxrwxrwx"))
    return kind + bits


def _gmtime_text(ns: int) -> str:
    try:
        return time.strftime("%Y-%m-%d %H:%M %z", time.gmtime(ns // 10**9))
    except (OverflowError, ValueError, OSError):
        return "?"  # bup would fail here; a message is not worth failing for


def _repr_meta(m: Metadata) -> str:
    """bup's Metadata.__repr__; the address is ours, so it never matches bup's."""
    out = [f"<<class 'bup.metadata.Metadata'> instance at {hex(id(m))}"]
    if m.path is not None:
        out.append(" path:" + repr(m.path))
    # bup's fields from the common record are None without one, and then not shown.
    common = m.mode is not None
    if common:
        out += [f" mode: {m.mode:o} ({_mode_str(m.mode or 0)})", f" uid:{m.uid}",
                f" gid:{m.gid}", f" user:{m.user!r}", f" group:{m.group!r}",
                f" rdev:{m.group!r}"]  # sic: bup prints the group as rdev
    if m.size is not None:
        out.append(f" size:{m.size!r}")
    if common:
        for name, ns in (("atime", m.atime), ("mtime", m.mtime), ("ctime", m.ctime)):
            out.append(f" {name}:{_gmtime_text(ns)!r} ({ns})")
    out.append(">")
    return "".join(out)


def _repr_item(item: BupItem | None) -> str:
    if item is None:
        return "None"
    fields = []
    for field in FIELDS[item.kind]:
        value = getattr(item, field)
        text = _repr_meta(value) if isinstance(value, Metadata) else repr(value)
        fields.append(f"{field}={text}")
    return f"{item.kind}({', '.join(fields)})"


def _repr_pair(pair: tuple[bytes, BupItem | None]) -> str:
    return f"({pair[0]!r}, {_repr_item(pair[1])})"


def _repr_list(pairs: Sequence[tuple[bytes, BupItem | None]]) -> str:
    return "[" + ", ".join(map(_repr_pair, pairs)) + "]"


def _repr_tuple(pairs: Sequence[tuple[bytes, BupItem | None]]) -> str:
    inner = ", ".join(map(_repr_pair, pairs))
    return f"({inner},)" if len(pairs) == 1 else f"({inner})"


def _relative_to(parent: Resolution | None, template: str) -> str:
    """bup's `template % parent` suffix: "" without a parent.

    bup applies `%` to the parent tuple itself, so a one-element parent shows
    as that element, and a longer one raises TypeError and kills bup's server.
    For those we show the whole parent, which is what bup meant to say.
    """
    if not parent:
        return ""
    shown = _repr_pair(parent[0]) if len(parent) == 1 else _repr_tuple(parent)
    return template % shown


# -- resolution ---------------------------------------------------------------


def _decompose(path: bytes) -> tuple[bool, bool, list[bytes]]:
    """bup's `_decompose_path`, quirks included: (absolute?, must be a dir?,
    reversed parts without '.'); unlike ketch.vfs it keeps empty parts, which
    only an empty symlink target produces."""
    path = _SLASHES.sub(b"/", path)
    if path == b"/":
        return True, True, []
    is_abs = must_be_dir = False
    if path.startswith(b"/"):
        is_abs = True
        path = path[1:]
    for suffix in (b"/", b"/."):
        if path.endswith(suffix):
            must_be_dir = True
            path = path[: -len(suffix)]
    parts = [p for p in path.split(b"/") if p != b"."]
    parts.reverse()
    return is_abs, must_be_dir or not parts, parts


class _Walker:
    """Directory lookups as bup's `contents(repo, item, names=...)` answers them."""

    def __init__(self, vfs: VFS, want_meta: bool) -> None:
        self.vfs = vfs
        self.want_meta = want_meta

    def dir_meta(self, tree_or_branch: VfsItem) -> Metadata | None:
        """bup's `_find_treeish_oid_metadata` + `_read_dir_meta`: the first
        `.bupm` record, its size 0 when unset; None when there is none (no
        `.bupm` and an empty record both leave bup with the default mode)."""
        dot = self.vfs.fill_meta(tree_or_branch).meta
        if dot is None or dot.size is not None:
            return dot
        return dataclasses.replace(dot, size=0)

    def child(self, parent: BupItem, name: bytes) -> BupItem | None:
        kind = parent.kind
        if kind == "Root":
            if name == TAGS.name:
                return TAGS_ITEM
            found = self.vfs._child(ROOT, name)
            if found is None:
                return None
            meta = self.dir_meta(found) if self.want_meta else None
            return BupItem("RevList", DEFAULT_DIR_MODE if meta is None else meta,
                           oid=found.oid)
        if kind == "Tags":
            return self._tag(name)
        if kind == "RevList":
            assert parent.oid is not None
            branch = VfsItem(b"", "branch", parent.oid, DEFAULT_DIR_MODE, commit=parent.oid)
            found = self.vfs._child(branch, name)
            if found is None:
                return None
            if found.kind == "latest":
                assert found.target is not None
                return BupItem("FakeLink", DEFAULT_SYMLINK_MODE, target=found.target)
            return BupItem("Commit", DEFAULT_DIR_MODE, oid=found.oid, coid=found.commit)
        if kind in _TREE_KINDS:
            assert parent.oid is not None
            if self.want_meta:
                return self._tree_child_with_meta(parent.oid, name)
            return self._tree_child(parent.oid, name)
        # bup's contents() raises here too (e.g. a Chunky whose metadata says dir).
        raise ResolveError(f"cannot list a {kind} item as a directory")

    def _tag(self, name: bytes) -> BupItem | None:
        # bup's tag_item never reads metadata: trees get theirs when entered.
        # (bup fails on annotated tags; ketch's VFS looks through them.)
        found = self.vfs._child(TAGS, name)
        if found is None:
            return None
        if found.kind == "save":
            return BupItem("Commit", DEFAULT_DIR_MODE, oid=found.oid, coid=found.commit)
        mode = DEFAULT_DIR_MODE if found.kind == "dir" else DEFAULT_FILE_MODE
        return BupItem("Item", mode, oid=found.oid)

    def _tree_child_with_meta(self, tree: bytes, name: bytes) -> BupItem | None:
        found = self.vfs._child(VfsItem(b"", "dir", tree, DEFAULT_DIR_MODE), name)
        if found is None:
            return None
        if found.kind == "dir":
            # A subdirectory's metadata lives in its own .bupm, read on entry.
            return BupItem("Item", DEFAULT_DIR_MODE, oid=found.oid)
        # Without a record ketch's mode is already bup's _default_mode_for_gitmode.
        meta: Metadata | int = found.meta if found.meta is not None else found.mode
        return BupItem("Chunky" if found.chunked else "Item", meta, oid=found.oid)

    def _tree_child(self, tree: bytes, name: bytes) -> BupItem | None:
        # Without metadata bup goes by git modes alone, first match in tree order,
        # so a fifo looks like a file here.
        for e in self.vfs._tree(tree):
            if e.name == b".bupm" or e.mode == gobj.MODE_GITLINK:
                continue
            plain, chunked = demangle(e.name, e.mode)
            if plain != name:
                continue
            if chunked:
                return BupItem("Chunky", DEFAULT_FILE_MODE, oid=e.oid)
            if stat.S_ISDIR(e.mode):
                return BupItem("Item", DEFAULT_DIR_MODE, oid=e.oid)
            mode = DEFAULT_SYMLINK_MODE if stat.S_ISLNK(e.mode) else DEFAULT_FILE_MODE
            return BupItem("Item", mode, oid=e.oid)
        return None

    def with_dir_meta(self, item: BupItem) -> BupItem:
        assert item.oid is not None
        meta = self.dir_meta(VfsItem(b"", "dir", item.oid, DEFAULT_DIR_MODE))
        return item if meta is None else dataclasses.replace(item, meta=meta)

    def readlink(self, item: BupItem) -> bytes:
        if item.kind == "FakeLink":
            assert item.target is not None
            return item.target
        if isinstance(item.meta, Metadata) and item.meta.symlink_target:
            return item.meta.symlink_target
        if item.oid is None:
            raise ResolveError(f"a {item.kind} item cannot be a symlink")
        return self.vfs._blob(item.oid)


def _check_parent(parent: Resolution) -> None:
    """bup's asserts on a parent, as errors; then its ENOTDIR for a non-dir."""
    for name, item in parent:
        if item is None or item.kind not in _PARENT_KINDS:
            what = "nothing" if item is None else f"a {item.kind}"
            raise ResolveError(f"resolve parent element {name!r} is {what}, "
                               "not a directory item")
    first = parent[0][1]
    assert first is not None
    # bup compares namedtuples as tuples, so Tags(mode) passes for Root(mode) too.
    if first.kind not in ("Root", "Tags") or isinstance(first.meta, Metadata) \
            or first.meta != DEFAULT_DIR_MODE:
        raise ResolveError("resolve parent does not start at the root")
    last = parent[-1][1]
    assert last is not None
    if not last.is_dir:
        raise BupIOError(errno.ENOTDIR,
                         f"path resolution parent {_repr_tuple(parent)} is not a directory")


class _Resolve:
    """One run of bup's `_resolve_path` loop: `past` is the chain so far,
    `future` the segments still to walk, last one first."""

    def __init__(self, walker: _Walker, path: bytes, parent: Resolution | None,
                 follow: bool) -> None:
        self.walker = walker
        self.path = path
        self.parent = parent
        is_abs, self.must_be_dir, self.future = _decompose(path)
        self.follow = follow or self.must_be_dir
        self.past: Resolution = (list(parent) if parent and not is_abs
                                 else [(b"", ROOT_ITEM)])
        self.hops = 0

    def run(self) -> Resolution:
        past, future = self.past, self.future
        while future:
            segment = future.pop()
            if segment == b"..":
                if len(past) > 1:  # .. from / is /
                    past.pop()
                continue
            here = past[-1][1]
            assert here is not None
            item = self.walker.child(here, segment)
            if item is None:
                past.append((segment, None))
                return past
            if stat.S_ISLNK(item.mode):
                if not future and not self.follow:
                    past.append((segment, item))
                elif self._follow(segment, item):
                    return [(b"", ROOT_ITEM)]
                past, future = self.past, self.future
                continue
            if not item.is_dir:
                past.append((segment, item))
                if future:
                    raise self._not_a_dir("ends internally in non-directory here:")
                break
            if self.walker.want_meta and item.kind in _TREE_KINDS:
                item = self.walker.with_dir_meta(item)
            past.append((segment, item))
        last = past[-1][1]
        if self.must_be_dir and not (last is not None and last.is_dir):
            raise self._not_a_dir("resolves to non-directory")
        return past

    def _follow(self, segment: bytes, link: BupItem) -> bool:
        """Queue the link's target; True when bup stops at '/' right away."""
        if self.hops > MAX_HOPS:
            rel = _relative_to(self.parent, " relative to %s")
            raise BupIOError(errno.ELOOP, "too many symlinks encountered while resolving "
                             f"{self.path!r}{rel}", terminus=self.past + [(segment, link)])
        target_abs, _, target_future = _decompose(self.walker.readlink(link))
        self.hops += 1
        if target_abs:
            if not target_future:  # the rest of the path is dropped, as in bup
                return True
            self.past = [(b"", ROOT_ITEM)]
            self.future = target_future
        else:
            self.future.extend(target_future)
        return False

    def _not_a_dir(self, what: str) -> BupIOError:
        # bup's messages: the path and the chain so far, as Python reprs.
        rel = _relative_to(self.parent, " (relative to %s)")
        return BupIOError(errno.ENOTDIR, f"path {self.path!r}{rel} {what} "
                          f"{_repr_list(self.past)}", terminus=list(self.past))


def resolve(vfs: VFS, path: bytes, parent: Resolution | None = None, *,
            want_meta: bool = True, follow: bool = True) -> Resolution:
    """bup's `vfs.resolve`: the (name, item) chain from the root to `path`,
    relative to `parent` (itself such a chain) unless `path` is absolute.
    A missing component ends the chain with (name, None); stepping through a
    non-directory raises ENOTDIR and too many symlinks ELOOP, as BupIOError."""
    if not path:
        raise ResolveError("Empty resolve path")
    if parent:
        _check_parent(parent)
    return _Resolve(_Walker(vfs, want_meta), path, parent, follow).run()


def resolve_reply(vfs: VFS, flags: int, conn_read: Callable[[int], bytes]) -> bytes:
    """Read a `resolve FLAGS` request body with `conn_read(n)` and return what
    bup's server writes before `\\nok\\n`: 01 + resolution, or 00 + ioerror.

    FLAGS: 1 want metadata, 2 follow a final symlink, 4 a parent resolution
    precedes the path. Malformed requests raise ResolveError.
    """
    reader = Reader(conn_read)
    parent = reader.resolution() if flags & HAVE_PARENT else None
    path = reader.bvec("path")
    try:
        res = resolve(vfs, path, parent, want_meta=bool(flags & WANT_META),
                      follow=bool(flags & FOLLOW))
    except BupIOError as e:
        return b"\x00" + encode_ioerror(e)
    return b"\x01" + encode_resolution(res)
