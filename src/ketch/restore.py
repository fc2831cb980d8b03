"""Restore paths from saves into a directory, the way `bup restore` lays them out.

Path semantics follow bup 0.33: `NAME/latest/etc` recreates OUTDIR/etc,
`NAME/latest/etc/` puts etc's contents into OUTDIR, `NAME/latest/etc/.` does
that and also gives OUTDIR etc's metadata, and a file restores as OUTDIR/name.

Unlike bup, every blob is checked against the id its tree names while it is
written, and files always come back sparse (bup needs `--sparse`). Existing
paths are replaced the way bup replaces them (non-directories are unlinked,
empty directories removed), but counted and named (see restoreplan); an
existing directory where a directory is restored is merged into instead of
bup's "refusing to overwrite" crash.
"""

from __future__ import annotations

import errno
import os
import stat
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from functools import partial
from typing import Literal

from ketch.errors import CorruptObject, KetchError
from ketch.fsmeta import apply_to_fd, apply_to_path, create_special
from ketch.metadata import Metadata
from ketch.progress import NullProgress, Progress
from ketch.repo import Repository
from ketch.restorebatch import Batch
from ketch.restorefile import ContentError, FileJob
from ketch.restoreplan import Clobber, InTheWay, Kept
from ketch.restoreworkers import pool_for
from ketch.vfs import DEFAULT_DIR_MODE, VFS, Item, show_path

# Errors that doom every later write too: stop at once instead of failing each file.
_FATAL_ERRNOS = frozenset({errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EIO})

_Failure = Literal["unverified", "unreadable", "blocked", "unwritable"]
_DIR_KINDS = frozenset({"dir", "save"})
_SWITCH_INTERVAL = 0.0005  # seconds; see restore()
_SPECIAL_KINDS = frozenset({"fifo", "socket", "chardev", "blockdev"})


class RestoreError(KetchError):
    """A restore could not start or had to stop (bad path, unwritable destination)."""


class RestoreVerifyError(RestoreError):
    """Some content did not match its ids, or some items could not be restored."""

    def __init__(self, message: str, result: RestoreResult) -> None:
        super().__init__(message)
        self.result = result


@dataclass
class RestoreResult:
    files: int = 0
    dirs: int = 0
    symlinks: int = 0
    specials: int = 0
    hardlinks: int = 0
    bytes: int = 0
    warnings: list[str] = field(default_factory=list)
    # Items that were not restored (content mismatch, unreadable objects, paths
    # that could not be created); any of these makes the restore fail.
    errors: list[str] = field(default_factory=list)
    # Why, by kind: content that failed verification, objects the repository
    # could not give, a non-empty directory in the way, a path not writable.
    unverified: int = 0
    unreadable: int = 0
    blocked: int = 0
    unwritable: int = 0
    overwritten: int = 0  # existing entries replaced
    kept: int = 0  # existing entries left alone (--no-clobber)

    def failure_summary(self) -> str:
        """One line: how many items were not restored, and why."""
        n = len(self.errors)
        why = [what if k == n else f"{k} {what}" for k, what in (
            (self.unverified, "failed verification"),
            (self.unreadable, "could not be read from the repository"),
            (self.blocked, "blocked by a non-empty directory"),
            (self.unwritable, "could not be written"),
        ) if k]
        return f"{n} item{'s' if n != 1 else ''} not restored ({', '.join(why)})"


@dataclass
class _Target:
    item: Item
    name: bytes
    contents_only: bool
    apply_top_meta: bool


def _parse_path(path: bytes) -> tuple[bytes, bool, bool]:
    """(vfs path, contents only, apply the leaf's metadata to OUTDIR)."""
    norm = os.path.normpath(path).lstrip(b"/")
    if b"/" not in norm:
        raise RestoreError(f"{show_path(path)}: path doesn't include a branch and revision")
    _, last = os.path.split(path)
    if last == b"":
        return path.rstrip(b"/"), True, False
    if last == b".":
        return path[:-1].rstrip(b"/"), True, True
    return path, False, False


def _resolve(vfs: VFS, path: bytes) -> _Target:
    vpath, contents_only, apply_top = _parse_path(path)
    try:
        item = vfs.resolve(vpath, follow=contents_only)
        name = item.name
        if item.kind == "latest":
            # bup follows `latest` but keeps restoring it under that name.
            item = vfs.resolve(vpath, follow=True)
    except KetchError as e:
        # The VFS's messages already name the path.
        raise RestoreError(str(e)) from e
    if item.kind in ("root", "tags", "branch"):
        raise RestoreError(f"{show_path(path)}: not a save or a path inside one")
    if contents_only and item.kind not in _DIR_KINDS:
        raise RestoreError(f"{show_path(path)}: cannot be restored as a directory")
    return _Target(item, name, contents_only, apply_top)


