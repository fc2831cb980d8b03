"""Property-based fuzzing of the segment decrypter (ketch.offsite.encrypt):
a stored object altered any way (bits flipped, cut, extended, header fields
rewritten, replaced by random bytes), read whole, by range or by stat, gives
either exactly the original plaintext (slice) or a StoreError — never another
exception, and never an allocation sized by a header field or a range."""

from __future__ import annotations

import struct
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.offsite.encrypt import EncryptedStore
from ketch.offsite.nameindex import INDEX_KEY
from ketch.offsite.store import DirStore, StoreError

FUZZ = settings(max_examples=50, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
KEY = bytes(range(32))
SEG = 64  # small segments: many of them in a short value
PLAIN = bytes(i * 7 % 256 for i in range(1000))


@pytest.fixture(scope="module")
def stores(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[DirStore, EncryptedStore]]:
    inner = DirStore(str(tmp_path_factory.mktemp("fuzz-encrypt")))
    enc = EncryptedStore(inner, KEY, segment_size=SEG)
    enc.put("v", PLAIN)
    yield inner, enc


def _mutations() -> st.SearchStrategy[tuple[str, int, bytes]]:
    return st.tuples(st.sampled_from(["flip", "cut", "extend", "overwrite", "replace"]),
                     st.integers(0, 1 << 16), st.binary(min_size=1, max_size=40))


def _mutate(good: bytes, how: str, pos: int, junk: bytes) -> bytes:
    pos %= len(good)
    if how == "flip":
        b = bytearray(good)
        b[pos] ^= junk[0] or 1
        return bytes(b)
    if how == "cut":
        return good[:pos]
    if how == "extend":
        return good + junk
    if how == "overwrite":  # header fields too: size, segment size, version, key id
        return good[:pos] + junk + good[pos + len(junk):]
    return junk


HEADER_FIELDS = st.sampled_from([(8, ">B"), (12, ">I"), (24, ">Q")]).flatmap(
    lambda f: st.tuples(st.just(f), st.integers(0, (1 << (8 * struct.calcsize(f[1]))) - 1)))


def _read(enc: EncryptedStore, start: int, end: int | None) -> None:
    tracemalloc.start()
    try:
        got = enc.get("v", start, end)
        assert got == PLAIN[start:end]
    except StoreError as e:
        assert "\n" not in str(e)
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
    assert peak < 4 << 20, peak


ranges = st.one_of(st.just((0, None)), st.tuples(st.integers(0, 1200), st.none()),
                   st.tuples(st.integers(0, 1200), st.integers(0, 1 << 62)))


@FUZZ
@given(_mutations(), ranges)
def test_altered_objects(stores: tuple[DirStore, EncryptedStore], mutation: tuple[str, int, bytes],
                         rng: tuple[int, int | None]) -> None:
    inner, enc = stores
    hidden = enc.inner_key("v")
    good = inner.get(hidden)
    inner.put(hidden, _mutate(good, *mutation))
    try:
        _read(enc, *rng)
        try:
            enc.stat("v")
        except StoreError:
            pass
    finally:
        inner.put(hidden, good)


@FUZZ
@given(HEADER_FIELDS, ranges)
def test_header_fields(stores: tuple[DirStore, EncryptedStore],
                       field: tuple[tuple[int, str], int], rng: tuple[int, int | None]) -> None:
    inner, enc = stores
    hidden = enc.inner_key("v")
    good = inner.get(hidden)
    (pos, fmt), value = field
    raw = struct.pack(fmt, value)
    inner.put(hidden, good[:pos] + raw + good[pos + len(raw):])
    try:
        _read(enc, *rng)
    finally:
        inner.put(hidden, good)


@settings(FUZZ, max_examples=40)
@given(_mutations())
def test_altered_name_index(stores: tuple[DirStore, EncryptedStore],
                            mutation: tuple[str, int, bytes]) -> None:
    inner, _ = stores
    good = inner.get(INDEX_KEY)
    inner.put(INDEX_KEY, _mutate(good, *mutation))
    try:
        fresh = EncryptedStore(inner, KEY, segment_size=SEG)
        try:
            assert dict(fresh.list("")) == {"v": len(PLAIN)}
        except StoreError as e:
            assert "\n" not in str(e) and "\0" not in str(e)
    finally:
        inner.put(INDEX_KEY, good)


def test_the_value_reads_back(stores: tuple[DirStore, EncryptedStore], tmp_path: Path) -> None:
    _, enc = stores
    assert enc.get("v") == PLAIN and enc.get("v", 63, 130) == PLAIN[63:130]
