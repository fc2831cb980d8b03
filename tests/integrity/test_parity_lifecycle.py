"""Parity as packs come and go: `save --par2` (locally and through a server),
`par2 = true` in a machine's config, `gc --par2`, and gc taking a deleted pack's
parity with it, also when it was killed half-way."""

from __future__ import annotations

import glob
import os
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.errors import KetchError
from ketch.integrity import parity
from ketch.integrity.protect import protect_new_packs
from ketch.jobs.config import parse_config
from ketch.jobs.configcheck import check_config
from ketch.jobs.model import BackupSet, Config
from ketch.jobs.runner import run_jobs
from ketch.lifecycle.gc import GcRun, collect
from ketch.localrepo import LocalRepository, init_repository
from ketch.remote.location import open_location
from ketch.save import SaveOptions, save
from tests.conftest import SRC_DIR, RunKetch
from tests.integrity.parityutil import need_par2, packs, write_data
from tests.lifecycle.gcsetup import DAY, T0, corpus, fsck, prune


@pytest.fixture(autouse=True)
def _par2() -> None:
    need_par2()


def _small_packs(repo: Path, limit: int = 150_000) -> None:
    """Packs of at most `limit` bytes, so that a save writes several."""
    subprocess.run(["git", "config", "-f", str(repo / "config"), "pack.packSizeLimit",
                    str(limit)], check=True)


def _all_protected(repo: Path) -> None:
    """Every pack has intact parity, and every parity file has its pack."""
    found = packs(repo)
    assert found
    for pack in found:
        assert parity.verify(pack) is True, pack
    for p in glob.glob(str(repo / "objects" / "pack" / "*.par2")):
        stem = os.path.basename(p).split(".", 1)[0]
        assert os.path.exists(repo / "objects" / "pack" / f"{stem}.pack"), p


def _no_orphans(repo: Path) -> list[str]:
    """Parity files whose pack is gone (there should be none)."""
    pack_dir = repo / "objects" / "pack"
    return [p for p in glob.glob(str(pack_dir / "*.par2"))
            if not (pack_dir / (os.path.basename(p).split(".", 1)[0] + ".pack")).exists()]


def test_save_par2(tmp_path: Path) -> None:
    """What `save --par2` does (in-process: the flag's wiring is the next test's)."""
    repo = tmp_path / "repo"
    init_repository(str(repo))
    _small_packs(repo)
    write_data(tmp_path / "data", size=400_000)
    warnings: list[str] = []
    with LocalRepository(str(repo)) as r:
        protect_new_packs(r, warnings.append)
        save(r, SaveOptions(name="m", paths=[str(tmp_path / "data")]))
    assert warnings == []
    assert len(packs(repo)) >= 3
    _all_protected(repo)
    fsck(repo)


