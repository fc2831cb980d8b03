"""Mutations of valid bytes for the fuzz tests, and the bound they must keep.

Fuzzing starts from what the real writer makes and damages it the ways disks,
networks and hostile peers do: flipped bytes, truncation, inserted bytes and a
big-endian field overwritten with an extreme value (a count, an offset, a
length); the parser must refuse each with a KetchError and nothing else.
"""

from __future__ import annotations

import os
import tracemalloc
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

# A parser may map or read the input, never allocate by a count it was told.
ALLOC_BOUND = 32 << 20

_EXTREMES = [0, 1, 0x7F, 0x80, 0xFF, 0x7FFFFFFF, 0x80000000, 0xFFFFFFFF, 0xFFFFFFFFFFFFFFFF]


def fuzz_settings(max_examples: int) -> settings:
    """Bounded for ``make test``; KETCH_FUZZ_SCALE=N runs N times the examples
    for a longer hunt."""
    scale = int(os.environ.get("KETCH_FUZZ_SCALE", "1"))
    return settings(max_examples=max_examples * scale, deadline=None,
                    suppress_health_check=[HealthCheck.function_scoped_fixture,
                                           HealthCheck.too_slow])


@st.composite
def mutated(draw: st.DrawFn, valid: bytes, max_ops: int = 3) -> bytes:
    """``valid`` with one to ``max_ops`` damaging edits."""
    buf = bytearray(valid)
    for _ in range(draw(st.integers(1, max_ops))):
        op = draw(st.sampled_from(["flip", "truncate", "insert", "field", "delete"]))
        at = draw(st.integers(0, max(0, len(buf) - 1)))
        if op == "flip" and buf:
            buf[at] ^= draw(st.integers(1, 255))
        elif op == "truncate":
            del buf[at:]
        elif op == "insert":
            buf[at:at] = draw(st.binary(min_size=1, max_size=8))
        elif op == "delete":
            del buf[at : at + draw(st.integers(1, 8))]
        else:
            width = draw(st.sampled_from([1, 2, 4, 8]))
            value = draw(st.sampled_from(_EXTREMES)) & ((1 << (8 * width)) - 1)
            buf[at : at + width] = value.to_bytes(width, "big")
    return bytes(buf)


@contextmanager
def bounded_allocation(bound: int = ALLOC_BOUND) -> Iterator[None]:
    """Fail when the block allocates more than ``bound`` bytes at its peak
    (numpy's buffers are traced too)."""
    tracemalloc.start()
    try:
        yield
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < bound, f"allocated {peak} bytes"


def only_ketch_errors(fn: Callable[[], object]) -> None:
    """Run ``fn``; a KetchError is a refusal, anything else propagates."""
    from ketch.errors import KetchError

    try:
        fn()
    except KetchError as e:
        assert str(e) and "\n" not in str(e), repr(e)
