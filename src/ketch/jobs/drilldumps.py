"""A dump's restore drill: each file of its latest save streamed out of the
repository (every blob re-hashed against its id on the way) into what reads it:
a throwaway MariaDB or PostgreSQL server (ketch.jobs.drilldb) followed by a
sanity query (tables and row counts), SQLite's `PRAGMA integrity_check` on a
scratch copy, or, for command and MongoDB dumps, a size and SHA-256 check.
Where the machine has no server binary, the files' bytes are still checked
and the drill says, as a warning, that the load was skipped.
"""

from __future__ import annotations

import hashlib
import os
import sqlite3
from collections.abc import Iterator

from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.jobs.drilldb import MariaDB, Postgres, ThrowawayServer
from ketch.jobs.drillreport import Check, DrillItem
from ketch.jobs.model import DumpSpec
from ketch.progress import Progress
from ketch.text import plural
from ketch.vfs import VFS, Item, show_path


class _Stream:
    """A file's content from the repository, each blob checked against its id."""

    def __init__(self, vfs: VFS, item: Item, progress: Progress) -> None:
        self.vfs, self.item, self.progress = vfs, item, progress
        self.size = 0
        self.sha = hashlib.sha256()

    def __iter__(self) -> Iterator[bytes]:
        for oid, data in self.vfs.iter_content(self.item):
            if gobj.object_id(gobj.BLOB, data) != oid:
                raise KetchError(f"blob {oid.hex()} does not match its id "
                                 "(damaged in the repository)")
            self.size += len(data)
            self.sha.update(data)
            self.progress.advance(len(data))
            yield data

    def drain(self) -> None:
        for _ in self:
            pass

    def size_problem(self) -> str | None:
        want = self.item.meta.size if self.item.meta is not None else None
        if want is not None and want != self.size:
            return f"read {self.size} bytes, the save recorded {want}"
        return None


def _rows(tables: dict[str, int]) -> str:
    return (f"{plural(len(tables), 'table')}, "
            f"{plural(sum(tables.values()), 'row', grouped=True)}")


def _load(server: ThrowawayServer, name: str, stream: _Stream, check: Check) -> None:
    errors = server.load(stream)
    if (problem := stream.size_problem()) is not None:
        check.error = problem
    elif errors:
        check.error = (f"{plural(len(errors), 'error')} loading it into a throwaway "
                       f"{server.what} server, the first: {errors[0][:300]}")


def _sqlite(stream: _Stream, scratch: str, check: Check) -> None:
    path = os.path.join(scratch, "drill.sqlite")
    try:
        with open(path, "wb") as f:
            for block in stream:
                f.write(block)
        check.error = stream.size_problem()
        if check.error:
            return
        db = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
        try:
            result = [r[0] for r in db.execute("PRAGMA integrity_check")]
            if result != ["ok"]:
                check.error = "PRAGMA integrity_check: " + "; ".join(map(str, result[:3]))
                return
            names = [r[0] for r in db.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY 1")]
            check.tables = {n: db.execute(f'SELECT COUNT(*) FROM "{n.replace(chr(34), chr(34) * 2)}"'
                                          ).fetchone()[0] for n in names}
            check.detail = "integrity ok, " + _rows(check.tables)
        finally:
            db.close()
    except sqlite3.Error as e:
        check.error = f"not a readable SQLite database: {e}"
    finally:
        for suffix in ("", "-journal", "-wal", "-shm"):
            try:
                os.unlink(path + suffix)
            except FileNotFoundError:
                pass


def drill_dump(vfs: VFS, spec: DumpSpec, item: DrillItem, progress: Progress, *,
               scratch: str) -> None:
    try:
        saves = vfs.saves(spec.name.encode())
    except KetchError:
        item.warnings.append("no save yet: nothing to drill")
        return
    save_name, commit, _ = saves[0]
    item.save, item.commit = save_name.decode(), commit.hex()
    save = vfs.resolve(spec.name.encode() + b"/" + save_name)
    files = [f for f in vfs.contents(save) if f.kind == "file"]
    # Roles first: the databases' dumps name them as owners.
    files.sort(key=lambda f: (f.name != b"globals.sql", f.name))
    progress.start(sum(vfs.size(f) for f in files), len(files))
    if spec.type == "mongodb":
        item.notes.append("MongoDB archives are checked (size, object ids, SHA-256), "
                          "not restored: ketch starts no throwaway MongoDB server")
    server: ThrowawayServer | None = None
    if spec.type in ("mysql", "postgresql"):
        server = MariaDB(scratch) if spec.type == "mysql" else Postgres(scratch)
        if (missing := server.missing()) is not None:
            item.warnings.append(f"skipped loading: no {server.what} server binary on this "
                                 f"machine ({missing}); the dump's bytes were checked only")
            server = None
    try:
        if server is not None:
            server.start()
        for f in files:
            _drill_file(vfs, spec, server, f, scratch, item, progress)
            progress.advance(0, 1)
        if server is not None and any(c.ok and c.method == "loaded" for c in item.checks):
            tables = server.tables()
            for c in item.checks:
                if c.method == "loaded" and c.ok:
                    db = c.name.removesuffix(".sql")
                    c.tables = {k: v for k, v in tables.items() if k.split(".")[0] == db}
                    c.detail = _rows(c.tables) if c.tables else "no tables"
    finally:
        if server is not None:
            server.stop()
        progress.finish()


def _drill_file(vfs: VFS, spec: DumpSpec, server: ThrowawayServer | None, f: Item,
                scratch: str, item: DrillItem, progress: Progress) -> None:
    name = show_path(f.name)
    check = Check(name=name, method="checksum", size=vfs.size(f), chunked=f.chunked)
    item.checks.append(check)
    stream = _Stream(vfs, f, progress)
    try:
        if server is not None and name == "mysql.sql" and spec.type == "mysql":
            # Users and grants would replace the drill server's own root account.
            stream.drain()
            item.notes.append("mysql.sql (users and grants) checked, not loaded")
            check.error = stream.size_problem()
        elif server is not None and name == "globals.sql":
            server.load(stream)  # every role but the drill server's own is created
            check.method, check.error = "roles loaded", stream.size_problem()
        elif server is not None:
            check.method = "loaded"
            _load(server, name, stream, check)
        elif spec.type == "sqlite":
            check.method = "integrity_check"
            _sqlite(stream, scratch, check)
        else:
            stream.drain()
            check.error = stream.size_problem()
        if check.method == "checksum":
            check.sha256 = stream.sha.hexdigest()
            check.detail = f"{plural(stream.size, 'byte', grouped=True)}, sha256 {check.sha256}"
    except (KetchError, OSError) as e:
        check.error = str(e) if isinstance(e, KetchError) else f"{e.strerror or e}"
    check.ok = check.error is None
