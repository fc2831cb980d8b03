"""Writing restored files in batches: their blobs read in the repository's
order, verified on a second thread, written where they belong.

A restore hands each regular file, already created, to a Batch with the
place of every blob in it (a chunked file's chunk trees are read here, in
file order). When the batch holds enough, its distinct blobs are asked of
the repository at once (`Repository.read_many`, pack order for a local
one); a reader thread checks each against its id while the restore's
thread writes the previous ones into every place that wants them, gathered
into large pwritev calls. Blobs of zeros, and aligned 4 KiB blocks of zeros
inside blobs, become holes. A file is finished (closed, passed to its
`done`) once its last blob is written; one whose blob failed is passed to
its `failed` with the reason, and written no further.

From a local repository on a machine of two cores or more, the batches go
to forked workers instead (restoreworkers), which read, check and write
them on every core while this process plans the next.

Chunk trees name where each child starts (hex offsets); a blob must fill its
place exactly, so a tree whose offsets disagree with its content fails the
file instead of shifting what follows.
"""

from __future__ import annotations

import os
import queue
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field

from ketch.errors import CorruptObject, KetchError
from ketch.git import objects as gobj
from ketch.progress import Progress
from ketch.repo import Repository
from ketch.restorefile import HOLE_BLOCK, ContentError, FileJob, files_allowed, has_hole
from ketch.restoreworkers import Report, WorkerPool, rebuild_error

# A batch is read once it wants this many distinct blobs or bytes, or holds
# this many open files (each keeps its descriptor until finished).
BATCH_BLOBS = 4096
BATCH_BYTES = 32 << 20
BATCH_FILES = 256
# From a repository that wants wide batches (Repository.wide_batches). Small
# files are most of a machine's files: 256 to a batch cut the corpus's restore
# from a bucket into 78 reads of ~1 MB (150 of its 364 GETs) before the one of
# its big files.
WIDE_BATCH_BLOBS = 1 << 18
WIDE_BATCH_BYTES = 2 << 30
WIDE_BATCH_FILES = 8192
# With workers, a chunked file's subtrees of at most this many bytes are
# handed to them whole: they read and walk those trees, not this process.
UNIT_BYTES = 4 << 20
# The reader hands blobs over in bundles of about this much, and at most
# _QUEUE_BUNDLES wait: what the reader thread holds beyond the writer.
_BUNDLE_BYTES = 256 << 10
_BUNDLE_ITEMS = 256
_QUEUE_BUNDLES = 4


# Kinds of work in a chunk tree's walk.
_BLOB, _TREE, _TREE_END = 0, 1, 2
# A blob's place: (file, start, end); end -1 when it is the file's last and
# its length is up to the blob.
_Place = tuple[FileJob, int, int]
# What the reader hands over: (oid, data, None) or (oid, None, why not).
_Got = tuple[bytes, bytes | None, Exception | None]


@dataclass
class Reader:
    """The thread that reads and verifies one batch's blobs."""

    repo: Repository
    oids: list[bytes]
    out: queue.Queue[list[_Got] | BaseException | None] = field(
        default_factory=lambda: queue.Queue(_QUEUE_BUNDLES))
    stop: threading.Event = field(default_factory=threading.Event)

    def start(self) -> threading.Thread:
        t = threading.Thread(target=self.run, name="restore-read", daemon=True)
        t.start()
        return t

    def put(self, item: list[_Got] | BaseException | None) -> None:
        while not self.stop.is_set():
            try:
                self.out.put(item, timeout=0.2)
                return
            except queue.Full:
                continue

    def run(self) -> None:
        try:
            for bundle in self.bundles():
                self.put(bundle)
                if self.stop.is_set():
                    return
            self.put(None)
        except BaseException as e:  # handed to the restore's thread, which raises it
            self.put(e)

    def bundles(self) -> Iterator[list[_Got]]:
        """The batch's blobs, checked, in bundles."""
        got: set[bytes] = set()
        bundle: list[_Got] = []
        size = 0
        object_id = gobj.object_id
        blob = gobj.BLOB
        hashed = not self.repo.reads_verified

        def check(oid: bytes, t: int, data: bytes) -> _Got:
            if t != blob or (hashed and object_id(t, data) != oid):
                return oid, None, ContentError(f"object {oid.hex()} does not match its id")
            return oid, data, None

        try:
            for oid, t, data in self.repo.read_many(self.oids):
                if oid in got:
                    continue
                got.add(oid)
                bundle.append(check(oid, t, data))
                size += len(data)
                if size >= _BUNDLE_BYTES or len(bundle) >= _BUNDLE_ITEMS:
                    yield bundle
                    bundle, size = [], 0
        except (KetchError, OSError):
            # Which object failed, and why, one by one.
            for oid in self.oids:
                if oid in got:
                    continue
                got.add(oid)
                try:
                    t, data = self.repo.read(oid)
                    bundle.append(check(oid, t, data))
                except (KetchError, OSError) as e:
                    bundle.append((oid, None, e))
                if len(bundle) >= _BUNDLE_ITEMS:
                    yield bundle
                    bundle = []
        if bundle:
            yield bundle


