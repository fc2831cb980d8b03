"""An interrupted local save keeps what it wrote (issue 17 item 7): on SIGINT or
SIGTERM the complete objects already written are finished into a pack and the
index keeps the files whose objects are all in it, so the next save neither
reads nor writes them again. The branch does not move; SIGKILL leaves only
garbage (a temp pack), never a broken repository."""

from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import SRC_DIR, RunKetch

MB = 1 << 20


def _write_random(path: Path, size: int) -> None:
    with open(path, "wb") as f:
        f.write(os.urandom(size))


@pytest.fixture(scope="module")
def tree(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, int]:
    """Many small files first, then medium ones, then one large file (names sort
    that way, and a save walks in name order): incompressible, ~330 MB."""
    root = tmp_path_factory.mktemp("interrupt") / "src"
    (root / "a-small").mkdir(parents=True)
    total = 0
    for i in range(1500):
        size = 4096 + (i * 7919) % 28000
        _write_random(root / "a-small" / f"f{i:04d}", size)
        total += size
    (root / "m-medium").mkdir()
    for i in range(30):
        _write_random(root / "m-medium" / f"m{i:02d}", 6 * MB)
        total += 6 * MB
    _write_random(root / "z-large", 120 * MB)
    total += 120 * MB
    # Older than the index's racy window, so it may trust the fingerprints.
    old = time.time() - 60
    for dirpath, _, names in os.walk(root):
        for n in names:
            os.utime(os.path.join(dirpath, n), (old, old))
    time.sleep(2)  # past the index's racy window for the ctimes utime just set
    return root, total


def _written(repo: Path) -> int:
    """Bytes in packs, finished or being written."""
    n = 0
    for dirpath, _, names in os.walk(repo / "objects"):
        n += sum(os.path.getsize(os.path.join(dirpath, f)) for f in names
                 if f.endswith(".pack") or f == "pack")
    return n


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(SRC_DIR)
    return env


def _interrupted_save(repo: Path, src: Path, total: int, sig: int
                      ) -> tuple[subprocess.CompletedProcess[bytes], int, float]:
    """Start a save, send `sig` once 40% of the data is in packs: (the process, bytes
    written when the signal went, seconds from the signal to the exit)."""
    proc = subprocess.Popen([sys.executable, "-m", "ketch", "save", "-d", str(repo), "-n", "t",
                             str(src)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            env=_env())
    deadline = time.monotonic() + 300
    at = 0
    sent = 0.0
    while time.monotonic() < deadline and proc.poll() is None:
        at = _written(repo)
        if at >= 0.4 * total:
            proc.send_signal(sig)
            sent = time.monotonic()
            break
        time.sleep(0.02)
    out, err = proc.communicate(timeout=120)
    assert at >= 0.4 * total, "the save finished before 40% could be seen"
    return (subprocess.CompletedProcess(proc.args, proc.returncode, out, err), at,
            time.monotonic() - sent)


def _fsck(repo: Path) -> None:
    proc = subprocess.run(["git", "--git-dir", str(repo), "fsck", "--strict"],
                          capture_output=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert b"error" not in proc.stderr, proc.stderr


def _index_names_only_stored_objects(repo: Path) -> int:
    """Every id the index holds is in the repository: (how many rows have one)."""
    db = sqlite3.connect(repo / "ketch-index.sqlite")
    oids = [r[0].hex() for r in db.execute("SELECT oid FROM files WHERE oid IS NOT NULL")]
    db.close()
    check = subprocess.run(["git", "--git-dir", str(repo), "cat-file", "--batch-check"],
                           input="".join(o + "\n" for o in oids).encode(), capture_output=True)
    assert b"missing" not in check.stdout
    return len(oids)


def _tree_equal(a: Path, b: Path) -> None:
    sub = subprocess.run(["diff", "-r", "--no-dereference", str(a), str(b)], capture_output=True)
    assert sub.returncode == 0, sub.stdout[:2000]


def _resave_and_restore(run_ketch: RunKetch, repo: Path, src: Path, out: Path
                        ) -> dict[str, int]:
    proc = run_ketch("save", "-d", repo, "-n", "t", "--json", src)
    assert proc.returncode == 0, proc.stderr.decode()
    stats = json.loads(proc.stdout)
    run_ketch("restore", "-d", repo, "-C", out, f"t/latest{src}/", check=True)
    _tree_equal(src, out)
    _fsck(repo)
    return stats  # type: ignore[no-any-return]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_interrupted_save_keeps_its_packs_and_index(
        run_ketch: RunKetch, tmp_path: Path, tree: tuple[Path, int], sig: int) -> None:
    src, total = tree
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    proc, at, stop = _interrupted_save(repo, src, total, sig)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert "ketch: error: interrupted" in err and "Traceback" not in err
    assert stop < 30  # finishing the open pack: about a second here
    assert not (repo / "refs" / "heads" / "t").exists()
    assert [n for n in os.listdir(repo / "objects") if n.startswith("pack-tmp")] == []
    kept = sum(os.path.getsize(p) for p in (repo / "objects" / "pack").glob("*.pack"))
    assert kept >= at * 0.9, (kept, at)  # what was written when the signal went is kept
    _fsck(repo)
    assert _index_names_only_stored_objects(repo) > 1000  # the small files, at least
    stats = _resave_and_restore(run_ketch, repo, src, tmp_path / "out")
    print(f"\n{signal.Signals(sig).name}: total {total / MB:.0f} MB, signalled at "
          f"{at / MB:.0f} MB, stopped in {stop:.1f} s, kept {kept / MB:.0f} MB; re-run read "
          f"{stats['bytes_read'] / MB:.0f} MB, wrote {stats['bytes_new'] / MB:.0f} MB")
    assert stats["bytes_new"] < 0.7 * total
    # Read again: what was never stored, and the files being stored when the
    # signal came (a save stores big files first, on two threads: the large
    # one and a medium one), whose finished chunks are not written again.
    assert stats["bytes_read"] <= total - kept + 126 * MB


def test_killed_save_leaves_a_usable_repository(
        run_ketch: RunKetch, tmp_path: Path, tree: tuple[Path, int]) -> None:
    src, total = tree
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    proc, _, _ = _interrupted_save(repo, src, total, signal.SIGKILL)
    assert proc.returncode == -signal.SIGKILL
    assert not (repo / "refs" / "heads" / "t").exists()
    _fsck(repo)
    _index_names_only_stored_objects(repo)
    stats = _resave_and_restore(run_ketch, repo, src, tmp_path / "out")
    assert stats["files"] == 1531
