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

import contextlib
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ketch.errors import KetchError, RefConflict
from ketch.git.durable import AtomicFile
from ketch.git.objindex import ObjectIndex
from ketch.git.pack import DEFAULT_LEVEL, DEFAULT_MAX_PACK_SIZE
from ketch.git.packenc import EncodingWriter, PackEncoder
from ketch.git.refs import check_ref_name
from ketch.remote import stored
from ketch.remote.protocol import (
    GC_KEEPALIVE_LINE,
    GONE,
    IDX_NAME,
    SUSPEND,
    Conn,
    ConnectionLost,
    ProtocolError,
    RemoteError,
    shown,
    u32,
)
from ketch.remote.readahead import ObjectReader
from ketch.remote.session import Client, interrupted
from ketch.remote.spec import RemoteSpec
from ketch.repo import AppendOnlyRepository, FsckJob, GcJob, WritableRepository

_MAX_GC_REPORT = 1 << 20  # a gc report is a few hundred bytes: more is not one
_HEX40 = re.compile(rb"[0-9a-f]{40}")
# An fsck report has a line per damaged object: a badly damaged repository's is long.
_MAX_FSCK_REPORT = 256 << 20


def default_cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ketch", "remote")


class RemoteRepository(ObjectReader, WritableRepository):
    def __init__(self, spec: RemoteSpec, *, create: bool = False,
                 cache_root: str | None = None) -> None:
        self.spec = spec
        self.client = Client(spec, create=create)
        self.cache_dir = os.path.join(cache_root or default_cache_root(), spec.cache_key())
        self._objindex: ObjectIndex | None = None
        ObjectReader.__init__(self, stored.COMMAND in self.client.commands)

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
            # Another save of this machine into this repository shares the
            # cache and may have removed it first.
            with contextlib.suppress(FileNotFoundError):
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
            try:
                self.conn.check_ok()
            except RemoteError as e:
                if str(e).startswith(GONE):
                    return  # removed by a gc since listed: nothing to learn from it
                raise KetchError(f"server: {e}") from None
            except ConnectionLost as e:
                raise self.client._lost(e) from None
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

    def _send(self, oids: list[bytes], blob: bytes, meta: list[tuple[int, int]],
              lane: int) -> None:
        """The encoder's sink: a batch of entries, framed onto the connection (the
        server sorts trees and commits into packs of their own by type; the
        blobs marked metadata stay with the data)."""
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
