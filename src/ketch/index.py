"""ketch's filesystem index: path -> stat fingerprint, object id, git mode.

It is a cache, never the definition of a save: `ketch save PATH...` saves exactly
the paths it is given, as they are when it runs, and only asks the index whether
a file with an unchanged fingerprint already has a stored object id (then the
file is not read). `ketch index PATH...` refreshes fingerprints ahead of a save
and remembers each root's exclude rules, which later saves of that root apply.

Storage is SQLite in WAL mode: crash-safe, and lookups and scans stay on disk,
so memory does not grow with the number of paths.

A save's rows reach the database only once their objects are stored for good
(`only_stored`): a row waits in memory while its objects are in a pack still
being written, and a save that is cut leaves the index naming only files whose
objects are all in finished packs, never a file a crash could lose.
"""

from __future__ import annotations

import contextlib
import json
import os
import sqlite3
import stat
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

from ketch.errors import KetchError
from ketch.excludes import ExcludeRules

_VERSION = 3
_SCHEMA = """
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,
    dev INTEGER, ino INTEGER, mode INTEGER, size INTEGER,
    mtime INTEGER, ctime INTEGER, nlink INTEGER,
    oid BLOB, gitmode INTEGER,
    meta BLOB,      -- files: the encoded .bupm record saved with this state
    rules TEXT,     -- directories: the exclude rules the tree was made with
    parent BLOB     -- the containing directory, for one-query directory listings
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS files_parent ON files (parent);
CREATE TABLE IF NOT EXISTS roots (
    path BLOB PRIMARY KEY, rules TEXT, indexed_at INTEGER
) WITHOUT ROWID;
"""

# Rows written to the database at a time.
_FLUSH_ROWS = 2000
# Changes this close to the walk's start may not have moved mtime yet (timestamps
# have coarse granularity): such files get no reusable id and are read next time.
_RACY_NS = 1_000_000_000


class IndexError_(KetchError):
    """The index could not be read or written."""


class Fingerprint(NamedTuple):
    dev: int
    ino: int
    mode: int
    size: int
    mtime: int
    ctime: int
    nlink: int

    @classmethod
    def of(cls, st: os.stat_result) -> Fingerprint:
        return cls(st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns,
                   st.st_ctime_ns, st.st_nlink)


class Entry(NamedTuple):
    fingerprint: Fingerprint
    oid: bytes | None
    gitmode: int | None
    meta: bytes | None = None
    rules: str | None = None


@dataclass
class IndexResult:
    paths: int = 0
    changed: int = 0
    removed: int = 0
    warnings: list[str] = field(default_factory=list)


