"""`ketch mount`: a repository's `NAME/DATE/path` view (the one `ls` shows) as a
read-only filesystem through FUSE (mfusepy over Debian's libfuse3).

Every entry carries its saved mode, owner, size, times and symlink target; a
file's reads seek in its chunk tree, so a read at an offset of a large image
fetches the chunks under it and not the file. Only the `Repository` interface
is used, so a mount works the same over a directory, ssh and S3 (with their
caches).

Hardlinks: the metadata names, for the links of a group, the path of its
first (bup leaves it out on the first itself). Their count is known only from the whole save, so the
first stat of a file in a save walks that save's trees once (as `find` over
it would) and keeps the counts.

The filesystem runs single-threaded: an ssh repository is one conversation.
"""

from __future__ import annotations

import errno
import itertools
import os
import stat
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from cachetools import LRUCache

from ketch.errors import KetchError
from ketch.vfs import VFS, FileReader, Item, NotADirectory, PathNotFound, SymlinkLoop

_SAVES_WITH_LINKS = 8  # the hardlink counts of this many saves are kept
_ITEMS = 65536  # resolved paths kept: a `find` stats each entry right after listing it


def _load_fuse() -> Any:
    """mfusepy, or a clear error: it needs libfuse3 (Debian: fuse3)."""
    try:
        import mfusepy
    except (ImportError, OSError) as e:
        raise KetchError(f"FUSE is not available here ({e}): apt-get install fuse3") from None
    return mfusepy


class _Errno(OSError):
    """What a FUSE callback answers: the errno, nothing else."""


def _oserror(e: Exception) -> OSError:
    if isinstance(e, PathNotFound):
        return _Errno(errno.ENOENT, str(e))
    if isinstance(e, NotADirectory):
        return _Errno(errno.ENOTDIR, str(e))
    if isinstance(e, SymlinkLoop):
        return _Errno(errno.ELOOP, str(e))
    return _Errno(errno.EIO, str(e))


@contextmanager
def _as_errno() -> Iterator[None]:
    try:
        yield
    except _Errno:
        raise
    except (KetchError, OSError, ValueError) as e:
        raise _oserror(e) from None


