"""SIGKILL gc at every step that changes something: afterwards git fsck is
clean, every kept save restores, and the next gc finishes the job, leaving the
repository as an uninterrupted gc would have."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.git.refs import Refs
from tests.conftest import SRC_DIR, RunKetch
from tests.lifecycle.gcsetup import check_restores, fsck, prune, repo_bytes, saved_repo

DAYS = list(range(8))
KEEP = [1, 4, 6, 7]


def _gc(repo: Path, crash: str | None = None) -> subprocess.CompletedProcess[bytes]:
    env = dict(os.environ, PYTHONPATH=str(SRC_DIR))
    env.pop("KETCH_TEST_CRASH", None)
    if crash:
        env["KETCH_TEST_CRASH"] = crash
    return subprocess.run([sys.executable, "-m", "ketch", "gc", "-d", repo, "--json"],
                          capture_output=True, env=env, timeout=600)


@pytest.fixture(scope="module")
def pruned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """A pruned repository (not to be changed: tests copy it) and its size after
    an uninterrupted gc."""
    from tests.conftest import _subprocess_env

    tmp = tmp_path_factory.mktemp("crash")

    def run(*args: object, check: bool = False) -> subprocess.CompletedProcess[bytes]:
        p = subprocess.run([sys.executable, "-m", "ketch", *map(str, args)],
                           capture_output=True, env=_subprocess_env(None))
        assert not check or p.returncode == 0, p.stderr
        return p

    repo = saved_repo(run, tmp, DAYS)
    # Two reflogs (HEAD follows m) and a tag: more for the expiry to do.
    (repo / "HEAD").write_text("ref: refs/heads/m\n")
    prune(repo, set(KEEP))
    reference = tmp / "reference"
    shutil.copytree(repo, reference)
    p = _gc(reference)
    assert p.returncode == 0, p.stderr
    return repo, repo_bytes(reference)


def _copy(pruned: tuple[Path, int], tmp_path: Path) -> Path:
    repo = tmp_path / "repo"
    shutil.copytree(pruned[0], repo)
    return repo


def _after_kill(run_ketch: RunKetch, repo: Path, tmp_path: Path) -> None:
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, KEEP)


def _finish(run_ketch: RunKetch, repo: Path, tmp_path: Path, want_bytes: int) -> None:
    p = _gc(repo)
    assert p.returncode == 0, p.stderr.decode()
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, KEEP)
    assert not list((repo / "ketch-gc" / "doomed").iterdir())
    assert not list((repo / "ketch-gc" / "tmp").iterdir())
    # The same as an uninterrupted gc, give or take pack headers and idx fan-outs.
    assert abs(repo_bytes(repo) - want_bytes) <= 0.02 * want_bytes, (repo_bytes(repo),
                                                                      want_bytes)


CRASH_POINTS = [
    "mark:1", "mark:30", "marked",
    "rewrite:1", "rewrite:20", "rewrite:60", "rewrite-close", "new-packs",
    "reflog-locked:1", "reflog:1", "reflog-locked:2", "reflog:2",
    "hide-idx:1", "hide-pack:1", "hide-idx:2", "hide-pack:2", "hidden", "maintained",
    "rescued", "delete:1", "delete:2",
]


@pytest.mark.parametrize("point", CRASH_POINTS)
def test_kill_then_next_gc_finishes(point: str, pruned: tuple[Path, int], run_ketch: RunKetch,
                                    tmp_path: Path) -> None:
    repo = _copy(pruned, tmp_path)
    p = _gc(repo, point)
    assert p.returncode == -9, (point, p.returncode, p.stderr.decode())
    _after_kill(run_ketch, repo, tmp_path)
    _finish(run_ketch, repo, tmp_path, pruned[1])


@pytest.mark.parametrize("first,second", [
    ("hidden", "mark:5"), ("hidden", "rescued"), ("hide-pack:2", "hide-idx:1"),
    ("delete:1", "delete:1"), ("reflog-locked:1", "reflog-locked:1"),
])
def test_kill_the_gc_that_recovers(first: str, second: str, pruned: tuple[Path, int],
                                   run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = _copy(pruned, tmp_path)
    assert _gc(repo, first).returncode == -9
    p = _gc(repo, second)
    assert p.returncode in (-9, 0), p.stderr.decode()
    _after_kill(run_ketch, repo, tmp_path)
    _finish(run_ketch, repo, tmp_path, pruned[1])


def test_save_after_a_kill_holding_the_ref_lock(pruned: tuple[Path, int], run_ketch: RunKetch,
                                               tmp_path: Path) -> None:
    """gc killed while it held a branch's lock (expiring its reflog): a save into
    that branch sees the lock is a dead gc's and goes on."""
    repo = _copy(pruned, tmp_path)
    assert _gc(repo, "reflog-locked:2").returncode == -9
    assert list(repo.glob("refs/heads/*.lock"))
    data = tmp_path / "more"
    data.mkdir()
    (data / "f").write_bytes(b"after the kill\n")
    run_ketch("save", "-q", "-d", repo, "-n", "m", data, check=True)
    assert not list(repo.glob("refs/heads/*.lock"))
    fsck(repo)


