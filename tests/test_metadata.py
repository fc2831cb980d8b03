"""Metadata records: the spec's vectors, bup 0.33.7 as oracle, and restore round trips.

bup's own modules run under /usr/bin/python3 in a subprocess (they target the
system python); each oracle call handles a whole batch.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import os
import random
import shutil
import stat
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ketch.errors import KetchError
from ketch.fsmeta import apply_to_fd, apply_to_path, create_special, from_path
from ketch.metadata import (
    EMPTY_RECORD,
    CorruptMetadata,
    Metadata,
    MetadataError,
    decode_all,
    decode_one,
    mode_string,
)
from ketch.vint import write_bvec, write_vint, write_vuint
from tests.conftest import in_ci

BUP_PYTHON = "/usr/bin/python3"
BUP_LIB = "/usr/lib/bup"
IS_ROOT = os.geteuid() == 0

needs_bup = pytest.mark.skipif(
    not (os.path.exists(BUP_PYTHON) and os.path.isdir(os.path.join(BUP_LIB, "bup"))),
    reason="bup 0.33 not installed",
)
needs_root = pytest.mark.skipif(not IS_ROOT, reason="needs root")

_ORACLE = r"""
import json, sys
from io import BytesIO
sys.path.insert(0, %r)
from bup import metadata

def fields(m):
    if m is None:
        return None
    h = lambda b: None if b is None else b.hex()
    acl = m.posix1e_acl
    if m.mode is None:  # no common record: bup leaves None where ketch has defaults
        m.uid = m.gid = m.rdev = m.atime = m.mtime = m.ctime = 0
        m.user = m.group = b""
    return {
        "mode": m.mode, "uid": m.uid, "gid": m.gid, "user": h(m.user), "group": h(m.group),
        "rdev": m.rdev, "atime": m.atime, "mtime": m.mtime, "ctime": m.ctime, "size": m.size,
        "symlink_target": h(m.symlink_target), "hardlink_target": h(m.hardlink_target),
        "linux_attr": m.linux_attr, "path": h(m.path),
        "linux_xattr": None if m.linux_xattr is None else [[k.hex(), v.hex()] for k, v in m.linux_xattr],
        "posix1e_acl": None if acl is None else [a.hex() for a in list(acl) + [b"", b""]][:4],
    }

def read_all(data):
    port = BytesIO(data)
    out = []
    while port.tell() < len(data):
        out.append(metadata.Metadata.read(port))
    return out

req = json.load(sys.stdin)
res = {"from_path": [], "reencode": [], "decode": []}
for path, hlink in req.get("from_path", []):
    m = metadata.from_path(bytes.fromhex(path), normalized=True,
                           hardlink_target=None if hlink is None else bytes.fromhex(hlink))
    res["from_path"].append(m.encode().hex())
for data in req.get("reencode", []):
    res["reencode"].append(b"".join(b"\0" if m is None else m.encode() for m in read_all(bytes.fromhex(data))).hex())
for data in req.get("decode", []):
    res["decode"].append([fields(m) for m in read_all(bytes.fromhex(data))])
print(json.dumps(res))
"""


def bup_oracle(request: dict[str, Any]) -> dict[str, Any]:
    proc = subprocess.run(
        [BUP_PYTHON, "-c", _ORACLE % BUP_LIB],
        input=json.dumps(request).encode(),
        capture_output=True,
    )
    if proc.returncode:
        raise AssertionError(f"bup oracle failed: {proc.stderr.decode(errors='replace')}")
    result: dict[str, Any] = json.loads(proc.stdout)
    return result


def as_fields(m: Metadata | None) -> dict[str, Any] | None:
    """Our Metadata in the oracle's JSON shape."""
    if m is None:
        return None

    def h(b: bytes | None) -> str | None:
        return None if b is None else b.hex()

    return {
        "mode": m.mode,
        "uid": m.uid,
        "gid": m.gid,
        "user": h(m.user),
        "group": h(m.group),
        "rdev": m.rdev,
        "atime": m.atime,
        "mtime": m.mtime,
        "ctime": m.ctime,
        "size": m.size,
        "symlink_target": h(m.symlink_target),
        "hardlink_target": h(m.hardlink_target),
        "linux_attr": m.linux_attr,
        "path": h(m.path),
        "linux_xattr": None
        if m.linux_xattr is None
        else [[k.hex(), v.hex()] for k, v in m.linux_xattr],
        "posix1e_acl": None if m.posix1e_acl is None else [a.hex() for a in m.posix1e_acl],
    }


