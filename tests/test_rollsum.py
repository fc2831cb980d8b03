"""The compiled rolling-checksum kernel (ketch._rollsum) against the numpy one and
the literal per-byte reference, on inputs built to hit bup's chunking edge cases.

tests/test_split.py runs every test vector and the comparisons with the real bup
on both kernels; here random inputs are aimed at where the two could differ:
boundaries in the first 63 bytes of a chunk (fresh window), near the 32 KiB
cap, at buffer and file ends, across read blocks, and long all-zero runs.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from array import array
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import ketch.split
from ketch.split import BLOB_MAX, Splitter, split_chunks, split_files
from tests.conftest import SRC_DIR
from tests.kernelutil import require_compiled_kernel, use_kernel
from tests.test_split import CRAFT_MID, TINY_CHUNK, blocks_of, ref_split

# One piece of an input: what it is, a length, a seed.
Piece = tuple[str, int, int]


def piece_bytes(kind: str, n: int, seed: int) -> bytes:
    rng = random.Random(seed)
    if kind == "rand":
        return rng.randbytes(n)
    if kind == "zero":
        return bytes(n)
    if kind == "tiny":
        # Boundaries 7 bytes into each chunk: always inside the fresh window.
        return TINY_CHUNK * (n % 40 + 1)
    if kind == "cap":
        # 64 zeros make the rollsum as good as fresh, so a chunk ends after the
        # first tiny one, and the next one 32768 +- 100 bytes later: on either
        # side of the cap.
        return bytes(64) + TINY_CHUNK + bytes(BLOB_MAX - 107 + n % 200) + TINY_CHUNK
    pattern = rng.randbytes(seed % 300 + 1)
    return (pattern * (n // len(pattern) + 1))[:n]


pieces = st.lists(
    st.tuples(
        st.sampled_from(["rand", "zero", "tiny", "cap", "rep"]),
        st.integers(1, 70_000),
        st.integers(0, 2**32),
    ),
    max_size=8,
)


def build(parts: list[Piece]) -> bytes:
    return b"".join(piece_bytes(*p) for p in parts)


def chunked(kernel: str, blocks: list[bytes], fanbits: int, mp: pytest.MonkeyPatch) -> list[
    tuple[bytes, int]
]:
    use_kernel(kernel, mp)
    return [(bytes(c), level) for c, level in split_chunks(blocks, fanbits)]


@pytest.fixture(autouse=True)
def compiled() -> None:
    require_compiled_kernel()


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    parts=pieces,
    block=st.sampled_from([1000, 32_767, 32_768, 40_000, 100_003, 1 << 20]),
    fanbits=st.sampled_from([0, 1, 2, 4, 8]),
)
def test_compiled_equals_numpy(parts: list[Piece], block: int, fanbits: int) -> None:
    data = build(parts)
    blocks = blocks_of(data, block)
    with pytest.MonkeyPatch.context() as mp:
        got = chunked("c", blocks, fanbits, mp)
        want = chunked("numpy", blocks, fanbits, mp)
    assert got == want
    assert b"".join(c for c, _ in got) == data


@settings(max_examples=100, deadline=None)
@given(
    parts=st.lists(
        st.tuples(
            st.sampled_from(["rand", "zero", "tiny", "rep"]), st.integers(1, 600), st.integers(0, 99)
        ),
        max_size=5,
    ),
    # The reference rescans its whole buffer after each read: not too many reads.
    block=st.integers(40, 800),
)
def test_compiled_equals_literal_reference(parts: list[Piece], block: int) -> None:
    """Short inputs: against spec 1.2-1.5 fed one byte at a time."""
    data = build(parts)
    blocks = blocks_of(data, block)
    with pytest.MonkeyPatch.context() as mp:
        assert chunked("c", blocks, 4, mp) == list(ref_split(blocks))


def files_strategy() -> st.SearchStrategy[list[bytes]]:
    return st.lists(st.lists(
        st.tuples(
            st.sampled_from(["rand", "zero", "tiny", "cap", "rep"]),
            st.integers(0, 40_000),
            st.integers(0, 2**32),
        ),
        max_size=3,
    ).map(build), max_size=10)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(files=files_strategy(), fanbits=st.sampled_from([0, 1, 4]))
def test_split_files_compiled_equals_numpy(files: list[bytes], fanbits: int) -> None:
    """Many files in one pass: each file's end bounds its scans and its last chunk."""

    def run(kernel: str) -> Iterator[list[tuple[bytes, int]]]:
        with pytest.MonkeyPatch.context() as mp:
            use_kernel(kernel, mp)
            for chunks in split_files(files, fanbits):
                yield [(bytes(c), level) for c, level in chunks]

    assert list(run("c")) == list(run("numpy"))


