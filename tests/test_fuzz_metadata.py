"""Property: a damaged `.bupm` (bup's metadata records) decodes to a
KetchError (CorruptMetadata) or to values that can be shown and applied to a
file without anything else escaping: no OverflowError from an absurd mode,
id or time, no ValueError, no UnicodeDecodeError. The valid records come from
the real writer (fsmeta.from_path on real files, Metadata.encode).
"""

from __future__ import annotations

import dataclasses
import os
import stat
import tempfile
from pathlib import Path

from hypothesis import example, given
from hypothesis import strategies as st

from ketch import fsmeta, vint
from ketch.metadata import Metadata, decode_all, mode_string
from tests.fuzzutil import bounded_allocation, fuzz_settings, mutated, only_ketch_errors


def _valid_bupm() -> bytes:
    with tempfile.TemporaryDirectory() as d:
        base = Path(d)
        (base / "f").write_bytes(b"x" * 10)
        os.setxattr(base / "f", "user.k", b"v")
        (base / "l").symlink_to("f")
        os.mkfifo(base / "p")
        records = [fsmeta.from_path(os.fsencode(base / n)) for n in ("", "f", "l", "p")]
    extra = Metadata(mode=0o100644, uid=1000, gid=1000, user=b"u", group=b"g", mtime=-5,
                     size=3, hardlink_target=b"a/b", linux_attr=0x10,
                     linux_xattr=[(b"user.a", b"1"), (b"user.b", b"")],
                     posix1e_acl=(b"u::rw-,g::r--,o::r--", b"u::rw-,g::r--,o::r--", b"", b""),
                     path=b"p")
    return b"".join(m.encode() for m in [*records, extra]) + b"\0"


VALID = _valid_bupm()
TARGET = Path(tempfile.mkdtemp(prefix="ketch-fuzz-meta-")) / "f"


def _use(buf: bytes) -> None:
    for m in decode_all(buf):
        if m is None:
            continue
        if m.mode is not None:
            mode_string(m.mode)
        if m.mode is not None and stat.S_ISREG(m.mode):
            TARGET.write_bytes(b"")
            # An immutable flag would outlive the test on the scratch file.
            safe = dataclasses.replace(m, linux_attr=None)
            fsmeta.apply_to_path(safe, os.fsencode(TARGET), numeric_ids=True,
                                 warn=lambda msg: None)


@fuzz_settings(150)
@given(mutated(VALID, max_ops=4) | st.binary(max_size=60))
@example(Metadata(mode=-0o100644).encode())  # OverflowError in stat.S_IFMT
@example(Metadata(mode=0o100644, uid=1 << 40).encode())
@example(Metadata(mode=0o100644, mtime=10**30).encode())  # OverflowError in utime
@example(Metadata(mode=0o100644, linux_xattr=[(b"\0ser.a", b"1")]).encode())  # setxattr
@example(Metadata(mode=0o100644, user=b"ro\0t").encode())  # getpwnam
@example(Metadata(mode=0o120777, symlink_target=b"a\0b").encode())
@example(b"\x0a\x02\x80\x80")  # a common record whose mode runs past the end
@example(b"\x07\x03\xff\xff\x03\x00")  # an xattr count far above the bytes there
def test_damaged_bupm(buf: bytes) -> None:
    with bounded_allocation():
        only_ketch_errors(lambda: _use(buf))


@fuzz_settings(100)
@given(st.binary(max_size=30), st.integers(0, 30))
def test_vint_readers_on_random_bytes(buf: bytes, pos: int) -> None:
    for read in (vint.read_vuint, vint.read_vint, vint.read_bvec):
        only_ketch_errors(lambda read=read: read(buf, pos))  # type: ignore[misc]
