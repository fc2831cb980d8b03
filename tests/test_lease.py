"""Leases: held while their holder lives, dead the moment it dies (even by SIGKILL)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ketch.lease import Lease, held_leases, lease_dir, wait_for
from ketch.localrepo import LocalRepository, init_repository

HOLD = """
import sys, time
from ketch.lease import Lease
with Lease(sys.argv[1]):
    print("held", flush=True)
    time.sleep(float(sys.argv[2]))
"""


def _holder(repo: Path, seconds: float) -> subprocess.Popen[str]:
    p = subprocess.Popen([sys.executable, "-c", HOLD, str(repo), str(seconds)],
                         stdout=subprocess.PIPE, text=True)
    assert p.stdout is not None and p.stdout.readline() == "held\n"
    return p


def test_a_lease_is_seen_while_held_and_gone_after(tmp_path: Path) -> None:
    with Lease(str(tmp_path)) as lease:
        assert held_leases(str(tmp_path)) == [lease.name]
    assert held_leases(str(tmp_path)) == []
    assert os.listdir(lease_dir(str(tmp_path))) == []


def test_a_killed_holders_lease_is_dead_and_removed(tmp_path: Path) -> None:
    p = _holder(tmp_path, 60)
    assert len(held_leases(str(tmp_path))) == 1
    p.send_signal(signal.SIGKILL)
    p.wait()
    assert len(os.listdir(lease_dir(str(tmp_path)))) == 1  # the file outlives its holder
    assert held_leases(str(tmp_path)) == []
    assert os.listdir(lease_dir(str(tmp_path))) == []


def test_wait_for_returns_when_the_holder_finishes(tmp_path: Path) -> None:
    p = _holder(tmp_path, 1.0)
    names = held_leases(str(tmp_path))
    waits: list[int] = []
    assert wait_for(str(tmp_path), names, timeout=60, on_wait=waits.append) == []
    assert waits and waits[0] == 1
    p.wait()


def test_wait_for_gives_up_at_the_timeout(tmp_path: Path) -> None:
    p = _holder(tmp_path, 60)
    try:
        names = held_leases(str(tmp_path))
        t0 = time.monotonic()
        assert wait_for(str(tmp_path), names, timeout=0.5) == names
        assert time.monotonic() - t0 < 30
    finally:
        p.kill()
        p.wait()


def test_leases_taken_later_are_not_waited_for(tmp_path: Path) -> None:
    names = held_leases(str(tmp_path))
    with Lease(str(tmp_path)):
        assert wait_for(str(tmp_path), names, timeout=0.1) == []


def test_a_repository_lease_is_one_for_nested_writers(tmp_path: Path) -> None:
    init_repository(str(tmp_path / "r"))
    repo = LocalRepository(str(tmp_path / "r"))
    with repo.writing():
        with repo.writing():
            assert len(held_leases(repo.path)) == 1
        assert len(held_leases(repo.path)) == 1
    assert held_leases(repo.path) == []