def test_boundary_at_every_buffer_end(monkeypatch: pytest.MonkeyPatch) -> None:
    """Feeds that end exactly on, just before and just after a boundary."""
    data = random.Random(21).randbytes(200_000)
    ends = [len(c) for c, _ in ref_split([data])]
    cuts: list[int] = []
    pos = 0
    for i, n in enumerate(ends):
        pos += n
        cuts.append(pos + (i % 3) - 1)
    blocks = [data[a:b] for a, b in zip([0, *cuts], [*cuts, len(data)], strict=True)]
    assert chunked("c", blocks, 4, monkeypatch) == list(ref_split(blocks))


@pytest.mark.parametrize("over", [1, 20, 43, 44, 45, 132])
def test_remainder_never_scanned_from_its_start(over: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """craft.bin's trap (spec 1.5): no boundary in the first read, so 32 KiB is
    cut without a rescan and the remainder's own fresh scan splits after 44
    bytes on the next feed: in a chunk that straddles the remainder and the new
    block, or (read longer than 32768 + 44) one inside the remainder."""
    data = bytes(32704) + CRAFT_MID + bytes(33_000)
    blocks = blocks_of(data, BLOB_MAX + over)
    got = chunked("c", blocks, 4, monkeypatch)
    assert got == list(ref_split(blocks))
    assert [len(c) for c, _ in got][:2] == [BLOB_MAX, 44]


def test_compiled_kernel_rejects_bad_arguments() -> None:
    from ketch import _rollsum

    with pytest.raises(ValueError):
        _rollsum.split_buffer(b"x" * 100, -1)
    with pytest.raises(ValueError):
        _rollsum.split_files(b"x" * 100, b"1234567", 4)  # not whole int64s
    with pytest.raises(ValueError):
        _rollsum.split_files(b"x" * 100, array("q", [50, 40]), 4)
    with pytest.raises(ValueError):
        _rollsum.split_files(b"x" * 100, array("q", [101]), 4)
    assert _rollsum.split_files(b"", array("q", [0, 0]), 4) == b""
    # Any contiguous buffer, without a copy; a bytearray cannot be resized meanwhile.
    assert _rollsum.split_buffer(bytearray(TINY_CHUNK), 4) == array("q", [7, 0]).tobytes()


def test_splitter_keeps_the_kernel_it_was_made_with(monkeypatch: pytest.MonkeyPatch) -> None:
    use_kernel("numpy", monkeypatch)
    sp = Splitter(4)
    use_kernel("c", monkeypatch)
    data = random.Random(4).randbytes(100_000)
    assert [(bytes(c), lv) for c, lv in [*sp.feed(data), *sp.finish()]] == list(ref_split([data]))


def run_python(code: str, env: dict[str, str]) -> str:
    proc = subprocess.run(
        [sys.executable, "-c", code],
        env={**env, "PYTHONPATH": str(SRC_DIR)},
        capture_output=True,
        check=True,
        text=True,
    )
    return proc.stdout.strip()


def test_kernel_choice_and_no_numpy_on_the_compiled_path() -> None:
    """numpy costs start-up time: splitting with the compiled kernel never imports it."""
    code = (
        "import sys, ketch.split as s; "
        "s.split_files([b'x' * 70000, bytes(10)]); list(s.split_chunks([bytes(100000)])); "
        "print(s.KERNEL, 'numpy' in sys.modules)"
    )
    env = {k: v for k, v in os.environ.items() if k != "KETCH_ROLLSUM"}
    assert run_python(code, env) == "c False"
    assert run_python(code, {**env, "KETCH_ROLLSUM": "numpy"}) == "numpy True"
    assert ketch.split.KERNEL in ("c", "numpy")


def test_a_kernel_built_from_older_source_is_not_used() -> None:
    """A stale build (an in-place .so left from before _rollsum.c changed its
    arguments) once made every save fail with a TypeError: the kernel carries
    the version of its interface, and one that differs is not loaded."""
    import types

    stale = types.ModuleType("ketch._rollsum")
    assert not ketch.split.kernel_matches(stale)
    stale.ABI = ketch.split.KERNEL_ABI - 1  # type: ignore[attr-defined]
    assert not ketch.split.kernel_matches(stale)
    require_compiled_kernel()
    assert ketch.split.kernel_matches(ketch.split._rollsum)
