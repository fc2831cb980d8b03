"""Retention in `ketch run`: after the saves, each set and dump is pruned by its
policy, the garbage that freed is collected, and the report says what was kept,
removed and reclaimed; where the repository may not lose saves (an S3 mirror),
one note, and the run's exit code is the saves' own. The run reports kept on
refs/ketch/run outlive the gc, and say what retention did."""

from __future__ import annotations

import json
import os
from pathlib import Path

from ketch import reportlog
from ketch.jobs.model import BackupSet, Config, DumpSpec
from ketch.jobs.runner import run_jobs
from ketch.localrepo import LocalRepository, init_repository
from tests.conftest import RunKetch
from tests.gitutil import git
from tests.offsite.conftest import S3Server, s3_env, s3_server, s3_url  # noqa: F401
from tests.test_restore import assert_same_tree


def _pack_bytes(repo: Path) -> int:
    return sum(p.stat().st_size for p in (repo / "objects" / "pack").glob("*.pack"))


def _saves(repo: Path, branch: str) -> list[str]:
    return git(repo, "rev-list", f"refs/heads/{branch}").decode().split()


def test_each_branch_is_pruned_by_its_policy_then_garbage_collected(
        tmp_path: Path, run_ketch: RunKetch) -> None:
    repo = tmp_path / "repo"
    init_repository(str(repo))
    data, keep = tmp_path / "data", tmp_path / "keep"
    data.mkdir()
    keep.mkdir()
    (keep / "k").write_bytes(b"kept forever\n")
    cfg = Config(repository=str(repo), source=str(tmp_path / "ketch.toml"),
                 lock_file=str(tmp_path / "run.lock"), retention={"keep-last": 2},
                 sets=[BackupSet("data", [str(data)]),
                       BackupSet("keep", [str(keep)], retention={})],
                 dumps=[DumpSpec("db", "command", command=["echo", "dump"],
                                 retention={"keep-last": 1})])
    reports = []
    for n in range(3):
        (data / "big").write_bytes(os.urandom(3_000_000))  # garbage once its save is gone
        (data / "n").write_bytes(b"%d\n" % n)
        reports.append(run_jobs(cfg))
    first, _, last = reports
    assert first.exit_code == 0, first.text()
    assert [(r.kind, r.name, r.kept, r.removed) for r in first.retention] == [
        ("set", "data", 1, 0), ("dump", "db", 1, 0)]
    assert first.gc is None  # nothing removed, nothing to collect
    assert last.exit_code == 0, last.text()
    assert [(r.kind, r.name, r.kept, r.removed) for r in last.retention] == [
        ("set", "data", 2, 1), ("dump", "db", 1, 1)]
    assert last.gc is not None and last.gc["bytes_reclaimed"] > 2_500_000, last.gc
    text = last.text()
    assert "retention set data: kept 2 saves, removed 1" in text
    assert "retention dump db: kept 1 save, removed 1" in text
    assert " MB reclaimed (" in text and "retention set keep" not in text
    assert len(_saves(repo, "data")) == 2 and len(_saves(repo, "keep")) == 3
    assert len(_saves(repo, "db")) == 1
    assert _pack_bytes(repo) < 7_000_000  # two 3 MB files left, not three
    # Every run's report is still there after the gc (its roots are all refs).
    with LocalRepository(str(repo)) as r:
        stored = reportlog.history(r, "run")
    assert [s.data["exit_code"] for s in stored] == [0, 0, 0]
    newest = stored[0].data
    assert [(b["name"], b["kept"], b["removed"]) for b in newest["retention"]] == [
        ("data", 2, 1), ("db", 1, 1)]
    assert newest["gc"]["bytes_reclaimed"] == last.gc["bytes_reclaimed"]
    git(repo, "fsck", "--strict")
    # The newest save holds exactly what was saved last.
    out = tmp_path / "out"
    run_ketch("restore", "-d", repo, "-C", out, f"data/latest{data}", check=True)
    assert_same_tree(data, out / "data")


def test_a_failed_save_leaves_its_history_alone(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(str(repo))
    data = tmp_path / "data"
    data.mkdir()
    cfg = Config(repository=str(repo), source=str(tmp_path / "ketch.toml"),
                 lock_file=str(tmp_path / "run.lock"), retention={"keep-last": 1},
                 sets=[BackupSet("data", [str(data)])])
    for _ in range(2):
        assert run_jobs(cfg).exit_code == 0
    assert len(_saves(repo, "data")) == 1
    data.rename(tmp_path / "gone")
    cfg.sets[0].retention = {"keep-last": 1}
    failed = run_jobs(cfg)
    assert failed.exit_code == 2 and failed.retention == []
    assert len(_saves(repo, "data")) == 1


def test_a_read_only_mirror_gets_a_note_not_a_failure(
        tmp_path: Path, run_ketch: RunKetch, s3_url: str) -> None:  # noqa: F811
    repo = tmp_path / "repo"
    init_repository(str(repo))
    data = tmp_path / "data"
    data.mkdir()
    (data / "f").write_bytes(b"x\n")
    run_ketch("save", "-d", repo, "-n", "data", data, check=True)
    run_ketch("mirror", "push", repo, s3_url, check=True)
    config = tmp_path / "ketch.toml"
    config.write_text(f'repository = "{s3_url}/repo"\nlock_file = "{tmp_path}/l"\n'
                      f'[retention]\nkeep-last = 1\n[[set]]\nname = "data"\n'
                      f'paths = ["{data}"]\n')
    proc = run_ketch("run", "--config", config, "--json", "--no-notify")
    report = json.loads(proc.stdout)
    # The save fails (exit 2, as without retention); retention adds a note, not a failure.
    assert proc.returncode == 2, proc.stderr
    assert "read-only" in report["items"][0]["error"]
    read_only = "an S3 mirror is read-only; push to it with ketch mirror push"
    assert report["notes"] == [f"retention not applied: {read_only}",
                               f"run report not stored in the repository: {read_only}"]
    assert report["retention"] == [] and report["warnings"] == []
