"""The user's path through a damaged pack, on the command line: `ketch fsck -g`
makes parity, the damage (flipped bytes, a zeroed 4 KiB block, a truncated
pack) makes `ketch fsck` exit 2, `ketch fsck --repair` puts the pack back to
the byte, and git agrees the repository is whole. The pack each check's record
(refs/ketch/fsck) is kept in is protected by -g like the rest."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ketch import reportlog
from ketch.integrity import parity
from ketch.localrepo import LocalRepository
from tests.conftest import RunKetch, _subprocess_env
from tests.integrity.parityutil import DAMAGE, need_par2, packs, saved_repo, sha256
from tests.lifecycle.gcsetup import fsck as git_fsck


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository after `ketch fsck -g` (run once; tests damage copies)."""
    need_par2()
    repo = saved_repo(tmp_path_factory.mktemp("fsck-g"))
    assert not any(parity.has_parity(p) for p in packs(repo))
    p = subprocess.run([sys.executable, "-m", "ketch", "fsck", "-d", str(repo), "-g"],
                       capture_output=True, env=_subprocess_env(None), timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    # The save's pack, and the one holding the check's record: both protected.
    assert len(packs(repo)) == 2 and all(parity.verify(pack) for pack in packs(repo))
    return repo


def _data_pack(repo: Path) -> str:
    """The save's pack (the record's is a few hundred bytes)."""
    return max(packs(repo), key=os.path.getsize)


@pytest.mark.parametrize("how", list(DAMAGE))
def test_fsck_finds_and_repair_restores(protected: Path, tmp_path: Path, run_ketch: RunKetch,
                                        how: str) -> None:
    repo = tmp_path / "repo"
    shutil.copytree(protected, repo)
    pack = _data_pack(repo)
    original = sha256(pack)
    DAMAGE[how](pack)

    found = run_ketch("fsck", "-d", repo)
    assert found.returncode == 2, found.stdout + found.stderr
    assert b"Traceback" not in found.stderr

    fixed = run_ketch("fsck", "-d", repo, "--repair")
    assert fixed.returncode in (0, 1), fixed.stdout + fixed.stderr
    assert b"repaired from its parity" in fixed.stdout
    assert sha256(pack) == original
    assert parity.verify(pack) is True
    with LocalRepository(str(repo)) as r:
        records = [s.data for s in reportlog.history(r, "fsck")]
    assert [(d["exit_code"], d["repairs"]) for d in records] == [
        (fixed.returncode, 1), (2, 0), (0, 0)]  # newest first: --repair, the finding, -g
    git_fsck(repo)
