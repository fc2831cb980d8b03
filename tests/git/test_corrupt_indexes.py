"""Damaged idx, midx and bloom files in a pack directory, as a user meets them
through `ketch save`, `ls`, `restore` and `cat-file`.

The policy, per file kind:

- An idx is the authoritative index of its pack. Damage its reader can see
  (a short file, a bad header, a fan-out that runs backwards, a count the
  file cannot hold) makes every command that opens the repository fail with
  one line naming the file and exit 2, before anything is written. Damage
  inside the tables (an offset past the pack, a 64-bit offset that is not
  there) fails the reads that meet it the same way.
- A midx or a bloom filter only speeds lookups up: a damaged one is ignored
  (reads fall back to the idx files, so it can never hide a saved object) and
  the next save's housekeeping removes or rebuilds it.

After each case the original file is put back: git fsck --strict is clean and
every save restores byte for byte (nothing saved was lost or overwritten).

The CLI runs in-process (ketch.cli.main.main), which is what `python -m ketch`
runs, without a start-up per command.
"""

from __future__ import annotations

import filecmp
import os
import random
import shutil
import signal
import struct
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from ketch.cli.main import main
from ketch.git.bloom import BLOOM_NAME, BloomReader
from ketch.git.idx import PackIndex
from ketch.git.midx import MidxReader, write_midx

Mangle = Callable[[bytes], bytes]


def _main(*argv: str | os.PathLike[str]) -> int:
    """`ketch ARGV` in-process; its exit code."""
    old = signal.getsignal(signal.SIGTERM)
    try:
        main([os.fspath(a) for a in argv])
        return 0
    except SystemExit as e:
        return int(e.code or 0)
    finally:
        signal.signal(signal.SIGTERM, old)


class Ran:
    out = ""


def _run(capfd: pytest.CaptureFixture[str], *argv: str | os.PathLike[str]) -> tuple[int, str]:
    """(exit code, stderr); stdout is kept in ``Ran.out``."""
    capfd.readouterr()
    code = _main(*argv)
    got = capfd.readouterr()
    Ran.out = got.out
    return code, got.err


class Base:
    def __init__(self, root: Path) -> None:
        self.src = root / "src"
        self.src.mkdir()
        r = random.Random(3)
        (self.src / "big").write_bytes(r.randbytes(400_000))
        (self.src / "small").write_bytes(b"hello\n")
        self.repo = root / "repo"
        assert _main("init", "-d", self.repo) == 0
        assert _main("save", "-d", self.repo, "-n", "s", self.src) == 0
        (self.src / "more").write_bytes(r.randbytes(100_000))
        assert _main("save", "-d", self.repo, "-n", "s", self.src) == 0
        self.pack_dir = self.repo / "objects" / "pack"
        self.idx = sorted(self.pack_dir.glob("*.idx"))
        assert len(self.idx) == 2
        # What `bup midx -f` would leave: one midx over both idx files.
        self.midx = Path(write_midx(self.pack_dir, [str(p) for p in self.idx]))
        self.bloom = self.pack_dir / BLOOM_NAME
        assert self.bloom.exists()


@pytest.fixture(scope="module")
def base(tmp_path_factory: pytest.TempPathFactory) -> Base:
    return Base(tmp_path_factory.mktemp("corrupt"))


def _git_fsck(repo: Path) -> None:
    subprocess.run(["git", "--git-dir", repo, "fsck", "--strict", "--no-progress"],
                   check=True, capture_output=True)


def _one_clean_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("ketch: error: "), err
    assert "internal error" not in err and "Traceback" not in err, err
    return lines[0]


def _field(at: int, value: int, width: int = 4) -> Mangle:
    return lambda b: b[:at] + value.to_bytes(width, "big") + b[at + width:]


def _flip(at: int) -> Mangle:
    """Every bit of the byte at ``at`` (negative: from the end) inverted."""
    def mangle(b: bytes) -> bytes:
        i = at % len(b)
        return b[:i] + bytes([b[i] ^ 0xFF]) + b[i + 1:]
    return mangle


def _cut(n: int) -> Mangle:
    return lambda b: b[:n]


# idx v2: 8-byte header, 256 fan-out counts, ids, CRCs, offsets, trailer.
IDX_FATAL: dict[str, Mangle] = {
    "empty": _cut(0),
    "header only": _cut(8),
    "mid-table": lambda b: b[: 8 + 1024 + 20 * 3],
    "one byte short": lambda b: b[:-1],
    "bad magic": _flip(0),
    "bad version": _field(4, 3),
    "fan-out backwards": _field(8 + 4 * 0x80, 0xFFFF),
    "huge count": _field(8 + 4 * 255, 0xFFFFFFFF),
}


