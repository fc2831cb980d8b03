"""A restore's worker processes (ketch.restoreworkers), as a user meets them:
Ctrl-C and a worker killed leave no half-written file, no traceback and no
process behind."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import RunKetch, _subprocess_env

MB = 1 << 20
NAME = "w"


@pytest.fixture(scope="module")
def saved(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Path, Path]]:
    """A save big enough that a restore takes a few seconds."""
    base = tmp_path_factory.mktemp("workers")
    data = base / "data"
    data.mkdir()
    rng = random.Random(5)
    for i in range(6):
        (data / f"big{i}.bin").write_bytes(rng.randbytes(40 * MB))
    small = data / "small"
    small.mkdir()
    for i in range(400):
        (small / f"f{i}").write_bytes(rng.randbytes(rng.randrange(100, 20000)))
    repo = base / "repo"
    env = _subprocess_env(None)
    subprocess.run([sys.executable, "-m", "ketch", "-d", str(repo), "init"], check=True,
                   env=env, capture_output=True)
    subprocess.run([sys.executable, "-m", "ketch", "save", "-q", "-d", str(repo), "-n", NAME,
                    str(data)], check=True, env=env, capture_output=True)
    yield repo, data


def _children(pid: int) -> list[int]:
    kids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(entry))
    return kids


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def _start(repo: Path, data: Path, out: Path) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "ketch", "restore", "-d", str(repo), "-C", str(out),
         f"{NAME}/latest{data}/"],
        env=_subprocess_env({"KETCH_RESTORE_WORKERS": "2"}), stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, start_new_session=True)


def _wait_for_workers(proc: subprocess.Popen[bytes], out: Path) -> list[int]:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        kids = _children(proc.pid)
        written = out.is_dir() and any(p.stat().st_size for p in out.glob("big*.bin"))
        if len(kids) == 2 and written:
            return kids
        assert proc.poll() is None, proc.communicate()
        time.sleep(0.01)
    raise AssertionError("the restore's workers never started writing")


def _check_nothing_half_written(data: Path, out: Path) -> None:
    for p in out.rglob("*"):
        if p.is_file():
            assert p.read_bytes() == (data / p.relative_to(out)).read_bytes(), p


def test_ctrl_c_stops_every_process_and_leaves_no_half_written_file(
        saved: tuple[Path, Path], tmp_path: Path) -> None:
    repo, data = saved
    out = tmp_path / "out"
    proc = _start(repo, data, out)
    kids = _wait_for_workers(proc, out)
    os.killpg(proc.pid, signal.SIGINT)  # what a terminal's Ctrl-C does
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert err.decode().endswith("ketch: error: interrupted\n"), err
    assert b"Traceback" not in err
    assert not any(_alive(k) for k in kids)
    _check_nothing_half_written(data, out)


def test_a_killed_worker_is_one_clear_error(saved: tuple[Path, Path], tmp_path: Path) -> None:
    repo, data = saved
    out = tmp_path / "out"
    proc = _start(repo, data, out)
    kids = _wait_for_workers(proc, out)
    os.kill(kids[0], signal.SIGKILL)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 2, err
    assert b"Traceback" not in err and err.count(b"\n") == 1, err
    assert b"restore worker" in err, err
    assert not any(_alive(k) for k in kids)
    _check_nothing_half_written(data, out)


def test_workers_leave_when_the_restore_is_killed(saved: tuple[Path, Path],
                                                  tmp_path: Path) -> None:
    repo, data = saved
    out = tmp_path / "out"
    proc = _start(repo, data, out)
    kids = _wait_for_workers(proc, out)
    proc.kill()
    proc.communicate(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(k) for k in kids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(_alive(k) for k in kids)


def test_the_restore_is_whole_with_workers(saved: tuple[Path, Path], tmp_path: Path,
                                           run_ketch: RunKetch) -> None:
    repo, data = saved
    out = tmp_path / "out"
    run_ketch("restore", "-q", "-d", repo, "-C", out, f"{NAME}/latest{data}/", check=True,
              env={"KETCH_RESTORE_WORKERS": "2"})
    _check_nothing_half_written(data, out)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == sorted(
        p.relative_to(data) for p in data.rglob("*"))


def test_no_fork_means_no_workers(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Where fork fails (a process limit), the restore goes on with a thread."""
    from ketch import restoreworkers
    from ketch.localrepo import LocalRepository, init_repository

    def refuse() -> int:
        raise BlockingIOError(11, "Resource temporarily unavailable")

    init_repository(str(tmp_path / "repo"))
    monkeypatch.setenv("KETCH_RESTORE_WORKERS", "2")
    with LocalRepository(str(tmp_path / "repo")) as repo:
        pool = restoreworkers.pool_for(repo)
        assert pool is not None
        pool.close()
        monkeypatch.setattr(restoreworkers.os, "fork", refuse)
        assert restoreworkers.pool_for(repo) is None
