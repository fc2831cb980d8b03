"""The client side: a `Repository` served by `ketch server` or `bup server`
over ssh (or by a local server process, for `-r :PATH`).

Only commands bup 0.33's server has are used, so the same client works
against both. Dedup works as bup's does: the server's idx files are cached
locally (`~/.cache/ketch/remote/KEY/`), objects they list are never sent, and
the server's `index` suggestions in the middle of a transfer add more idx
files to the cache. Unlike bup, the client fetches every idx it lacks before
its first write, so objects that arrived before an interrupted save are not
sent again.
"""

from __future__ import annotations

import json
import os
import re
from collections import OrderedDict, deque
from collections.abc import Callable, Iterable, Iterator, Sequence
from itertools import islice
from typing import Any

import numpy as np

from ketch.errors import KetchError, ObjectNotFound, RefConflict
from ketch.git import objects as gobj
from ketch.git.durable import AtomicFile
from ketch.git.objindex import ObjectIndex
from ketch.git.pack import DEFAULT_LEVEL, DEFAULT_MAX_PACK_SIZE
from ketch.git.packenc import EncodingWriter, PackEncoder
from ketch.git.refs import check_ref_name
from ketch.remote import stored
from ketch.remote.protocol import (
    GC_KEEPALIVE_LINE,
    IDX_NAME,
    SUSPEND,
    Conn,
    ConnectionLost,
    ProtocolError,
    RemoteError,
    shown,
    u32,
)
from ketch.remote.session import Client, interrupted
from ketch.remote.spec import RemoteSpec
from ketch.repo import AppendOnlyRepository, FsckJob, GcJob, WritableRepository

_TYPE_BY_NAME = {name: num for num, name in gobj.TYPE_NAMES.items()}
_BATCH = 256  # objects per cat-batch request when reading ahead
# Requests in flight: bup's cat-batch is answered after the server has read
# the objects (two suffice); ketch's cat-stored answers at the speed of a
# pread, and loopback latency alone would serialise fewer.
_WINDOW_BUP, _WINDOW_STORED = 2, 6
# Objects read ahead and not yet read: at most this many (more than a full
# window brings), this big in all.
_AHEAD_OBJECTS, _AHEAD_BYTES = 8 * _BATCH, 32 << 20
_HEX_NAME = re.compile(rb"[0-9a-f]{1,16}")
_MAX_GC_REPORT = 1 << 20  # a gc report is a few hundred bytes: more is not one
_HEX40 = re.compile(rb"[0-9a-f]{40}")
_CAT_REPLY = re.compile(rb"([0-9a-f]{40}) ([a-z]+) ([0-9]{1,12})\n")
# The server refuses bigger objects (ketch.remote.server._MAX_OBJECT): a reply
# announcing more is not waited for.
_MAX_OBJECT = 1 << 31
# An fsck report has a line per damaged object: a badly damaged repository's is long.
_MAX_FSCK_REPORT = 256 << 20


_Got = tuple[bytes, tuple[int, bytes] | None]  # an id and its object, None if missing


def _read_next(tree: bytes) -> list[bytes]:
    """What a reader of this hinted tree reads next: all of a file's chunk tree
    (every name a hex offset, bup-format 1.6), a directory's `.bupm` (its
    listing needs it; its files and subdirectories may not be wanted)."""
    try:
        entries = list(gobj.decode_tree(tree))
    except KetchError:
        return []  # its reader will say what is wrong with it
    if all(_HEX_NAME.fullmatch(e.name) for e in entries):
        return [e.oid for e in entries]
    return [e.oid for e in entries if e.name == b".bupm"]


def default_cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ketch", "remote")


