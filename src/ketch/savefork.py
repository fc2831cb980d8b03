"""Big files stored by a forked process: a save's second core.

`savepipe.BigFiles` stores big files on threads beside the walk, but the walk
and the per-chunk work of storing (the chunk list, the object index, the tree
of chunks) are both Python: under one GIL the benchmark's first save ran at
1.3 cores, not 2. Here a child forked from the save stores them instead, with
its own GIL and its own write session (its own packs), and the walk goes on
in the save's process.

- The child is forked once the big files handed over reach `_FORK_AT` bytes
  (one VM image, a database dump): the first ones go to `BigFiles`' threads.
  A save with little to store (a no-change save, most daily saves) pays
  neither the fork nor the child's memory, and writes one pack, not two.
- It gets (path, stat) and answers with what `store_file` gave (`Stored`),
  and with the bytes it has read, for the progress meter.
- `close()` asks it to finish: its packs are durable before `close()` returns,
  so the commit the save writes next never names an object that is not
  stored. After an interrupt the child drops the file it is reading and keeps
  the complete objects, as the save's own writer does.
- The child ignores SIGINT and SIGTERM: the save decides when it ends. If the
  save dies, the child sees the end of its socket and aborts.
- An object both processes meet (a small file equal to a chunk of a big one)
  may be stored twice, once in each pack: git allows it, and gc keeps one.

Only a repository that says so (`writes_in_forked_processes`: a local one, a bucket)
gets a child; with one core, or where fork fails, the threads store instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from concurrent.futures import Future
from typing import cast

from ketch.errors import KetchError
from ketch.forkmsg import Error, describe, rebuild, recv, send
from ketch.interrupt import held
from ketch.progress import Progress
from ketch.repo import ObjectWriter, WritableRepository
from ketch.savepipe import _IN_FLIGHT, BigFiles, Stored

# Bytes of big files after which a child stores the rest: below it, what a
# child saves (a few seconds of a core at most) does not pay for its pack and
# its ~30 MB.
_FORK_AT = 64 << 20
# The child's niceness: the walk's core is what the save waits on.
_CHILD_NICE = 5


class WriterDied(KetchError):
    """The save's big-file process stopped before finishing."""


class _Relay:
    """The child's progress: bytes read, sent to the save's meter."""

    wants_totals = False

    def __init__(self, say: _Say) -> None:
        self._say = say

    def start(self, total_bytes: int | None, total_files: int | None = None) -> None:
        pass

    def advance(self, nbytes: int = 0, nfiles: int = 0) -> None:
        self._say(("p", nbytes))

    def warn(self, message: str) -> None:
        pass  # a file's warnings travel with its result

    def finish(self) -> None:
        pass


class _Say:
    """Sends from any of the child's threads; after the save has gone, nothing."""

    def __init__(self, sock: socket.socket) -> None:
        self._sock = sock
        self._lock = threading.Lock()
        self.gone = False

    def __call__(self, msg: object) -> None:
        with self._lock:
            if self.gone:
                return
            try:
                send(self._sock, msg)
            except OSError:
                self.gone = True


def _child(sock: socket.socket, repo: WritableRepository, level: int) -> int:
    """The child's loop: files in, what they became out; at "finish" (or the
    end of the socket: the save is gone) its packs are finished."""
    say = _Say(sock)
    repo.forked()
    w = repo.writer(level=level)
    big = BigFiles(w, _Relay(say))
    finished = False
    try:
        while True:
            try:
                got = recv(sock)
            except OSError:
                got = None
            if got is None:
                break
            msg = got[0]
            if msg == "finish":
                finished = True
                break
            seq, path, st = cast(tuple[int, bytes, os.stat_result], msg)

            def done(fut: Future[Stored], seq: int = seq) -> None:
                if fut.cancelled():
                    return
                e = fut.exception()
                say(("r", seq, fut.result()) if e is None else ("e", seq, describe(e)))

            big.submit(path, st).add_done_callback(done)
    finally:
        big.close()
    if not finished:
        w.abort()  # keeps the complete objects, as the save's own writer does
        return 1
    try:
        idx = w.close()
    except BaseException as e:
        w.abort()
        say(("x", describe(e)))
        return 1
    say(("d", idx, w.objects_written, w.bytes_written))
    return 0


