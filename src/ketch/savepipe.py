"""Big files stored beside the walk: a save's second stage.

The walk (stat, the small files, metadata, the index, trees) is Python and
holds the GIL most of the time; storing a big file is nearly all C that drops
it (reading, the rolling checksum, SHA-1, deflate on the encoder's pool). So
the walk hands each big file to a worker thread (of two) and goes on; the
directory that holds it writes its tree once the file's id is known (`Later`).

What a file becomes does not depend on the scheduling: its chunks, chunk tree
and id are computed from its bytes alone, on one thread, in order. Only the
order of objects inside a pack does (the encoder is thread-safe).

The number of files in flight is bounded, and so is the memory: each worker
reads one block at a time, and the encoder bounds what waits to be deflated.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

from ketch import split as hs
from ketch.buptree import BatchSink, add_chunks
from ketch.git import objects as gobj
from ketch.index import Entry
from ketch.interrupt import held
from ketch.metadata import Metadata
from ketch.progress import Progress

_O_NOATIME = getattr(os, "O_NOATIME", 0)
# Files handed over and not stored yet, at most: the walk waits beyond that
# (what waits is a path and a stat, but each holds its directory's tree back).
_IN_FLIGHT = 64
# Two files at once: a save after a day's changes re-reads its big changed files
# and deflates little, so one worker would leave a core idle; more than two
# only add read buffers (the deflate pool and the walk use the other cores).
_WORKERS = min(2, os.cpu_count() or 1)


@dataclass
class Stored:
    """What storing one file gave: its object (None: skipped) and what to say."""

    gitmode: int = 0
    oid: bytes = b""
    size: int = 0
    ok: bool = False
    warnings: list[str] = field(default_factory=list)


class _Stopped(Exception):
    """The save is ending (an interrupt): the file is left unfinished."""


def open_for_save(path: bytes) -> int:
    """A file opened to be read for a save (without touching its atime if we may)."""
    try:
        return os.open(path, os.O_RDONLY | _O_NOATIME | os.O_NOFOLLOW)
    except PermissionError:
        return os.open(path, os.O_RDONLY | os.O_NOFOLLOW)


def changed_warning(path: bytes, st: os.stat_result, size: int) -> str | None:
    """The warning for a file that changed (or went) while it was being read."""
    try:
        after = os.lstat(path)
    except OSError:
        return f"{os.fsdecode(path)}: removed while being saved"
    if (after.st_size, after.st_mtime_ns, after.st_ctime_ns) != (
            st.st_size, st.st_mtime_ns, st.st_ctime_ns) or size != st.st_size:
        return f"{os.fsdecode(path)}: changed while being saved"
    return None


def store_file(w: BatchSink, path: bytes, st: os.stat_result, progress: Progress,
               stop: threading.Event | None = None) -> Stored:
    """Read, chunk and store one regular file as bup does (any thread)."""
    out = Stored()
    try:
        fd = open_for_save(path)
    except OSError as e:
        out.warnings.append(f"{os.fsdecode(path)}: {e.strerror}; skipped")
        return out
    with os.fdopen(fd, "rb", buffering=0) as f:
        sp = hs.Splitter(4)
        tree = hs.ChunkTree(w)
        size = 0
        blocks = hs.read_blocks(f)
        while True:
            # Only reading is this file's problem: an error writing is the save's.
            try:
                block = next(blocks, None)
            except OSError as e:
                out.warnings.append(f"{os.fsdecode(path)}: read error: {e.strerror}; skipped")
                return out
            if block is None:
                break
            if stop is not None and stop.is_set():
                raise _Stopped
            size += len(block)
            progress.advance(len(block))
            add_chunks(w, tree, list(sp.feed(block)))
        add_chunks(w, tree, list(sp.finish()))
        out.gitmode, out.oid = hs.top_object(w, tree.top())
    out.size = size
    out.ok = True
    changed = changed_warning(path, st, size)
    if changed is not None:
        out.warnings.append(changed)
    return out


class BigFiles:
    """Stores big files on worker threads; `submit` gives a Future of `Stored`.

    `close()` must run before the writer is closed or aborted: it stops the
    workers (after an interrupt, mid-file) and waits for them, so that nothing
    writes while the writer finishes its pack."""

    def __init__(self, w: BatchSink, progress: Progress) -> None:
        self._w = w
        self._progress = progress
        self._stop = threading.Event()
        self._room = threading.Semaphore(_IN_FLIGHT)
        self._pool = ThreadPoolExecutor(max_workers=_WORKERS, thread_name_prefix="ketch-save")

    def submit(self, path: bytes, st: os.stat_result) -> Future[Stored]:
        self._room.acquire()
        try:
            fut = self._pool.submit(self._run, path, st)
        except BaseException:
            self._room.release()
            raise
        return fut

    def _run(self, path: bytes, st: os.stat_result) -> Stored:
        try:
            return store_file(self._w, path, st, self._progress, self._stop)
        finally:
            self._room.release()

    def close(self) -> None:
        """Stop and wait for the workers (what they were storing is left unfinished)."""
        self._stop.set()
        with held():
            self._pool.shutdown(wait=True, cancel_futures=True)


@dataclass
class DirBuild:
    """One directory being saved."""

    known: dict[bytes, Entry]
    entries: list[gobj.TreeEntry] = field(default_factory=list)
    records: list[tuple[bytes, bytes]] = field(default_factory=list)
    small: list[tuple[bytes, bytes, os.stat_result, bytes, Metadata]] = field(
        default_factory=list)
    small_bytes: int = 0
    unchanged: bool = True
    seen: int = 0
    # unchanged files taken from the index: (path, name, stat, index entry)
    reused: list[tuple[bytes, bytes, os.stat_result, Entry]] = field(default_factory=list)
    # big files being stored beside the walk, and subdirectories that hold some
    later_files: list[tuple[bytes, bytes, os.stat_result, Future[Stored]]] = field(
        default_factory=list)
    later_dirs: list[tuple[bytes, Later]] = field(default_factory=list)


class Later:
    """A directory's tree id, known once the big files under it are stored."""

    __slots__ = ("_finish",)

    def __init__(self, finish: Callable[[], bytes | None]) -> None:
        self._finish = finish

    def result(self) -> bytes | None:
        return self._finish()
