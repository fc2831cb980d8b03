"""Property-based fuzzing of what `ketch server` and its client read from the
other side: the command loop with its object frames (receive-objects-v2), and
the protocol's line and reply readers. Whatever the bytes, only KetchError
subclasses come out (never IndexError, ValueError, struct.error,
UnicodeDecodeError, MemoryError...), and a declared length is never an
allocation: huge lengths with short bodies stay within a small bound."""

from __future__ import annotations

import os
import struct
import tempfile
import tracemalloc
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ketch.errors import KetchError
from ketch.localrepo import init_repository
from ketch.remote.protocol import Conn
from ketch.remote.server import Server, ServerOptions

FUZZ = settings(max_examples=60, deadline=None,
                suppress_health_check=[HealthCheck.too_slow,
                                       HealthCheck.function_scoped_fixture])
# What reading at most a few KiB of input may allocate at its peak.
BOUND = 4 << 20

COMMANDS = [b"help", b"list-indexes", b"send-index", b"receive-objects-v2", b"read-ref",
            b"update-ref", b"cat-batch", b"refs", b"rev-list", b"resolve", b"join", b"cat",
            b"set-dir", b"init-dir", b"gc", b"quit", b"frob"]


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    path = str(tmp_path_factory.mktemp("fuzz-frames") / "repo")
    init_repository(path)
    yield path


def _serve(repo: str, data: bytes) -> None:
    with tempfile.TemporaryFile() as inp, tempfile.TemporaryFile() as out:
        inp.write(data)
        inp.seek(0)
        # Confined as a backup key is: set-dir and init-dir with random paths
        # stay inside the test's repository.
        server = Server(Conn(inp.fileno(), out.fileno(), peer="client"),
                        ServerOptions(restrict_to=repo))
        tracemalloc.start()
        try:
            server.run()
        except KetchError:
            pass
        finally:
            _, peak = tracemalloc.get_traced_memory()
            tracemalloc.stop()
    assert peak < BOUND + 2 * len(data), peak


def _frame(body: bytes, declared: int | None) -> bytes:
    return struct.pack("!I", len(body) if declared is None else declared) + body


def _entry(type_num: int, size: int, payload: bytes) -> bytes:
    first = (type_num << 4) | (size & 0x0F)
    size >>= 4
    out = bytearray()
    while size:
        out.append(first | 0x80)
        first = size & 0x7F
        size >>= 7
    out.append(first)
    return bytes(out) + payload


frames = st.builds(
    _frame,
    st.one_of(
        st.binary(max_size=200),
        st.builds(lambda oid, t, n, p: oid + struct.pack("!I", zlib.crc32(_entry(t, n, p)))
                  + _entry(t, n, p),
                  st.binary(min_size=20, max_size=20), st.integers(0, 7),
                  st.integers(0, 1 << 40), st.one_of(st.binary(max_size=60),
                                                     st.binary(max_size=60).map(zlib.compress))),
    ),
    st.one_of(st.none(), st.integers(0, 0xFFFFFFFF), st.sampled_from([25, 1 << 31, 0xFFFFFFFF])),
)


@FUZZ
@given(st.lists(frames, max_size=6), st.booleans())
def test_object_frames(repo: str, fs: list[bytes], end: bool) -> None:
    _serve(repo, b"receive-objects-v2\n" + b"".join(fs) + (b"\0\0\0\0quit\n" if end else b""))


lines = st.one_of(
    st.binary(max_size=80),
    st.builds(lambda c, a: c + b" " + a, st.sampled_from(COMMANDS), st.binary(max_size=60)),
    st.sampled_from(COMMANDS),
)


@FUZZ
@given(st.lists(lines, max_size=8), st.binary(max_size=100))
def test_command_streams(repo: str, ls: list[bytes], tail: bytes) -> None:
    _serve(repo, b"\n".join(ls) + b"\n" + tail)


@FUZZ
@given(st.binary(max_size=2000))
def test_random_bytes(repo: str, data: bytes) -> None:
    _serve(repo, data)


@FUZZ
@given(st.binary(max_size=300), st.sampled_from(["readline", "check_ok", "lines", "u32"]))
def test_protocol_readers(data: bytes, how: str) -> None:
    """What the client reads: replies, `ok`/`error`, line lists, lengths."""
    r, w = os.pipe()
    try:
        os.write(w, data)
        os.close(w)
        w = -1
        conn = Conn(r, r, peer="server")
        try:
            if how == "readline":
                while conn.readline(limit=64):
                    pass
            elif how == "check_ok":
                conn.check_ok()
            elif how == "lines":
                list(conn.lines_until_blank())
            else:
                conn.read(conn.read_u32())
        except KetchError:
            pass
    finally:
        os.close(r)
        if w >= 0:
            os.close(w)


def test_the_repository_took_no_damage(repo: str) -> None:
    """Random frames can at most add objects with their right ids (nothing else)."""
    import subprocess

    res = subprocess.run(["git", "--git-dir", repo, "fsck", "--strict", "--no-dangling"],
                         capture_output=True)
    assert res.returncode == 0, res.stderr
    assert Path(repo, "objects", "pack").is_dir()
