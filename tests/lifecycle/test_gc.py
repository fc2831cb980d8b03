"""`ketch gc` after a prune: space back to what the kept saves need, and a
repository git, bup and ketch still read whole."""

from __future__ import annotations

import fcntl
import json
import os
import shutil
import subprocess
from pathlib import Path

from tests.conftest import RunBup, RunKetch
from tests.lifecycle.gcsetup import (
    DAY,
    T0,
    check_restores,
    corpus,
    fsck,
    prune,
    repo_bytes,
    saved_repo,
    saves,
)

DAYS = list(range(12))
KEEP = [0, 3, 7, 10, 11]


def _gc(run_ketch: RunKetch, repo: Path, *args: str) -> dict[str, object]:
    p = run_ketch("gc", "-d", repo, "--json", *args)
    assert p.returncode == 0, p.stderr.decode()
    assert p.stderr == b"", p.stderr.decode()
    report: dict[str, object] = json.loads(p.stdout)
    return report


def test_gc_after_prune_reclaims_to_a_fresh_repository(run_ketch: RunKetch, bup: RunBup,
                                                        tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, DAYS)
    before = repo_bytes(repo)
    prune(repo, set(KEEP))
    report = _gc(run_ketch, repo)
    after = repo_bytes(repo)
    assert report["bytes_before"] >= before and report["bytes_after"] == after
    assert report["packs_deleted"] and report["objects_dropped"]
    fresh = saved_repo(run_ketch, tmp_path / "fresh", KEEP)
    assert after <= 1.10 * repo_bytes(fresh), (before, after, repo_bytes(fresh))
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, KEEP, bup=bup)
    assert b"m" in bup(repo, "ls", "/").stdout.split()
    assert len(bup(repo, "ls", "/m").stdout.split()) == len(KEEP) + 1  # and latest
    # Nothing left to do: a second gc changes nothing.
    again = _gc(run_ketch, repo)
    assert again["packs_deleted"] == 0 and again["bytes_reclaimed"] == 0


def test_bup_written_repository(run_ketch: RunKetch, bup: RunBup, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    bup(repo, "init")
    data = tmp_path / "data"
    for day in DAYS[:8]:
        corpus(data, day)
        bup(repo, "index", data)
        bup(repo, "save", "-q", "-n", "m", "--strip", "-d", str(T0 + day * DAY), data)
    prune(repo, {1, 4, 7})
    report = _gc(run_ketch, repo)
    assert int(report["bytes_reclaimed"]) > 0
    fresh = saved_repo(run_ketch, tmp_path / "fresh", [1, 4, 7])
    assert repo_bytes(repo) <= 1.10 * repo_bytes(fresh)
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, [1, 4, 7], bup=bup)
    # bup still writes into it (its midx and bloom are consistent with the packs).
    corpus(data, 8)
    bup(repo, "index", data)
    bup(repo, "save", "-q", "-n", "m", "--strip", "-d", str(T0 + 8 * DAY), data)
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, [1, 4, 7, 8])


def test_git_repacked_repository_with_deltas(run_ketch: RunKetch, bup: RunBup,
                                             tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, DAYS[:8])
    # Deltas, packed refs, a commit-graph, .rev and .bitmap files: what git gc leaves.
    subprocess.run(["git", "--git-dir", repo, "-c", "repack.writeBitmaps=true", "gc",
                    "--aggressive", "-q"], check=True)
    assert (repo / "packed-refs").exists()
    prune(repo, {2, 5, 7})
    report = _gc(run_ketch, repo, "--threshold", "0")
    assert report["packs_deleted"]
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, [2, 5, 7], bup=bup)


def test_dry_run_changes_nothing(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, DAYS[:5])
    prune(repo, {4})
    files = {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()}
    p = run_ketch("gc", "-d", repo, "--dry-run")
    assert p.returncode == 0, p.stderr.decode()
    assert b"would reclaim" in p.stderr
    assert {p: p.read_bytes() for p in repo.rglob("*") if p.is_file()} == files
    dry = _gc(run_ketch, repo, "--dry-run")
    real = _gc(run_ketch, repo)
    assert dry["dry_run"] and not real["dry_run"]
    assert dry["objects_dropped"] == real["objects_dropped"]
    assert abs(int(dry["bytes_after"]) - int(real["bytes_after"])) < 0.05 * int(
        real["bytes_before"])


def test_cron_hears_nothing(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, DAYS[:3])
    prune(repo, {2})
    p = run_ketch("gc", "-d", repo)
    assert (p.returncode, p.stdout, p.stderr) == (0, b"", b"")


