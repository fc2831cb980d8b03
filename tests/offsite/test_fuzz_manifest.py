"""Property-based fuzzing of the mirror manifest loader: whatever a store
holds under REPO/manifest.json (random bytes, random JSON, a valid manifest
with one field replaced by anything), parse_manifest raises ManifestError or
returns a manifest whose names are safe to write under the destination."""

from __future__ import annotations

import json
import tracemalloc
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.offsite.manifest import ManifestError, parse_manifest

FUZZ = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
REPO = "small"
HEX = "ab" * 20


def _doc() -> dict[str, Any]:
    return {"format": "ketch-mirror", "version": 1, "repository": REPO, "generation": 3,
            "time": "2026-01-01T00:00:00Z", "head": "ref: refs/heads/host",
            "refs": {"refs/heads/host": HEX}, "config": "",
            "packs": [{"name": f"pack-{HEX}.pack", "size": 10, "sha256": "0" * 64,
                       "mtime": 0, "idx": {"name": f"pack-{HEX}.idx", "size": 10,
                                           "sha256": "1" * 64}}]}


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
    | st.floats(allow_nan=True, allow_infinity=True) | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=4),
    max_leaves=8,
)
PATHS = [("format",), ("version",), ("repository",), ("generation",), ("time",), ("head",),
         ("refs",), ("config",), ("packs",), ("packs", 0), ("packs", 0, "name"),
         ("packs", 0, "size"), ("packs", 0, "sha256"), ("packs", 0, "mtime"),
         ("packs", 0, "idx"), ("packs", 0, "idx", "name"), ("packs", 0, "idx", "size"),
         ("packs", 0, "idx", "sha256"), ("refs", "refs/heads/host")]


def _check(raw: bytes) -> None:
    tracemalloc.start()
    try:
        m = parse_manifest(raw, REPO)
    except ManifestError as e:
        assert "\n" not in str(e)
        return
    finally:
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        assert peak < (8 << 20) + 20 * len(raw), peak
    for name in m.refs:
        assert name.startswith("refs/") and ".." not in name and "\0" not in name
    for p in m.packs:
        for f in p.files():
            assert "/" not in f.name and f.size >= 0


@FUZZ
@given(st.binary(max_size=400))
def test_random_bytes(raw: bytes) -> None:
    _check(raw)


@settings(FUZZ, max_examples=40)
@given(json_values)
def test_random_json(value: object) -> None:
    _check(json.dumps(value).encode())


@FUZZ
@given(st.sampled_from(PATHS), json_values | st.text(max_size=60))
def test_one_field_replaced(path: tuple[str | int, ...], value: object) -> None:
    doc: Any = _doc()
    d = doc
    for p in path[:-1]:
        d = d[p]
    d[path[-1]] = value
    _check(json.dumps(doc).encode())


@FUZZ
@given(st.integers(0, 400), st.binary(min_size=1, max_size=8))
def test_bytes_mutated(pos: int, junk: bytes) -> None:
    raw = bytearray(json.dumps(_doc()).encode())
    pos %= len(raw)
    raw[pos:pos + len(junk)] = junk
    _check(bytes(raw))
