"""`ketch save`: a filesystem snapshot as one commit, in bup 0.33's exact layout.

What a save contains (the rule, documented in the README): exactly the paths
given on the command line, recursively, as they are while the save runs, minus
the exclude rules (given to `save`, or recorded by `ketch index` for a root that
covers the path). The index is only a cache: a file whose fingerprint (dev,
inode, mode, size, mtime, ctime, nlink) matches an indexed id is not read again.
No save drops a path because of what another save or another name indexed.

Layout (bup-format.md 2): the commit's tree is `/`; every directory tree holds a
`.bupm` (its own metadata first, then one record per non-directory entry in
unmangled-name order); chunked files are `NAME.bup` trees; names ending in
`.bup`/`.bup?` get `.bupl`; regular files are 100644, symlinks 120000 with the
target as blob, fifos/sockets/devices are empty blobs described by `.bupm`.
"""

from __future__ import annotations

import os
import stat
import time
from dataclasses import dataclass, field

from ketch import split as hs
from ketch.archive import Layout, Node, build_top
from ketch.buptree import chunks_object, demangle, mangle, store_bytes, write_dir_tree
from ketch.commits import argv_message
from ketch.errors import EXIT_OK, EXIT_WARNINGS
from ketch.excludes import ExcludeRules
from ketch.fsmeta import from_path
from ketch.git import objects as gobj
from ketch.git.refs import validate_branch_name
from ketch.index import Entry, Fingerprint, Index
from ketch.interrupt import stop_signals
from ketch.metadata import EMPTY_RECORD, Metadata
from ketch.progress import NullProgress, Progress
from ketch.repo import ObjectWriter, Repository, WritableRepository
from ketch.savefork import ForkedBigFiles, big_files_for
from ketch.savepipe import BigFiles, DirBuild, Later, Stored, store_file
from ketch.savesmall import read_small
from ketch.snapshot import write_snapshot

# Files below this size are read whole and chunked together with the rest of
# their directory's small files, in batches of about _SMALL_BATCH bytes.
_SMALL_FILE = 1 << 20
_SMALL_BATCH = 4 << 20


@dataclass
class SaveOptions:
    name: str
    paths: list[str]
    strip: bool = False
    strip_path: str | None = None
    grafts: list[tuple[str, str]] = field(default_factory=list)
    rules: ExcludeRules = field(default_factory=ExcludeRules)
    date: float | None = None
    level: int = 1
    # False: big files are stored on the walking thread too, one after the
    # other (the reference the pipeline's saves are held to, byte for byte).
    pipeline: bool = True
    argv: list[str] = field(default_factory=lambda: ["ketch", "save"])


@dataclass
class SaveResult:
    commit: bytes = b""
    tree: bytes = b""
    name: str = ""
    files: int = 0
    dirs: int = 0
    files_read: int = 0
    bytes_read: int = 0
    bytes_new: int = 0
    objects_new: int = 0
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return EXIT_WARNINGS if self.warnings else EXIT_OK

    def as_dict(self) -> dict[str, object]:
        return {"name": self.name, "commit": self.commit.hex(), "tree": self.tree.hex(),
                "files": self.files, "dirs": self.dirs, "files_read": self.files_read,
                "bytes_read": self.bytes_read, "bytes_new": self.bytes_new,
                "objects_new": self.objects_new, "seconds": round(self.seconds, 3),
                "warnings": self.warnings}


# -- the walk ------------------------------------------------------------------------