class Batch:
    """Files waiting for their blobs; see the module's docstring."""

    def __init__(self, repo: Repository, zero_blobs: dict[bytes, int],
                 progress: Progress, pool: WorkerPool | None = None) -> None:
        self.repo = repo
        # Workers that read and write the batches (restoreworkers); without
        # them, a thread reads while this one writes.
        self.pool = pool
        self.zero_blobs = zero_blobs
        self.progress = progress
        self.jobs: list[FileJob] = []  # unfinished, oldest first
        self.created = 0  # files handed over so far (a FileJob's seq)
        self.places: dict[bytes, list[_Place]] = {}
        # Subtrees for the workers: (file, tree, start, end or -1).
        self.units: list[tuple[FileJob, bytes, int, int]] = []
        self.nbytes = 0
        self.nfiles = 0  # files placed since the last flush
        wide = repo.wide_batches
        self.max_blobs = WIDE_BATCH_BLOBS if wide else BATCH_BLOBS
        self.max_bytes = WIDE_BATCH_BYTES if wide else BATCH_BYTES
        self.max_files = files_allowed(WIDE_BATCH_FILES, BATCH_FILES) if wide else BATCH_FILES
        # The batch being read while the next one is planned.
        self.inflight: tuple[Reader, threading.Thread | None,
                             dict[bytes, list[_Place]]] | None = None
        # Directory metadata, applied once every file created before it
        # (those inside the directory) is finished: (files created, apply).
        self.after: list[tuple[int, Callable[[], None]]] = []

    def __len__(self) -> int:
        return len(self.jobs)

    # -- planning ----------------------------------------------------------------

    def add(self, job: FileJob, oid: bytes, chunked: bool, size_hint: int) -> None:
        """Place every blob of the file whose content is `oid`; reads the
        batch whenever it is full, so a big file may span several."""
        self.created += 1
        job.seq = self.created
        self.jobs.append(job)
        self.nfiles += 1
        if not chunked:
            self.place(job, oid, 0, -1, size_hint)
        else:
            # With workers, subtrees of up to UNIT_BYTES go to them unread.
            unit = UNIT_BYTES if self.pool is not None else 0
            try:
                for b, start, end, whole in self.leaves(oid, unit=unit, size_hint=size_hint):
                    est = end - start if end >= 0 else size_hint - start
                    if whole:
                        self.units.append((job, b, start, end))
                        self.nbytes += max(est, 0)
                        job.outstanding += 1
                    else:
                        self.place(job, b, start, end, est)
                    if job.error is not None:
                        break
                    if len(self.places) >= self.max_blobs or self.nbytes >= self.max_bytes:
                        self.flush()
            except (ContentError, KetchError) as e:
                self.fail(job, e)
        job.planned = True
        if job.outstanding == 0:
            # Nothing to read (zeros, or failed already): the newest job, and
            # every job placed before the last flush is finished.
            self.jobs.pop()
            self.finish(job)
            self.run_after()
        elif self.nfiles >= self.max_files or len(self.places) >= self.max_blobs \
                or self.nbytes >= self.max_bytes:
            self.flush()

    def place(self, job: FileJob, oid: bytes, start: int, end: int, est: int) -> None:
        z = self.zero_blobs.get(oid)
        if z is not None:
            if end >= 0 and start + z != end:
                self.fail(job, ContentError(f"object {oid.hex()} does not fill its place"))
                return
            job.size = max(job.size, start + z)
            self.progress.advance(z)
            return
        places = self.places.get(oid)
        if places is None:
            self.places[oid] = [(job, start, end)]
            self.nbytes += est
        else:
            places.append((job, start, end))
        job.outstanding += 1

    def leaves(self, oid: bytes, start: int = 0, end: int = -1, *, unit: int = 0,
               size_hint: int = 0) -> Iterator[tuple[bytes, int, int, bool]]:
        """(blob, start, end or -1 for the last, False) of the chunk tree that
        fills start..end of its file, in order; subtrees known to be zeros
        come back whole, as one blob would, and a subtree found to hold only
        such is known from then on (a sparse image's runs of zeros repeat the
        same subtrees). With `unit`, a subtree of at most that many bytes
        (the file's last: up to `size_hint`) comes back unread, True."""
        # (oid, _BLOB/_TREE/_TREE_END, start, end, blobs with data before it)
        stack: list[tuple[bytes, int, int, int, int]] = [(oid, _TREE, start, end, 0)]
        zero_blobs = self.zero_blobs
        read = self.repo.read
        # Subtrees read ahead with their siblings: one read_many per tree
        # instead of a lookup, a seek and an inflater each (13,600 chunk
        # trees in the benchmark's corpus).
        ahead: dict[bytes, tuple[int, bytes]] = {}
        data_blobs = 0
        while stack:
            tid, kind, start, end, before = stack.pop()
            if kind == _TREE_END:
                if data_blobs == before and end >= 0:
                    zero_blobs[tid] = end - start
                continue
            if kind == _BLOB or tid in zero_blobs:
                if tid not in zero_blobs:
                    data_blobs += 1
                yield tid, start, end, False
                continue
            if unit and (end if end >= 0 else size_hint) - start <= unit:
                data_blobs += 1  # its parent is not known to be zeros
                yield tid, start, end, True
                continue
            got = ahead.pop(tid, None)
            t, data = got if got is not None else read(tid)
            if t != gobj.TREE or gobj.object_id(t, data) != tid:
                raise ContentError(f"object {tid.hex()} does not match its id")
            try:
                entries = list(gobj.decode_tree(data))
                offs = [start + int(e.name, 16) for e in entries]
            except ValueError:
                raise CorruptObject(f"chunk tree {tid.hex()} cannot be decoded") from None
            if offs and offs[0] != start or any(a > b for a, b in zip(offs, offs[1:], strict=False)):
                raise ContentError(f"chunk tree {tid.hex()} has offsets out of order")
            if end >= 0 and offs and offs[-1] > end:
                raise ContentError(f"chunk tree {tid.hex()} overruns its place")
            if not entries and end >= 0 and end != start:
                raise ContentError(f"chunk tree {tid.hex()} is empty")
            self.read_ahead([e.oid for e in entries
                             if e.mode == gobj.MODE_TREE and e.oid not in zero_blobs], ahead)
            stack.append((tid, _TREE_END, start, end, data_blobs))
            for i in range(len(entries) - 1, -1, -1):
                e = entries[i]
                stack.append((e.oid, _TREE if e.mode == gobj.MODE_TREE else _BLOB, offs[i],
                              offs[i + 1] if i + 1 < len(offs) else end, 0))

    def read_ahead(self, oids: list[bytes], into: dict[bytes, tuple[int, bytes]]) -> None:
        """Read these subtrees together; a remote backend is only told of them
        (it reads ahead: read_many would wait for each tree's subtrees)."""
        if not self.repo.reads_are_local:
            self.repo.prefetch(oids)
            return
        if len(oids) < 2:
            return
        try:
            for oid, t, data in self.repo.read_many(list(dict.fromkeys(oids))):
                into[oid] = (t, data)
        except (KetchError, OSError):
            pass  # read one by one when its turn comes, which names what failed

    # -- reading and writing ---------------------------------------------------------

    def flush(self) -> None:
        """Start reading everything placed, on its own thread; then write the
        batch read before it, while this one is read and the next planned."""
        places, self.places, self.nbytes, self.nfiles = self.places, {}, 0, 0
        if self.pool is not None:
            units, self.units = self.units, []
            self.hand_over(self.pool, places, units)
            return
        previous, self.inflight = self.inflight, None
        if places:
            reader = Reader(self.repo, list(places))
            # A backend that cannot read on two threads is read as it is written.
            thread = reader.start() if self.repo.reads_concurrently else None
            self.inflight = (reader, thread, places)
        if previous is not None:
            self.drain(previous)

    def hand_over(self, pool: WorkerPool, places: dict[bytes, list[_Place]],
                  units: list[tuple[FileJob, bytes, int, int]]) -> None:
        """Give the batch to a worker; while every worker has one waiting
        behind the one it works on, finish what they report."""
        if places or units:
            number: dict[FileJob, int] = {}
            at = number.setdefault
            sent = {oid: [(at(job, len(number)), start, end) for job, start, end in where]
                    for oid, where in places.items()}
            whole = [(at(job, len(number)), tid, start, end) for job, tid, start, end in units]
            pool.submit(list(number), sent, whole)
        # Finish what is reported already; wait only while every worker has
        # a batch waiting behind the one it works on.
        pool.collect(self.reported, block=False)
        while pool.busy >= 2 * len(pool.workers):
            pool.collect(self.reported)
        self.finish_ready()

    def reported(self, report: Report) -> None:
        jobs, outcomes, zeros, nbytes = report
        self.zero_blobs.update(zeros)
        for job, (count, size, end, err) in zip(jobs, outcomes, strict=True):
            job.outstanding -= count
            job.size = max(job.size, size)
            job.end = max(job.end, end)
            if err is not None:
                self.fail(job, rebuild_error(err))
        self.progress.advance(nbytes)

    def close(self) -> None:
        """Stop the workers, if any (the restore is over)."""
        if self.pool is not None:
            pool, self.pool = self.pool, None
            pool.close()

    def complete(self) -> None:
        """Read and write everything; finish every file."""
        self.flush()
        if self.pool is not None:
            while self.pool.busy:
                self.pool.collect(self.reported)
            self.finish_ready()
            return
        if self.inflight is not None:
            inflight, self.inflight = self.inflight, None
            self.drain(inflight)

    def drain(self, inflight: tuple[Reader, threading.Thread | None,
                                    dict[bytes, list[_Place]]]) -> None:
        reader, thread, places = inflight
        try:
            self.write_all(reader.bundles() if thread is None else self.received(reader),
                           places)
        finally:
            reader.stop.set()
            if thread is not None:
                thread.join()
        self.finish_ready()

    @staticmethod
    def received(reader: Reader) -> Iterator[list[_Got]]:
        while True:
            bundle = reader.out.get()
            if bundle is None:
                return
            if isinstance(bundle, BaseException):
                raise bundle
            yield bundle

    def write_all(self, bundles: Iterator[list[_Got]], places: dict[bytes, list[_Place]]
                  ) -> None:
        advance = self.progress.advance
        for bundle in bundles:
            written = 0
            for oid, data, err in bundle:
                for job, start, end in places.pop(oid, ()):
                    job.outstanding -= 1
                    if job.error is not None:
                        continue
                    if data is None:
                        self.fail(job, err or ContentError(f"object {oid.hex()} is missing"))
                        continue
                    written += self.put(job, oid, start, end, data)
            advance(written)
        for oid, rest in places.items():  # a backend that left some out
            for job, _, _ in rest:
                job.outstanding -= 1
                if job.error is None:
                    self.fail(job, ContentError(f"object {oid.hex()} was not read"))

    def put(self, job: FileJob, oid: bytes, start: int, end: int, data: bytes) -> int:
        """Write one blob into its place; how many bytes of the file that was."""
        n = len(data)
        if end >= 0 and start + n != end:
            self.fail(job, ContentError(
                f"object {oid.hex()} does not fill its place in the chunk tree"))
            return 0
        try:
            if n >= HOLE_BLOCK and not data[0] and data == bytes(n):
                self.zero_blobs[oid] = n
            elif not has_hole(data, start):
                job.add(start, data)
            else:
                job.add_with_holes(start, data)
        except OSError as e:
            self.fail(job, e)
            return 0
        if start + n > job.size:
            job.size = start + n
        return n

    def fail(self, job: FileJob, e: Exception) -> None:
        if job.error is None:
            job.error = e
            job.buf = []

    def finish_ready(self) -> None:
        keep: list[FileJob] = []
        for job in self.jobs:
            if job.planned and job.outstanding == 0:
                self.finish(job)
            else:
                keep.append(job)
        self.jobs = keep
        self.run_after()

    def run_after(self) -> None:
        oldest = self.jobs[0].seq if self.jobs else self.created + 1
        while self.after and self.after[0][0] < oldest:
            self.after.pop(0)[1]()

    def finish(self, job: FileJob) -> None:
        if job.error is None:
            try:
                job.flush()
                if job.size != job.end:  # it ends in a hole
                    os.ftruncate(job.fd, job.size)
            except OSError as e:
                job.error = e
        if job.error is not None:
            job.close()
            job.failed(job, job.error)
            return
        try:
            job.done(job)  # with the file still open: its metadata goes through job.fd
        finally:
            job.close()

    def later(self, apply: Callable[[], None]) -> None:
        """Run `apply` once every file now waiting is finished (a directory's
        metadata: its mtime and mode must come after its files)."""
        if self.jobs:
            self.after.append((self.created, apply))
        else:
            apply()

    def abandon(self) -> list[FileJob]:
        """Close every unfinished file (a restore stopping); they are returned
        for the caller to remove."""
        jobs, self.jobs, self.places, self.after = self.jobs, [], {}, []
        self.units = []
        self.close()
        if self.inflight is not None:
            reader, thread, _ = self.inflight
            self.inflight = None
            reader.stop.set()
            if thread is not None:
                thread.join()
        for job in jobs:
            try:
                job.close()
            except OSError:
                pass
        return jobs
