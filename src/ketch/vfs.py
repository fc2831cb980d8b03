"""The `NAME/DATE/path` view of a repository, shared by ls, restore, cat-file
and the server's answers to bup's vfs requests (bup-format.md section 5).

    /                 branches (refs/heads/*), and the hidden `.tag`
    /.tag/TAG         refs/tags/*: a commit looks like a save, a tree a dir
    /NAME             one save per commit in rev-list order, plus `latest`
    /NAME/DATE/...    the saved tree, demangled, with metadata from `.bupm`

Only the `Repository` interface is used, never paths on disk, so the same code
serves local, remote and S3 repositories. Items are immutable and shared
between callers through the caches; derive new ones with `fill_meta`.
"""

from __future__ import annotations

import bisect
import dataclasses
import heapq
import io
import re
import stat
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from itertools import groupby
from typing import TYPE_CHECKING, Generic, TypeVar

from cachetools import LRUCache

from ketch.buptree import demangle
from ketch.errors import CorruptObject, KetchError, RefNotFound
from ketch.git import objects as gobj
from ketch.git.refs import BadRefName
from ketch.metadata import EMPTY_RECORD, Metadata, decode_all
from ketch.repo import Repository

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

DEFAULT_FILE_MODE = stat.S_IFREG | 0o644
DEFAULT_DIR_MODE = stat.S_IFDIR | 0o755
DEFAULT_SYMLINK_MODE = stat.S_IFLNK | 0o755

MAX_SYMLINK_HOPS = 100
SAVE_NAME_FORMAT = "%Y-%m-%d-%H%M%S"
# bup only looks these names up in a branch; anything else is "not found".
_SAVE_NAME_RX = re.compile(rb"\A[0-9]{4}-[0-9]{2}-[0-9]{2}-[0-9]{6}(-[0-9]+)?\Z")

# What read_ahead fetches besides .bupm: trees, and symlinks' targets (a
# restore reads each alone otherwise).
_AHEAD_MODES = frozenset({gobj.MODE_TREE, gobj.MODE_SYMLINK})
# Beyond this many objects (a machine of hundreds of GB: its chunk trees), the
# walk reads the rest as it goes: the ids alone would hold hundreds of MB.
_AHEAD_MAX = 1 << 20
DIR_KINDS = frozenset({"root", "tags", "branch", "save", "dir"})
LINK_KINDS = frozenset({"symlink", "latest"})
_KIND_BY_FMT = {
    stat.S_IFLNK: "symlink",
    stat.S_IFIFO: "fifo",
    stat.S_IFSOCK: "socket",
    stat.S_IFCHR: "chardev",
    stat.S_IFBLK: "blockdev",
}


class PathNotFound(RefNotFound):
    """A VFS path names nothing."""


class NotADirectory(KetchError):
    """A VFS path steps through, or must end at, a directory and doesn't."""


class IsADirectory(KetchError):
    """File content was asked of a directory."""


class SymlinkLoop(KetchError):
    """Too many symlinks while resolving a VFS path."""


def show_path(path: bytes) -> str:
    """A path for a one-line message: undecodable bytes and control chars escaped."""
    text = path.decode("utf-8", "backslashreplace")
    return "".join(c if c.isprintable() else f"\\x{ord(c):02x}" for c in text)


@dataclass(frozen=True, slots=True)
class Item:
    name: bytes
    kind: str
    oid: bytes | None
    mode: int
    meta: Metadata | None = None
    chunked: bool = False
    commit: bytes | None = None
    target: bytes | None = None

    @property
    def is_dir(self) -> bool:
        return self.kind in DIR_KINDS

    @property
    def is_symlink(self) -> bool:
        return self.kind in LINK_KINDS


ROOT = Item(b"", "root", None, DEFAULT_DIR_MODE)
TAGS = Item(b".tag", "tags", None, DEFAULT_DIR_MODE)

K = TypeVar("K")
V = TypeVar("V")


class _LRU(Generic[K, V]):
    # Locked so that one VFS may serve several threads; today's commands use one.
    def __init__(self, limit: int) -> None:
        self._d: LRUCache[K, V] = LRUCache(maxsize=max(limit, 1))
        self._lock = threading.Lock()

    def get(self, key: K) -> V | None:
        with self._lock:
            return self._d.get(key)

    def put(self, key: K, value: V) -> V:
        with self._lock:
            self._d[key] = value
            return value


