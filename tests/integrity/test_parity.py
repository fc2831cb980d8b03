"""ketch.integrity.parity with the real par2: damage found, and repaired to the
byte; a par2 that is missing, failing or killed is one clear line, and a killed
generate leaves no parity set that could pass for a whole one."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketch.integrity import parity
from tests.conftest import SRC_DIR
from tests.integrity.parityutil import DAMAGE, flip, need_par2, saved_repo, sha256, the_pack


@pytest.fixture(scope="module")
def protected(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A repository whose one pack has parity; tests damage copies of it."""
    need_par2()
    repo = saved_repo(tmp_path_factory.mktemp("parity"))
    parity.generate(the_pack(repo))
    return repo


@pytest.fixture
def repo(protected: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "repo"
    shutil.copytree(protected, copy)
    return copy


def test_layout_is_bups(repo: Path) -> None:
    pack = the_pack(repo)
    base = pack[: -len(".pack")]
    assert parity.parity_files(pack) == [base + ".par2", base + ".vol000+200.par2"]
    assert parity.has_parity(pack)
    assert parity.verify(pack) is True
    # Nothing else was left in the pack directory (no temp directory).
    names = sorted(os.listdir(os.path.dirname(pack)))
    stem = os.path.basename(base)
    assert [n for n in names if n.startswith(stem)] == [
        stem + ext for ext in (".idx", ".pack", ".par2", ".vol000+200.par2")]
    size = os.path.getsize(pack) + os.path.getsize(base + ".idx")
    extra = sum(os.path.getsize(p) for p in parity.parity_files(pack))
    assert 0.05 * size < extra < 0.5 * size  # ~10% plus par2's packets


@pytest.mark.parametrize(("how", "target"),
                         [(how, ".pack") for how in DAMAGE] + [("flip", ".idx")])
def test_damage_is_repaired_to_the_byte(repo: Path, how: str, target: str) -> None:
    pack = the_pack(repo)
    victim = pack[: -len(".pack")] + target
    before = {p: sha256(p) for p in (pack, victim)}
    DAMAGE[how](victim)
    assert sha256(victim) != before[victim]
    assert parity.verify(pack) is False
    assert parity.repair(pack) is True
    assert {p: sha256(p) for p in (pack, victim)} == before
    assert parity.verify(pack) is True
    # par2 keeps the damaged file as NAME.1: repair removed it.
    assert not [n for n in os.listdir(os.path.dirname(pack)) if n.endswith(".1")]


def test_too_much_damage_is_false_not_an_error(repo: Path) -> None:
    pack = the_pack(repo)
    os.truncate(pack, os.path.getsize(pack) // 2)
    assert parity.verify(pack) is False
    assert parity.repair(pack) is False


def test_no_or_incomplete_parity(repo: Path, tmp_path: Path) -> None:
    pack = the_pack(repo)
    vol = parity.parity_files(pack)[1]
    os.unlink(vol)
    assert not parity.has_parity(pack)
    with pytest.raises(parity.ParityError, match=r"^pack-[0-9a-f]{40}\.pack: its parity files "
                       r"are incomplete \(make them again with ketch fsck -g\)$"):
        parity.verify(pack)
    os.unlink(parity.parity_files(pack)[0])
    assert parity.parity_files(pack) == []
    with pytest.raises(parity.ParityError, match=r"\.pack: no parity files$"):
        parity.repair(pack)
    with pytest.raises(parity.ParityError, match="not a pack file"):
        parity.generate(pack[: -len(".pack")] + ".idx")
    with pytest.raises(parity.ParityError, match="no such file"):
        parity.generate(str(tmp_path / "pack-0000.pack"))


def test_par2_missing(repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pack = the_pack(repo)
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert parity.available() is False
    for call in (parity.generate, parity.verify, parity.repair):
        with pytest.raises(parity.ParityError) as e:
            call(pack)
        assert str(e.value) == "par2 is not installed (apt-get install par2)"


def test_par2_failing_is_its_last_line(repo: Path) -> None:
    pack = the_pack(repo)
    for p in parity.parity_files(pack):
        with open(p, "wb") as f:
            f.write(os.urandom(5000))
    with pytest.raises(parity.ParityError) as e:
        parity.verify(pack)
    assert str(e.value) == (f"{os.path.basename(pack)}: par2 verify failed: "
                            "Main packet not found.")


def _tmp_dirs(pack_dir: str) -> list[str]:
    return [n for n in os.listdir(pack_dir) if "-ketch-par2-" in n]


def test_killed_generate_leaves_no_parity(repo: Path) -> None:
    """kill -9 of ketch and par2 together (a power cut) while par2 works: nothing
    appears beside the pack, and the next generate clears the old temp directory."""
    pack = the_pack(repo)
    pack_dir = os.path.dirname(pack)
    for p in parity.parity_files(pack):
        os.unlink(p)
    # A bigger pack keeps par2 busy long enough to be caught at work.
    with open(pack, "ab") as f:
        f.write(os.urandom(3_000_000))
    code = f"from ketch.integrity import parity; parity.generate({pack!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            env={**os.environ, "PYTHONPATH": str(SRC_DIR)})
    deadline = time.monotonic() + 20
    while not any(n.endswith(".par2") for d in _tmp_dirs(pack_dir)
                  for n in os.listdir(os.path.join(pack_dir, d))):
        assert proc.poll() is None and time.monotonic() < deadline, "par2 never started"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert parity.parity_files(pack) == []
    assert not parity.has_parity(pack)
    with pytest.raises(parity.ParityError, match="no parity files"):
        parity.verify(pack)
    (stale,) = _tmp_dirs(pack_dir)
    old = time.time() - 7200
    os.utime(os.path.join(pack_dir, stale), (old, old))
    parity.generate(pack)
    assert parity.verify(pack) is True
    assert _tmp_dirs(pack_dir) == []


def test_interrupted_generate_cleans_up(repo: Path) -> None:
    """Ctrl-C (SIGINT to the process group, as a terminal sends it): the temp
    directory goes, and no parity appears."""
    pack = the_pack(repo)
    pack_dir = os.path.dirname(pack)
    for p in parity.parity_files(pack):
        os.unlink(p)
    with open(pack, "ab") as f:
        f.write(os.urandom(3_000_000))
    code = f"from ketch.integrity import parity; parity.generate({pack!r})"
    proc = subprocess.Popen([sys.executable, "-c", code], start_new_session=True,
                            stderr=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(SRC_DIR)})
    deadline = time.monotonic() + 20
    while not any(n.endswith(".par2") for d in _tmp_dirs(pack_dir)
                  for n in os.listdir(os.path.join(pack_dir, d))):
        assert proc.poll() is None and time.monotonic() < deadline, "par2 never started"
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGINT)
    _, err = proc.communicate(timeout=30)
    assert proc.returncode != 0, err
    assert parity.parity_files(pack) == []
    assert _tmp_dirs(pack_dir) == []


def test_flip_in_parity_itself_still_verifies(repo: Path) -> None:
    """par2 repeats its critical packets in every file: a damaged recovery file
    does not make an intact pack look damaged."""
    pack = the_pack(repo)
    flip(parity.parity_files(pack)[1])
    assert parity.verify(pack) is True


def test_cannot_write_is_one_line(repo: Path) -> None:
    """A parity file that cannot be put in place (here a directory is in the way;
    a full disk is the same error) is a ParityError, and no set that could
    pass for whole is left."""
    pack = the_pack(repo)
    for p in parity.parity_files(pack):
        os.unlink(p)
    os.mkdir(pack[: -len(".pack")] + ".par2")
    with pytest.raises(parity.ParityError, match=r"^pack-[0-9a-f]{40}\.pack: cannot write its "
                       r"parity: .*: Is a directory$"):
        parity.generate(pack)
    assert not parity.has_parity(pack)
    assert _tmp_dirs(os.path.dirname(pack)) == []
