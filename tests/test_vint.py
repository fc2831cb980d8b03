"""vint/vuint/bvec: the spec's vectors, round trips, truncation, and bup's encoder as oracle."""

from __future__ import annotations

import json
import os
import random
import subprocess

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ketch.errors import KetchError
from ketch.vint import (
    CorruptMetadata,
    UnencodableValue,
    read_bvec,
    read_vint,
    read_vuint,
    write_bvec,
    write_vint,
    write_vuint,
)

BUP_PYTHON = "/usr/bin/python3"
BUP_LIB = "/usr/lib/bup"

# bup-format.md 3.1
VUINT_VECTORS = [
    (0, "00"),
    (1, "01"),
    (127, "7f"),
    (128, "8001"),
    (300, "ac02"),
    (16383, "ff7f"),
    (16384, "808001"),
    (2**32, "8080808010"),
]
VINT_VECTORS = [
    (0, "00"),
    (1, "01"),
    (-1, "41"),
    (63, "3f"),
    (-63, "7f"),
    (64, "8001"),
    (-64, "c001"),
    (100, "a401"),
    (-100, "e401"),
    (8191, "bf7f"),
    (8192, "808001"),
    (-2, "42"),
    (1500000000, "80bcc1960b"),
]


@pytest.mark.parametrize(("n", "hexed"), VUINT_VECTORS)
def test_vuint_vectors(n: int, hexed: str) -> None:
    assert write_vuint(n).hex() == hexed
    assert read_vuint(bytes.fromhex(hexed), 0) == (n, len(hexed) // 2)


@pytest.mark.parametrize(("n", "hexed"), VINT_VECTORS)
def test_vint_vectors(n: int, hexed: str) -> None:
    assert write_vint(n).hex() == hexed
    assert read_vint(bytes.fromhex(hexed), 0) == (n, len(hexed) // 2)


def test_bvec() -> None:
    assert write_bvec(b"") == b"\x00"
    assert write_bvec(b"abc") == b"\x03abc"
    long = bytes(range(256)) * 2
    enc = write_bvec(long)
    assert enc[:2] == bytes.fromhex("8004")
    assert read_bvec(b"xx" + enc + b"yy", 2) == (long, 2 + len(enc))


def test_negative_vuint_is_refused() -> None:
    with pytest.raises(UnencodableValue):
        write_vuint(-1)
    assert issubclass(UnencodableValue, KetchError)


@pytest.mark.parametrize(
    ("reader", "data"),
    [
        (read_vuint, b""),
        (read_vuint, b"\x80"),
        (read_vuint, b"\xff\xff"),
        (read_vint, b""),
        (read_vint, b"\x80"),
        (read_vint, b"\xc0\x80"),
        (read_bvec, b""),
        (read_bvec, b"\x05abcd"),
        (read_bvec, b"\x85"),
    ],
)
def test_truncation_raises(reader: object, data: bytes) -> None:
    with pytest.raises(CorruptMetadata):
        reader(data, 0)  # type: ignore[operator]
    assert issubclass(CorruptMetadata, KetchError)


big_ints = st.integers(min_value=0, max_value=2**80) | st.integers(min_value=0, max_value=300)


@given(big_ints, st.binary(max_size=4))
def test_vuint_round_trip(n: int, prefix: bytes) -> None:
    enc = write_vuint(n)
    buf = prefix + enc + b"\x01"
    assert read_vuint(buf, len(prefix)) == (n, len(prefix) + len(enc))
    assert read_vuint(memoryview(buf), len(prefix)) == (n, len(prefix) + len(enc))


@given(st.integers(min_value=-(2**80), max_value=2**80), st.binary(max_size=4))
def test_vint_round_trip(n: int, prefix: bytes) -> None:
    enc = write_vint(n)
    buf = prefix + enc + b"\x01"
    assert read_vint(buf, len(prefix)) == (n, len(prefix) + len(enc))
    assert read_vint(memoryview(buf), len(prefix)) == (n, len(prefix) + len(enc))


@given(st.binary(max_size=300))
def test_bvec_round_trip(b: bytes) -> None:
    enc = write_bvec(b)
    assert read_bvec(memoryview(enc), 0) == (b, len(enc))
    for cut in range(len(enc)):
        with pytest.raises(CorruptMetadata):
            read_bvec(enc[:cut], 0)


_ORACLE = """
import json, sys
sys.path.insert(0, %r)
from bup import vint
data = json.load(sys.stdin)
print(json.dumps({
    "vuint": [vint.encode_vuint(n).hex() for n in data["vuint"]],
    "vint": [vint.encode_vint(n).hex() for n in data["vint"]],
    "bvec": [vint.encode_bvec(bytes.fromhex(b)).hex() for b in data["bvec"]],
}))
"""


def _bup_available() -> bool:
    return os.path.exists(BUP_PYTHON) and os.path.isdir(os.path.join(BUP_LIB, "bup"))


@pytest.mark.skipif(not _bup_available(), reason="bup 0.33 not installed")
def test_matches_bup_encoder() -> None:
    # bup 0.33.7's C encoders overflow a stack buffer (abort) somewhere in
    # [2**56, 2**70) for vuints and [2**55, 2**70) for vint magnitudes; from
    # 2**70 its Python fallback takes over. Compare wherever bup survives.
    rng = random.Random(1)
    vuints = [rng.getrandbits(rng.randrange(1, 57)) for _ in range(2000)]
    vuints += [0, 1, 2**55, 2**56 - 1, 2**70, 2**70 + 1, 2**80 + 12345]
    vints = [v if rng.random() < 0.5 else -v for v in vuints if v < 2**55 or v >= 2**70]
    vints += [2**55 - 1, -(2**55 - 1), -(2**70), -(2**90)]
    bvecs = [rng.randbytes(rng.choice((0, 1, 127, 128, 5000))).hex() for _ in range(40)]
    proc = subprocess.run(
        [BUP_PYTHON, "-c", _ORACLE % BUP_LIB],
        input=json.dumps({"vuint": vuints, "vint": vints, "bvec": bvecs}).encode(),
        capture_output=True,
        check=True,
    )
    bup = json.loads(proc.stdout)
    assert bup["vuint"] == [write_vuint(n).hex() for n in vuints]
    assert bup["vint"] == [write_vint(n).hex() for n in vints]
    assert bup["bvec"] == [write_bvec(bytes.fromhex(b)).hex() for b in bvecs]
