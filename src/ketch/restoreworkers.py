"""A restore's data path on other processes: read, verify and write batches.

One Python process restores at most one core's worth: the GIL serialises the
per-blob work of the thread that reads and the thread that writes, and the
benchmark's restore ran at 1.1 cores. Here the restore's process walks the
save, creates every file and plans each batch (which blob goes where); forked
workers, one per core, each read a batch's blobs from the repository in pack
order, check each against its id and write it into every place that wants it,
then report what they wrote. The planning process finishes each file (its
size, its metadata) once the batches holding its blobs are reported.

A worker gets the batch's files as descriptors (SCM_RIGHTS), never by path.
Only a repository whose reads survive a fork says so
(`Repository.reads_in_forked_processes`: a local one; an ssh connection or an
S3 client must not be shared by two processes). What workers send back comes
from this process's own children.
"""

from __future__ import annotations

import os
import selectors
import signal
import socket
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

from ketch.errors import CorruptObject, KetchError
from ketch.forkmsg import Error, describe, rebuild
from ketch.forkmsg import recv as _recv
from ketch.forkmsg import send as _send
from ketch.progress import NullProgress
from ketch.repo import Repository
from ketch.restorefile import ContentError, FileJob

if TYPE_CHECKING:
    from ketch.restorebatch import Batch

# A place in a batch, as sent: (file number in the batch, start, end).
_Sent = tuple[int, int, int]
# A subtree in a batch, as sent: (file number, tree, start, end).
_Unit = tuple[int, bytes, int, int]
# A file's outcome: (its places in the batch, furthest byte placed, furthest
# byte written, error or None).
_Outcome = tuple[int, int, int, Error | None]


class WorkerDied(KetchError):
    """A restore worker stopped without reporting its batch."""


# Errors a worker reports as themselves (others: OSError, or KetchError).
_KINDS: dict[str, type[Exception]] = {"content": ContentError, "corrupt": CorruptObject}


def rebuild_error(err: Error) -> Exception:
    return rebuild(err, _KINDS)


def _serve(sock: socket.socket, repo: Repository) -> None:
    """A worker's loop: a batch in, its files' outcomes out, until EOF."""
    from ketch.restorebatch import Batch, Reader  # it imports this module

    progress = NullProgress()
    zero_blobs: dict[bytes, int] = {}
    batch = Batch(repo, zero_blobs, progress)
    while True:
        got = _recv(sock)
        if got is None:
            return
        msg, fds = got
        seq, sent, units = cast(tuple[int, dict[bytes, list[_Sent]], list[_Unit]], msg)
        # Counted from here: expanding a subtree meets zeros (bytes restored
        # as holes, subtrees learnt to be zeros) before anything is read.
        before_zeros = set(zero_blobs)
        before_bytes = progress.bytes
        jobs = [FileJob(fd, b"", _ignore, _ignore) for fd in fds]
        counts = [0] * len(jobs)
        places = batch.places = {}
        for oid, where in sent.items():
            places[oid] = [(jobs[k], start, end) for k, start, end in where]
            for k, _, _ in where:
                counts[k] += 1
        for k, tree, start, end in units:
            counts[k] += 1
            _expand(batch, jobs[k], tree, start, end)
        batch.places = {}
        batch.write_all(Reader(repo, list(places)).bundles(), places)
        outcomes: list[_Outcome] = []
        for job, count in zip(jobs, counts, strict=True):
            if job.error is None:
                try:
                    job.flush()
                except OSError as e:
                    job.error = e
            job.close()
            outcomes.append((count, job.size, job.end,
                             None if job.error is None else describe(job.error, _KINDS)))
        zeros = {k: v for k, v in zero_blobs.items() if k not in before_zeros}
        _send(sock, (seq, outcomes, zeros, progress.bytes - before_bytes))


def _expand(batch: Batch, job: FileJob, tree: bytes, start: int, end: int) -> None:
    """Place the blobs of a subtree the planner handed over unread."""
    if job.error is not None:
        return
    try:
        for blob, bstart, bend, _ in batch.leaves(tree, start, end):
            batch.place(job, blob, bstart, bend, 0)
            if job.error is not None:
                return
    except (ContentError, KetchError, OSError) as e:
        batch.fail(job, e)