# ---------------------------------------------------------------------------
# Byte-exact vectors (bup-format.md 3.4)

VECTORS = [
    (
        Metadata(
            mode=0o100644,
            uid=1000,
            user=b"alice",
            gid=100,
            group=b"users",
            atime=1600000000_123456789,
            mtime=1500000000_987654321,
            ctime=1700000000_000000000,
            size=6,
        ),
        "0a2ea48604a80f05616c696365a4010575736572730080c0f0f50b959aef3a80bcc1960bb1d1f9d60380c49fd50c000600",
    ),
    (
        Metadata(mode=0o120777, user=b"root", group=b"root", size=5, symlink_target=b"a.txt"),
        "0a17bf87050004726f6f740004726f6f7400000000000000050305612e74787400",
    ),
    (
        Metadata(mode=0o40755, linux_attr=0x80000, linux_xattr=[(b"user.k", b"v")]),
        "0a0fad87020000000000000000000000410603808020070a0106757365722e6b017600",
    ),
    (Metadata(mode=0o100644, size=0, path=b"x"), "010201780a0fa4860400000000000000000000000000"),
]


@pytest.mark.parametrize(("meta", "hexed"), VECTORS)
def test_spec_vectors(meta: Metadata, hexed: str) -> None:
    assert meta.encode().hex() == hexed
    decoded, end = decode_one(bytes.fromhex(hexed))
    assert decoded == meta
    assert end == len(hexed) // 2


def test_empty_record() -> None:
    assert Metadata().encode() == EMPTY_RECORD == b"\x00"
    assert Metadata().is_empty()
    assert not VECTORS[0][0].is_empty()
    assert decode_one(b"\x00") == (None, 1)
    # bup writes nothing for falsy values, so these are empty too.
    assert Metadata(mode=0, linux_attr=0, linux_xattr=[], path=b"").encode() == b"\x00"


def test_real_directory_record() -> None:
    # The first record of t1's .bupm quoted in bup-format.md 3.4.
    hexed = (
        "0a2d" "ad8702" "00" "04726f6f74" "00" "04726f6f74" "00"
        "a7a9c5b00d" "f7b48920" "80bcc1960b" "b1d1f9d603" "a7a9c5b00d" "a1e3d71e"
        "41" "0603808020" "00"
    )  # fmt: skip
    m, end = decode_one(bytes.fromhex(hexed))
    assert m is not None and end == len(hexed) // 2
    assert (m.mode, m.user, m.group, m.size, m.linux_attr) == (
        0o40755,
        b"root",
        b"root",
        None,
        0x80000,
    )
    assert m.mtime == 1500000000_987654321
    assert m.encode().hex() == hexed


def test_negative_times_split_floor_wise() -> None:
    m = Metadata(mode=0o100644, atime=-1, mtime=-1_500_000_000)
    common = m.encode()[2:]
    # atime (-1, 999999999) and mtime (-2, 500000000), spec 3.3.
    assert write_vint(-1) + write_vuint(999_999_999) in common
    assert write_vint(-2) + write_vuint(500_000_000) in common
    assert decode_one(m.encode())[0] == m


def test_decode_all_and_offsets() -> None:
    a, b = VECTORS[0][0], VECTORS[1][0]
    blob = a.encode() + EMPTY_RECORD + b.encode()
    assert decode_all(blob) == [a, None, b]
    assert decode_all(memoryview(blob)) == [a, None, b]
    m, end = decode_one(blob, len(a.encode()) + 1)
    assert m == b and end == len(blob)
    assert decode_all(b"") == []


def test_symlink_target_fills_missing_size() -> None:
    # bup takes the size from the target when the record has none.
    m = Metadata(mode=0o120777, symlink_target=b"abc")
    assert decode_one(m.encode())[0] == dataclasses.replace(m, size=3)


@pytest.mark.parametrize("meta", [v[0] for v in VECTORS])
def test_every_truncation_is_corrupt(meta: Metadata) -> None:
    enc = meta.encode()
    for cut in range(len(enc)):
        with pytest.raises(CorruptMetadata):
            decode_one(enc[:cut])
    assert issubclass(CorruptMetadata, KetchError)


# ---------------------------------------------------------------------------
# Old and unknown records, decoded by both


def _rec(tag: int, payload: bytes) -> bytes:
    return write_vuint(tag) + write_bvec(payload)