class _Saver:
    def __init__(self, repo: Repository, w: ObjectWriter, index: Index | None,
                 opts: SaveOptions, progress: Progress, result: SaveResult,
                 big: BigFiles | ForkedBigFiles | None = None) -> None:
        self.repo = repo
        self.big = big
        self.w = w
        self.index = index
        self.opts = opts
        self.progress = progress
        self.result = result
        self.hardlinks: dict[tuple[int, int], bytes] = {}
        self.rules_cache: dict[bytes, ExcludeRules] = {}

    def warn(self, msg: str) -> None:
        self.result.warnings.append(msg)
        self.progress.warn(msg)

    def rules(self, source: bytes) -> ExcludeRules:
        r = self.rules_cache.get(source)
        if r is None:
            r = self.opts.rules
            if self.index is not None:
                r = r.merged(self.index.rules_for(source))
            self.rules_cache[source] = r
        return r

    # -- objects -----------------------------------------------------------------

    def store_bytes(self, data: bytes) -> tuple[int, bytes]:
        """Chunk a small in-memory stream (a .bupm): (mode, oid)."""
        return store_bytes(self.w, data)

    def take_stored(self, path: bytes, name: bytes, st: os.stat_result,
                    stored: Stored) -> tuple[gobj.TreeEntry, bytes] | None:
        """The entry and .bupm record of a big file once it is stored."""
        if stored.ok:
            self.result.files_read += 1
            self.result.bytes_read += stored.size
        for msg in stored.warnings:
            self.warn(msg)
        if not stored.ok:
            return None
        got = self.finish_nondir(path, name, st, stored.gitmode, stored.oid, stored.size)
        if got is not None and self.index is not None:
            self.index.record(path, st, stored.oid, stored.gitmode, got[1])
        return got

    # -- entries -----------------------------------------------------------------

    def reuse(self, st: os.stat_result, e: Entry | None) -> tuple[bytes, int] | None:
        """(oid, gitmode) from the index for an unchanged, still stored file."""
        if e is None or e.oid is None or e.gitmode is None:
            return None
        if e.fingerprint != Fingerprint.of(st) or not self.w.exists(e.oid):
            return None
        return e.oid, e.gitmode

    def nondir(self, path: bytes, name: bytes, st: os.stat_result,
               reused: tuple[bytes, int] | None = None) -> tuple[gobj.TreeEntry, bytes] | None:
        """The tree entry and .bupm record of a non-directory (big files read here);
        `reused`: the index's (oid, gitmode) for an unchanged regular file."""
        mode = st.st_mode
        size: int | None = None
        if stat.S_ISREG(mode):
            if reused is not None:
                oid, gitmode = reused
                size = st.st_size
                self.progress.advance(st.st_size)
            else:
                return self.take_stored(path, name, st,
                                        store_file(self.w, path, st, self.progress))
        elif stat.S_ISLNK(mode):
            try:
                target = os.readlink(path)
            except OSError as e:
                self.warn(f"{os.fsdecode(path)}: {e.strerror}; skipped")
                return None
            gitmode, oid = gobj.MODE_SYMLINK, self.w.write(gobj.BLOB, target,
                                                             metadata=True)
        else:
            gitmode, oid = gobj.MODE_FILE, self.w.write(gobj.BLOB, b"")
        got = self.finish_nondir(path, name, st, gitmode, oid, size)
        if got is not None and self.index is not None:
            self.index.record(path, st, oid, gitmode, got[1])
        return got

    def _known_one(self, path: bytes) -> dict[bytes, Entry]:
        if self.index is None:
            return {}
        e = self.index.lookup(path)
        return {} if e is None else {path: e}

    def finish_nondir(self, path: bytes, name: bytes, st: os.stat_result, gitmode: int,
                      oid: bytes, size: int | None, meta: Metadata | None = None
                      ) -> tuple[gobj.TreeEntry, bytes] | None:
        """`meta`: read with the file (a small one); else it is read now."""
        hl = None
        if st.st_nlink > 1:
            hl = self.hardlinks.setdefault((st.st_dev, st.st_ino), path)
        if meta is not None:
            meta.hardlink_target = hl
        else:
            try:
                meta = from_path(path, st, hardlink_target=hl, warn=self.warn)
            except OSError as e:
                self.warn(f"{os.fsdecode(path)}: {e.strerror}; skipped")
                return None
        if size is not None:
            meta.size = size
        self.result.files += 1
        self.progress.advance(0, 1)
        chunked = gitmode == gobj.MODE_TREE
        return gobj.TreeEntry(gitmode, mangle(name, chunked), oid), meta.encode()

    def store_small(self, pending: list[tuple[bytes, bytes, os.stat_result, bytes, Metadata]],
                    entries: list[gobj.TreeEntry], records: list[tuple[bytes, bytes]]) -> None:
        """Chunk and store a directory's small files together (see split.split_files)."""
        if not pending:
            return
        per_file = hs.split_files([d for _, _, _, d, _ in pending])
        oids = self.w.write_many(gobj.BLOB, [c for chunks in per_file for c, _ in chunks])
        i = 0
        for (path, name, st, data, meta), chunks in zip(pending, per_file, strict=True):
            gitmode, oid = chunks_object(self.w, chunks, oids[i : i + len(chunks)])
            i += len(chunks)
            got = self.finish_nondir(path, name, st, gitmode, oid, len(data), meta)
            if got is not None:
                entries.append(got[0])
                records.append((name, got[1]))
                if self.index is not None:
                    self.index.record(path, st, oid, gitmode, got[1])
        pending.clear()

    def directory(self, path: bytes, st: os.stat_result, rules: ExcludeRules, dev: int,
                  own: Entry | None = None) -> tuple[bytes | Later | None, bool]:
        """Save a real directory recursively: (tree id, or Later while big files
        under it are being stored, or None if unreadable; whether the tree recorded
        in the index for it was reused unchanged)."""
        d = self.contents(path, rules, dev)
        if d is None:
            return None, False
        rules_key = rules.key()
        if (d.unchanged and own is not None and own.oid is not None and own.rules == rules_key
                and own.fingerprint == Fingerprint.of(st) and self.w.exists(own.oid)):
            # Nothing in it changed: its old tree (with its old .bupm) still holds,
            # as bup reuses an unchanged directory.
            self.result.dirs += 1
            return own.oid, True
        self.verify_reused(d)
        try:
            dir_record = from_path(path, st, warn=self.warn).encode()
        except OSError as e:
            self.warn(f"{os.fsdecode(path)}: {e.strerror}; skipped")
            return None, False

        def finish() -> bytes:
            self.resolve(d)
            tree = self.make_tree(dir_record, d.entries, d.records)
            if self.index is not None:
                self.index.record(path, st, tree, gobj.MODE_TREE, None, rules_key)
            return tree

        if d.later_files or d.later_dirs:
            return Later(finish), False
        return finish(), False

    def resolve(self, d: DirBuild) -> None:
        """Add the big files stored beside the walk, and the subdirectories that
        waited for some, to the directory's entries (tree order is by name, so the
        order they finish in does not matter)."""
        for name, later in d.later_dirs:
            sub = later.result()
            if sub is not None:
                d.entries.append(gobj.TreeEntry(gobj.MODE_TREE, mangle(name, False), sub))
        for path, name, st, fut in d.later_files:
            got = self.take_stored(path, name, st, fut.result())
            if got is not None:
                d.entries.append(got[0])
                d.records.append((name, got[1]))
        d.later_dirs = []
        d.later_files = []

    def verify_reused(self, d: DirBuild) -> None:
        """Add the files taken from the index to the directory's entries, once their
        objects are known to be stored (one query for the directory); a file whose
        objects are gone is read again."""
        if not d.reused:
            return
        there = self.repo.has_many([e.oid for _, _, _, e in d.reused if e.oid is not None])
        for (path, name, st, e), ok in zip(d.reused, there, strict=True):
            assert e.oid is not None and e.gitmode is not None and e.meta is not None
            if ok or self.w.exists(e.oid):
                d.entries.append(gobj.TreeEntry(
                    e.gitmode, mangle(name, e.gitmode == gobj.MODE_TREE), e.oid))
                d.records.append((name, e.meta))
                continue
            self.result.files -= 1
            got = self.nondir(path, name, st, None)
            if got is not None:
                d.entries.append(got[0])
                d.records.append((name, got[1]))
        d.reused = []

    def contents(self, path: bytes, rules: ExcludeRules, dev: int) -> DirBuild | None:
        """A directory's tree entries and non-directory records, and whether all of
        it matched the index."""
        try:
            names = sorted(os.listdir(path))
        except OSError as e:
            self.warn(f"{os.fsdecode(path)}: {e.strerror}; skipped")
            return None
        if rules.has_marker(path):
            names = []
        d = DirBuild(known=self.index.children(path) if self.index is not None else {})
        base = path + b"/" if not path.endswith(b"/") else path
        lstat = os.lstat
        known = d.known
        subdirs: list[tuple[bytes, bytes, os.stat_result, Entry | None]] = []
        for name in names:
            child = base + name
            try:
                cst = lstat(child)
            except OSError as e:
                self.warn(f"{os.fsdecode(child)}: {e.strerror}; skipped")
                continue
            is_dir = stat.S_ISDIR(cst.st_mode)
            if rules and rules.excluded(child, name, is_dir):
                continue
            d.seen += 1
            ent = known.get(child)
            if not is_dir:
                if (ent is not None and ent.meta is not None and ent.oid is not None
                        and cst.st_nlink == 1 and ent.fingerprint == (
                            cst.st_dev, cst.st_ino, cst.st_mode, cst.st_size,
                            cst.st_mtime_ns, cst.st_ctime_ns, cst.st_nlink)):
                    # Unchanged since the last save (the common case on a re-save):
                    # its id and .bupm record as stored; that the objects are still
                    # there is checked once per directory, if its tree is rebuilt.
                    d.reused.append((child, name, cst, ent))
                    continue
                self.add_nondir(d, child, name, cst, ent)
            elif not rules.one_file_system or cst.st_dev == dev:
                subdirs.append((child, name, cst, ent))
        # Subdirectories after the files: the big files here are being stored
        # (by the save's child) while the walk goes down.
        for child, name, cst, ent in subdirs:
            sub, same = self.directory(child, cst, rules, dev, ent)
            d.unchanged &= same
            if isinstance(sub, Later):
                d.later_dirs.append((name, sub))
            elif sub is not None:
                d.entries.append(gobj.TreeEntry(gobj.MODE_TREE, mangle(name, False), sub))
        self.store_small(d.small, d.entries, d.records)
        d.unchanged = d.unchanged and d.seen == len(d.known)
        self.result.files += len(d.reused)
        if d.reused:
            self.progress.advance(sum(st.st_size for _, _, st, _ in d.reused), len(d.reused))
        return d

    def add_nondir(self, d: DirBuild, path: bytes, name: bytes, st: os.stat_result,
                   ent: Entry | None) -> None:
        d.unchanged = False
        reused = self.reuse(st, ent)
        if reused is None and stat.S_ISREG(st.st_mode) and st.st_size < _SMALL_FILE:
            got_small = read_small(path, st, self.warn)
            if got_small is not None:
                data, meta = got_small
                self.progress.advance(len(data))
                self.result.files_read += 1
                self.result.bytes_read += len(data)
                d.small.append((path, name, st, data, meta))
                d.small_bytes += len(data)
                if d.small_bytes >= _SMALL_BATCH:
                    self.store_small(d.small, d.entries, d.records)
                    d.small_bytes = 0
            return
        if reused is None and stat.S_ISREG(st.st_mode) and self.big is not None:
            # Stored beside the walk. Which name of a hard link is the target is
            # decided here, in walk order, as if it were stored now.
            if st.st_nlink > 1:
                self.hardlinks.setdefault((st.st_dev, st.st_ino), path)
            d.later_files.append((path, name, st, self.big.submit(path, st)))
            return
        got = self.nondir(path, name, st, reused)
        if got is not None:
            d.entries.append(got[0])
            d.records.append((name, got[1]))

    def make_tree(self, dir_record: bytes, entries: list[gobj.TreeEntry],
                  records: list[tuple[bytes, bytes]]) -> bytes:
        self.result.dirs += 1
        return write_dir_tree(self.w, dir_record, entries, records)

    def node(self, node: Node) -> bytes:
        """Save an archive directory above the sources (or a source merged into it)."""
        dir_record = EMPTY_RECORD
        if node.meta_path is not None:
            try:
                dir_record = from_path(node.meta_path, warn=self.warn).encode()
            except OSError as e:
                self.warn(f"{os.fsdecode(node.meta_path)}: {e.strerror}")
        entries: list[gobj.TreeEntry] = []
        records: list[tuple[bytes, bytes]] = []
        taken: set[bytes] = set()
        later = DirBuild(known={})
        for name, child in sorted(node.children.items()):
            taken.add(name)
            if child.file_source is not None:
                try:
                    fst = os.lstat(child.file_source)
                    got = self.nondir(child.file_source, name, fst,
                                      self.reuse(fst, self._known_one(child.file_source)
                                                 .get(child.file_source)))
                except OSError as e:
                    self.warn(f"{os.fsdecode(child.file_source)}: {e.strerror}; skipped")
                    continue
                if got is not None:
                    entries.append(got[0])
                    records.append((name, got[1]))
            elif child.source is not None and not child.children:
                st = os.lstat(child.source)
                sub, _ = self.directory(child.source, st, self.rules(child.source), st.st_dev,
                                        self._known_one(child.source).get(child.source))
                if isinstance(sub, Later):
                    later.later_dirs.append((name, sub))
                elif sub is not None:
                    entries.append(gobj.TreeEntry(gobj.MODE_TREE, mangle(name, False), sub))
            else:
                entries.append(gobj.TreeEntry(gobj.MODE_TREE, mangle(name, False),
                                              self.node(child)))
        if node.source is not None:
            # A source merged into this node (--strip, or a graft onto it).
            st = os.lstat(node.source)
            merged = self.contents(node.source, self.rules(node.source), st.st_dev)
            if merged is not None:
                self.verify_reused(merged)
                self.resolve(merged)
                entries += [e for e in merged.entries
                            if demangle(e.name, e.mode)[0] not in taken]
                records += [r for r in merged.records if r[0] not in taken]
        self.resolve(later)
        entries += later.entries
        return self.make_tree(dir_record, entries, records)