def _ignore(*_: object) -> None:
    pass


@dataclass
class _Worker:
    pid: int
    sock: socket.socket
    busy: int = 0  # batches sent and not yet reported


# What the planner is told of a reported batch: (its jobs in the batch's
# order, each job's outcome, newly found zero blobs, bytes written).
Report = tuple[list[FileJob], list[_Outcome], dict[bytes, int], int]


class WorkerPool:
    """Forked workers sharing batches; see the module's docstring."""

    def __init__(self, repo: Repository, count: int) -> None:
        self.workers: list[_Worker] = []
        self.pending: dict[int, list[FileJob]] = {}
        self.seq = 0
        self.selector = selectors.DefaultSelector()
        try:
            for _ in range(count):
                self._fork(repo)
        except BaseException:
            self.close()
            raise

    def _fork(self, repo: Repository) -> None:
        parent, child = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        pid = os.fork()
        if pid == 0:  # the worker
            code = 0
            try:
                parent.close()
                for other in self.workers:  # theirs to end, not this one's to hold open
                    other.sock.close()
                # The planner decides when the restore stops (Ctrl-C included).
                signal.signal(signal.SIGINT, signal.SIG_IGN)
                repo.forked()
                _serve(child, repo)
            except BaseException:
                code = 1
            finally:
                os._exit(code)
        child.close()
        w = _Worker(pid, parent)
        self.workers.append(w)
        self.selector.register(parent, selectors.EVENT_READ, w)

    @property
    def busy(self) -> int:
        return sum(w.busy for w in self.workers)

    def submit(self, jobs: list[FileJob], sent: dict[bytes, list[_Sent]],
               units: list[_Unit]) -> None:
        """Give a batch to the least busy worker: its files, in the order
        `sent` and `units` number them."""
        w = min(self.workers, key=lambda w: w.busy)
        self.seq += 1
        self.pending[self.seq] = jobs
        w.busy += 1
        try:
            _send(w.sock, (self.seq, sent, units), [j.fd for j in jobs])
        except OSError as e:
            raise WorkerDied(f"a restore worker stopped: {e.strerror}") from None

    def collect(self, on_report: Callable[[Report], None], block: bool = True) -> None:
        """Pass on each batch reported; with `block`, wait for at least one."""
        reported = False
        while not reported:
            events = self.selector.select(None if block else 0)
            if not events and not block:
                return
            for key, _ in events:
                w: _Worker = key.data
                try:
                    got = _recv(w.sock)
                except OSError:
                    got = None  # not a file's error: every later batch would fail too
                if got is None:
                    raise WorkerDied("a restore worker stopped before reporting its batch")
                seq, outcomes, zeros, nbytes = cast(
                    tuple[int, list[_Outcome], dict[bytes, int], int], got[0])
                w.busy -= 1
                on_report((self.pending.pop(seq), outcomes, zeros, nbytes))
                reported = True

    def close(self) -> None:
        """End the workers (their current batches are abandoned)."""
        for w in self.workers:
            try:
                self.selector.unregister(w.sock)
            except (KeyError, ValueError):
                pass
            w.sock.close()
        for w in self.workers:
            if w.busy:
                try:
                    os.kill(w.pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            try:
                os.waitpid(w.pid, 0)
            except ChildProcessError:
                pass
        self.workers = []
        self.selector.close()


def pool_for(repo: Repository) -> WorkerPool | None:
    """Workers for a restore from `repo`: one per core, up to 4, where there
    are two cores or more (KETCH_RESTORE_WORKERS sets how many; 0: none, and
    a thread reads while the restore's own writes)."""
    if not repo.reads_in_forked_processes:
        return None
    try:
        n = int(os.environ.get("KETCH_RESTORE_WORKERS", "-1"))
    except ValueError:
        n = -1
    if n < 0:
        cores = len(os.sched_getaffinity(0))
        n = min(cores, 4) if cores > 1 else 0
    if n <= 0:
        return None
    try:
        return WorkerPool(repo, n)
    except OSError:  # no fork here (EAGAIN, ENOMEM): a thread reads instead
        return None
