"""`cat-stored`: objects sent as their packs store them, between ketch's own
client and server (a bup server does not list the command in `help`, and its
clients never send it).

bup's `cat-batch` inflates every object on the server and sends it raw: twice
the bytes on the wire and all the inflating on one side, one request at a time.
Here the server sends each object's pack entry as it sits in the pack (one
pread, no zlib), the client inflates it (ISA-L) and checks its id, and the
client keeps several requests in flight.

    request:  cat-stored N\\n  then N object ids, 20 bytes each (1 <= N <= MAX_BATCH)
    reply:    per id, in order: KIND (1 byte) + LENGTH (u32) + LENGTH bytes
                  E  the object's whole (undeltified) pack entry
                  M  no such object (LENGTH 0)
                  X  the server could not read it: LENGTH bytes of message
              then \\nok\\n

A delta or loose object is sent as a fresh entry (deflated at level 1). The
client trusts nothing: the kind, the lengths, the entry's type and size, the
zlib stream's end, and the object id are all checked before an object is used.
"""

from __future__ import annotations

import os
import struct
from collections import OrderedDict
from typing import TYPE_CHECKING

from ketch.errors import CorruptObject, KetchError, ObjectNotFound
from ketch.git import entry
from ketch.git.deflate import InflateError, Inflater
from ketch.git.objects import object_id
from ketch.remote.protocol import Conn, ProtocolError, shown

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    from ketch.localrepo import LocalRepository

COMMAND = b"cat-stored"
MAX_BATCH = 4096  # ids per request: 80 KiB, well inside a pipe's buffer
MAX_OBJECT = 1 << 31  # as the server's frames (remote.server._MAX_OBJECT)
# A stored (level 0) entry is a little longer than its object: 5 bytes per
# 64 KiB block, the header, the adler32.
MAX_ENTRY = MAX_OBJECT + (MAX_OBJECT >> 12) + 64
MAX_MESSAGE = 1 << 12
ENTRY, MISSING, FAILED = b"E", b"M", b"X"
_HEAD = struct.Struct("!cI")
HEAD_SIZE = _HEAD.size
_OPEN_PACKS = 32  # pack files the server keeps open at once


def request(oids: list[bytes]) -> bytes:
    return b"%s %d\n" % (COMMAND, len(oids)) + b"".join(oids)


# -- the client's side ---------------------------------------------------------


def read_reply(conn: Conn, oids: list[bytes], peer: str) -> list[tuple[int, bytes] | None]:
    """The answers to one request for ``oids``, each checked (None: missing).
    Every length is checked before anything is read or allocated."""
    out: list[tuple[int, bytes] | None] = []
    if conn.peek(7) == b"\nerror ":  # refused as a whole (no kind byte is a newline)
        conn.check_ok()
    for oid in oids:
        kind, n = _HEAD.unpack(conn.read(HEAD_SIZE))
        if kind == MISSING and n == 0:
            out.append(None)
        elif kind == FAILED and n <= MAX_MESSAGE:
            msg = conn.read(n).decode(errors="replace")
            raise KetchError(f"{peer}: object {oid.hex()}: {msg}")
        elif kind == ENTRY and 0 < n <= MAX_ENTRY:
            out.append(decode(oid, conn.read(n), peer))
        else:
            raise ProtocolError(f"{peer}: bad cat-stored reply (kind {shown(kind)}, {n} bytes)")
    conn.check_ok()
    return out


def decode(oid: bytes, raw: bytes, peer: str) -> tuple[int, bytes]:
    """(type, content) of the entry the server sent for ``oid``: a whole object,
    inflated within its declared size, nothing after its zlib stream, and
    hashing to ``oid``."""
    try:
        type_num, size, pos = entry.read_header(raw, 0, len(raw), MAX_OBJECT)
    except CorruptObject as e:
        raise ProtocolError(f"{peer}: object {oid.hex()}: {e}") from None
    if type_num not in entry.FULL_TYPES:
        raise ProtocolError(f"{peer}: object {oid.hex()}: pack type {type_num} is not "
                            "a whole object")
    d = Inflater()
    try:
        data = d.decompress(memoryview(raw)[pos:], size + 1)
    except InflateError as e:
        raise ProtocolError(f"{peer}: object {oid.hex()}: zlib error: {e}") from None
    if len(data) != size or not d.eof or d.unused_data:
        raise ProtocolError(f"{peer}: object {oid.hex()}: entry does not inflate to the "
                            f"{size} bytes its header says, exactly")
    if object_id(type_num, data) != oid:
        raise KetchError(f"object {oid.hex()} from {peer} does not match its id")
    return type_num, data