@dataclass(slots=True)
class _Listing:
    dot: Metadata | None
    items: list[Item]
    by_name: dict[bytes, Item]


def _listing_of(dot: Metadata | None, items: list[Item]) -> _Listing:
    by_name: dict[bytes, Item] = {}
    for it in items:
        by_name.setdefault(it.name, it)
    return _Listing(dot, items, by_name)


def kind_for_mode(mode: int) -> str:
    if stat.S_ISDIR(mode):
        return "dir"
    return _KIND_BY_FMT.get(stat.S_IFMT(mode), "file")


def _decompose(path: bytes) -> tuple[bool, bool, list[bytes]]:
    """(absolute?, must be a dir?, components reversed, without '.'), like bup's."""
    path = re.sub(rb"//+", b"/", path)
    if path == b"/":
        return True, True, []
    is_abs = path.startswith(b"/")
    if is_abs:
        path = path[1:]
    must_be_dir = False
    for suffix in (b"/", b"/."):
        if path.endswith(suffix):
            must_be_dir = True
            path = path[: -len(suffix)]
    parts = [p for p in path.split(b"/") if p and p != b"."]
    parts.reverse()
    return is_abs, must_be_dir or not parts, parts


def save_names(times: list[int]) -> list[bytes]:
    """Save names for author times in rev-list order, with bup's `-N` rule:
    each run of equal adjacent names counts down to -0, zero-padded."""
    names = [time.strftime(SAVE_NAME_FORMAT, time.localtime(t)).encode() for t in times]
    out: list[bytes] = []
    for name, run in groupby(names):
        n = len(list(run))
        if n == 1:
            out.append(name)
        else:
            width = len(str(n - 1))
            out.extend(b"%s-%0*d" % (name, width, i) for i in range(n - 1, -1, -1))
    return out


