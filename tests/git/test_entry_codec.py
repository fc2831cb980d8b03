"""The pack-entry codec on hostile bytes: random, truncated, bit-flipped and
huge-declaring entries raise CorruptObject and nothing else, never inflate past
the declared size, never read outside the range they were given; and entries
the writer encodes decode back to the same object."""

from __future__ import annotations

import tracemalloc
import zlib
from collections.abc import Callable

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.errors import CorruptObject
from ketch.git import entry as codec
from ketch.git import objects as gobj
from ketch.git.delta import BadDelta, apply_delta, delta_sizes
from ketch.git.pack import encode_entry, entry_header
from tests.git.test_packread import ofs_bytes

FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
TYPES = st.sampled_from([gobj.COMMIT, gobj.TREE, gobj.BLOB, gobj.TAG])
DATA = st.one_of(st.binary(max_size=600), st.binary(max_size=8).map(lambda b: b * 500))
LIMIT = 1 << 20


def peak_memory(fn: Callable[[], object], match: str | None = None) -> int:
    """The most memory Python held at once while ``fn`` ran (it must raise
    CorruptObject saying ``match``)."""
    tracemalloc.start()
    try:
        with pytest.raises(CorruptObject, match=match):
            fn()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def decode_any(buf: bytes, end: int, limit: int = LIMIT) -> tuple[int, bytes, int]:
    """Decode the entry at the start of ``buf[:end]`` the way the readers do:
    header, then the base (offset or id) of a delta, then the zlib stream.
    Returns (type, inflated data, position past the entry)."""
    type_num, size, pos = codec.read_header(buf, 0, end, limit)
    if type_num == codec.OFS_DELTA:
        _, pos = codec.read_ofs_distance(buf, pos, end)
    elif type_num == codec.REF_DELTA:
        codec.read_ref_base(buf, pos, end)
        pos += 20
    elif type_num not in codec.FULL_TYPES:
        raise codec.CorruptPack(f"invalid type {type_num}")
    data, stop = codec.inflate(codec.reader(buf, end), pos, size)
    assert len(data) == size <= limit
    assert stop <= end
    return type_num, data, stop


def only_corrupt(buf: bytes, end: int | None = None) -> None:
    """Decoding either succeeds within bounds or raises CorruptObject, nothing else."""
    end = len(buf) if end is None else end
    try:
        decode_any(buf, end)
    except CorruptObject:
        pass
    try:
        codec.decode_whole(buf[:end], LIMIT)
    except CorruptObject:
        pass


def delta_entry(kind: int, body: bytes, dist: int) -> bytes:
    z = zlib.compress(body)
    base = ofs_bytes(dist) if kind == codec.OFS_DELTA else bytes(range(20))
    return entry_header(kind, len(body)) + base + z


@FAST
@given(st.binary(max_size=300))
def test_random_bytes_raise_only_corrupt_object(buf: bytes) -> None:
    only_corrupt(buf)


@FAST
@given(TYPES, DATA, st.sampled_from([0, 1, 6]))
def test_writer_entries_round_trip(type_num: int, data: bytes, level: int) -> None:
    enc, crc, _ = encode_entry(type_num, data, level)
    assert codec.decode_whole(enc) == (type_num, data)
    # With more bytes after it (the next entry in a pack) it ends where it should.
    got_type, got, stop = decode_any(enc + b"\x00" * 40, len(enc) + 40)
    assert (got_type, got, stop) == (type_num, data, len(enc))


@settings(max_examples=40, deadline=None)
@given(TYPES, DATA, st.sampled_from([0, 1]))
def test_every_truncation_is_refused(type_num: int, data: bytes, level: int) -> None:
    enc, _, _ = encode_entry(type_num, data, level)
    # The full entry follows in the buffer: a parser that read past `end` would
    # find the rest and succeed.
    padded = enc + enc
    for k in range(len(enc)):
        with pytest.raises(CorruptObject):
            decode_any(padded, k)
        with pytest.raises(CorruptObject):
            codec.decode_whole(enc[:k])