# -- the server's side ---------------------------------------------------------


def read_request(conn: Conn, arg: bytes) -> list[bytes]:
    """The ids of a `cat-stored N` whose line is read (``arg`` is N): read
    before anything can fail, so that an error reply leaves the session in step."""
    if not (arg.isdigit() and len(arg) <= 6 and 1 <= int(arg) <= MAX_BATCH):
        # The ids that follow cannot be skipped: the stream is out of step.
        raise ProtocolError(f"cat-stored: bad count {arg[:20]!r}")
    n = int(arg)
    ids = conn.read(20 * n)
    return [ids[i : i + 20] for i in range(0, 20 * n, 20)]


class _Pack:
    """An open pack file and where each of its entries ends."""

    def __init__(self, pack_dir: str, idx_name: str) -> None:
        import numpy as np

        from ketch.git.idx import PackIndex

        base = os.path.join(pack_dir, idx_name[: -len(".idx")])
        ix = PackIndex(base + ".idx")
        try:
            self.starts: npt.NDArray[np.uint64] = np.sort(ix.offsets())
        finally:
            ix.close()
        self.fd = os.open(base + ".pack", os.O_RDONLY | os.O_CLOEXEC)
        self.end = os.fstat(self.fd).st_size - 20  # the pack's checksum follows

    def entry(self, offset: int) -> bytes | None:
        """The entry at ``offset`` as stored, if it is a whole object."""
        import numpy as np

        i = int(np.searchsorted(self.starts, np.uint64(offset), side="right"))
        stop = int(self.starts[i]) if i < len(self.starts) else self.end
        if not 12 <= offset < stop <= self.end or stop - offset > MAX_ENTRY:
            return None
        raw = os.pread(self.fd, stop - offset, offset)
        if len(raw) != stop - offset:
            return None
        try:
            type_num, _, _ = entry.read_header(raw, 0, len(raw), MAX_OBJECT)
        except CorruptObject:
            return None
        return raw if type_num in entry.FULL_TYPES else None

    def close(self) -> None:
        os.close(self.fd)


class StoredReader:
    """The server's half: entries read from the packs as they are."""

    def __init__(self, repo: LocalRepository) -> None:
        self.repo = repo
        self._packs: OrderedDict[str, _Pack] = OrderedDict()

    def close(self) -> None:
        for p in self._packs.values():
            p.close()
        self._packs.clear()

    def _pack(self, name: str) -> _Pack:
        p = self._packs.pop(name, None)
        if p is None:
            p = _Pack(self.repo.pack_dir, name)
            while len(self._packs) >= _OPEN_PACKS:
                self._packs.popitem(last=False)[1].close()
        self._packs[name] = p
        return p

    def entry(self, oid: bytes) -> bytes | None:
        """``oid``'s entry as stored; a fresh one for a delta, a loose object or
        one whose pack went away (gc); None when there is no such object."""
        hit = self.repo.index.find(oid)
        if hit is not None:
            try:
                raw = self._pack(hit[0]).entry(hit[1])
            except (OSError, CorruptObject):
                raw = None  # the repository's own read says what is wrong, or finds it elsewhere
            if raw is not None:
                return raw
        try:
            type_num, data = self.repo.read(oid)
        except ObjectNotFound:
            return None
        from ketch.git.packenc import encode_entry

        return encode_entry(type_num, data, 1)[0]

    def serve(self, conn: Conn, ids: list[bytes]) -> None:
        """Answer one `cat-stored` request for ``ids``."""
        for oid in ids:
            try:
                raw = self.entry(oid)
            except (KetchError, OSError) as e:
                msg = str(e).encode(errors="replace")[:MAX_MESSAGE]
                conn.write(_HEAD.pack(FAILED, len(msg)) + msg)
                continue
            if raw is None:
                conn.write(_HEAD.pack(MISSING, 0))
            else:
                conn.write(_HEAD.pack(ENTRY, len(raw)))
                conn.write(raw)
        conn.ok()
