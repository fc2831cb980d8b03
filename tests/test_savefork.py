"""A local save stores its big files in a forked child with its own write
session (ketch.savefork): the save's result must not depend on it, the
child's packs must be durable before the commit names them, and a child that
dies, a fork that fails or an interrupted save leave a usable repository."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ketch import savefork
from ketch.localrepo import LocalRepository, init_repository
from ketch.save import SaveOptions, SaveResult, save
from tests.conftest import SRC_DIR, RunKetch
from tests.gitutil import git

MB = 1 << 20


@pytest.fixture(scope="module")
def src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("fork") / "src"
    (root / "d").mkdir(parents=True)
    (root / "d" / "big-random").write_bytes(os.urandom(6 * MB + 7))
    (root / "big-text").write_bytes(b"".join(b"row %d\n" % i for i in range(600_000)))
    for i in range(30):
        (root / "d" / f"small{i}").write_bytes(os.urandom(i * 100))
    _atimes_ahead(root)
    return root


def _atimes_ahead(root: Path) -> None:
    """Atimes ahead of ctimes: reading moves none (relatime), so two saves see
    the same metadata."""
    later = time.time_ns() + 86400 * 10**9
    for dirpath, _, names in os.walk(root):
        for p in [dirpath, *(os.path.join(dirpath, n) for n in names)]:
            os.utime(p, ns=(later, 1_600_000_000 * 10**9))


def _save(repo_dir: Path, src: Path) -> SaveResult:
    init_repository(str(repo_dir))
    with LocalRepository(str(repo_dir)) as repo:
        return save(repo.writable(), SaveOptions(name="t", paths=[str(src)], date=1_700_000_000))


def _packs(repo_dir: Path) -> dict[str, set[str]]:
    """Each pack's object ids."""
    out = {}
    for idx in (repo_dir / "objects" / "pack").glob("*.idx"):
        listing = git(repo_dir, "show-index", input=idx.read_bytes()).decode()
        out[idx.name] = {line.split()[1] for line in listing.splitlines()}
    return out


def _against_threads(repo_dir: Path, src: Path, monkeypatch: pytest.MonkeyPatch) -> SaveResult:
    """Save `src` into `repo_dir` as configured, then with threads alone into a
    repository beside it: no warnings, and the source's own tree the same (the
    directories above it change as tests run)."""
    got = _save(repo_dir, src)
    monkeypatch.setenv("KETCH_SAVE_FORK", "0")
    threads = _save(repo_dir.with_name(repo_dir.name + "-threads"), src)
    assert got.warnings == threads.warnings == []
    spec = f"t:{str(src).lstrip('/')}"
    assert (git(repo_dir, "rev-parse", spec)
            == git(repo_dir.with_name(repo_dir.name + "-threads"), "rev-parse", spec))
    return got