class ForkedBigFiles:
    """`BigFiles`' interface, the storing done by a forked child; see the
    module's docstring."""

    def __init__(self, repo: WritableRepository, w: ObjectWriter, progress: Progress,
                 level: int) -> None:
        self._repo = repo
        self._w = w
        self._progress = progress
        self._level = level
        self._room = threading.Semaphore(_IN_FLIGHT)
        self._lock = threading.Lock()
        self._pending: dict[int, Future[Stored]] = {}
        self._seq = 0
        self._pid = 0
        self._sock: socket.socket | None = None
        self._reader: threading.Thread | None = None
        # The first big files, and all of them where fork failed.
        self._threads: BigFiles | None = None
        self._handed = 0  # bytes of big files handed over so far
        self._refused = False
        self._end: tuple[list[str], int, int] | None = None
        self._failure: Exception | None = None

    def _start(self) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            pid = os.fork()
        except OSError:  # a process limit: the threads store the rest too
            parent.close()
            child.close()
            self._refused = True
            return
        if pid == 0:
            code = 2
            try:
                parent.close()
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                signal.signal(signal.SIGTERM, signal.SIG_IGN)
                # The walk first: its core is what the save waits on, while
                # the child's threads would take both (set before they start,
                # so they inherit it).
                with contextlib.suppress(OSError):
                    os.nice(_CHILD_NICE)
                code = _child(child, self._repo, self._level)
            except BaseException:
                code = 2
            finally:
                os._exit(code)
        child.close()
        self._pid = pid
        self._sock = parent
        self._reader = threading.Thread(target=self._read, name="ketch-save-child",
                                        daemon=True)
        self._reader.start()

    def _read(self) -> None:
        """The save's side: results to their futures, bytes to the meter."""
        assert self._sock is not None
        while True:
            try:
                got = recv(self._sock)
            except OSError:
                got = None
            if got is None:
                break
            msg = cast(tuple[object, ...], got[0])
            kind = msg[0]
            if kind == "p":
                self._progress.advance(cast(int, msg[1]))
            elif kind in ("r", "e"):
                with self._lock:
                    fut = self._pending.pop(cast(int, msg[1]))
                self._room.release()
                if kind == "r":
                    fut.set_result(cast(Stored, msg[2]))
                else:
                    fut.set_exception(rebuild(cast(Error, msg[2])))
            elif kind == "d":
                self._end = cast(tuple[list[str], int, int], msg[1:])
            elif kind == "x":
                self._failure = rebuild(cast(Error, msg[1]))
        with self._lock:
            left = list(self._pending.values())
            self._pending.clear()
        for fut in left:
            fut.set_exception(WriterDied("the save's big-file process stopped"))

    def submit(self, path: bytes, st: os.stat_result) -> Future[Stored]:
        self._handed += st.st_size
        if self._sock is None and not self._refused and self._handed >= _FORK_AT:
            self._start()
        if self._sock is None:
            if self._threads is None:
                self._threads = BigFiles(self._w, self._progress)
            return self._threads.submit(path, st)
        self._room.acquire()
        fut: Future[Stored] = Future()
        with self._lock:
            self._seq += 1
            seq = self._seq
            self._pending[seq] = fut
        try:
            send(self._sock, (seq, path, st))
        except OSError:
            with self._lock:
                self._pending.pop(seq, None)
            self._room.release()
            fut.set_exception(WriterDied("the save's big-file process stopped"))
        return fut

    def close(self) -> None:
        """Have the child finish its packs and wait for it (what it was storing
        is left unfinished); its packs become this session's."""
        try:
            if self._threads is not None:
                self._threads.close()
        finally:
            if self._sock is not None:
                self._finish()

    def _finish(self) -> None:
        assert self._sock is not None
        with held():
            with contextlib.suppress(OSError):
                send(self._sock, "finish")
            assert self._reader is not None
            self._reader.join()
            self._sock.close()
            with contextlib.suppress(ChildProcessError):
                os.waitpid(self._pid, 0)
        if self._end is None:
            raise self._failure or WriterDied("the save's big-file process stopped")
        idx, objects, nbytes = self._end
        self._repo.adopt_packs(idx)
        self._w.objects_written += objects
        self._w.bytes_written += nbytes


def big_files_for(repo: WritableRepository, w: ObjectWriter, progress: Progress,
                  level: int) -> BigFiles | ForkedBigFiles:
    """Where a save stores its big files: a forked child where the repository
    allows it and there is a second core (KETCH_SAVE_FORK=0: threads)."""
    if (repo.writes_in_forked_processes and len(os.sched_getaffinity(0)) > 1
            and os.environ.get("KETCH_SAVE_FORK", "1") != "0"):
        return ForkedBigFiles(repo, w, progress, level)
    return BigFiles(w, progress)
