"""Deflate and inflate of pack entries and loose objects: ISA-L where it pays.

ISA-L (python-isal) deflates 3-5x and inflates about 2x as fast as zlib, at
its levels 1-3 with the same or a better ratio than zlib's level 1, and its
checksums run at several GB/s. A pack entry may hold any zlib stream: git and
bup inflate ISA-L's with zlib like any other.

ketch's `compress` setting (and `--compress`, `-0`..`-9`) keeps zlib's scale:

- 0: stored blocks, written by ketch itself (packenc.zlib_stored). ISA-L's
  level 0 is not that: it still Huffman-codes.
- 1-3: ISA-L (see `_ISAL_LEVEL`): the fast levels.
- 4-9: zlib's own levels, for whoever wants the smallest packs and pays
  zlib's speed (level 6 is about 5x slower than ISA-L's 1-3 for ~10% less).

Inflating: ISA-L's decompressobj differs from zlib's in ways the readers
depend on, so they use `Inflater` instead of either module: its errors are
`InflateError` (IsalError is not a zlib.error), and it refuses a zlib header
declaring a window over 32 KiB, which zlib (and so git) refuses and ISA-L
would accept. ISA-L also keeps the input it could not yet turn into output
inside its state rather than in `unconsumed_tail`: a stream stopped at
max_length is told apart by the output length, not by the tail.
"""

from __future__ import annotations

import mmap
import zlib
from typing import cast

from isal import isal_zlib

# ketch level -> ISA-L level, for 1-3 (measured on the benchmark corpus's
# chunks; see the README's figures).
_ISAL_LEVEL = (0, 1, 2, 3)

# (isal's stub declares its error an instance; it is the class IsalError.)
InflateError: tuple[type[Exception], ...] = (zlib.error, cast(type[Exception], isal_zlib.error))

crc32 = isal_zlib.crc32
adler32 = isal_zlib.adler32


def deflate(data: bytes | memoryview, level: int) -> bytes:
    """A zlib stream of `data` at ketch's `level` 1-9 (0, stored blocks, is
    the caller's: packenc.zlib_stored)."""
    if level <= 3:
        return isal_zlib.compress(data, _ISAL_LEVEL[level])
    return zlib.compress(data, level)


class Inflater:
    """One zlib stream, inflated piece by piece with bounded output, like
    zlib.decompressobj: `decompress(data, max_length)`, `eof`, `unused_data`.
    Raises one of InflateError on a corrupt stream."""

    __slots__ = ("_d", "_started")

    def __init__(self) -> None:
        self._d = isal_zlib.decompressobj()
        self._started = False

    def decompress(self, data: bytes | bytearray | memoryview | mmap.mmap,
                   max_length: int = 0) -> bytes:
        if not self._started and len(data):
            self._started = True
            # CINFO (window bits - 8) above 7 is invalid in RFC 1950; ISA-L
            # does not check it. Corrupt either way, so say so like zlib.
            if data[0] >> 4 > 7:
                raise zlib.error("invalid window size")
        return self._d.decompress(data, max_length)

    @property
    def eof(self) -> bool:
        return self._d.eof

    @property
    def unused_data(self) -> bytes:
        return self._d.unused_data