def _idx_count(b: bytes) -> int:
    return int(struct.unpack_from(">I", b, 8 + 4 * 255)[0])


def _every_offset(value: int) -> Mangle:
    def mangle(b: bytes) -> bytes:
        n = _idx_count(b)
        at = 8 + 1024 + 24 * n
        return b[:at] + value.to_bytes(4, "big") * n + b[at + 4 * n:]
    return mangle


IDX_READS: dict[str, Mangle] = {
    "offsets beyond the pack": _every_offset(0x7FFFFFF0),
    "missing 64-bit offsets": _every_offset(0x80000007),
    "pack checksum in the trailer": _flip(-30),
}

MIDX_CASES: dict[str, Mangle] = {
    "empty": _cut(0),
    "header only": _cut(12),
    "mid-table": lambda b: b[: len(b) // 2],
    "one byte short": lambda b: b[:-1],
    "bad magic": _flip(0),
    "bad version": _field(4, 5),
    "huge fan-out width": _field(8, 31),
    "fan-out backwards": _field(12, 0xFFFF),
    "huge count": lambda b: _field(12 + 4 * (1 << b[11]) - 4, 0xFFFFFFFF)(b),
    "ids zeroed": lambda b: b[: 12 + 4 * (1 << b[11])] + bytes(20 * 50) +
    b[12 + 4 * (1 << b[11]) + 20 * 50:],
    "names an idx that is not there": lambda b: b[:-3] + b"zzz",
}

BLOOM_CASES: dict[str, Mangle] = {
    "empty": _cut(0),
    "header only": _cut(16),
    "mid-table": lambda b: b[: 16 + (1 << b[9]) // 2],
    "one byte short of its table": lambda b: b[: 16 + (1 << b[9]) - 1],
    "bad magic": _flip(0),
    "bad version": _field(4, 7),
    "huge bits": _field(8, 60, 2),
    "bad k": _field(10, 9, 2),
    "huge entry count": _field(12, 0xFFFFFFFF),
    "names an idx that is not there": lambda b: b[:-3] + b"zzz",
    # Every bit clear: the filter says nothing is stored.
    "table zeroed": lambda b: b[:16] + bytes(1 << b[9]) + b[16 + (1 << b[9]):],
}


def _damaged(base: Base, tmp_path: Path, which: Path, mangle: Mangle) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(base.repo, repo)
    target = repo / "objects" / "pack" / which.name
    target.write_bytes(mangle(which.read_bytes()))
    return repo


def _restored_ok(capfd: pytest.CaptureFixture[str], base: Base, repo: Path, out: Path,
                 save: str = "latest") -> bool:
    code, err = _run(capfd, "restore", "-d", repo, "-C", out, f"s/{save}{base.src}/")
    if code:
        _one_clean_line(err)
        return False
    for name in ("big", "small", "more"):
        assert filecmp.cmp(out / name, base.src / name, shallow=False), name
    return True


def _intact_after_repair(capfd: pytest.CaptureFixture[str], base: Base, repo: Path,
                         which: Path, tmp_path: Path) -> None:
    shutil.copy(which, repo / "objects" / "pack" / which.name)
    _git_fsck(repo)
    for i, save in enumerate(_saves(capfd, repo)):
        out = tmp_path / f"again{i}"
        code, err = _run(capfd, "restore", "-d", repo, "-C", out, f"s/{save}{base.src}/")
        assert code == 0, err
        assert filecmp.cmp(out / "big", base.src / "big", shallow=False)


def _saves(capfd: pytest.CaptureFixture[str], repo: Path) -> list[str]:
    code, err = _run(capfd, "ls", "-d", repo, "s")
    assert code == 0, err
    return [s for s in Ran.out.split() if s != "latest"]


@pytest.mark.parametrize("case", IDX_FATAL)
def test_unreadable_idx_fails_every_command_with_one_line(
    base: Base, tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    which = base.idx[0]
    repo = _damaged(base, tmp_path, which, IDX_FATAL[case])
    before = sorted(os.listdir(repo / "objects" / "pack"))
    for argv in (["save", "-d", repo, "-n", "s", base.src],
                 ["ls", "-d", repo, f"s/latest{base.src}"],
                 ["restore", "-d", repo, "-C", tmp_path / "out", f"s/latest{base.src}/"],
                 ["cat-file", "-d", repo, f"s/latest{base.src}/small"]):
        code, err = _run(capfd, *argv)
        assert code == 2, (argv[0], err)
        assert which.name in _one_clean_line(err), err
    capfd.readouterr()
    # Nothing was written beside the damage.
    assert sorted(os.listdir(repo / "objects" / "pack")) == before
    _intact_after_repair(capfd, base, repo, which, tmp_path)


@pytest.mark.parametrize("case", IDX_READS)
def test_idx_tables_pointing_nowhere_fail_the_reads_that_meet_them(
    base: Base, tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    # Both idx files damaged alike, so that every object read meets the damage.
    repo = tmp_path / "repo"
    shutil.copytree(base.repo, repo)
    for ix in base.idx:
        (repo / "objects" / "pack" / ix.name).write_bytes(IDX_READS[case](ix.read_bytes()))
    (repo / "objects" / "pack" / base.midx.name).unlink()
    for argv in (["ls", "-d", repo, f"s/latest{base.src}"],
                 ["cat-file", "-d", repo, f"s/latest{base.src}/small"]):
        code, err = _run(capfd, *argv)
        assert code == 2, (argv[0], err)
        _one_clean_line(err)
    assert not _restored_ok(capfd, base, repo, tmp_path / "out")
    capfd.readouterr()
    for ix in base.idx:
        shutil.copy(ix, repo / "objects" / "pack" / ix.name)
    _intact_after_repair(capfd, base, repo, base.idx[0], tmp_path)


def test_idx_checksum_is_fsck_business(base: Base, tmp_path: Path,
                                       capfd: pytest.CaptureFixture[str]) -> None:
    """The idx's own SHA-1 (the last 20 bytes) is checked by fsck, as git
    does, not by every command: the tables are intact, so everything reads."""
    repo = _damaged(base, tmp_path, base.idx[0], _flip(-1))
    code, err = _run(capfd, "cat-file", "-d", repo, f"s/latest{base.src}/small")
    assert (code, Ran.out) == (0, "hello\n"), err
    assert _restored_ok(capfd, base, repo, tmp_path / "out")
    _intact_after_repair(capfd, base, repo, base.idx[0], tmp_path)


def _accelerator_case(base: Base, tmp_path: Path, capfd: pytest.CaptureFixture[str],
                      which: Path, mangle: Mangle) -> Path:
    repo = _damaged(base, tmp_path, which, mangle)
    code, err = _run(capfd, "ls", "-d", repo, f"s/latest{base.src}")
    assert code == 0, err
    assert Ran.out.split() == ["big", "more", "small"]
    code, err = _run(capfd, "cat-file", "-d", repo, f"s/latest{base.src}/small")
    assert (code, Ran.out) == (0, "hello\n"), err
    assert _restored_ok(capfd, base, repo, tmp_path / "out")
    (base.src / "new").write_bytes(b"new\n")
    try:
        code, err = _run(capfd, "save", "-d", repo, "-n", "s", base.src)
    finally:
        (base.src / "new").unlink()
    assert code == 0, err
    capfd.readouterr()
    _git_fsck(repo)
    return repo


@pytest.mark.parametrize("case", MIDX_CASES)
def test_damaged_midx_is_ignored_and_cleared_by_the_next_save(
    base: Base, tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    repo = _accelerator_case(base, tmp_path, capfd, base.midx, MIDX_CASES[case])
    left = repo / "objects" / "pack" / base.midx.name
    if left.exists():
        # Only a midx housekeeping can trust may stay.
        with MidxReader(left) as m:
            assert m.is_sound() and not m.missing_idx()
    _intact_after_repair(capfd, base, repo, base.midx, tmp_path)


@pytest.mark.parametrize("case", BLOOM_CASES)
def test_damaged_bloom_is_ignored_and_rebuilt_by_the_next_save(
    base: Base, tmp_path: Path, capfd: pytest.CaptureFixture[str], case: str
) -> None:
    repo = _accelerator_case(base, tmp_path, capfd, base.bloom, BLOOM_CASES[case])
    pack_dir = repo / "objects" / "pack"
    with BloomReader(pack_dir / BLOOM_NAME) as b:
        assert sorted(b.idx_names) == sorted(p.name for p in pack_dir.glob("*.idx"))
        # Every stored id tests present again.
        for path in pack_dir.glob("*.idx"):
            pi = PackIndex(path)
            assert b.maybe_contains_many(pi.ids).all()
            pi.close()
    _intact_after_repair(capfd, base, repo, base.bloom, tmp_path)