def _file_size(vfs: VFS, item: Item) -> int:
    if item.meta is not None and item.meta.size is not None:
        return item.meta.size
    return vfs.size(item)


def _link_key(oid: bytes | None, meta: Metadata) -> tuple[object, ...]:
    # bup only re-links members that still look like one inode: the save may
    # have caught a link set changing between index and save.
    return (oid, meta.mode, meta.uid, meta.gid, meta.rdev, meta.mtime, meta.ctime,
            meta.linux_attr, meta.linux_xattr, meta.posix1e_acl)


class _Restorer:
    def __init__(self, vfs: VFS, numeric_ids: bool, progress: Progress,
                 clobber: Clobber) -> None:
        self.vfs = vfs
        self.clobber = clobber
        self.objects: Repository = vfs.repo
        self.numeric_ids = numeric_ids
        self.progress = progress
        self.result = RestoreResult()
        # hardlink target -> [(link key, restored path)]
        self.links: dict[bytes, list[tuple[tuple[object, ...], bytes]]] = {}
        # Verified all-zero blobs (bup's 32 KiB zero chunk, mostly) -> size, so
        # long runs of zeros cost neither a read nor a hash per chunk.
        self.zero_blobs: dict[bytes, int] = {}
        # Files are written in batches (restorebatch): created here in walk
        # order, finished when their blobs have been read.
        self.batch = Batch(self.objects, self.zero_blobs, progress, pool_for(self.objects))
        # Link targets whose first path is still in the batch.
        self.pending_links: set[bytes] = set()

    # -- reporting -------------------------------------------------------------

    def warn(self, message: str) -> None:
        self.result.warnings.append(message)
        self.progress.warn(message)

    def fail(self, message: str, kind: _Failure) -> None:
        """An item not restored, and why."""
        if kind == "unverified":
            self.result.unverified += 1
        elif kind == "unreadable":
            self.result.unreadable += 1
        elif kind == "blocked":
            self.result.blocked += 1
        else:
            self.result.unwritable += 1
        self.result.errors.append(message)
        self.progress.warn(message)

    def os_error(self, path: bytes, e: OSError, what: str) -> None:
        if e.errno in _FATAL_ERRNOS:
            raise RestoreError(f"{show_path(path)}: {what}: {e.strerror}") from e
        self.fail(f"{show_path(path)}: {what}: {e.strerror}", "unwritable")

    # -- totals ----------------------------------------------------------------

    def totals(self, targets: list[_Target]) -> tuple[int, int]:
        nbytes = nfiles = 0
        seen: set[bytes] = set()
        for t in targets:
            if t.item.kind in _DIR_KINDS:
                entries: Iterator[tuple[bytes, Item]] = self.vfs.walk(t.item)
            else:
                entries = iter([(t.name, t.item)])
            for _, it in entries:
                if it.kind in _DIR_KINDS:
                    continue
                nfiles += 1
                if it.kind != "file":
                    continue
                hl = it.meta.hardlink_target if it.meta is not None else None
                if hl:
                    if hl in seen:
                        continue
                    seen.add(hl)
                nbytes += _file_size(self.vfs, it)
        return nbytes, nfiles

    # -- the walk ----------------------------------------------------------------

    def run(self, targets: list[_Target], outdir: bytes) -> None:
        try:
            for t in targets:
                if t.contents_only:
                    meta = self.vfs.fill_meta(t.item).meta
                    self.restore_tree(t.item, outdir, None)
                    if t.apply_top_meta and meta is not None:
                        self.batch.later(partial(self.apply, meta, outdir))
                elif t.item.kind in _DIR_KINDS:
                    self.restore_tree(t.item, os.path.join(outdir, t.name), t.item)
                else:
                    self.restore_leaf(t.item, os.path.join(outdir, t.name))
            self.batch.complete()
        except BaseException:
            # Files begun but not finished are not left behind half written.
            for job in self.batch.abandon():
                self.discard(job.path)
            raise

    def restore_tree(self, top: Item, top_path: bytes, create: Item | None) -> None:
        """Restore a directory's contents under top_path (creating top_path first
        unless `create` is None); directory metadata is applied on the way out,
        so neither file creation nor a read-only mode gets in the way."""
        stack: list[tuple[Iterator[Item], bytes, Metadata | None]] = []
        if create is not None:
            made, meta = self.make_dir(create, top_path)
            if not made:
                return
            stack.append((self.children(top), top_path, meta))
        else:
            stack.append((self.children(top), top_path, None))
        while stack:
            children, path, meta = stack[-1]
            child = next(children, None)
            if child is None:
                stack.pop()
                if meta is not None:
                    self.batch.later(partial(self.apply, meta, path))
                elif path != top_path or create is not None:
                    self.batch.later(partial(self.default_mode, path, DEFAULT_DIR_MODE))
                continue
            dest = os.path.join(path, child.name)
            if child.kind in _DIR_KINDS:
                made, sub = self.make_dir(child, dest)
                if made:
                    stack.append((self.children(child), dest, sub))
            else:
                self.restore_leaf(child, dest)

    def children(self, item: Item) -> Iterator[Item]:
        kids = list(self.vfs.contents(item))
        # A server fetches a directory's small files in one request instead of one each.
        self.vfs.repo.prefetch([k.oid for k in kids if k.kind == "file" and k.oid is not None])
        return iter(kids)

    def make_dir(self, item: Item, path: bytes) -> tuple[bool, Metadata | None]:
        """Create (or reuse) the directory: (made?, its metadata if it has any)."""
        try:
            meta = self.vfs.fill_meta(item).meta
        except KetchError as e:
            self.fail(f"{show_path(path)}: not restored: {e}", "unreadable")
            return False, None
        if meta is not None and meta.mode is None:
            meta = None
        try:
            try:
                os.mkdir(path, 0o700)
            except FileExistsError:
                st = self.clobber.make_way(path, want_dir=True)
                if st is None:
                    os.mkdir(path, 0o700)
                elif not os.access(path, os.W_OK | os.X_OK):
                    os.chmod(path, stat.S_IMODE(st.st_mode) | 0o700)
        except OSError as e:
            self.os_error(path, e, "cannot create directory")
            return False, None
        except Kept:
            return False, None
        self.result.dirs += 1
        return True, meta

    def default_mode(self, path: bytes, mode: int) -> None:
        # Grafted and split saves have entries without metadata; they get the
        # VFS's default permissions instead of the 0600/0700 they were made with.
        try:
            os.chmod(path, stat.S_IMODE(mode))
        except OSError as e:
            self.warn(f"{show_path(path)}: chmod {stat.S_IMODE(mode):o}: {e.strerror}")

    def apply(self, meta: Metadata, path: bytes, fd: int | None = None) -> None:
        try:
            if fd is None:
                apply_to_path(meta, path, numeric_ids=self.numeric_ids, warn=self.warn)
            else:
                apply_to_fd(meta, fd, path, numeric_ids=self.numeric_ids, warn=self.warn)
        except (OSError, KetchError) as e:
            msg = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
            self.warn(f"{show_path(path)}: cannot apply metadata: {msg}")

    # -- non-directories -----------------------------------------------------------

    def restore_leaf(self, item: Item, path: bytes) -> None:
        meta = item.meta
        hl = (meta.hardlink_target if meta is not None else None) or b""
        key = _link_key(item.oid, meta) if hl and meta is not None else None
        if key is not None and hl in self.pending_links:
            self.batch.complete()  # a link's first path must be complete to link to
        try:
            # Creation fails with EEXIST rather than following or truncating
            # whatever is there; only then is the old entry removed.
            try:
                linked = key is not None and self.relink(hl, key, path)
                done = linked or self.create_leaf(item, meta, path)
            except OSError as e:
                if e.errno != errno.EEXIST:
                    raise
                self.clobber.make_way(path, want_dir=False)
                linked = key is not None and self.relink(hl, key, path)
                done = linked or self.create_leaf(item, meta, path)
            if linked:
                self.progress.advance(0, 1)
                return
        except Kept:
            self.progress.advance(0, 1)
            return
        except InTheWay as e:
            self.fail(f"{show_path(path)}: not restored: {e}", "blocked")
            return
        except OSError as e:
            self.os_error(path, e, "cannot restore")
            return
        if done is None:  # queued: the batch finishes it
            if key is not None:
                self.pending_links.add(hl)
            return
        self.leaf_done(item, meta, path, key, hl, done)

    def leaf_done(self, item: Item, meta: Metadata | None, path: bytes,
                  key: tuple[object, ...] | None, hl: bytes, done: bool,
                  fd: int | None = None) -> None:
        """`fd`: the file, still open (a regular file the batch wrote)."""
        self.progress.advance(0, 1)
        if not done:
            return
        if meta is not None and meta.mode is not None:
            self.apply(meta, path, fd)
        elif item.kind != "symlink":
            self.default_mode(path, item.mode)
        if key is not None:
            self.links.setdefault(hl, []).append((key, path))

    def relink(self, target: bytes, key: tuple[object, ...], path: bytes) -> bool:
        for prev_key, prev_path in self.links.get(target, ()):
            if prev_key != key:
                continue
            try:
                os.link(prev_path, path)
            except FileNotFoundError:
                continue
            except OSError as e:
                if e.errno in (errno.EXDEV, errno.EMLINK, errno.EPERM):
                    continue
                raise
            self.result.hardlinks += 1
            return True
        return False

    def create_leaf(self, item: Item, meta: Metadata | None, path: bytes) -> bool | None:
        """Create the non-directory; False if it failed (already reported),
        None if it is a file the batch finishes."""
        kind = item.kind
        if kind == "file":
            return self.write_file(item, meta, path)
        if kind == "symlink":
            # The VFS falls back to the blob when .bupm has no target.
            os.symlink(self.vfs.readlink(item), path)
            self.result.symlinks += 1
            return True
        if kind in _SPECIAL_KINDS and meta is not None and meta.mode is not None:
            create_special(meta, path)
            self.result.specials += 1
            return True
        self.warn(f"{show_path(path)}: not restoring a {kind} without metadata")
        return False

    # -- regular files -------------------------------------------------------------

    def write_file(self, item: Item, meta: Metadata | None, path: bytes) -> bool | None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
                     0o600)
        if item.oid is None:
            os.close(fd)
            return self.file_written(meta, path, 0)
        hl = (meta.hardlink_target if meta is not None else None) or b""
        key = _link_key(item.oid, meta) if hl and meta is not None else None

        def done(job: FileJob) -> None:
            self.pending_links.discard(hl)
            self.leaf_done(item, meta, path, key, hl, self.file_written(meta, path, job.size),
                           job.fd)

        def failed(job: FileJob, e: Exception) -> None:
            self.pending_links.discard(hl)
            self.discard(path)
            self.progress.advance(0, 1)
            if isinstance(e, OSError):
                self.os_error(path, e, "cannot restore")
                return
            self.fail(f"{show_path(path)}: not restored: {e}",
                      "unverified" if isinstance(e, (ContentError, CorruptObject))
                      else "unreadable")

        job = FileJob(fd, path, done, failed)
        hint = meta.size if meta is not None and meta.size is not None else 0
        self.batch.add(job, item.oid, item.chunked, hint)
        return None

    def file_written(self, meta: Metadata | None, path: bytes, size: int) -> bool:
        if meta is not None and meta.size is not None and size != meta.size:
            self.discard(path)
            self.fail(f"{show_path(path)}: not restored: size is {size}, "
                      f"metadata says {meta.size}", "unverified")
            return False
        self.result.files += 1
        self.result.bytes += size
        return True

    def discard(self, path: bytes) -> None:
        try:
            os.unlink(path)
        except OSError:
            pass


