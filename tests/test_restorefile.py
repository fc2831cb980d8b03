"""ketch.restorefile: where a restored blob leaves holes."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from ketch.restorefile import HOLE_BLOCK, has_hole


def _oracle(data: bytes, start: int) -> bool:
    # Every file-aligned whole block inside the blob, compared in full.
    first = -start % HOLE_BLOCK
    return any(data[i : i + HOLE_BLOCK] == bytes(HOLE_BLOCK)
               for i in range(first, len(data) - HOLE_BLOCK + 1, HOLE_BLOCK))


@st.composite
def _blobs(draw: st.DrawFn) -> tuple[bytes, int]:
    """Blobs of runs of zeros and of data, so aligned zero blocks, nearly
    aligned ones and blocks zero but for one late byte all come up."""
    parts = draw(st.lists(st.tuples(st.booleans(), st.integers(1, 3 * HOLE_BLOCK)), max_size=8))
    data = b"".join(bytes(n) if zero else b"\x01" * n for zero, n in parts)
    return data, draw(st.integers(0, 3 * HOLE_BLOCK))


@given(_blobs())
def test_has_hole_finds_exactly_the_aligned_zero_blocks(blob: tuple[bytes, int]) -> None:
    data, start = blob
    assert has_hole(data, start) == _oracle(data, start)


def test_a_block_zero_but_for_its_last_byte_is_no_hole() -> None:
    block = bytes(HOLE_BLOCK - 1) + b"\x01"
    assert not has_hole(block * 3, 0)
    assert has_hole(block + bytes(HOLE_BLOCK), 0)
    assert not has_hole(bytes(HOLE_BLOCK), 1)  # not aligned in the file
    assert has_hole(bytes(HOLE_BLOCK + 1), HOLE_BLOCK - 1)