def test_second_gc_at_once_is_refused(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, DAYS[:3])
    prune(repo, {2})
    (repo / "ketch-gc").mkdir(exist_ok=True)
    fd = os.open(repo / "ketch-gc" / "lock", os.O_RDWR | os.O_CREAT)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what a running gc holds
        before = repo_bytes(repo)
        p = run_ketch("gc", "-d", repo)
        assert p.returncode == 2
        assert p.stderr.decode().splitlines() == [
            f"ketch: error: {repo}: another gc is running on this repository"]
        assert repo_bytes(repo) == before
    finally:
        os.close(fd)
    assert run_ketch("gc", "-d", repo).returncode == 0


def test_bad_options_are_one_line(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, DAYS[:1])
    for args in (["--threshold", "abc"], ["--threshold", "150"], ["--threshold", "-1"],
                 ["--wait", "soon"]):
        p = run_ketch("gc", "-d", repo, *args)
        assert p.returncode == 2, args
        lines = p.stderr.decode().splitlines()
        assert len(lines) == 1 and lines[0].startswith("ketch: error: "), lines
        assert "threshold" in lines[0] or "wait" in lines[0]
    p = run_ketch("gc", "-d", tmp_path / "nowhere")
    assert p.returncode == 2 and len(p.stderr.splitlines()) == 1


def test_missing_reachable_object_deletes_nothing(run_ketch: RunKetch,
                                                  tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, DAYS[:3])
    prune(repo, {2})
    # A tag on a commit whose tree is nowhere: the repository is damaged.
    tree = "1" * 40
    raw = (f"tree {tree}\nauthor a <a@b> {T0} +0000\ncommitter a <a@b> {T0} +0000\n\nbad\n")
    commit = subprocess.run(["git", "--git-dir", repo, "hash-object", "-w", "-t", "commit",
                             "--literally", "--stdin"], input=raw.encode(), check=True,
                            capture_output=True).stdout.decode().strip()
    subprocess.run(["git", "--git-dir", repo, "update-ref", "refs/tags/bad", commit],
                   check=True)
    files = sorted(p.name for p in (repo / "objects" / "pack").iterdir())
    p = run_ketch("gc", "-d", repo)
    assert p.returncode == 2
    assert p.stderr.decode().splitlines() == [
        f"ketch: error: object {tree} is reachable from the refs but missing from the "
        "repository; gc deletes nothing (check it with git fsck)"]
    assert sorted(p.name for p in (repo / "objects" / "pack").iterdir()) == files
    shutil.rmtree(tmp_path / "data")


def test_gc_after_ketch_prune(run_ketch: RunKetch, bup: RunBup, tmp_path: Path) -> None:
    repo = saved_repo(run_ketch, tmp_path, DAYS)
    p = run_ketch("prune", "-d", repo, "m", "--keep-daily", "3", "--keep-weekly", "2")
    assert p.returncode == 0, p.stderr.decode()
    kept = [d for _, d in saves(run_ketch, repo)]
    assert 3 <= len(kept) < len(DAYS)
    report = _gc(run_ketch, repo)
    assert int(report["bytes_reclaimed"]) > 0
    fresh = saved_repo(run_ketch, tmp_path / "fresh", kept)
    assert repo_bytes(repo) <= 1.10 * repo_bytes(fresh)
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, kept, bup=bup)


def test_a_save_outlasting_wait_keeps_the_hidden_packs(run_ketch: RunKetch,
                                                       tmp_path: Path) -> None:
    from ketch.lease import Lease

    repo = saved_repo(run_ketch, tmp_path, DAYS[:4])
    prune(repo, {3})
    with Lease(str(repo)):  # a save that started before gc and is still running
        p = run_ketch("gc", "-d", repo, "--wait", "1")
        assert p.returncode == 1, p.stderr.decode()
        assert p.stderr.decode().splitlines() == [
            "ketch: warning: 1 save still running after 1 s: the packs gc took out of use "
            f"stay in {repo}/ketch-gc/doomed until the next gc"]
        assert list((repo / "ketch-gc" / "doomed").glob("*.pack"))
        fsck(repo)
        check_restores(run_ketch, repo, tmp_path, [3])
    report = _gc(run_ketch, repo)
    assert report["recovered_packs"] and not list((repo / "ketch-gc" / "doomed").iterdir())
    fsck(repo)
    check_restores(run_ketch, repo, tmp_path, [3])


def test_terminal_shows_steps_and_a_summary(run_ketch: RunKetch, tmp_path: Path) -> None:
    from tests.cli.test_habits import on_terminal

    repo = saved_repo(run_ketch, tmp_path, DAYS[:5])
    prune(repo, {1, 4})
    code, said = on_terminal(["gc", "-d", str(repo), "--threshold", "0"])
    text = said.decode(errors="replace")
    assert code == 0, text
    assert "Rewriting:" in text and "gc: " in text and "reclaimed" in text, text
    assert "Traceback" not in text