def test_save_par2_without_par2_warns_once(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    _small_packs(repo)
    write_data(tmp_path / "data", size=400_000)
    p = run_ketch("save", "--par2", "-q", "-d", repo, "-n", "m", tmp_path / "data",
                  env={"PATH": str(tmp_path / "nothing")})
    assert p.returncode == 1
    assert p.stderr.decode() == ("ketch: warning: par2 is not installed (apt-get install par2): "
                                 "the new packs have no parity\n")
    assert len(packs(repo)) >= 3
    assert not any(parity.parity_files(pack) for pack in packs(repo))


def test_save_par2_through_a_server(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The server (a real `ketch server` process) makes the parity, asked with
    its `par2` command; one without par2 refuses before anything is sent."""
    repo = tmp_path / "repo"
    init_repository(str(repo))
    _small_packs(repo)
    write_data(tmp_path / "data", size=400_000)
    warnings: list[str] = []
    with open_location(f":{repo}", kind="remote") as remote:
        protect_new_packs(remote.writable(), warnings.append)
        save(remote.writable(), SaveOptions(name="m", paths=[str(tmp_path / "data")]))
    assert warnings == []
    assert len(packs(repo)) >= 3
    _all_protected(repo)
    monkeypatch.setenv("PATH", str(tmp_path / "nothing"))  # the server's
    with open_location(f":{repo}", kind="remote") as remote, \
            pytest.raises(KetchError) as e:
        protect_new_packs(remote.writable(), warnings.append)
    assert str(e.value) == "server: par2 is not installed (apt-get install par2)"


def test_run_with_par2_in_the_config(tmp_path: Path) -> None:
    cfg = parse_config(f'repository = "{tmp_path / "repo"}"\npar2 = true\n', "ketch.toml")
    assert cfg.par2 is True
    repo = tmp_path / "repo"
    init_repository(str(repo))
    _small_packs(repo)
    write_data(tmp_path / "etc", size=400_000)
    cfg = Config(repository=str(repo), sets=[BackupSet("etc", [str(tmp_path / "etc")])],
                 source=str(tmp_path / "ketch.toml"), lock_file=str(tmp_path / "run.lock"),
                 par2=True)
    report = run_jobs(cfg)
    assert report.exit_code == 0, report.text()
    assert len(packs(repo)) >= 3
    _all_protected(repo)
    (row,) = [c for c in check_config(cfg) if c.what == "par2"]
    assert row.ok, row


# -- gc ------------------------------------------------------------------------


@pytest.fixture(scope="module")
def aged(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Four days saved, every pack with parity, then pruned to days 1 and 3: gc
    rewrites some packs and deletes others."""
    need_par2()
    tmp = tmp_path_factory.mktemp("aged")
    repo = tmp / "repo"
    init_repository(str(repo))
    with LocalRepository(str(repo)) as r:
        for day in range(4):
            corpus(tmp / "data", day)
            save(r, SaveOptions(name="m", paths=[str(tmp / "data")], strip=True,
                                date=T0 + day * DAY))
    prune(repo, {1, 3})
    for pack in packs(repo):
        parity.generate(pack)
    return repo


@pytest.fixture
def repo(aged: Path, tmp_path: Path) -> Path:
    subprocess.run(["cp", "-a", str(aged), str(tmp_path / "repo")], check=True)
    return tmp_path / "repo"


def test_gc_par2(run_ketch: RunKetch, repo: Path) -> None:
    before = set(packs(repo))
    p = run_ketch("gc", "--par2", "-d", repo, "--json", check=True)
    after = set(packs(repo))
    assert before - after and after - before, p.stdout  # some deleted, some written
    _all_protected(repo)
    assert _no_orphans(repo) == []
    assert os.listdir(repo / "ketch-gc" / "doomed") == []
    fsck(repo)


def test_gc_deletes_the_parity_of_deleted_packs(repo: Path) -> None:
    before = set(packs(repo))
    with LocalRepository(str(repo)) as r:
        assert collect(r).exit_code == 0
    gone = before - set(packs(repo))
    assert gone
    assert not [p for pack in gone for p in parity.parity_files(pack)]
    assert _no_orphans(repo) == []
    for pack in set(packs(repo)) & before:  # kept packs keep theirs
        assert parity.verify(pack) is True
    assert os.listdir(repo / "ketch-gc" / "doomed") == []


def test_gc_killed_between_a_pack_and_its_parity(repo: Path) -> None:
    """SIGKILL after a pack was hidden but before its parity followed: the
    next gc deletes the parity left behind."""
    env = {**os.environ, "PYTHONPATH": str(SRC_DIR), "KETCH_TEST_CRASH": "hide-parity"}
    p = subprocess.run([sys.executable, "-m", "ketch", "gc", "-d", str(repo)], env=env,
                       capture_output=True, timeout=300)
    assert p.returncode == -9, p.stderr
    assert _no_orphans(repo)  # the kill left one
    fsck(repo)
    with LocalRepository(str(repo)) as r:
        collect(r)
    assert _no_orphans(repo) == []
    fsck(repo)


def test_gc_par2_through_a_server(repo: Path) -> None:
    before = set(packs(repo))
    with open_location(f":{repo}", kind="remote") as remote:
        report = remote.writable().collect_garbage(GcRun(par2=True))
    assert report["warnings"] == []
    assert set(packs(repo)) - before
    _all_protected(repo)
    assert _no_orphans(repo) == []
