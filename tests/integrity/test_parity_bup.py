"""Parity interchangeable with bup 0.33's: bup's `fsck` and `fsck -r` use
ketch's parity on a repository ketch wrote, and ketch verifies and repairs with
the parity `bup fsck -g` made (the same bytes as ketch's)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from ketch.integrity import parity
from tests.conftest import RunBup
from tests.integrity.parityutil import flip, need_par2, saved_repo, sha256, the_pack, zero_block


@pytest.fixture(scope="module")
def written(tmp_path_factory: pytest.TempPathFactory) -> Path:
    need_par2()
    return saved_repo(tmp_path_factory.mktemp("bup-parity"))


@pytest.fixture
def repo(written: Path, tmp_path: Path) -> Path:
    shutil.copytree(written, tmp_path / "repo")
    return tmp_path / "repo"


def test_bup_fsck_uses_ketchs_parity(repo: Path, bup: RunBup) -> None:
    pack = the_pack(repo)
    parity.generate(pack)
    name = os.path.basename(pack)[: -len(".pack")]
    ok = bup(repo, "fsck", "-v")
    assert ok.stdout.decode().split() == [name, "ok"]  # "ok" from par2 verify
    original = sha256(pack)
    flip(pack)
    found = bup(repo, "fsck", check=False)
    assert found.returncode == 1
    # (bup 0.33 prints the name as a Python bytes repr: b'pack-...')
    assert f"{name}' par2 verify: failed (1)" in found.stderr.decode()
    fixed = bup(repo, "fsck", "-r", check=False)
    assert fixed.returncode == 100, fixed.stderr  # bup's "repaired"
    assert f"{name}' par2 repair: succeeded (0)" in fixed.stderr.decode()
    assert sha256(pack) == original
    assert parity.verify(pack) is True


def test_ketch_uses_bups_parity(repo: Path, tmp_path: Path, bup: RunBup) -> None:
    ours = tmp_path / "ours"
    shutil.copytree(repo, ours)
    parity.generate(the_pack(ours))
    pack = the_pack(repo)
    bup(repo, "fsck", "-g")
    # The same files, to the byte.
    made, mine = parity.parity_files(pack), parity.parity_files(the_pack(ours))
    assert [os.path.basename(p) for p in made] == [os.path.basename(p) for p in mine]
    for a, b in zip(made, mine, strict=True):
        assert Path(a).read_bytes() == Path(b).read_bytes(), os.path.basename(a)
    assert parity.has_parity(pack)
    assert parity.verify(pack) is True
    original = {p: sha256(p) for p in (pack, pack[: -len(".pack")] + ".idx")}
    zero_block(pack)
    assert parity.verify(pack) is False
    assert parity.repair(pack) is True
    assert {p: sha256(p) for p in original} == original
    assert bup(repo, "fsck", "-v").stdout.decode().split()[-1] == "ok"