class VFS:
    """Resolve and read `NAME/DATE/path`s; decoded trees and `.bupm`s are cached."""

    def __init__(self, repo: Repository, *, cache_trees: int = 4096) -> None:
        self.repo = repo
        self._trees: _LRU[bytes, list[gobj.TreeEntry]] = _LRU(cache_trees)
        self._listings: _LRU[bytes, _Listing] = _LRU(cache_trees)
        self._walked: _LRU[bytes, bool] = _LRU(cache_trees)  # subtrees hinted
        self._branches: _LRU[bytes, tuple[list[tuple[bytes, bytes, int, bytes]], _Listing]] = (
            _LRU(64)
        )
        self._commits: _LRU[bytes, gobj.Commit] = _LRU(cache_trees)
        self._sizes: _LRU[bytes, int] = _LRU(cache_trees)

    # -- objects ------------------------------------------------------------------

    def _tree(self, oid: bytes) -> list[gobj.TreeEntry]:
        entries = self._trees.get(oid)
        if entries is None:
            entries = self._tree_from(oid, self.repo.read(oid))
        return entries

    def _tree_from(self, oid: bytes, obj: tuple[int, bytes]) -> list[gobj.TreeEntry]:
        t, data = obj
        if t != gobj.TREE:
            raise CorruptObject(f"object {oid.hex()} is a {gobj.TYPE_NAMES[t].decode()}, "
                                "not a tree")
        try:
            entries = list(gobj.decode_tree(data))
        except ValueError as e:
            raise CorruptObject(f"tree {oid.hex()} cannot be decoded: {e}") from None
        return self._trees.put(oid, entries)

    def _commit(self, oid: bytes) -> gobj.Commit:
        c = self._commits.get(oid)
        if c is None:
            try:
                c = gobj.decode_commit(self.repo.read_typed(oid, gobj.COMMIT))
            except ValueError as e:
                raise CorruptObject(f"commit {oid.hex()} cannot be decoded: {e}") from None
            self._commits.put(oid, c)
        return c

    def _blob(self, oid: bytes) -> bytes:
        return b"".join(data for _, data in self._chunks(oid, 0))

    # -- directories -----------------------------------------------------------

    def _listing(self, tree: bytes, *, walk: bool = True) -> _Listing:
        """A tree's entries by demangled name, with `.bupm` records matched (2.6).
        `walk`: its subdirectories will be read next (not when resolving a path)."""
        cached = self._listings.get(tree)
        if cached is not None:
            if walk and self._walked.get(tree) is None:
                self._hint_subtrees(tree, self._tree(tree))
            return cached
        entries = self._tree(tree)
        # What a walk reads next: this directory's .bupm, then its subdirectories'
        # trees; a remote repository fetches them together.
        self.repo.prefetch([e.oid for e in entries if e.name == b".bupm"])
        if walk:
            self._hint_subtrees(tree, entries)
        records: list[Metadata | None] = []
        for e in entries:
            if e.name == b".bupm":
                records = decode_all(self._blob(e.oid))
                break
        rows = sorted(
            (demangle(e.name, e.mode) + (e,) for e in entries
             if e.name != b".bupm" and e.mode != gobj.MODE_GITLINK),
            key=lambda r: r[0],
        )
        dot = records[0] if records else None
        pending = iter(records[1:])
        items = []
        for name, chunked, e in rows:
            if e.mode == gobj.MODE_TREE and not chunked:
                # A subdirectory's metadata is the first record of its own .bupm.
                items.append(Item(name, "dir", e.oid, DEFAULT_DIR_MODE))
            else:
                items.append(self._leaf(name, e, next(pending, None), chunked))
        return self._listings.put(tree, _listing_of(dot, items))

    def _leaf(self, name: bytes, e: gobj.TreeEntry, meta: Metadata | None, chunked: bool
              ) -> Item:
        if meta is not None and meta.mode is not None:
            mode = meta.mode
        elif e.mode == gobj.MODE_SYMLINK and not chunked:
            mode = DEFAULT_SYMLINK_MODE
        else:
            mode = DEFAULT_FILE_MODE
        kind = kind_for_mode(mode)
        if kind == "dir":  # a directory's record on a blob: never written by bup
            kind = "file"
        target = None
        if kind == "symlink":
            target = meta.symlink_target if meta is not None else None
            target = target or self._blob(e.oid)
        return Item(name, kind, e.oid, mode, meta, chunked, target=target)

    def _branch(self, head: bytes) -> tuple[list[tuple[bytes, bytes, int, bytes]], _Listing]:
        """(name, commit, author time, tree) in rev-list order, and the branch's listing."""
        cached = self._branches.get(head)
        if cached is not None:
            return cached
        revs = self._rev_list(head)
        names = save_names([t for _, t, _ in revs])
        saves = [(name, c, t, tree) for name, (c, t, tree) in zip(names, revs, strict=True)]
        by_name: dict[bytes, Item] = {}
        for name, c, _, tree in saves:
            # Non-adjacent equal names clobber each other, oldest last, as in bup.
            by_name[name] = Item(name, "save", tree, DEFAULT_DIR_MODE, commit=c)
        if saves:
            by_name[b"latest"] = Item(b"latest", "latest", None, DEFAULT_SYMLINK_MODE,
                                      target=saves[0][0])
        items = [by_name[n] for n in sorted(by_name)]
        return self._branches.put(head, (saves, _listing_of(None, items)))

    def _rev_list(self, head: bytes) -> list[tuple[bytes, int, bytes]]:
        """(commit, author time, tree) of every ancestor, newest commit date first
        (git rev-list's default order, which is parent order for bup's linear history)."""
        out = []
        seq = 0
        c = self._commit(head)
        heap = [(-c.committer_time, seq, head)]
        seen = {head}
        while heap:
            _, _, oid = heapq.heappop(heap)
            c = self._commit(oid)
            out.append((oid, c.author_time, c.tree))
            for p in c.parents:
                if p not in seen:
                    seen.add(p)
                    seq += 1
                    heapq.heappush(heap, (-self._commit(p).committer_time, seq, p))
        return out

    def _head(self, branch: bytes) -> bytes | None:
        try:
            return self.repo.read_ref(b"refs/heads/" + branch)
        except BadRefName:
            return None

    def saves(self, branch: bytes) -> list[tuple[bytes, bytes, int]]:
        """(save name, commit, author time) newest first, duplicates included."""
        head = self._head(branch)
        if head is None:
            raise PathNotFound(f"no such branch: {show_path(branch)}")
        return [(n, c, t) for n, c, t, _ in self._branch(head)[0]]

    def _tag(self, name: bytes, oid: bytes) -> Item:
        t, data = self.repo.read(oid)
        for _ in range(10):
            if t != gobj.TAG:
                break
            # An annotated tag: follow "object <hex>" to what it tags.
            oid = bytes.fromhex(data[7:47].decode())
            t, data = self.repo.read(oid)
        if t == gobj.COMMIT:
            tree = gobj.decode_commit(data).tree
            return Item(name, "save", tree, DEFAULT_DIR_MODE, commit=oid)
        if t == gobj.TREE:
            return Item(name, "dir", oid, DEFAULT_DIR_MODE)
        return Item(name, "file", oid, DEFAULT_FILE_MODE)

    def contents(self, item: Item) -> Iterator[Item]:
        """The entries of a directory-like item, sorted by name; `.bupm` hidden.
        Subdirectories, saves and branches carry meta=None until `fill_meta`."""
        if item.kind == "root":
            found = [TAGS] + [
                Item(ref[len(b"refs/heads/"):], "branch", oid, DEFAULT_DIR_MODE, commit=oid)
                for ref, oid in self.repo.iter_refs(b"refs/heads/")
            ]
            return iter(sorted(found, key=lambda i: i.name))
        if item.kind == "tags":
            tags = [self._tag(ref[len(b"refs/tags/"):], oid)
                    for ref, oid in self.repo.iter_refs(b"refs/tags/")]
            return iter(sorted(tags, key=lambda i: i.name))
        return iter(self._dir_listing(item).items)

    def read_ahead(self, item: Item) -> None:
        """Before a walk of a directory reads its trees one by one: every tree
        under it (chunked files' too) and every `.bupm`, a level at a time,
        from a repository where that pays (`walks_ahead`, a bucket: a restore
        of 1,667 directories made 1,308 round trips one after another)."""
        if not self.repo.walks_ahead or item.kind not in ("save", "dir") or item.oid is None:
            return
        seen = {item.oid}
        whole: set[bytes] = set()  # a big .bupm's chunk trees: all they name
        level = [item.oid]
        while level and len(seen) <= _AHEAD_MAX:
            below: list[bytes] = []
            try:
                for oid, t, data in self.repo.read_ahead(level):
                    if t == gobj.TREE:
                        below += self._unseen_below(data, seen, whole, oid in whole)
            except (KetchError, OSError):
                return  # the walk meets the same object and says which file it failed
            level = below

    @staticmethod
    def _unseen_below(tree: bytes, seen: set[bytes], whole: set[bytes],
                      everything: bool) -> list[bytes]:
        out = []
        try:
            for e in gobj.decode_tree(tree):
                bupm = e.name == b".bupm"
                if (everything or bupm or e.mode in _AHEAD_MODES) and e.oid not in seen:
                    seen.add(e.oid)
                    out.append(e.oid)
                    if everything or bupm:
                        whole.add(e.oid)
        except ValueError:
            pass  # the walk reports it, where it meets the tree
        return out

    def _hint_subtrees(self, tree: bytes, entries: list[gobj.TreeEntry]) -> None:
        """A path's lookup needs one subdirectory: hinting the others too would
        cost a bucket a GET each, so only a walk hints them."""
        self._walked.put(tree, True)
        self.repo.prefetch([e.oid for e in entries if e.mode == gobj.MODE_TREE
                            and not e.name.endswith(b".bup") and self._trees.get(e.oid) is None])

    def _dir_listing(self, item: Item, *, walk: bool = True) -> _Listing:
        if item.kind == "branch" and item.oid is not None:
            return self._branch(item.oid)[1]
        if item.kind in ("save", "dir") and item.oid is not None:
            return self._listing(item.oid, walk=walk)
        raise NotADirectory(f"not a directory: {show_path(item.name)}")

    def _child(self, parent: Item, name: bytes) -> Item | None:
        if parent.kind == "root":
            if name == TAGS.name:
                return TAGS
            head = self._head(name)
            return None if head is None else Item(name, "branch", head, DEFAULT_DIR_MODE,
                                                  commit=head)
        if parent.kind == "tags":
            try:
                oid = self.repo.read_ref(b"refs/tags/" + name)
            except BadRefName:
                return None
            return None if oid is None else self._tag(name, oid)
        if parent.kind == "branch" and name != b"latest" and not _SAVE_NAME_RX.match(name):
            return None
        return self._dir_listing(parent, walk=False).by_name.get(name)

    def fill_meta(self, item: Item) -> Item:
        """A directory's own metadata: the first record of its `.bupm`."""
        if item.meta is not None or item.oid is None:
            return item
        if item.kind in ("dir", "save"):
            tree = item.oid
        elif item.kind == "branch":
            tree = self._commit(item.oid).tree
        else:
            return item
        dot = self._listing(tree, walk=False).dot
        if dot is None:
            return item
        mode = dot.mode if dot.mode is not None else item.mode
        return dataclasses.replace(item, meta=dot, mode=mode)

    def bupm(self, item: Item) -> bytes:
        """The raw `.bupm` of a directory-like item (b"" when it has none)."""
        if not item.is_dir:
            raise NotADirectory(f"not a directory: {show_path(item.name)}")
        if item.oid is None:
            return b""
        tree = self._commit(item.oid).tree if item.kind == "branch" else item.oid
        for e in self._tree(tree):
            if e.name == b".bupm":
                return self._blob(e.oid)
        return b""

    def meta_record(self, item: Item) -> bytes:
        """The item's metadata encoded as bup's `cat-file --meta` prints it: decoded,
        the size filled in (0 for directories), re-encoded; `00` when there is none."""
        meta = self.fill_meta(item).meta
        if meta is None:
            return EMPTY_RECORD
        size = self.size(item) if meta.size is None else meta.size
        return dataclasses.replace(meta, size=size).encode()

    # -- paths --------------------------------------------------------------------

    def resolve_chain(self, path: bytes, *, follow: bool = True) -> list[tuple[bytes, Item]]:
        """[(name, item)] from the root to what `path` names (5.4). Directories on
        the way carry their metadata. A trailing '/' requires a directory."""
        is_abs, must_be_dir, future = _decompose(path)
        follow = follow or must_be_dir
        past: list[tuple[bytes, Item]] = [(b"", ROOT)]
        hops = 0
        while future:
            seg = future.pop()
            if seg == b"..":
                if len(past) > 1:
                    past.pop()
                continue
            child = self._child(past[-1][1], seg)
            if child is None:
                where = b"/".join([n for n, _ in past[1:]] + [seg])
                raise PathNotFound(f"cannot access '{show_path(path)}': "
                                   f"'/{show_path(where)}' does not exist")
            if child.is_symlink and (future or follow):
                hops += 1
                if hops > MAX_SYMLINK_HOPS:
                    raise SymlinkLoop(f"too many symlinks resolving '{show_path(path)}'")
                t_abs, _, t_parts = _decompose(self.readlink(child))
                if t_abs:
                    past = past[:1]
                future.extend(t_parts)
                continue
            if child.is_dir:
                child = self.fill_meta(child)
            elif future:
                raise NotADirectory(f"cannot access '{show_path(path)}': "
                                    f"'{show_path(seg)}' is not a directory")
            past.append((seg, child))
        if must_be_dir and not past[-1][1].is_dir:
            raise NotADirectory(f"cannot access '{show_path(path)}': not a directory")
        return past

    def resolve(self, path: bytes, *, follow: bool = True) -> Item:
        return self.resolve_chain(path, follow=follow)[-1][1]

    def try_resolve_chain(self, path: bytes) -> list[tuple[bytes, Item]]:
        """Like bup's try_resolve: follow a final symlink only if its target exists."""
        chain = self.resolve_chain(path, follow=False)
        if not chain[-1][1].is_symlink:
            return chain
        try:
            return self.resolve_chain(path, follow=True)
        except PathNotFound:
            return chain

    def readlink(self, item: Item) -> bytes:
        if item.target is not None:
            return item.target
        if item.oid is None:
            raise KetchError(f"not a symlink: {show_path(item.name)}")
        return self._blob(item.oid)

    # -- content ------------------------------------------------------------------

    def size(self, item: Item) -> int:
        if item.meta is not None and item.meta.size is not None:
            return item.meta.size
        if item.kind == "latest":
            return len(item.target or b"")
        if item.kind in ("file", "symlink") and item.oid is not None:
            return self._file_size(item.oid)
        return 0

    def _file_size(self, oid: bytes) -> int:
        """Last entry's hex offset plus its size, down the chunk tree (1.6)."""
        known = self._sizes.get(oid)
        if known is not None:
            return known
        offset = 0
        cur = oid
        while True:
            entries = self._trees.get(cur)
            if entries is None:
                obj = self.repo.read(cur)
                if obj[0] != gobj.TREE:
                    size = offset + len(obj[1])
                    break
                entries = self._tree_from(cur, obj)
            if not entries:
                size = offset
                break
            offset += _hex_offset(cur, entries[-1])
            cur = entries[-1].oid
        return self._sizes.put(oid, size)

    def _chunks(self, oid: bytes, offset: int) -> Iterator[tuple[bytes, bytes]]:
        entries = self._trees.get(oid)
        if entries is None:
            obj = self.repo.read(oid)
            if obj[0] == gobj.BLOB:
                if offset < len(obj[1]):
                    yield oid, obj[1][offset:] if offset else obj[1]
                return
            entries = self._tree_from(oid, obj)
        offsets = [_hex_offset(oid, e) for e in entries]
        # Start at the last entry that begins at or before `offset`.
        first = max(bisect.bisect_right(offsets, offset) - 1, 0)
        for e, start in zip(entries[first:], offsets[first:], strict=True):
            yield from self._chunks(e.oid, max(offset - start, 0))

    def iter_content(self, item: Item, offset: int = 0) -> Iterator[tuple[bytes, bytes]]:
        """(blob id, data) of a file's content in order, the first trimmed to `offset`."""
        if item.is_dir:
            raise IsADirectory(f"{show_path(item.name)}: is a directory")
        if item.oid is None:
            data = (item.target or b"")[offset:]
            return iter([(gobj.object_id(gobj.BLOB, data), data)] if data else [])
        return self._chunks(item.oid, offset)

    def open(self, item: Item) -> FileReader:
        if item.is_dir:
            raise IsADirectory(f"{show_path(item.name)}: is a directory")
        return FileReader(self, item)

    def walk(self, item: Item) -> Iterator[tuple[bytes, Item]]:
        """(relative path, item) in preorder, starting with (b"", item) itself;
        directories carry their metadata. Symlinks (and `latest`) are not followed."""
        item = self.fill_meta(item)
        yield b"", item
        if not item.is_dir:
            return
        stack = [(b"", self.contents(item))]
        while stack:
            prefix, it = stack[-1]
            child = next(it, None)
            if child is None:
                stack.pop()
                continue
            path = prefix + child.name
            if child.is_dir:
                child = self.fill_meta(child)
                yield path, child
                stack.append((path + b"/", self.contents(child)))
            else:
                yield path, child