def restore(
    vfs: VFS,
    paths: list[bytes],
    outdir: str | bytes,
    *,
    numeric_ids: bool = False,
    progress: Progress | None = None,
    no_clobber: bool = False,
    on_overwrite: Callable[[bytes], None] | None = None,
    on_keep: Callable[[bytes], None] | None = None,
) -> RestoreResult:
    """Restore each path (a VFS path such as b"NAME/latest/etc") into outdir.

    Raises RestoreError before writing anything if a path does not resolve or
    outdir cannot be made, RestoreError midway if the destination as a whole
    fails (no space, read-only, I/O error), and RestoreVerifyError after
    finishing everything else if any item failed verification or could not
    be restored (each is also reported through progress.warn).

    An existing entry in the way is replaced and passed to `on_overwrite`, or
    with `no_clobber` left alone and passed to `on_keep` (see restoreplan).
    """
    progress = progress or NullProgress()
    targets = [_resolve(vfs, p) for p in paths]
    out = os.path.abspath(os.fsencode(outdir))
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise RestoreError(f"{show_path(out)}: cannot create output directory: {e.strerror}") from e
    if not os.path.isdir(out):
        raise RestoreError(f"{show_path(out)}: not a directory")
    clobber = Clobber(no_clobber, on_overwrite, on_keep)
    r = _Restorer(vfs, numeric_ids, progress, clobber)
    # The reader thread gives up the GIL several times a blob (pread, inflate,
    # hash); at the default 5 ms switch interval each time back waits behind
    # the writing thread, and the restore ran at a third of its speed.
    switch = sys.getswitchinterval()
    sys.setswitchinterval(min(switch, _SWITCH_INTERVAL))
    try:
        for t in targets:
            vfs.read_ahead(t.item)
        progress.start(*(r.totals(targets) if progress.wants_totals else (None, None)))
        r.run(targets, out)
    finally:
        r.batch.close()
        sys.setswitchinterval(switch)
        progress.finish()
        r.result.overwritten, r.result.kept = clobber.overwritten, clobber.kept
    if r.result.errors:
        raise RestoreVerifyError(r.result.failure_summary(), r.result)
    return r.result