class KetchFS:
    """The FUSE operations (mfusepy's Operations protocol) over a VFS."""

    use_ns = True  # times below are nanoseconds, as the metadata keeps them

    def __init__(self, vfs: VFS, on_ready: Callable[[], None] | None = None) -> None:
        self.vfs = vfs
        self.on_ready = on_ready
        self._items: LRUCache[bytes, tuple[Item, bytes]] = LRUCache(_ITEMS)
        self._links: LRUCache[bytes, dict[bytes, int]] = LRUCache(_SAVES_WITH_LINKS)
        self._open: dict[int, FileReader] = {}
        # Inode numbers: the links of a hardlink group share one (so `cp -a`
        # and `rsync -H` link them again), every other path has its own.
        self._inodes: dict[tuple[bytes, bytes], int] = {}
        self._numbers = itertools.count(1)
        self._lock = threading.Lock()
        self.uid, self.gid = os.getuid(), os.getgid()

    # -- paths ---------------------------------------------------------------------------

    def _item(self, path: str) -> tuple[Item, bytes]:
        """(item, its save's key) for a path the kernel asks about."""
        raw = os.fsencode(path).strip(b"/")
        got = self._items.get(raw)
        if got is not None:
            return got
        chain = self.vfs.resolve_chain(raw, follow=False)
        save = chain[2][1] if len(chain) > 2 and chain[1][1].kind == "branch" else None
        key = (save.oid or b"") if save is not None else b""
        item = chain[-1][1]
        if not item.is_dir:
            item = self.vfs.fill_meta(item)
        self._items[raw] = (item, key)
        return item, key

    def _nlink(self, item: Item, save_key: bytes, path: bytes) -> int:
        if not save_key:
            return 1
        counts = self._links.get(save_key)
        if counts is None:
            counts = {}
            marked: set[bytes] = set()
            top = path.split(b"/")[:2]
            for rel, it in self.vfs.walk(self.vfs.resolve(b"/".join(top))):
                target = it.meta.hardlink_target if it.meta is not None else None
                if target and not it.is_dir:
                    counts[target] = counts.get(target, 0) + 1
                    marked.add(b"/" + rel)
            for target in counts:
                if target not in marked:  # the group's first, recorded without a target
                    counts[target] += 1
            self._links[save_key] = counts
        meta = item.meta
        target = meta.hardlink_target if meta is not None else None
        if not target:
            target = b"/" + b"/".join(path.split(b"/")[2:])
        return max(counts.get(target, 1), 1)

    # -- FUSE operations -----------------------------------------------------------------

    def init(self, path: str) -> None:
        if self.on_ready is not None:
            self.on_ready()

    def getattr(self, path: str, fh: int | None = None) -> dict[str, Any]:
        with _as_errno():
            item, save_key = self._item(path)
            meta = item.meta
            mode = meta.mode if meta is not None and meta.mode else item.mode
            st: dict[str, Any] = {"st_mode": mode, "st_uid": self.uid, "st_gid": self.gid,
                                  "st_size": 0, "st_nlink": 2 if item.is_dir else 1}
            if meta is not None and meta.mode:
                st.update(st_uid=meta.uid, st_gid=meta.gid, st_atime=meta.atime,
                          st_mtime=meta.mtime, st_ctime=meta.ctime)
                if stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
                    st["st_rdev"] = meta.rdev
            if stat.S_ISREG(mode) or stat.S_ISLNK(mode):
                st["st_size"] = (len(self.vfs.readlink(item)) if stat.S_ISLNK(mode)
                                 else self.vfs.size(item))
            raw = os.fsencode(path).strip(b"/")
            ident = raw
            if stat.S_ISREG(mode):
                st["st_nlink"] = self._nlink(item, save_key, raw)
                st["st_blocks"] = (st["st_size"] + 511) // 512
                if st["st_nlink"] > 1:
                    ident = self._group(item, raw)
            st["st_ino"] = self._inode(save_key, ident)
            return st

    def _group(self, item: Item, path: bytes) -> bytes:
        target = item.meta.hardlink_target if item.meta is not None else None
        return target or b"/" + b"/".join(path.split(b"/")[2:])

    def _inode(self, save_key: bytes, ident: bytes) -> int:
        key = (save_key, ident)
        with self._lock:
            got = self._inodes.get(key)
            if got is None:
                got = self._inodes[key] = len(self._inodes) + 2  # 1: the root's
            return got

    def listxattr(self, path: str) -> list[str]:
        with _as_errno():
            item, _ = self._item(path)
            pairs = (item.meta.linux_xattr if item.meta is not None else None) or []
            return [os.fsdecode(k) for k, _ in pairs]

    def getxattr(self, path: str, name: str, position: int = 0) -> bytes:
        with _as_errno():
            item, _ = self._item(path)
            pairs = (item.meta.linux_xattr if item.meta is not None else None) or []
        want = os.fsencode(name)
        for k, v in pairs:
            if k == want:
                return v
        raise _Errno(errno.ENODATA, name)

    def readdir(self, path: str, fh: int) -> list[Any]:
        with _as_errno():
            item, save_key = self._item(path)
            if not item.is_dir:
                raise _Errno(errno.ENOTDIR, path)
            raw = os.fsencode(path).strip(b"/")
            out: list[Any] = [".", ".."]
            # Each entry's inode number too: with use_ino the kernel hands these
            # to readdir's callers, and `cp` skips an entry numbered 0.
            for c in self.vfs.contents(item):
                child = raw + b"/" + c.name if raw else c.name
                target = c.meta.hardlink_target if c.meta is not None else None
                ident = target if target and not c.is_dir else child
                mode = c.meta.mode if c.meta is not None and c.meta.mode else c.mode
                out.append((os.fsdecode(c.name), {"st_mode": mode,
                                                  "st_ino": self._inode(save_key, ident)}, 0))
            return out

    def readlink(self, path: str) -> str:
        with _as_errno():
            item, _ = self._item(path)
            if not item.is_symlink:
                raise _Errno(errno.EINVAL, path)
            return os.fsdecode(self.vfs.readlink(item))

    def open(self, path: str, flags: int) -> int:
        if flags & (os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_TRUNC):
            raise _Errno(errno.EROFS, path)
        with _as_errno():
            item, _ = self._item(path)
            reader = self.vfs.open(item)
        with self._lock:
            fh = next(self._numbers)
            self._open[fh] = reader
        return fh

    def read(self, path: str, size: int, offset: int, fh: int) -> bytes:
        reader = self._open.get(fh)
        if reader is None:
            raise _Errno(errno.EBADF, path)
        with _as_errno():
            reader.seek(offset)
            return reader.read(size) or b""

    def release(self, path: str, fh: int) -> int:
        with self._lock:
            self._open.pop(fh, None)
        return 0

    def statfs(self, path: str) -> dict[str, int]:
        return {"f_bsize": 4096, "f_frsize": 4096, "f_blocks": 0, "f_bfree": 0,
                "f_bavail": 0, "f_files": 0, "f_ffree": 0, "f_namemax": 255}


def operations(vfs: VFS, on_ready: Callable[[], None] | None = None) -> Any:
    """KetchFS as mfusepy's Operations (its base class answers what is not
    implemented: every write with EROFS)."""
    fuse = _load_fuse()

    ops = type("Ops", (KetchFS, fuse.Operations), {})
    return ops(vfs, on_ready)


def mount(vfs: VFS, mountpoint: str, *, on_ready: Callable[[], None] | None = None,
          allow_other: bool = False, name: str = "ketch") -> None:
    """Serve the VFS at `mountpoint` until it is unmounted (fusermount3 -u, or
    Ctrl-C / SIGTERM, which libfuse turns into an unmount)."""
    fuse = _load_fuse()
    served = False

    def ready() -> None:
        nonlocal served
        served = True
        if on_ready is not None:
            on_ready()

    ops = operations(vfs, ready)
    options: dict[str, Any] = {"foreground": True, "nothreads": True, "ro": True,
                               "fsname": name, "subtype": "ketch", "default_permissions": True,
                               "use_ino": True}
    if allow_other:
        options["allow_other"] = True
    try:
        fuse.FUSE(ops, mountpoint, **options)
    except RuntimeError as e:
        if served:
            return  # stopped by a signal after serving: libfuse unmounted it
        raise KetchError(f"{mountpoint}: could not mount ({e}): is it an empty directory, "
                         "not mounted already, and is /dev/fuse there?") from None