def _old_records() -> list[bytes]:
    names = write_bvec(b"bob") + write_vuint(20) + write_bvec(b"staff")
    times = (write_vint(-2) + write_vuint(5)) * 3
    v1 = write_vuint(0o100600) + write_vuint(501) + names + write_vuint(0) + times
    v2 = write_vint(0o120777) + write_vint(501) + names + write_vint(0) + times
    acl = b"u::rw-\nu:bob:r--\ng::r--\nm::r--\no::---"
    acl_num = acl.replace(b"bob", b"501")
    acl_v1 = b"".join(write_bvec(t) for t in (acl, acl_num, b"", b""))
    bad_acl_v1 = b"".join(write_bvec(t) for t in (b"u::rw-,g::r--", b"", b"", b""))
    return [
        _rec(2, v1) + _rec(4, acl_v1) + b"\x00",
        _rec(9, v2) + _rec(3, b"target") + b"\x00",
        _rec(9, v2) + _rec(4, bad_acl_v1) + b"\x00",
        _rec(5, b"nfs4?")
        + _rec(42, b"future")
        + _rec(10, VECTORS[0][0]._encode_common())
        + b"\x00",
        _rec(11, b"".join(write_bvec(t) for t in (b"a", b"b", b"", b"dropped"))) + b"\x00",
        _rec(1, write_bvec(b"some/path")) + b"\x00" + b"\x00",
    ]


def test_old_records_decode() -> None:
    ms = decode_all(b"".join(_old_records()))
    assert ms[0] is not None and ms[0].mode == 0o100600 and ms[0].size is None
    assert ms[0].posix1e_acl == (
        b"u::rw-,u:bob:r--,g::r--,m::r--,o::---",
        b"u::rw-,u:501:r--,g::r--,m::r--,o::---",
        b"",
        b"",
    )
    assert ms[0].atime == -2 * 10**9 + 5
    assert ms[1] is not None and ms[1].size == 6
    assert ms[2] is not None and ms[2].posix1e_acl is None
    assert ms[3] == VECTORS[0][0]
    assert ms[5] is not None and ms[5].path == b"some/path" and ms[6] is None


@needs_bup
def test_old_records_decode_like_bup() -> None:
    records = _old_records()
    bup = bup_oracle({"decode": [r.hex() for r in records]})["decode"]
    ours = [[as_fields(m) for m in decode_all(r)] for r in records]
    assert ours == bup


# ---------------------------------------------------------------------------
# Encode/decode round trips, and bup re-encoding our output

# No name, target or xattr name on Linux holds a NUL: the decoder refuses one.
_bytes = st.binary(min_size=1, max_size=20).map(lambda b: b.replace(b"\0", b"_"))
_names = st.binary(max_size=12).map(lambda b: b.replace(b"\0", b"_"))
_times = st.integers(min_value=-(2**40) * 10**9, max_value=2**40 * 10**9)


@st.composite
def metadata_objects(draw: st.DrawFn) -> Metadata:
    m = Metadata()
    if draw(st.booleans()):
        m.mode = draw(st.integers(min_value=1, max_value=0o177777))
        m.uid = draw(st.integers(min_value=0, max_value=2**32 - 1))
        m.gid = draw(st.integers(min_value=0, max_value=2**32 - 1))
        m.user = draw(_names)
        m.group = draw(_names)
        m.rdev = draw(st.integers(min_value=0, max_value=2**40))
        m.atime, m.mtime, m.ctime = draw(_times), draw(_times), draw(_times)
        m.size = draw(st.none() | st.integers(min_value=0, max_value=2**50))
    m.symlink_target = draw(st.none() | _bytes)
    if m.symlink_target is not None and m.size is None:
        m.size = len(m.symlink_target)
    m.hardlink_target = draw(st.none() | _bytes)
    m.linux_attr = draw(st.none() | st.integers(min_value=1, max_value=2**32 - 1))
    m.linux_xattr = draw(
        st.none() | st.lists(st.tuples(_bytes, st.binary(max_size=30)), min_size=1)
    )
    if draw(st.booleans()):
        a, an, d, dn = (draw(st.binary(max_size=30)) for _ in range(4))
        m.posix1e_acl = (a, an, d, dn if d else b"")
    m.path = draw(st.none() | _bytes)
    return m


@given(metadata_objects(), st.binary(max_size=3))
def test_round_trip(m: Metadata, prefix: bytes) -> None:
    enc = m.encode()
    decoded, end = decode_one(prefix + enc, len(prefix))
    assert end == len(prefix) + len(enc)
    assert decoded == (None if m.is_empty() else m)