class RemoteRepository(WritableRepository):
    def __init__(self, spec: RemoteSpec, *, create: bool = False,
                 cache_root: str | None = None) -> None:
        self.spec = spec
        self.client = Client(spec, create=create)
        self.cache_dir = os.path.join(cache_root or default_cache_root(), spec.cache_key())
        self._objindex: ObjectIndex | None = None
        self._ahead: deque[bytes] = deque()
        self._fetched: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
        self._fetched_bytes = 0
        self._direct: set[bytes] = set()  # asked for by read() itself, not hinted
        self._done: set[bytes] = set()  # read from the read-ahead cache lately
        self._guessed: set[bytes] = set()  # hinted here, by _read_next
        # Requests not yet answered, and where their objects go: a read_many's
        # own queue, or None for the read-ahead cache (_fetched).
        self._inflight: deque[tuple[list[bytes], deque[_Got] | None]] = deque()
        self._stored = stored.COMMAND in self.client.commands
        self._window = _WINDOW_STORED if self._stored else _WINDOW_BUP
        self._requested: set[bytes] = set()
        self._missing: set[bytes] = set()

    @property
    def conn(self) -> Conn:
        return self.client.conn

    def traffic(self) -> tuple[int, int]:
        """(bytes sent, bytes received) on this connection so far."""
        return self.conn.bytes_sent, self.conn.bytes_received

    def close(self) -> None:
        if self._objindex is not None:
            self._objindex.close()
            self._objindex = None
        if interrupted():
            self.client.abandon()
            return
        if self.client.closed:
            return
        try:
            self._drain()  # a server cut off mid-answer would exit with an error
        except KetchError:
            pass
        self.client.close()

    # -- the server's idx files, cached ------------------------------------------

    def _index(self) -> ObjectIndex:
        if self._objindex is None:
            self._objindex = self._sync_indexes()
        return self._objindex

    def _sync_indexes(self) -> ObjectIndex:
        self._drain()
        os.makedirs(self.cache_dir, exist_ok=True)
        self.conn.write(b"list-indexes\n")
        listed = [self._index_name(line.split(b" ")[0]) for line in self.client.lines()]
        self.client.check_ok()
        cached = {n for n in os.listdir(self.cache_dir) if n.endswith(".idx")}
        for stale in cached - set(listed):
            os.unlink(os.path.join(self.cache_dir, stale))
        for name in listed:
            if name not in cached:
                self.fetch_index(name)
        index = ObjectIndex(self.cache_dir)
        index.maintain()
        return index

    def _index_name(self, raw: bytes) -> str:
        """A name the server gave for one of its idx files, checked: it becomes a
        file name in the cache."""
        if not IDX_NAME.fullmatch(raw):
            raise ProtocolError(f"{self.spec}: bad index name from the server: {shown(raw)}")
        return raw.decode()

    def fetch_index(self, name: str) -> None:
        name = self._index_name(os.fsencode(name))
        path = os.path.join(self.cache_dir, name)
        if os.path.exists(path):
            return
        self.conn.write(b"send-index " + name.encode() + b"\n")
        if self.conn.peek(7) == b"\nerror ":  # no idx starts so (they start \377tOc)
            self.client.check_ok()
        n = self.client.read_u32()
        with AtomicFile(path) as f:
            left = n
            while left:
                block = self.client.read(min(left, 1 << 20))
                f.file.write(block)
                left -= len(block)
        self.client.check_ok()
        if self._objindex is not None:
            self._objindex.add_idx(path)

    # -- objects ------------------------------------------------------------------

    def prefetch(self, oids: Sequence[bytes]) -> None:
        # Readers walk depth first: the newest hints are wanted soonest.
        self._ahead.extendleft(reversed(oids))
        if len(self._ahead) > 1 << 16:
            for _ in range(len(self._ahead) - (1 << 16)):
                self._ahead.pop()

    def read(self, oid: bytes) -> tuple[int, bytes]:
        """One object; hinted ones come in batches, and while this side works
        on one batch the server is already answering the next (two requests
        in flight), so a restore is not one round trip per object."""
        while True:
            got = self._fetched.pop(oid, None)
            if got is not None:
                self._fetched_bytes -= len(got[1])
                if len(self._done) >= 4 * _AHEAD_OBJECTS:
                    self._done.clear()
                self._done.add(oid)
                self._top_up()
                return got
            if oid in self._missing:
                self._missing.discard(oid)
                raise ObjectNotFound(f"object {oid.hex()} not found on {self.spec}")
            if oid not in self._requested:
                self._send_batch(oid)
                self._direct.add(oid)
            self._top_up()
            self._recv_batch()

    def _send_batch(self, first: bytes | None) -> None:
        batch = [] if first is None else [first]
        while self._ahead and len(batch) < _BATCH:
            o = self._ahead.popleft()
            # A hint of an object read already (read ahead for an earlier
            # hint of it) is stale: its reader has it.
            if (o not in self._fetched and o not in self._requested and o not in self._done
                    and o not in batch):
                batch.append(o)
        if not batch:
            return
        self._request(batch, None)
        self._requested.update(batch)

    def _request(self, batch: list[bytes], sink: deque[_Got] | None) -> None:
        if self._stored:
            self.conn.write(stored.request(batch))
        else:
            self.conn.write(b"cat-batch\n" + b"".join(o.hex().encode() + b"\n" for o in batch)
                            + b"\n")
        self.conn.flush()
        self._inflight.append((batch, sink))

    def _top_up(self) -> None:
        # Never more ahead than the cache keeps: what it dropped unread would
        # be asked for again.
        while (self._ahead and len(self._inflight) < self._window
               and self._fetched_bytes < _AHEAD_BYTES // 2
               and len(self._fetched) + sum(len(b) for b, _ in self._inflight)
               <= _AHEAD_OBJECTS - _BATCH):
            self._send_batch(None)

    def _answers(self, batch: list[bytes]) -> list[tuple[int, bytes] | None]:
        """The objects of the oldest request in flight, their ids checked."""
        if self._stored:
            try:
                return stored.read_reply(self.conn, batch, str(self.spec))
            except ConnectionLost as e:
                raise self.client._lost(e) from None
            except RemoteError as e:
                raise KetchError(f"server: {e}") from None
        out: list[tuple[int, bytes] | None] = []
        for o, obj in zip(batch, self._read_batch_reply(len(batch)), strict=True):
            if obj is not None:
                t, data, got_oid = obj
                if got_oid != o or gobj.object_id(t, data) != o:
                    raise KetchError(f"object {o.hex()} from {self.spec} does not match its id")
                obj = (t, data)  # type: ignore[assignment]
            out.append(obj)  # type: ignore[arg-type]
        return out

    def _recv_batch(self) -> None:
        batch, sink = self._inflight.popleft()
        if sink is None:
            self._requested.difference_update(batch)
        got = self._answers(batch)
        if sink is not None:
            sink.extend(zip(batch, got, strict=True))
            return
        chunks: list[bytes] = []
        for o, obj in zip(batch, got, strict=True):
            if obj is None:
                self._missing.add(o)
                continue
            old = self._fetched.pop(o, None)
            self._fetched[o] = obj
            self._fetched_bytes += len(obj[1]) - (len(old[1]) if old else 0)
            if o in self._direct:
                self._direct.discard(o)
            elif o in self._guessed:
                # One level only: the guesses' guesses would come in the wrong
                # order (newest hints first) and crowd out what is read next.
                self._guessed.discard(o)
            elif obj[0] == gobj.TREE:
                chunks += _read_next(obj[1])
        if chunks:
            # Asked for now, not one round trip after the tree is read.
            self.prefetch(chunks)
            if len(self._guessed) > 4 * _AHEAD_OBJECTS:
                self._guessed.clear()
            self._guessed.update(chunks)
        # Hints that were never read (a skipped hole, a file seen before) must not pile up.
        while len(self._fetched) > _AHEAD_OBJECTS or self._fetched_bytes > _AHEAD_BYTES:
            self._fetched_bytes -= len(self._fetched.popitem(last=False)[1][1])
        if len(self._missing) > 4 * _BATCH:
            self._missing.clear()
        if len(self._direct) > 4 * _BATCH:
            self._direct.clear()

    def read_many(self, oids: Iterable[bytes]) -> Iterator[tuple[bytes, int, bytes]]:
        """Each object of ``oids`` as (oid, type, content), in order; requests
        go out ahead of the answers (a window of batches), so that a restore is
        limited by bandwidth, not by round trips. Raises ObjectNotFound."""
        todo = iter(oids)
        mine: deque[_Got] = deque()
        pending = 0  # my requests in flight
        more = True
        while True:
            while more and len(self._inflight) < self._window:
                batch = list(islice(todo, _BATCH))
                more = len(batch) == _BATCH
                if batch:
                    self._request(batch, mine)
                    pending += 1
            while mine:
                oid, got = mine.popleft()
                if got is None:
                    raise ObjectNotFound(f"object {oid.hex()} not found on {self.spec}")
                yield oid, got[0], got[1]
            if not pending and not more:
                return
            # The oldest request may be read-ahead for read(): answered into its cache.
            if self._inflight[0][1] is mine:
                pending -= 1
            self._recv_batch()

    def _drain(self) -> None:
        """Read the answers to requests in flight: another command comes next."""
        while self._inflight:
            self._recv_batch()

    def _cat_batch(self, specs: list[bytes]) -> list[tuple[int, bytes, bytes] | None]:
        self._drain()
        self.conn.write(b"cat-batch\n" + b"".join(s + b"\n" for s in specs) + b"\n")
        return self._read_batch_reply(len(specs))

    def _read_batch_reply(self, n: int) -> list[tuple[int, bytes, bytes] | None]:
        out: list[tuple[int, bytes, bytes] | None] = []
        for _ in range(n):
            line = self.client.conn.readline()
            if not line:
                raise self.client._lost(ConnectionLost(""))
            if line == b"missing\n":
                out.append(None)
                continue
            m = _CAT_REPLY.fullmatch(line)
            if m is None or m[2] not in _TYPE_BY_NAME or int(m[3]) > _MAX_OBJECT:
                # Read no further: a size sent by the server is not a size to wait for.
                raise ProtocolError(f"{self.spec}: bad cat-batch reply: {shown(line)}")
            oid, t = bytes.fromhex(m[1].decode()), _TYPE_BY_NAME[m[2]]
            out.append((t, self.client.read(int(m[3])), oid))
        self.client.check_ok()
        return out

    def has_many(self, oids: Sequence[bytes]) -> list[bool]:
        if not len(oids):
            return []
        found: list[bool] = self._index().contains_many(np.array(oids, dtype="S20")).tolist()
        return found

    def exists(self, oid: bytes) -> bool:
        return self._index().contains_one(oid)

    def expand_hex(self, hexid: str) -> bytes | None:
        got = self._cat_batch([hexid.encode()])[0]
        return None if got is None else got[2]

    def writer(self, *, level: int = DEFAULT_LEVEL, max_pack_size: int | None = None,
               max_pack_objects: int | None = None) -> RemoteWriter:
        self.client.require(b"receive-objects-v2")
        self._drain()
        self._index()
        # A server closes its packs at its own limits: max_pack_objects is its business.
        return RemoteWriter(self, level=level, max_pack_size=max_pack_size or DEFAULT_MAX_PACK_SIZE)

    # -- refs ---------------------------------------------------------------------

    def read_ref(self, name: bytes) -> bytes | None:
        # BadRefName here, as a local repository raises it (the VFS reads it as
        # "no such branch"), not the server's refusal as a generic error.
        check_ref_name(name, allow_pseudo=True)
        self._drain()
        self.conn.write(b"read-ref " + name + b"\n")
        line = self.client.conn.readline().strip()
        self.client.check_ok()
        return self._oid(line) if line else None

    def _oid(self, hexid: bytes) -> bytes:
        if not _HEX40.fullmatch(hexid):
            raise ProtocolError(f"{self.spec}: bad object id from the server: {shown(hexid)}")
        return bytes.fromhex(hexid.decode())

    def iter_refs(self, prefix: bytes = b"refs/") -> Iterator[tuple[bytes, bytes]]:
        self._drain()
        self.conn.write(b"refs 0 0\n\n")
        refs = []
        for line in self.client.lines():
            hexid, _, name = line.partition(b" ")
            if name.startswith(prefix):
                refs.append((name, self._oid(hexid)))
        self.client.check_ok()
        return iter(sorted(refs))

    def update_ref(self, name: bytes, new: bytes, old: bytes | None,
                   message: bytes = b"") -> None:
        check_ref_name(name)
        self._drain()
        self.conn.write(b"update-ref " + name + b"\n" + new.hex().encode() + b"\n"
                        + (old.hex().encode() if old else b"") + b"\n")
        try:
            self.conn.check_ok()
        except RemoteError as e:
            if str(e).startswith("conflict:"):
                raise RefConflict(str(e)[len("conflict:"):].strip()) from None
            refused = f"server refused to update {name.decode(errors='replace')}: {e}"
            if str(e).startswith("append-only:"):
                raise AppendOnlyRepository(refused) from None
            raise KetchError(refused) from None
        except ConnectionLost as e:
            raise self.client._lost(e) from None

    def make_parity(self, generate: Callable[[str], None]) -> None:
        """The server makes parity for the packs it writes from now on, with its
        own par2 (`generate` is for packs written here)."""
        self.client.require(b"par2")
        self._drain()
        self.conn.write(b"par2\n")
        try:
            self.conn.check_ok()
        except RemoteError as e:
            raise KetchError(f"server: {e}") from None

    # -- garbage collection, run by the server -----------------------------------------

    def collect_garbage(self, job: GcJob) -> dict[str, Any]:
        """Send `gc` with the job's options; the server runs it on its repository
        (saying `.` now and then while it works) and answers with its report."""
        self.client.require(b"gc")
        if job.options.get("par2"):
            self.client.require(b"par2")  # an older server would ignore the option
        self._drain()
        self.conn.write(b"gc\n" + json.dumps(job.options, sort_keys=True).encode() + b"\n")
        try:
            report = self._gc_reply()
        except ConnectionLost as e:
            raise self.client._lost(e) from None
        except RemoteError as e:
            if str(e).startswith("append-only:"):
                raise AppendOnlyRepository(f"server: {e}") from None
            raise KetchError(f"server: {e}") from None
        # Packs were rewritten and deleted there: the cached idx files may name
        # objects that are gone, and dedup must not trust them.
        if self._objindex is not None:
            self._objindex.close()
            self._objindex = None
        return report

    def check_integrity(self, job: FsckJob) -> dict[str, Any]:
        """Send `fsck` with the job's options: the server reads its packs and
        answers with its report (no object crosses the connection)."""
        self.client.require(b"fsck")
        self._drain()
        self.conn.write(b"fsck\n" + json.dumps(job.options, sort_keys=True).encode() + b"\n")
        try:
            return self._gc_reply("fsck", _MAX_FSCK_REPORT)
        except ConnectionLost as e:
            raise self.client._lost(e) from None
        except RemoteError as e:
            if str(e).startswith("append-only:"):
                raise AppendOnlyRepository(f"server: {e}") from None
            raise KetchError(f"server: {e}") from None

    def _gc_reply(self, what: str = "gc", limit: int = _MAX_GC_REPORT) -> dict[str, Any]:
        conn = self.conn
        while True:
            line = conn.readline(limit=limit)
            if not line:
                raise ConnectionLost(f"connection to {self.spec} lost during {what}")
            if line == GC_KEEPALIVE_LINE:
                continue
            if line.startswith(b"error "):
                raise RemoteError(line[6:].rstrip(b"\n").decode(errors="replace"))
            if line == b"\n":  # an `error` reply follows its blank line
                conn.check_ok()
                raise ProtocolError(f"{self.spec}: {what}: ok without a report")
            break
        try:
            report = json.loads(line)
        except ValueError:
            report = None
        if not isinstance(report, dict):
            raise ProtocolError(f"{self.spec}: {what}: the report is not a JSON object")
        self.client.check_ok()
        return report


