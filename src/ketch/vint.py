"""bup's variable-length integers and byte vectors (bup-format.md 3.1).

vuint: 7 value bits per byte, least significant group first, 0x80 = more follows.
vint:  like vuint, but the first byte carries only 6 value bits and 0x40 is the sign.
bvec:  a vuint length, then that many raw bytes.

Readers take a buffer and a position and return (value, new position), so a
whole .bupm can be walked without copying it into a file object.
"""

from __future__ import annotations

from ketch.errors import KetchError

# Most values written per file (small ids, nanosecond halves, tags) are below
# 0x80; handing out a prebuilt byte string skips the encode loop for them.
_ONE_BYTE = tuple(bytes((i,)) for i in range(0x80))


class CorruptMetadata(KetchError):
    """A metadata record is truncated or malformed."""


class UnencodableValue(KetchError, ValueError):
    """A value does not fit the metadata encoding (e.g. a negative vuint)."""


def write_vuint(n: int) -> bytes:
    if 0 <= n < 0x80:
        return _ONE_BYTE[n]
    if n < 0:
        raise UnencodableValue(f"vuint cannot be negative: {n}")
    if n < 0x4000:
        return bytes(((n & 0x7F) | 0x80, n >> 7))
    out = bytearray()
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_vint(n: int) -> bytes:
    if 0 <= n < 0x40:
        return _ONE_BYTE[n]
    if n < 0:
        n = -n
        first = 0x40 | (n & 0x3F)
    else:
        first = n & 0x3F
    n >>= 6
    if not n:
        return _ONE_BYTE[first]
    # The vuint loop inlined: seconds and sizes make this the hot path.
    out = bytearray((first | 0x80,))
    while n >= 0x80:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def write_bvec(b: bytes) -> bytes:
    return write_vuint(len(b)) + b


def read_vuint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    try:
        b = buf[pos]
        if b < 0x80:
            return b, pos + 1
        n = b & 0x7F
        shift = 7
        while True:
            pos += 1
            b = buf[pos]
            n |= (b & 0x7F) << shift
            if b < 0x80:
                return n, pos + 1
            shift += 7
    except IndexError:
        raise CorruptMetadata("metadata truncated inside a vuint") from None


def read_vint(buf: bytes | memoryview, pos: int) -> tuple[int, int]:
    try:
        b = buf[pos]
    except IndexError:
        raise CorruptMetadata("metadata truncated inside a vint") from None
    n = b & 0x3F
    if b & 0x80:
        rest, pos = read_vuint(buf, pos + 1)
        n |= rest << 6
    else:
        pos += 1
    return (-n if b & 0x40 else n), pos


def read_bvec(buf: bytes | memoryview, pos: int) -> tuple[bytes, int]:
    n, pos = read_vuint(buf, pos)
    end = pos + n
    if end > len(buf):
        raise CorruptMetadata(f"metadata truncated: a {n}-byte field runs past the end")
    return bytes(buf[pos:end]), end
