"""git's delta format: source size, target size (varints), then copy-from-base
and insert-literal opcodes.

ketch and bup write no deltas, but `git gc` on a bup repository makes them, so
every reader applies them. Pure Python: the output is assembled from views of
the base and slices of the delta in one join at the end, so the per-opcode
work is a few integer operations.
"""

from __future__ import annotations

from ketch.git.entry import CorruptPack


class BadDelta(CorruptPack):
    """A delta does not apply to its base."""


def _delta_varint(delta: bytes, pos: int) -> tuple[int, int]:
    value = shift = 0
    while True:
        if pos >= len(delta) or shift > 63:
            raise BadDelta("delta header is truncated")
        c = delta[pos]
        pos += 1
        value |= (c & 0x7F) << shift
        shift += 7
        if not c & 0x80:
            return value, pos


def delta_sizes(delta: bytes) -> tuple[int, int, int]:
    """(source size, target size, offset of the first opcode)."""
    src, pos = _delta_varint(delta, 0)
    tgt, pos = _delta_varint(delta, pos)
    return src, tgt, pos


def _copy_op(delta: bytes, pos: int, op: int) -> tuple[int, int, int]:
    """(offset, size, position after) of the copy opcode ``op`` whose argument
    bytes start at ``pos``. Bits 0-3 say which offset bytes follow, bits 4-6
    which size bytes; unrolled, as this runs once per copy."""
    off = size = 0
    if op & 0x01:
        off = delta[pos]
        pos += 1
    if op & 0x02:
        off |= delta[pos] << 8
        pos += 1
    if op & 0x04:
        off |= delta[pos] << 16
        pos += 1
    if op & 0x08:
        off |= delta[pos] << 24
        pos += 1
    if op & 0x10:
        size = delta[pos]
        pos += 1
    if op & 0x20:
        size |= delta[pos] << 8
        pos += 1
    if op & 0x40:
        size |= delta[pos] << 16
        pos += 1
    return off, size or 0x10000, pos


def apply_delta(base: bytes, delta: bytes) -> bytes:
    """Apply a git delta to ``base``; raise BadDelta if they do not fit."""
    src_size, tgt_size, pos = delta_sizes(delta)
    if src_size != len(base):
        raise BadDelta(f"delta expects a {src_size}-byte base, got {len(base)} bytes")
    src = memoryview(base)
    parts: list[bytes | memoryview] = []
    append = parts.append
    n = len(delta)
    total = 0
    try:
        while pos < n:
            op = delta[pos]
            pos += 1
            if op & 0x80:
                off, size, pos = _copy_op(delta, pos, op)
                if off + size > src_size:
                    raise BadDelta("delta copies past the end of its base")
                append(src[off : off + size])
                total += size
            elif op:
                if pos + op > n:
                    raise BadDelta("delta insert runs past the end of the delta")
                append(delta[pos : pos + op])
                pos += op
                total += op
            else:
                raise BadDelta("delta has the reserved opcode 0")
    except IndexError:
        raise BadDelta("delta copy instruction is truncated") from None
    # The parts are views and short slices, so only this check stands between
    # a hostile delta and a join of terabytes.
    if total != tgt_size:
        if total > tgt_size:
            raise BadDelta("delta output overruns its declared size")
        raise BadDelta(f"delta produced {total} bytes, header says {tgt_size}")
    if len(parts) == 1 and type(parts[0]) is bytes:
        return parts[0]
    return b"".join(parts)