def _random_metadata(rng: random.Random) -> Metadata:
    def some(n: int) -> bytes:
        # No NUL: no Linux name or target holds one (the decoder refuses it).
        return rng.randbytes(rng.randrange(1, n)).replace(b"\0", b"_")

    m = Metadata()
    if rng.random() < 0.9:
        m.mode = rng.randrange(1, 0o177777)
        m.uid, m.gid = rng.randrange(2**32), rng.randrange(2**32)
        m.user, m.group = some(10), some(10)
        m.rdev = rng.randrange(2**32)
        m.atime, m.mtime, m.ctime = (rng.randrange(-(2**62), 2**62) for _ in range(3))
        m.size = rng.choice([None, 0, rng.randrange(2**50)])
    if rng.random() < 0.3:
        m.symlink_target = some(50)
        m.size = len(m.symlink_target) if m.mode else None
    if rng.random() < 0.3:
        m.hardlink_target = some(50)
    if rng.random() < 0.3:
        m.linux_attr = rng.randrange(1, 2**32)
    if rng.random() < 0.3:
        m.linux_xattr = [(some(20), some(300)) for _ in range(rng.randrange(1, 4))]
    if rng.random() < 0.3:
        d = rng.choice([b"", some(40)])
        m.posix1e_acl = (some(40), some(40), d, some(40) if d else b"")
    if rng.random() < 0.2:
        m.path = some(30)
    return m


@needs_bup
def test_bup_reads_and_rewrites_our_encoding() -> None:
    rng = random.Random(7)
    metas = [_random_metadata(rng) for _ in range(400)]
    blobs = [m.encode().hex() for m in metas]
    result = bup_oracle({"reencode": blobs, "decode": blobs})
    assert result["reencode"] == blobs
    assert result["decode"] == [
        [as_fields(m)] for m in decode_all(b"".join(bytes.fromhex(b) for b in blobs))
    ]


# ---------------------------------------------------------------------------
# from_path against bup's from_path (normalized, as `bup save` uses it)


def _have(tool: str) -> bool:
    return shutil.which(tool) is not None


def _run_ok(*cmd: str | bytes) -> bool:
    if not _have(os.fsdecode(cmd[0])):
        return False
    return subprocess.run(list(cmd), capture_output=True).returncode == 0


def _set_flags(path: Path, flags: str) -> bool:
    return _have("lsattr") and _run_ok("chattr", flags, os.fsencode(path))


CASES = [
    "reg",
    "empty",
    "exec",
    "setuid",
    "setgid_dir",
    "sticky_dir",
    "dir",
    "symlink",
    "dangling",
    "fifo",
    "socket",
    "chardev",
    "blockdev",
    "xattrs",
    "acl_file",
    "acl_dir",
    "default_acl_only_dir",
    "flags",
    "append_only",
    "nonutf8",
    "neg_mtime",
    "ns_times",
    "unnamed_owner",
    "nobody",
    "hardlink",
]
NONUTF8 = b"caf\xe9-\xff"


# Torture cases this machine could not make, and why (shown by the skips).
LEFT_OUT: dict[str, str] = {}


def _left_out(name: str, why: str) -> None:
    """Outside CI a case the machine cannot make is left out (its tests skip,
    saying why); CI can make every one (root, acl, e2fsprogs), so there the
    tree fails to build."""
    if in_ci():
        pytest.fail(f"torture tree: cannot make {name}: {why}")
    LEFT_OUT[name] = why


