"""Reading many entries of one pack front to back, in large reads.

A restore wants thousands of objects that a save wrote side by side. Reading
them one mmap fault and one lookup at a time costs more than inflating them;
here the wanted offsets, sorted, are grouped into runs (neighbours less than
RUN_GAP apart, at most RUN_BYTES a run), each run is read with one pread, and
its entries are decoded from that buffer and inflated with ISA-L. A pread
keeps what was read out of the process's resident set once decoded, unlike
pages of a mapped pack.

Deltas are not resolved here: such an entry comes back with data None, for
the caller to read through PackFile (they are rare in bup and ketch packs).
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from typing import cast

from isal import isal_zlib

from ketch.git.entry import FULL_TYPES, CorruptPack, read_header

# isal's stub declares its error an instance, not a class.
_ISAL_ERROR = cast(type[Exception], isal_zlib.error)

# Entries closer than this are read in one go, the gap read and dropped: a
# seek on a disk costs more than reading this much.
RUN_GAP = 256 << 10
RUN_BYTES = 1 << 20
# Read past a run's last entry start: enough for any blob bup or ketch writes
# (at most 32 KiB inflated) and its header; a longer entry reads on.
RUN_TAIL = 64 << 10


def _runs(offsets: Sequence[int]) -> Iterator[tuple[int, int]]:
    """(first, last) indexes into ``offsets`` (sorted) of each run."""
    n = len(offsets)
    i = 0
    while i < n:
        start = offsets[i]
        j = i
        while j + 1 < n and offsets[j + 1] - offsets[j] <= RUN_GAP \
                and offsets[j + 1] - start <= RUN_BYTES:
            j += 1
        yield i, j
        i = j + 1


def _inflate(fd: int, buf: bytes, base: int, pos: int, size: int, end: int) -> bytes:
    """The ``size`` bytes the zlib stream at pack offset ``pos`` inflates to,
    taken from ``buf`` (which holds the pack from ``base``) and, past it, from
    the file; bounded as ketch.git.entry.inflate is."""
    d = isal_zlib.decompressobj()
    view = memoryview(buf)
    take = size + (size >> 9) + 64
    parts: list[bytes] = []
    got = 0
    try:
        while True:
            rel = pos - base
            if 0 <= rel < len(buf):
                chunk: bytes | memoryview = view[rel : rel + take]
            else:
                chunk = os.pread(fd, max(0, min(take, end - pos)), pos)
            if not chunk:
                raise CorruptPack(f"truncated zlib data: {got} of {size} bytes")
            out = d.decompress(chunk, size - got + 1)
            got += len(out)
            parts.append(out)
            if d.eof:
                break
            if got > size or d.unconsumed_tail:
                break
            pos += len(chunk)
            take = max(take, 1 << 16)
    except _ISAL_ERROR as e:
        raise CorruptPack(f"zlib error: {e}") from None
    if got != size or not d.eof:
        raise CorruptPack(f"entry inflates to {got}{'' if d.eof else '+'} bytes, "
                          f"header says {size}")
    return parts[0] if len(parts) == 1 else b"".join(parts)


def read_entries(fd: int, offsets: Sequence[int], end: int
                 ) -> Iterator[tuple[int, bytes | None]]:
    """(type, data) of the entry at each of ``offsets`` (sorted ascending), in
    that order, from the pack open as ``fd`` whose entries end at ``end``;
    data None for a delta. Raises CorruptPack for an entry that cannot be
    decoded (nothing after it is read)."""
    for i, j in _runs(offsets):
        base = offsets[i]
        if not 12 <= base < end:
            raise CorruptPack(f"entry offset {base} is outside the pack")
        buf = os.pread(fd, min(offsets[j] + RUN_TAIL, end) - base, base)
        for k in range(i, j + 1):
            off = offsets[k]
            if off >= end:
                raise CorruptPack(f"entry offset {off} is outside the pack")
            try:
                type_num, size, pos = read_header(buf, off - base, len(buf))
                if type_num not in FULL_TYPES:
                    yield type_num, None
                    continue
                yield type_num, _inflate(fd, buf, base, base + pos, size, end)
            except CorruptPack as e:
                raise CorruptPack(f"entry at {off}: {e}") from None