@FAST
@given(TYPES, DATA, st.data())
def test_bit_flips_raise_only_corrupt_object(type_num: int, data: bytes, draw: st.DataObject) -> None:
    enc = bytearray(encode_entry(type_num, data, 1)[0])
    for _ in range(draw.draw(st.integers(1, 3))):
        i = draw.draw(st.integers(0, len(enc) - 1))
        enc[i] ^= 1 << draw.draw(st.integers(0, 7))
    only_corrupt(bytes(enc))


@FAST
@given(st.sampled_from([codec.OFS_DELTA, codec.REF_DELTA]), st.binary(max_size=200),
       st.integers(1, 1 << 40), st.data())
def test_delta_entries(kind: int, body: bytes, dist: int, draw: st.DataObject) -> None:
    enc = delta_entry(kind, body, dist)
    type_num, size, pos = codec.read_header(enc, 0, len(enc))
    assert (type_num, size) == (kind, len(body))
    if kind == codec.OFS_DELTA:
        assert codec.read_ofs_distance(enc, pos, len(enc))[0] == dist
    assert decode_any(enc, len(enc))[1] == body
    for k in range(0, len(enc), max(1, len(enc) // 20)):
        with pytest.raises(CorruptObject):
            decode_any(enc + enc, k)
    cut = draw.draw(st.integers(0, len(enc)))
    only_corrupt(enc[:cut] + draw.draw(st.binary(max_size=30)))


@FAST
@given(TYPES, st.integers(LIMIT + 1, 1 << 80), st.binary(max_size=40))
def test_huge_declared_sizes_are_refused(type_num: int, size: int, rest: bytes) -> None:
    buf = entry_header(type_num, size) + rest
    with pytest.raises(CorruptObject, match="allowed"):
        codec.read_header(buf, 0, len(buf), LIMIT)
    with pytest.raises(CorruptObject):
        codec.decode_whole(buf, LIMIT)


def test_endless_header_varint_is_refused() -> None:
    buf = b"\xb0" + b"\xff" * 10_000 + b"\x01"
    with pytest.raises(CorruptObject):
        codec.read_header(buf, 0, len(buf), 1 << 10_000)
    with pytest.raises(CorruptObject):
        codec.read_ofs_distance(buf, 1, len(buf))


def test_bomb_inflates_no_further_than_its_declared_size() -> None:
    """64 MB of zeros in 64 KB of zlib under a header that says 1000 bytes: the
    decoder stops at 1001 and holds nowhere near the 64 MB at any time."""
    bomb = zlib.compress(bytes(64 << 20), 9)
    buf = entry_header(gobj.BLOB, 1000) + bomb
    assert peak_memory(lambda: codec.decode_whole(buf), "header says 1000") < 1 << 20


def test_big_declared_size_with_short_stream_allocates_little() -> None:
    """A header may declare up to the limit; a stream that holds less fails
    without memory for the declared size ever being set aside."""
    buf = entry_header(gobj.BLOB, 1 << 30) + zlib.compress(b"small")
    assert peak_memory(lambda: codec.decode_whole(buf)) < 1 << 20


def test_offsets_outside_the_buffer_are_refused() -> None:
    enc, _, _ = encode_entry(gobj.BLOB, b"hello", 1)
    for pos in (-1, len(enc), len(enc) + 5):
        with pytest.raises(CorruptObject):
            codec.read_header(enc, pos, len(enc))
        with pytest.raises(CorruptObject):
            codec.read_ofs_distance(enc, pos, len(enc))
        with pytest.raises(CorruptObject):
            codec.read_ref_base(enc, pos, len(enc))
    with pytest.raises(CorruptObject):
        codec.read_header(enc, 0, 0)  # an end before the start


@FAST
@given(st.binary(max_size=300), st.binary(max_size=200))
def test_random_deltas_raise_only_bad_delta(base: bytes, delta: bytes) -> None:
    try:
        out = apply_delta(base, delta)
    except BadDelta:
        return
    assert len(out) == delta_sizes(delta)[1]


def test_hostile_delta_is_refused_before_it_is_joined() -> None:
    """A short delta whose copies would add up to terabytes: refused on its
    sizes, not after building the output."""
    base = bytes(0x10000)
    copy_all = bytes([0x80])  # copy 64 KiB from offset 0
    delta = bytes([0x80, 0x80, 0x04, 0x01]) + copy_all * 20_000
    assert peak_memory(lambda: apply_delta(base, delta), "overruns") < 32 << 20
