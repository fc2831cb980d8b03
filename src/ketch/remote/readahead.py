"""Reading objects from a server: read-ahead of hinted objects (`prefetch`,
`read`) and streams of them (`read_many`), with several requests in flight,
over ketch's `cat-stored` (remote/stored.py) or, from a bup server, bup's
`cat-batch`. A mixin of `RemoteRepository` (remote/client.py), which owns the
session."""

from __future__ import annotations

import re
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from itertools import islice
from typing import TYPE_CHECKING

from ketch.errors import KetchError, ObjectNotFound
from ketch.git import objects as gobj
from ketch.remote import stored
from ketch.remote.protocol import ConnectionLost, ProtocolError, RemoteError, shown

if TYPE_CHECKING:
    from ketch.remote.protocol import Conn
    from ketch.remote.session import Client
    from ketch.remote.spec import RemoteSpec

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
_CAT_REPLY = re.compile(rb"([0-9a-f]{40}) ([a-z]+) ([0-9]{1,12})\n")
# The server refuses bigger objects (ketch.remote.server._MAX_OBJECT): a reply
# announcing more is not waited for.
_MAX_OBJECT = 1 << 31
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



class ObjectReader:
    spec: RemoteSpec
    client: Client

    @property
    def conn(self) -> Conn:
        raise NotImplementedError

    def __init__(self, use_stored: bool) -> None:
        self._ahead: deque[bytes] = deque()
        self._fetched: OrderedDict[bytes, tuple[int, bytes]] = OrderedDict()
        self._fetched_bytes = 0
        self._direct: set[bytes] = set()  # asked for by read() itself, not hinted
        self._done: set[bytes] = set()  # read from the read-ahead cache lately
        self._guessed: set[bytes] = set()  # hinted here, by _read_next
        # Requests not yet answered, and where their objects go: a read_many's
        # own queue, or None for the read-ahead cache (_fetched).
        self._inflight: deque[tuple[list[bytes], deque[_Got] | None]] = deque()
        self._stored = use_stored
        self._window = _WINDOW_STORED if use_stored else _WINDOW_BUP
        self._requested: set[bytes] = set()
        self._missing: set[bytes] = set()

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