def test_child_writes_the_big_files_and_the_save_counts_them(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(savefork, "_FORK_AT", 0)  # a child from the first big file
    forked = _against_threads(tmp_path / "fork", src, monkeypatch)
    git(tmp_path / "fork", "fsck", "--strict", "--no-dangling")
    packs = _packs(tmp_path / "fork")
    assert len(packs) == 2 and len(_packs(tmp_path / "fork-threads")) == 1
    commit = git(tmp_path / "fork", "rev-parse", "t").decode().strip()
    big = git(tmp_path / "fork", "rev-parse",
              f"t:{str(src).lstrip('/')}/d/big-random.bup").decode().strip()
    [with_commit] = [ids for ids in packs.values() if commit in ids]
    [with_big] = [ids for ids in packs.values() if big in ids]
    assert with_commit is not with_big
    # What both processes wrote is what the save says it wrote.
    assert forked.objects_new == sum(len(ids) for ids in packs.values())
    on_disk = sum(p.stat().st_size for p in (tmp_path / "fork" / "objects" / "pack")
                  .glob("*.pack"))
    assert forked.bytes_new <= on_disk < forked.bytes_new + 2 * 1024


def test_where_fork_fails_threads_store_the_big_files(
        src: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse() -> int:
        raise OSError(errno.EAGAIN, "Resource temporarily unavailable")

    monkeypatch.setattr(savefork, "_FORK_AT", 0)
    monkeypatch.setattr(savefork.os, "fork", refuse)
    got = _save(tmp_path / "r", src)
    assert got.warnings == []
    assert len(_packs(tmp_path / "r")) == 1
    git(tmp_path / "r", "fsck", "--strict", "--no-dangling")


def test_a_save_with_few_big_bytes_forks_nothing(src: Path, tmp_path: Path) -> None:
    """11 MB of big files: threads store them, into the save's one pack."""
    got = _save(tmp_path / "r", src)
    assert got.warnings == []
    assert len(_packs(tmp_path / "r")) == 1
    git(tmp_path / "r", "fsck", "--strict", "--no-dangling")


def test_threads_then_a_child(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The first big files on threads, the rest in a child: one save, the
    parent's pack and the child's, the same tree as threads alone. The child's
    8 MB of data is past the size at which its chunk trees join its data
    pack: they are a pack of their own."""
    src = tmp_path / "src"
    src.mkdir()
    for i in range(6):
        (src / f"big{i}").write_bytes(os.urandom(2 * MB + i))
    _atimes_ahead(src)
    monkeypatch.setattr(savefork, "_FORK_AT", 5 * MB)
    both = _against_threads(tmp_path / "both", src, monkeypatch)
    packs = _packs(tmp_path / "both")
    assert len(packs) == 3
    assert both.objects_new == sum(len(ids) for ids in packs.values())
    git(tmp_path / "both", "fsck", "--strict", "--no-dangling")


def _children(pid: int) -> list[int]:
    out = []
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                stat = Path(f"/proc/{d}/stat").read_text()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == pid:
                out.append(int(d))
    return out


def _gone(pid: int, within: float = 30) -> bool:
    deadline = time.monotonic() + within
    while True:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except OSError:
            return True
        if state == "Z":
            return True
        if time.monotonic() >= deadline:
            return False
        time.sleep(0.05)


def _start_save(repo: Path, src: Path) -> tuple[subprocess.Popen[bytes], int]:
    """A save of `src`, and its big-file child once it has one."""
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR))
    proc = subprocess.Popen([sys.executable, "-m", "ketch", "save", "-d", str(repo), "-n", "t",
                             str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and proc.poll() is None:
        kids = _children(proc.pid)
        if kids:
            return proc, kids[0]
        time.sleep(0.002)
    proc.kill()
    raise AssertionError("the save forked no child")


@pytest.fixture(scope="module")
def slow_src(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A big file first in walk order, long enough to store that the child is
    seen while it works."""
    root = tmp_path_factory.mktemp("slow") / "src"
    root.mkdir()
    with open(root / "a-big", "wb") as f:
        for _ in range(48):
            f.write(os.urandom(4 * MB))
    (root / "b-small").write_bytes(b"x\n")
    return root


def test_a_dead_child_fails_the_save_in_one_line_and_the_next_save_works(
        slow_src: Path, tmp_path: Path, run_ketch: RunKetch) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    proc, child = _start_save(repo, slow_src)
    os.kill(child, signal.SIGKILL)
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err
    assert err.decode().strip().splitlines() == [
        "ketch: error: the save's big-file process stopped"], err
    assert not (repo / "refs" / "heads" / "t").exists()
    git(repo, "fsck", "--strict")
    run_ketch("save", "-d", repo, "-n", "t", slow_src, check=True)
    out_dir = tmp_path / "out"
    run_ketch("restore", "-d", repo, "-C", out_dir, f"t/latest{slow_src}/", check=True)
    assert (out_dir / "a-big").read_bytes() == (slow_src / "a-big").read_bytes()
    git(repo, "fsck", "--strict", "--no-dangling")


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGKILL],
                         ids=["SIGINT", "SIGTERM", "SIGKILL"])
def test_a_stopped_save_leaves_no_child_behind(
        slow_src: Path, tmp_path: Path, run_ketch: RunKetch, sig: int) -> None:
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    proc, child = _start_save(repo, slow_src)
    time.sleep(0.2)
    proc.send_signal(sig)
    _, err = proc.communicate(timeout=120)
    if sig == signal.SIGKILL:
        assert proc.returncode == -signal.SIGKILL
    else:
        assert proc.returncode == 2 and b"Traceback" not in err, err
        # The save waited for its child: nothing is left writing.
        assert _gone(child, within=0)
    assert _gone(child)  # a save killed outright: the child sees it and ends
    assert not (repo / "refs" / "heads" / "t").exists()
    assert [n for n in os.listdir(repo / "objects") if n.startswith("pack-tmp")] == []
    git(repo, "fsck", "--strict")
    run_ketch("save", "-d", repo, "-n", "t", slow_src, check=True)
    git(repo, "fsck", "--strict", "--no-dangling")