def test_rescue_of_an_object_reused_while_hidden(pruned: tuple[Path, int], run_ketch: RunKetch,
                                                tmp_path: Path) -> None:
    """A killed gc hid a pack; before the next gc, a branch comes to point at a
    commit only that pack holds (a save that deduplicated against it). The next
    gc, killed while it copies the commit out, and the one after, lose nothing."""
    repo = _copy(pruned, tmp_path)
    # A save pruned away: the old head, still named by the reflog before gc.
    old_head = subprocess.run(["git", "--git-dir", repo, "rev-parse", "m@{1}"],
                              capture_output=True, check=True).stdout.decode().strip()
    assert _gc(repo, "hidden").returncode == -9
    # As a save that deduplicated against the hidden pack would (git may refuse:
    # for git the commit is gone when gc hid the pack that holds it).
    Refs(str(repo)).update(b"refs/heads/back", bytes.fromhex(old_head), None)
    p = _gc(repo, "rewrite:3")
    assert p.returncode == -9, p.stderr.decode()
    p = _gc(repo)
    assert p.returncode == 0, p.stderr.decode()
    assert json.loads(p.stdout)["objects_rescued"] > 0
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, DAYS, branch="back")
    check_restores(run_ketch, repo, tmp_path, KEEP)


def test_rescued_pack_named_like_the_hidden_one(pruned: tuple[Path, int], run_ketch: RunKetch,
                                                tmp_path: Path) -> None:
    """A hidden pack whose every object comes back is copied whole, into a pack of
    the same name (the name is the content's hash). gc killed before it deleted
    the hidden one: the next gc deletes the hidden copy, never the visible one."""
    repo = _copy(pruned, tmp_path)
    data = tmp_path / "own"
    data.mkdir()
    (data / "f").write_bytes(os.urandom(300_000))
    run_ketch("save", "-q", "-d", repo, "-n", "side", data, check=True)
    side = subprocess.run(["git", "--git-dir", repo, "rev-parse", "side"], capture_output=True,
                          check=True).stdout.decode().strip()
    subprocess.run(["git", "--git-dir", repo, "update-ref", "-d", "refs/heads/side"], check=True)
    assert _gc(repo, "hidden").returncode == -9
    # As a save that deduplicated against the hidden pack would (git refuses: for
    # git the objects are gone).
    Refs(str(repo)).update(b"refs/heads/side", bytes.fromhex(side), None)
    assert _gc(repo, "rescued").returncode == -9
    doomed = {p.name for p in (repo / "ketch-gc" / "doomed").glob("*.idx")}
    visible = {p.name for p in (repo / "objects" / "pack").glob("*.idx")}
    assert doomed & visible  # the case at hand
    p = _gc(repo)
    assert p.returncode == 0, p.stderr.decode()
    fsck(repo)
    out = tmp_path / "out"
    run_ketch("restore", "-q", "-d", repo, "-C", out, "side/latest/", check=True)
    assert (out / data.relative_to("/") / "f").read_bytes() == (data / "f").read_bytes()
    check_restores(run_ketch, repo, tmp_path, KEEP)