def _hex_offset(tree: bytes, e: gobj.TreeEntry) -> int:
    try:
        return int(e.name, 16)
    except ValueError:
        raise CorruptObject(f"chunk tree {tree.hex()} has a non-hex entry name "
                            f"{show_path(e.name)!r}") from None


class FileReader(io.RawIOBase):
    """A seekable read-only stream of a file item's content; seeking skips whole
    subtrees of the chunk tree by their hex offsets."""

    def __init__(self, vfs: VFS, item: Item) -> None:
        super().__init__()
        self._vfs = vfs
        self._item = item
        self._pos = 0
        self._chunks: Iterator[tuple[bytes, bytes]] | None = None
        self._buf = b""
        self._buf_pos = 0
        self._size: int | None = None

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def size(self) -> int:
        if self._size is None:
            item = self._item
            # The content decides, not the recorded size, so seek-from-end is exact.
            self._size = (self._vfs._file_size(item.oid) if item.oid is not None
                          else len(item.target or b""))
        return self._size

    def tell(self) -> int:
        return self._pos

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        if whence == io.SEEK_SET:
            new = offset
        elif whence == io.SEEK_CUR:
            new = self._pos + offset
        elif whence == io.SEEK_END:
            new = self.size() + offset
        else:
            raise ValueError(f"invalid whence: {whence}")
        if new < 0:
            raise ValueError(f"negative seek position {new}")
        if new != self._pos:
            ahead = new - self._pos
            if 0 < ahead <= len(self._buf) - self._buf_pos:
                self._buf_pos += ahead
            else:
                self._chunks = None
                self._buf = b""
                self._buf_pos = 0
            self._pos = new
        return new

    def _fill(self) -> bool:
        if self._chunks is None:
            self._chunks = self._vfs.iter_content(self._item, self._pos)
        nxt = next(self._chunks, None)
        if nxt is None:
            return False
        self._buf, self._buf_pos = nxt[1], 0
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        view = memoryview(buffer).cast("B")
        n = 0
        while n < len(view):
            if self._buf_pos >= len(self._buf) and not self._fill():
                break
            take = min(len(view) - n, len(self._buf) - self._buf_pos)
            view[n:n + take] = self._buf[self._buf_pos:self._buf_pos + take]
            self._buf_pos += take
            n += take
        self._pos += n
        return n

    def readall(self) -> bytes:
        parts = [self._buf[self._buf_pos:]]
        while self._fill():
            parts.append(self._buf)
        self._buf, self._buf_pos = b"", 0
        data = b"".join(parts)
        self._pos += len(data)
        return data
