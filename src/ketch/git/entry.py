"""Decoding one pack entry, bounded: the reading side of pack.py's `entry_header`.

An entry is a header (type in bits 4-6 of the first byte, size as a little-endian
base-128 varint starting with the low 4 bits), then for OFS_DELTA a backwards
offset to the base and for REF_DELTA the base's 20-byte id, then a zlib stream of
``size`` inflated bytes.

The bytes may come from another machine (a client's frame, a ranged GET from an
object store) as well as from a pack on disk, so every parser here is bounded:
a declared size above the caller's limit is refused before anything is
inflated, inflating never produces more than the declared size plus one byte
(the byte that proves a stream too long), nothing reads outside the given
range, and every malformed input raises CorruptPack (a CorruptObject) and
nothing else.
"""

from __future__ import annotations

import mmap
from collections.abc import Callable

from ketch.errors import CorruptObject
from ketch.git.deflate import InflateError, Inflater
from ketch.git.objects import BLOB, COMMIT, TAG, TREE

OFS_DELTA = 6
REF_DELTA = 7
FULL_TYPES = frozenset((COMMIT, TREE, BLOB, TAG))

# No object ketch or bup writes comes near this (chunks are at most 32 KiB,
# trees a few MB); git stores anything above core.bigFileThreshold (512 MiB)
# whole, but still far below. A larger declared size is a corrupt or hostile
# header, and refusing it keeps such a header from asking for more memory than
# a machine has.
MAX_ENTRY_SIZE = 1 << 32
# A varint of more bits than this is a corrupt header whatever the limit.
_MAX_SHIFT = 64

Buffer = bytes | bytearray | memoryview | mmap.mmap
# read(pos, n) -> up to n bytes starting at pos; fewer at the end, empty past it.
Reader = Callable[[int, int], Buffer]


class CorruptPack(CorruptObject):
    """A pack entry could not be decoded."""


def read_header(
    buf: Buffer, pos: int, end: int, limit: int = MAX_ENTRY_SIZE
) -> tuple[int, int, int]:
    """(type, size, position just past the type/size header) of the entry at
    ``pos``; only ``buf[pos:end]`` is read."""
    end = min(end, len(buf))
    if not 0 <= pos < end:
        raise CorruptPack("truncated entry header")
    c = buf[pos]
    type_num = (c >> 4) & 7
    size = c & 0x0F
    shift = 4
    pos += 1
    while c & 0x80:
        if pos >= end:
            raise CorruptPack("truncated entry header")
        if shift > _MAX_SHIFT:
            raise CorruptPack(f"entry header declares more than the {limit} bytes allowed")
        c = buf[pos]
        pos += 1
        size |= (c & 0x7F) << shift
        shift += 7
    if size > limit:
        raise CorruptPack(f"entry header declares {size} bytes, more than the {limit} allowed")
    return type_num, size, pos


def read_ofs_distance(buf: Buffer, pos: int, end: int) -> tuple[int, int]:
    """(distance back to the base, position past it) for an OFS_DELTA entry whose
    header ends at ``pos``.

    git's encoding adds one at each continuation so that every offset has a
    single encoding.
    """
    end = min(end, len(buf))
    if not 0 <= pos < end:
        raise CorruptPack("truncated delta offset")
    c = buf[pos]
    pos += 1
    dist = c & 0x7F
    shift = 7
    while c & 0x80:
        if pos >= end or shift > _MAX_SHIFT:
            raise CorruptPack("truncated delta offset")
        c = buf[pos]
        pos += 1
        dist = ((dist + 1) << 7) | (c & 0x7F)
        shift += 7
    return dist, pos


def read_ref_base(buf: Buffer, pos: int, end: int) -> bytes:
    """The base id of a REF_DELTA entry whose header ends at ``pos``."""
    end = min(end, len(buf))
    if not 0 <= pos or pos + 20 > end:
        raise CorruptPack("truncated delta base id")
    return bytes(buf[pos : pos + 20])


def inflate(read: Reader, pos: int, size: int) -> tuple[bytes, int]:
    """(the ``size`` bytes the zlib stream at ``pos`` inflates to, position just
    past the stream); only the stream itself says where it ends.

    The first read asks for a little more than any stream for ``size`` bytes
    needs (zlib's stored blocks cost 5 bytes per 64 KiB), so one read is the
    rule; the input is fed in bounded pieces because the inflater copies what
    it does not consume. max_length stops a corrupt stream at one byte past
    ``size``.
    """
    d = Inflater()
    take = size + (size >> 9) + 64
    parts: list[bytes] = []
    got = 0
    try:
        while True:
            chunk = read(pos, take)
            if not chunk:
                raise CorruptPack(f"truncated zlib data: {got} of {size} bytes")
            out = d.decompress(chunk, size - got + 1)
            got += len(out)
            parts.append(out)
            if d.eof:
                pos += len(chunk) - len(d.unused_data)
                break
            if got > size:
                break  # corrupt below
            pos += len(chunk)
            take = max(take, 1 << 16)
    except InflateError as e:
        raise CorruptPack(f"zlib error: {e}") from None
    if got != size or not d.eof:
        raise CorruptPack(f"entry inflates to {got}{'' if d.eof else '+'} bytes, "
                          f"header says {size}")
    return (parts[0] if len(parts) == 1 else b"".join(parts)), pos


def inflate_head(read: Reader, pos: int, n: int) -> bytes:
    """Up to the first ``n`` inflated bytes of the zlib stream at ``pos`` (a
    delta's sizes sit at its start); never reads more than a short stretch."""
    d = Inflater()
    try:
        return d.decompress(read(pos, 64 + n), n)
    except InflateError as e:
        raise CorruptPack(f"zlib error: {e}") from None


def reader(buf: Buffer, end: int | None = None) -> Reader:
    """A Reader over ``buf[:end]``, without copying it."""
    view = memoryview(buf)
    stop = len(view) if end is None else min(end, len(view))

    def read(pos: int, n: int) -> memoryview:
        return view[pos : min(pos + n, stop)] if 0 <= pos < stop else view[0:0]

    return read


def decode_whole(buf: Buffer, limit: int = MAX_ENTRY_SIZE) -> tuple[int, bytes]:
    """(type, data) of the undeltified entry that is all of ``buf``, as a client
    sends it: nothing may follow its zlib stream."""
    type_num, size, pos = read_header(buf, 0, len(buf), limit)
    if type_num not in FULL_TYPES:
        raise CorruptPack(f"pack type {type_num} is not a whole object (a delta?)")
    data, end = inflate(reader(buf), pos, size)
    if end != len(buf):
        raise CorruptPack(f"{len(buf) - end} bytes follow the entry's zlib stream")
    return type_num, data
