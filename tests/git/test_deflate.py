"""Packs deflated with ISA-L (levels 1-3) or zlib (4-9) read back in git and
bup, and the inflater refuses what zlib refuses."""

from __future__ import annotations

import random
import subprocess
import zlib
from pathlib import Path

import pytest
from isal import isal_zlib

from ketch.git import entry as codec
from ketch.git import objects as gobj
from ketch.git.deflate import deflate
from ketch.git.loose import CorruptLooseObject, read_loose
from ketch.git.pack import PackWriter, entry_header
from tests.conftest import RunBup, RunKetch
from tests.gitutil import git


def mixed_objects(seed: int) -> list[bytes]:
    """What a backup holds: text, runs of zeros, random data, tiny and empty files."""
    r = random.Random(seed)
    words = [b"INSERT", b"INTO", b"VALUES", b"(1,", b"'abc'", b"NULL", b"\n", b"etc/"]
    out = [b"", b"x"]
    for i in range(60):
        kind = i % 4
        n = r.randint(1, 20000)
        if kind == 0:
            out.append(b" ".join(r.choice(words) for _ in range(n // 5)))
        elif kind == 1:
            out.append(bytes(n))
        elif kind == 2:
            out.append(r.randbytes(n))
        else:
            out.append(r.randbytes(n // 8) * 8)
    return out


@pytest.mark.parametrize("level", [1, 2, 3, 4, 9])
def test_git_reads_and_verifies_packs_of_every_level(tmp_path: Path, level: int) -> None:
    bare = tmp_path / "r.git"
    subprocess.run(["git", "init", "-q", "--bare", str(bare)], check=True)
    datas = mixed_objects(level)
    with PackWriter(str(bare / "objects"), level=level) as w:
        ids = [w.write(gobj.BLOB, d) for d in datas[:30]]  # one by one
        ids += w.write_many(gobj.BLOB, datas[30:])  # a batch: the stored-data predictor
    git(bare, "fsck", "--strict", "--no-dangling")
    [pack] = (bare / "objects" / "pack").glob("*.pack")
    listing = git(bare, "verify-pack", "-v", str(pack.with_suffix(".idx")))
    assert listing.count(b" blob ") == len(set(ids))
    for oid, d in zip(ids, datas, strict=True):
        assert git(bare, "cat-file", "-p", oid.hex()) == d


def test_levels_one_to_three_are_isal_and_four_up_zlib() -> None:
    data = b"".join(b"row %d: some text that repeats a bit\n" % i for i in range(2000))
    for level in (1, 2, 3):
        assert deflate(data, level) == isal_zlib.compress(data, level)
    for level in (4, 6, 9):
        assert deflate(data, level) == zlib.compress(data, level)
    assert len(deflate(data, 1)) < 0.6 * len(data)


def test_bup_reads_what_ketch_deflated_with_isal(tmp_path: Path, run_ketch: RunKetch,
                                                 bup: RunBup) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    r = random.Random(7)
    data = b"".join(b"line %d %s\n" % (i, r.randbytes(8).hex().encode()) for i in range(30000))
    data += r.randbytes(200_000) + bytes(100_000)
    src = tmp_path / "data.bin"
    src.write_bytes(data)
    for level in ("1", "3"):
        run_ketch("split", "-d", repo, "--compress", level, "-n", "s" + level, src, check=True)
        assert bup(repo, "join", "s" + level).stdout == data
        assert bup(repo, "cat-file", f"s{level}/latest/data").stdout == data
    git(repo, "fsck", "--strict", "--no-dangling")


def test_zlib_header_with_a_window_over_32k_is_corrupt(tmp_path: Path) -> None:
    """zlib (and so git) refuses a stream whose header declares a 64 KiB
    window; ISA-L would inflate it, so ketch checks the header itself."""
    data = b"hello world\n" * 100
    z = zlib.compress(data)
    bad = bytes([0x88, 0x1C]) + z[2:]  # CINFO 8, FCHECK kept valid
    assert (0x88 << 8 | 0x1C) % 31 == 0
    with pytest.raises(zlib.error):
        zlib.decompress(bad)
    buf = entry_header(gobj.BLOB, len(data)) + bad
    with pytest.raises(codec.CorruptPack, match="zlib error"):
        codec.decode_whole(buf)
    oid = gobj.object_id(gobj.BLOB, data)
    path = tmp_path / oid.hex()[:2] / oid.hex()[2:]
    path.parent.mkdir()
    path.write_bytes(bytes([0x88, 0x1C]) + zlib.compress(b"blob %d\0" % len(data) + data)[2:])
    with pytest.raises(CorruptLooseObject, match="zlib error"):
        read_loose(tmp_path, oid)