class Index:
    def __init__(self, path: str) -> None:
        self.path = path
        try:
            self._db = sqlite3.connect(path, timeout=30, isolation_level=None)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
            (version,) = self._db.execute("PRAGMA user_version").fetchone()
            if version != _VERSION:
                # Only a cache: an index from another ketch version is rebuilt.
                self._db.executescript("DROP TABLE IF EXISTS files; DROP TABLE IF EXISTS roots;")
                self._db.execute(f"PRAGMA user_version={_VERSION}")
            self._db.executescript(_SCHEMA)
        except sqlite3.Error as e:
            raise IndexError_(f"{path}: cannot open index: {e}") from None
        self._pending: list[tuple[object, ...]] = []
        self._flush_at = _FLUSH_ROWS
        self._stored: Callable[[list[bytes]], Sequence[bool]] | None = None
        self._waiting = 0  # rows at the front of _pending found not stored yet
        self.started_ns = time.time_ns()

    def close(self) -> None:
        """Write what is stored; rows whose objects never were are dropped."""
        self.flush()
        self._db.close()

    def only_stored(self, stored: Callable[[list[bytes]], Sequence[bool]]) -> None:
        """From now on a recorded row is written only once `stored([oid])` says
        its object is in the repository for good (a save's writer adds a pack
        there only once it is durable)."""
        self._stored = stored

    def __enter__(self) -> Index:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- lookups used by save ----------------------------------------------------

    def lookup(self, path: bytes) -> Entry | None:
        row = self._db.execute(
            "SELECT dev, ino, mode, size, mtime, ctime, nlink, oid, gitmode, meta, rules"
            " FROM files WHERE path = ?", (path,)).fetchone()
        if row is None:
            return None
        return Entry(Fingerprint(*row[:7]), *row[7:])

    def children(self, dir_path: bytes) -> dict[bytes, Entry]:
        """Every entry directly inside a directory, in one query."""
        return {row[0]: Entry(Fingerprint._make(row[1:8]), *row[8:])
                for row in self._db.execute(
                    "SELECT path, dev, ino, mode, size, mtime, ctime, nlink, oid, gitmode, meta,"
                    " rules FROM files WHERE parent = ?", (dir_path,))}

    def record(self, path: bytes, st: os.stat_result, oid: bytes | None,
               gitmode: int | None, meta: bytes | None = None, rules: str | None = None
               ) -> None:
        fp = Fingerprint.of(st)
        if max(fp.mtime, fp.ctime) >= self.started_ns - _RACY_NS:
            oid = None
        self._pending.append((path, *fp, oid, gitmode, meta, rules, os.path.dirname(path)))
        if len(self._pending) >= self._flush_at:
            self.flush()

    def flush(self) -> None:
        """Write the pending rows (with `only_stored`: those whose objects are
        stored; the others wait for a later flush)."""
        if not self._pending:
            return
        rows, self._pending = self._pending, []
        if self._stored is not None:
            rows = self._keep_stored(rows)
        # Rows still waiting are checked again only after this many more.
        self._flush_at = len(self._pending) + _FLUSH_ROWS
        if not rows:
            return
        with self._transaction():
            self._db.executemany(
                "INSERT OR REPLACE INTO files (path, dev, ino, mode, size, mtime, ctime, nlink,"
                " oid, gitmode, meta, rules, parent) VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?)", rows)

    def _keep_stored(self, rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
        """The rows that may be written now; the rest go back to pending."""
        assert self._stored is not None
        first = rows[0][8]
        if self._waiting and first is not None and not self._stored([first])[0]:  # type: ignore[list-item]
            # The oldest waiting row's pack is still open: most likely no pack
            # closed since the last check, so the rest need not be looked up.
            self._pending = rows
            return []
        with_oid = [i for i, r in enumerate(rows) if r[8] is not None]
        there = self._stored([rows[i][8] for i in with_oid]) if with_oid else []  # type: ignore[misc]
        waiting = {i for i, ok in zip(with_oid, there, strict=True) if not ok}
        self._pending = [r for i, r in enumerate(rows) if i in waiting]
        self._waiting = len(self._pending)
        return [r for i, r in enumerate(rows) if i not in waiting]

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        # The connection is in autocommit mode: without an explicit transaction
        # every row would be its own commit.
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    # -- roots and their rules ------------------------------------------------------

    def set_root(self, path: bytes, rules: ExcludeRules) -> None:
        with self._transaction():
            self._db.execute("INSERT OR REPLACE INTO roots VALUES (?,?,?)",
                             (path, json.dumps(rules.as_dict()), int(time.time())))

    def rules_for(self, path: bytes) -> ExcludeRules:
        """The rules recorded by `ketch index` for the nearest root covering path."""
        best: tuple[int, ExcludeRules] | None = None
        for root, text in self._db.execute("SELECT path, rules FROM roots"):
            if path == root or path.startswith(root.rstrip(b"/") + b"/") or root == b"/":
                if best is None or len(root) > best[0]:
                    best = (len(root), ExcludeRules.from_dict(json.loads(text)))
        return best[1] if best else ExcludeRules()

    def roots(self) -> list[bytes]:
        return [r for (r,) in self._db.execute("SELECT path FROM roots ORDER BY path")]

    def total_size_under(self, path: bytes) -> int | None:
        lo = path.rstrip(b"/") + b"/"
        row = self._db.execute(
            "SELECT SUM(size), COUNT(*) FROM files WHERE path >= ? AND path < ?",
            (lo, lo[:-1] + b"0")).fetchone()
        return int(row[0]) if row and row[1] else None

    def _children(self, dir_path: bytes) -> Iterator[tuple[bytes, Fingerprint]]:
        for row in self._db.execute(
                "SELECT path, dev, ino, mode, size, mtime, ctime, nlink FROM files"
                " WHERE parent = ?", (dir_path,)):
            yield row[0], Fingerprint(*row[1:])

    # -- `ketch index` ----------------------------------------------------------------

    def update(self, roots: list[bytes], rules: ExcludeRules,
               on_path: Callable[[int], None] | None = None) -> IndexResult:
        """Walk `roots`, refresh fingerprints (an unchanged file costs one lstat),
        drop entries for paths that are gone, and remember the rules per root."""
        self.started_ns = time.time_ns()
        res = IndexResult()
        for root in roots:
            root = os.path.abspath(root)
            try:
                st = os.lstat(root)
            except OSError as e:
                raise IndexError_(f"{os.fsdecode(root)}: {e.strerror}") from None
            self.set_root(root, rules)
            self._update_path(root, st, rules, st.st_dev, res, on_path)
        self.flush()
        return res

    def _update_path(self, path: bytes, st: os.stat_result, rules: ExcludeRules, dev: int,
                     res: IndexResult, on_path: Callable[[int], None] | None) -> None:
        # One directory at a time (one query for its rows), so memory is bounded by
        # the widest directory and an unchanged file costs one lstat.
        root = self.lookup(path)
        self._note(path, st, root.fingerprint if root else None, res)
        stack = [(path, st)]
        while stack:
            p, pst = stack.pop()
            if not stat.S_ISDIR(pst.st_mode):
                continue
            if rules.one_file_system and pst.st_dev != dev:
                continue
            if rules.has_marker(p):
                continue
            try:
                names = sorted(os.listdir(p))
            except OSError as e:
                res.warnings.append(f"{os.fsdecode(p)}: {e.strerror}")
                continue
            known = dict(self._children(p))
            present = set()
            subdirs = []
            for name in names:
                child = os.path.join(p, name)
                try:
                    cst = os.lstat(child)
                except OSError as e:
                    res.warnings.append(f"{os.fsdecode(child)}: {e.strerror}")
                    continue
                if rules.excluded(child, name, stat.S_ISDIR(cst.st_mode)):
                    continue
                present.add(child)
                self._note(child, cst, known.get(child), res)
                if stat.S_ISDIR(cst.st_mode):
                    subdirs.append((child, cst))
                if on_path is not None:
                    on_path(1)
            gone = [c for c in known if c not in present]
            if gone:
                self._forget(gone, res)
            stack.extend(reversed(subdirs))

    def _note(self, path: bytes, st: os.stat_result, old: Fingerprint | None,
              res: IndexResult) -> None:
        res.paths += 1
        fp = Fingerprint.of(st)
        if old == fp:
            return
        res.changed += 1
        self._pending.append((path, *fp, None, None, None, None, os.path.dirname(path)))
        if len(self._pending) >= 2000:
            self.flush()

    def _forget(self, paths: list[bytes], res: IndexResult) -> None:
        self.flush()
        with self._transaction():
            for p in paths:
                lo = p + b"/"
                cur = self._db.execute("DELETE FROM files WHERE path = ? OR (path >= ? AND path < ?)",
                                       (p, lo, p + b"0"))
                res.removed += cur.rowcount
