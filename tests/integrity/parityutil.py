"""Helpers of the parity tests: a repository with one pack, three ways of
damaging a file, and the real par2 (missing: a skip here, a failure in CI)."""

from __future__ import annotations

import glob
import hashlib
import os
import random
import shutil
from collections.abc import Callable
from pathlib import Path

import pytest

from ketch.localrepo import LocalRepository, init_repository
from ketch.save import SaveOptions, save
from tests.conftest import in_ci


def need_par2() -> None:
    if shutil.which("par2") is None:
        if in_ci():
            pytest.fail("par2 is not installed; CI requires it")
        pytest.skip("par2 is not installed (apt-get install par2)")


def write_data(root: Path, seed: int = 1, size: int = 1_500_000) -> None:
    """Incompressible data (the pack is about `size` bytes) and a text file."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "random.bin").write_bytes(random.Random(seed).randbytes(size))
    (root / "notes.txt").write_text("".join(f"line {i}\n" for i in range(2000)))


def saved_repo(tmp: Path, name: str = "repo", seed: int = 1) -> Path:
    """A repository holding one save of write_data's files, in one pack."""
    repo = tmp / name
    init_repository(str(repo))
    write_data(tmp / f"data-{name}", seed)
    with LocalRepository(str(repo)) as r:
        save(r, SaveOptions(name="m", paths=[str(tmp / f"data-{name}")]))
    return repo


def packs(repo: Path) -> list[str]:
    return sorted(glob.glob(str(repo / "objects" / "pack" / "*.pack")))


def the_pack(repo: Path) -> str:
    found = packs(repo)
    assert len(found) == 1, found
    return found[0]


def sha256(path: str | Path) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def flip(path: str) -> None:
    """Three bytes in the middle inverted."""
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.seek(size // 2)
        b = f.read(3)
        f.seek(size // 2)
        f.write(bytes(x ^ 0xFF for x in b))


def zero_block(path: str) -> None:
    """A 4 KiB block zeroed (a bad sector)."""
    size = os.path.getsize(path)
    assert size > 3 * 4096
    with open(path, "r+b") as f:
        f.seek((size // 3) & ~4095)
        f.write(bytes(4096))


def truncate(path: str) -> None:
    """The last 10,000 bytes gone, the pack's trailer with them."""
    os.truncate(path, os.path.getsize(path) - 10_000)


DAMAGE: dict[str, Callable[[str], None]] = {
    "flip": flip, "zero-4k": zero_block, "truncate": truncate}