def _build(root: Path) -> dict[str, tuple[bytes, bytes | None]]:  # noqa: C901, PLR0915
    """Make the torture tree; returns name -> (path, hardlink target) for what worked."""
    made: dict[str, tuple[bytes, bytes | None]] = {}
    r = os.fsencode(root)

    def p(name: str) -> bytes:
        return r + b"/" + name.encode()

    def reg(name: str, data: bytes = b"hello\n", mode: int = 0o644) -> bytes:
        path = p(name)
        with open(path, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
        made[name] = (path, None)
        return path

    reg("reg")
    reg("empty", b"")
    reg("exec", b"#!/bin/sh\n", 0o755)
    reg("setuid", b"x", 0o4755)
    for name, mode in (("dir", 0o755), ("setgid_dir", 0o2750), ("sticky_dir", 0o1777)):
        os.mkdir(p(name))
        os.chmod(p(name), mode)
        made[name] = (p(name), None)
    os.symlink(b"reg", p("symlink"))
    os.symlink(b"nowhere/at/all", p("dangling"))
    made["symlink"] = (p("symlink"), None)
    made["dangling"] = (p("dangling"), None)
    os.mkfifo(p("fifo"), 0o640)
    made["fifo"] = (p("fifo"), None)
    os.mknod(p("socket"), 0o755 | stat.S_IFSOCK)
    made["socket"] = (p("socket"), None)
    for name, kind, dev in (
        ("chardev", stat.S_IFCHR, (1, 3)),
        ("blockdev", stat.S_IFBLK, (7, 200)),
    ):
        try:
            os.mknod(p(name), 0o620 | kind, os.makedev(*dev))
            made[name] = (p(name), None)
        except PermissionError as e:
            _left_out(name, f"mknod: {e.strerror} (needs root)")
    xa = reg("xattrs")
    os.setxattr(xa, b"user.test", b"value1")
    os.setxattr(xa, b"user.another", b"v2\x00\xff")
    acl_cases = ("acl_file", "acl_dir", "default_acl_only_dir")
    if not _have("setfacl"):
        for name in acl_cases:
            _left_out(name, "setfacl is not installed (apt-get install acl)")
    else:
        f = reg("acl_file", b"acl\n", 0o640)
        os.mkdir(p("acl_dir"))
        os.mkdir(p("default_acl_only_dir"))
        if all((
            _run_ok("setfacl", "-m", "u:65534:r,u:4242:rwx,g:100:rw,g:4343:x", f),
            _run_ok("setfacl", "-m", "u:65534:rx", p("acl_dir")),
            _run_ok("setfacl", "-d", "-m", "u:4242:rwx,g:100:r", p("acl_dir")),
            _run_ok("setfacl", "-d", "-m", "g::r", p("default_acl_only_dir")),
        )):
            made["acl_dir"] = (p("acl_dir"), None)
            made["default_acl_only_dir"] = (p("default_acl_only_dir"), None)
        else:
            del made["acl_file"]
            for name in acl_cases:
                _left_out(name, "setfacl failed (no ACL support on this filesystem?)")
    for name, flags in (("flags", "+dA"), ("append_only", "+a")):
        if not _set_flags(root / reg(name).decode(), flags):
            del made[name]
            _left_out(name, f"chattr {flags} failed (e2fsprogs missing, or not supported here)")
    path = r + b"/" + NONUTF8
    with open(path, "wb") as f2:
        f2.write(b"latin-1 name\n")
    made["nonutf8"] = (path, None)
    os.utime(reg("neg_mtime"), ns=(-1, -1_500_000_000))
    os.utime(reg("ns_times"), ns=(1_600_000_000_123_456_789, 1_500_000_000_987_654_321))
    if IS_ROOT:
        os.chown(reg("unnamed_owner"), 4242, 4343)
        os.chown(reg("nobody"), 65534, 65534)
    else:
        for name in ("unnamed_owner", "nobody"):
            _left_out(name, "chown needs root")
    target = reg("hardlink")
    os.link(target, p("hardlink2"))
    made["hardlink"] = (target, target)
    # Reading a symlink can move its atime (relatime) the first time only:
    # do that now so bup and ketch see the same atime.
    for name in ("symlink", "dangling"):
        os.readlink(p(name))
    return made


def _clear_flags(root: Path) -> None:
    if _have("chattr"):
        for dirpath, _dirs, files in os.walk(root):
            for name in files:
                subprocess.run(["chattr", "-a", os.path.join(dirpath, name)], capture_output=True)


@pytest.fixture(scope="module")
def torture(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[dict[str, tuple[bytes, bytes | None]]]:
    root = tmp_path_factory.mktemp("torture")
    try:
        yield _build(root)
    finally:
        _clear_flags(root)


@pytest.fixture(scope="module")
def bup_encodings(torture: dict[str, tuple[bytes, bytes | None]]) -> dict[str, str]:
    if not (os.path.exists(BUP_PYTHON) and os.path.isdir(BUP_LIB)):
        pytest.skip("bup 0.33 not installed")
    names = sorted(torture)
    req = [[path.hex(), hl and hl.hex()] for path, hl in (torture[n] for n in names)]
    return dict(zip(names, bup_oracle({"from_path": req})["from_path"], strict=True))


@needs_bup
@pytest.mark.parametrize("case", CASES)
def test_from_path_matches_bup(
    case: str, torture: dict[str, tuple[bytes, bytes | None]], bup_encodings: dict[str, str]
) -> None:
    if case not in torture:
        pytest.skip(f"{case}: not made here: {LEFT_OUT.get(case, '?')}")
    path, hlink = torture[case]
    warnings: list[str] = []
    ours = from_path(path, hardlink_target=hlink, warn=warnings.append)
    assert warnings == []
    assert ours.encode().hex() == bup_encodings[case], (
        ours,
        decode_one(bytes.fromhex(bup_encodings[case]))[0],
    )


def test_from_path_fields(torture: dict[str, tuple[bytes, bytes | None]]) -> None:
    reg = from_path(torture["reg"][0])
    assert reg.size == 6 and reg.symlink_target is None and reg.rdev == 0
    link = from_path(torture["dangling"][0])
    assert link.symlink_target == b"nowhere/at/all" and link.size == 14 and link.posix1e_acl is None
    assert from_path(torture["fifo"][0]).size is None
    assert from_path(torture["dir"][0]).size is None
    assert from_path(torture["neg_mtime"][0]).mtime == -1_500_000_000
    xa = from_path(torture["xattrs"][0]).linux_xattr
    assert xa is not None and sorted(xa) == [
        (b"user.another", b"v2\x00\xff"),
        (b"user.test", b"value1"),
    ]
    if "chardev" in torture:
        assert from_path(torture["chardev"][0]).rdev == os.makedev(1, 3)
    if "acl_dir" in torture:
        acl = from_path(torture["acl_dir"][0]).posix1e_acl
        assert acl is not None
        assert acl[1] == b"u::rwx,u:65534:r-x,g::r-x,m::r-x,o::r-x"
        assert acl[3] == b"u::rwx,u:4242:rwx,g::r-x,g:100:r--,m::rwx,o::r-x"
    if "unnamed_owner" in torture:
        m = from_path(torture["unnamed_owner"][0])
        assert (m.uid, m.gid, m.user, m.group) == (4242, 4343, b"", b"")


def test_from_path_missing() -> None:
    with pytest.raises(MetadataError) as info:
        from_path(b"/nonexistent/ketch-test")
    assert isinstance(info.value, KetchError) and isinstance(info.value, OSError)
    assert info.value.errno == errno.ENOENT


# ---------------------------------------------------------------------------
# Restore round trip: from_path, recreate, apply_to_path, from_path again


def _recreate(meta: Metadata, src: bytes, dst: bytes) -> None:
    if stat.S_ISREG(meta.mode or 0):
        with open(src, "rb") as fi, open(dst, "wb") as fo:
            fo.write(fi.read())
    else:
        create_special(meta, dst)


@pytest.mark.parametrize("case", CASES)
def test_restore_round_trip(
    case: str, torture: dict[str, tuple[bytes, bytes | None]], tmp_path: Path
) -> None:
    if case not in torture:
        pytest.skip(f"{case}: not made here: {LEFT_OUT.get(case, '?')}")
    src, hlink = torture[case]
    before = from_path(src, hardlink_target=hlink)
    dst = os.fsencode(tmp_path) + b"/" + os.path.basename(src)
    warnings: list[str] = []
    try:
        _recreate(before, src, dst)
        apply_to_path(before, dst, warn=warnings.append)
        after = from_path(dst, hardlink_target=hlink)
    finally:
        _clear_flags(tmp_path)
    assert warnings == []
    assert dataclasses.replace(after, ctime=before.ctime) == before


def test_restore_round_trip_through_the_descriptor(
    torture: dict[str, tuple[bytes, bytes | None]], tmp_path: Path
) -> None:
    """A restore applies a regular file's metadata through the descriptor it
    wrote the file with (apply_to_fd): the same result as apply_to_path,
    append-only and other Linux attrs included; every regular-file case."""
    checked = []
    for case, (src, hlink) in sorted(torture.items()):
        before = from_path(src, hardlink_target=hlink)
        if not stat.S_ISREG(before.mode or 0):
            continue
        dst = os.fsencode(tmp_path) + b"/" + os.path.basename(src)
        warnings: list[str] = []
        try:
            fd = os.open(dst, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                with open(src, "rb") as fi:
                    os.write(fd, fi.read())
                apply_to_fd(before, fd, dst, warn=warnings.append)
            finally:
                os.close(fd)
            after = from_path(dst, hardlink_target=hlink)
        finally:
            _clear_flags(tmp_path)
        assert warnings == [], case
        assert dataclasses.replace(after, ctime=before.ctime) == before, case
        checked.append(case)
    assert len(checked) >= 10, checked


def test_apply_to_fd_refuses_another_type(tmp_path: Path) -> None:
    path = _new_file(tmp_path)
    warnings: list[str] = []
    with open(path, "rb+") as f:
        apply_to_fd(Metadata(mode=0o40700, mtime=0), f.fileno(), path, warn=warnings.append)
    assert len(warnings) == 1 and "not applying" in warnings[0]
    assert os.stat(path).st_mtime_ns != 0


# ---------------------------------------------------------------------------
# apply_to_path details


def _new_file(tmp_path: Path, name: str = "f") -> bytes:
    path = os.fsencode(tmp_path / name)
    with open(path, "wb") as f:
        f.write(b"x")
    return path


@needs_root
def test_owner_by_name_unless_numeric(tmp_path: Path) -> None:
    import grp
    import pwd

    try:
        nobody = pwd.getpwnam("nobody").pw_uid
        nogroup = grp.getgrnam("nogroup").gr_gid
    except KeyError:
        pytest.skip("no nobody/nogroup")
    meta = Metadata(mode=0o100640, uid=12345, user=b"nobody", gid=12346, group=b"nogroup")
    path = _new_file(tmp_path)
    apply_to_path(meta, path)
    st_ = os.lstat(path)
    assert (st_.st_uid, st_.st_gid) == (nobody, nogroup)
    apply_to_path(meta, path, numeric_ids=True)
    st_ = os.lstat(path)
    assert (st_.st_uid, st_.st_gid, stat.S_IMODE(st_.st_mode)) == (12345, 12346, 0o640)
    # Unknown names fall back to the ids.
    apply_to_path(dataclasses.replace(meta, user=b"no-such-user-ketch"), path)
    assert os.lstat(path).st_uid == 12345


@pytest.mark.skipif(not _have("setfacl"), reason="needs the acl tools")
def test_acl_restore_by_name_or_number(tmp_path: Path) -> None:
    acl = (
        b"u::rw-,u:nobody:r--,u:no-such-user-ketch:-w-,g::r--,m::rw-,o::---",
        b"u::rw-,u:777:r--,u:778:-w-,g::r--,m::rw-,o::---",
        b"",
        b"",
    )
    meta = Metadata(mode=0o100660, posix1e_acl=acl)
    path = _new_file(tmp_path)
    warnings: list[str] = []
    apply_to_path(meta, path, warn=warnings.append)
    got = from_path(path).posix1e_acl
    assert got is not None and got[1] == b"u::rw-,u:778:-w-,u:65534:r--,g::r--,m::rw-,o::---"
    apply_to_path(meta, path, numeric_ids=True, warn=warnings.append)
    got = from_path(path).posix1e_acl
    assert got is not None and got[1] == b"u::rw-,u:777:r--,u:778:-w-,g::r--,m::rw-,o::---"
    assert warnings == []


def test_xattrs_replaced(tmp_path: Path) -> None:
    path = _new_file(tmp_path)
    os.setxattr(path, b"user.stale", b"1")
    os.setxattr(path, b"user.keep", b"old")
    meta = Metadata(mode=0o100644, linux_xattr=[(b"user.keep", b"new"), (b"user.added", b"")])
    apply_to_path(meta, path)
    assert sorted(os.listxattr(path)) == ["user.added", "user.keep"]
    assert os.getxattr(path, b"user.keep") == b"new"
    apply_to_path(Metadata(mode=0o100644), path)
    assert os.listxattr(path) == []


@pytest.mark.skipif(not _have("setfacl"), reason="needs the acl tools")
def test_inherited_acl_removed(tmp_path: Path) -> None:
    assert _run_ok("setfacl", "-d", "-m", "u:4242:rwx", os.fsencode(tmp_path))
    path = _new_file(tmp_path)
    assert from_path(path).posix1e_acl is not None
    apply_to_path(Metadata(mode=0o100600), path)
    assert from_path(path).posix1e_acl is None
    assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600


def test_apply_problems(tmp_path: Path) -> None:
    with pytest.raises(MetadataError) as info:
        apply_to_path(Metadata(mode=0o100644), os.fsencode(tmp_path / "missing"))
    assert info.value.errno == errno.ENOENT and isinstance(info.value, KetchError)
    warnings: list[str] = []
    path = _new_file(tmp_path)
    apply_to_path(Metadata(), path, warn=warnings.append)
    assert len(warnings) == 1 and "no metadata" in warnings[0]
    bad = Metadata(mode=0o100644, posix1e_acl=(b"u::rw-,bogus", b"u::rw-,bogus", b"", b""))
    apply_to_path(bad, path, warn=warnings.append)
    assert len(warnings) == 2 and "ACL" in warnings[1]


def test_create_special_refuses_regular_files(tmp_path: Path) -> None:
    with pytest.raises(MetadataError):
        create_special(Metadata(mode=0o100644), os.fsencode(tmp_path / "f"))
    with pytest.raises(MetadataError):
        create_special(Metadata(mode=0o120777), os.fsencode(tmp_path / "l"))
    d = os.fsencode(tmp_path / "d")
    create_special(Metadata(mode=0o40755), d)
    assert stat.S_IMODE(os.lstat(d).st_mode) == 0o700
    with pytest.raises(MetadataError) as info:
        create_special(Metadata(mode=0o40755), d)
    assert info.value.errno == errno.EEXIST


def test_long_socket_path(tmp_path: Path) -> None:
    # Longer than sun_path allows for bind(); mknod has no such limit.
    deep = tmp_path / ("d" * 100) / ("e" * 100)
    deep.mkdir(parents=True)
    path = os.fsencode(deep / "sock")
    create_special(Metadata(mode=0o140755), path)
    assert stat.S_ISSOCK(os.lstat(path).st_mode)


@pytest.mark.parametrize(
    ("mode", "text"),
    [
        (0o100644, "-rw-r--r--"),
        (0o40755, "drwxr-xr-x"),
        (0o120777, "lrwxrwxrwx"),
        (0o104755, "-rwsr-xr-x"),
        (0o104644, "-rwSr--r--"),
        (0o102710, "-rwx--s---"),
        (0o41777, "drwxrwxrwt"),
        (0o41776, "drwxrwxrwT"),
        (0o20620, "crw--w----"),
        (0o60660, "brw-rw----"),
        (0o10600, "prw-------"),
        (0o140755, "srwxr-xr-x"),
    ],
)
def test_mode_string(mode: int, text: str) -> None:
    assert mode_string(mode) == text


def test_type_mismatch_is_not_applied(tmp_path: Path) -> None:
    target = _new_file(tmp_path, "target")
    os.chmod(target, 0o600)
    link = os.fsencode(tmp_path / "link")
    os.symlink(target, link)
    warnings: list[str] = []
    apply_to_path(Metadata(mode=0o104777), link, warn=warnings.append)
    assert len(warnings) == 1 and "file type differs" in warnings[0]
    assert stat.S_IMODE(os.stat(target).st_mode) == 0o600


# ---------------------------------------------------------------------------
# ACL text <-> kernel xattr form


def test_acl_name_quoting_like_libacl() -> None:
    from ketch.posixacl import _acl_quote, _acl_unquote

    # libacl's __acl_quote: ":, \t\n\r" as \ooo, a backslash doubled.
    assert _acl_quote(b"a b:c,d") == b"a\\040b\\072c\\054d"
    assert _acl_quote(b"back\\slash") == b"back\\\\slash"
    assert _acl_quote(b"plain.name-1") == b"plain.name-1"
    for name in (b"a b:c,d", b"back\\slash", b"\t\n\r\\x"):
        assert _acl_unquote(_acl_quote(name)) == name


_named_ids = st.integers(min_value=0, max_value=2**32 - 2)


@given(
    st.dictionaries(
        st.sampled_from([0x02, 0x08]).flatmap(lambda t: st.tuples(st.just(t), _named_ids)),
        st.integers(0, 7),
        max_size=6,
    ),
    st.lists(st.integers(0, 7), min_size=4, max_size=4),
)
def test_acl_text_blob_round_trip(named: dict[tuple[int, int], int], base: list[int]) -> None:
    from ketch.posixacl import _acl_entries, _acl_text, acl_blob

    undefined = 0xFFFFFFFF
    entries = [(0x01, base[0], undefined), (0x04, base[1], undefined), (0x20, base[3], undefined)]
    entries += [(tag, perm, qid) for (tag, qid), perm in named.items()]
    if named:
        entries.append((0x10, base[2], undefined))
    entries.sort(key=lambda e: (e[0], e[2]))
    text = _acl_text(entries, True)
    blob = acl_blob(text, text, False)
    assert _acl_entries(blob) == entries
    assert _acl_text(_acl_entries(blob) or [], True) == text