class RemoteWriter(EncodingWriter):
    """The pack encoder's batching and compression, with the pack on the server:
    each encoded entry goes out as a `receive-objects-v2` frame."""

    def __init__(self, repo: RemoteRepository, *, level: int, max_pack_size: int) -> None:
        self.repo = repo
        self.max_pack_size = max_pack_size
        # Not atomic: a frame cut half-way is the server's to drop, and a stop
        # signal must not wait for a slow network.
        self._enc = PackEncoder(self._send, level=level, exists=repo.exists,
                                exists_many=repo.has_many, atomic=False)
        self._streaming = False
        self._stream_bytes = 0
        self.closed_idx: list[str] = []
        self.objects_written = 0
        self.bytes_written = 0

    def _send(self, oids: list[bytes], blob: bytes, meta: list[tuple[int, int]]) -> None:
        """The encoder's sink: a batch of entries, framed onto the connection."""
        conn = self.repo.conn
        if not self._streaming:
            conn.write(b"receive-objects-v2\n")
            self._streaming = True
            self._stream_bytes = 0
        view = memoryview(blob)
        pos = 0
        for oid, (n, crc) in zip(oids, meta, strict=True):
            conn.write(u32(n + 24) + oid + u32(crc))
            conn.write(view[pos : pos + n])
            pos += n
        self.objects_written += len(oids)
        self.bytes_written += len(blob)
        self._stream_bytes += len(blob)
        if conn.has_input():
            self._take_suggestions(suspend=True)
        if self._stream_bytes >= self.max_pack_size:
            self._end_stream()

    def _take_suggestions(self, *, suspend: bool) -> None:
        """Read the server's `index NAME` suggestions (and, at the end of a
        stream, the names of the packs it wrote); fetch those idx files."""
        conn = self.repo.conn
        conn.write(u32(SUSPEND if suspend else 0))
        self._streaming = False  # whatever the answer, the stream has ended
        lines = list(self.repo.client.lines())
        self.repo.client.check_ok()
        for line in lines:
            suggested = line.startswith(b"index ")
            name = (line[6:] if suggested else line).decode(errors="replace")
            self.repo.fetch_index(name)
            if not suggested:
                self.closed_idx.append(name)
        if suspend:
            conn.write(b"receive-objects-v2\n")
            self._streaming = True

    def _end_stream(self) -> None:
        if self._streaming:
            self._streaming = False
            self._take_suggestions(suspend=False)

    def flush(self) -> list[str]:
        self._enc.drain()
        self._end_stream()
        return list(self.closed_idx)

    def close(self) -> list[str]:
        try:
            return self.flush()
        finally:
            self._enc.shutdown()

    def abort(self) -> None:
        self._enc.discard()
        if interrupted():
            self.repo.client.abandon()  # the server keeps what arrived whole
        elif not self.repo.client.closed:
            try:
                # What the server already has is complete; keeping it makes a retry cheaper.
                self._end_stream()
            except KetchError:
                self.repo.client.abandon()
        self._enc.shutdown()