def save(repo: WritableRepository, opts: SaveOptions, *, index: Index | None = None,
         progress: Progress | None = None) -> SaveResult:
    """Save `opts.paths` as a new commit on branch `opts.name`.

    SIGINT or SIGTERM end it with KeyboardInterrupt; the branch does not move, but the
    complete objects written so far stay in finished packs and the index keeps
    the files they hold, so the next save neither reads nor writes them again."""
    validate_branch_name(opts.name.encode())
    progress = progress or NullProgress()
    with stop_signals(), repo.writing():
        try:
            return _save(repo, opts, index, progress)
        except KeyboardInterrupt:
            progress.finish()  # ends the meter's line before the message
            raise


def _save(repo: WritableRepository, opts: SaveOptions, index: Index | None,
          progress: Progress) -> SaveResult:
    t0 = time.monotonic()
    result = SaveResult(name=opts.name)
    def warn(msg: str) -> None:
        result.warnings.append(msg)
        progress.warn(msg)

    top = build_top(opts.paths, Layout(opts.strip, opts.strip_path, opts.grafts), warn)
    if index is not None:
        total = sum(index.total_size_under(os.fsencode(os.path.abspath(p))) or 0
                    for p in opts.paths)
        progress.start(total or None)
        index.only_stored(repo.has_many)

    def build(w: ObjectWriter) -> bytes:
        big = big_files_for(repo, w, progress, opts.level) if opts.pipeline else None
        try:
            result.tree = _Saver(repo, w, index, opts, progress, result, big).node(top)
        finally:
            if big is not None:
                big.close()  # nothing may write while the writer closes or aborts
        return result.tree

    try:
        snap = write_snapshot(repo, opts.name, build,
                              message=argv_message("ketch save", opts.argv),
                              reflog=b"ketch save", date=opts.date, progress=progress,
                              level=opts.level)
    finally:
        if index is not None:
            index.flush()  # what the kept packs hold, even after an interrupt
    assert snap.commit is not None
    result.commit = snap.commit
    result.bytes_new, result.objects_new = snap.bytes_new, snap.objects_new
    result.seconds = time.monotonic() - t0
    return result
