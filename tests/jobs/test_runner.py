"""`ketch run`'s engine: sets saved, one report, the lock, failures kept apart."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ketch.jobs.model import BackupSet, Config
from ketch.jobs.runner import RunLocked, default_lock_path, run_jobs, run_lock
from ketch.localrepo import LocalRepository, init_repository
from tests.gitutil import git


def _tree(root: Path) -> Path:
    (root / "sub").mkdir(parents=True)
    (root / "a").write_bytes(b"a\n")
    (root / "sub" / "b").write_bytes(os.urandom(100_000))
    (root / "skip.tmp").write_bytes(b"excluded\n")
    return root


def _config(tmp_path: Path, *sets: BackupSet) -> Config:
    repo = tmp_path / "repo"
    init_repository(str(repo))
    return Config(repository=str(repo), sets=list(sets), source=str(tmp_path / "ketch.toml"),
                  lock_file=str(tmp_path / "run.lock"))


def test_sets_are_saved_and_reported(tmp_path: Path) -> None:
    etc = _tree(tmp_path / "etc")
    www = _tree(tmp_path / "www")
    cfg = _config(tmp_path, BackupSet("etc", [str(etc)], exclude=["*.tmp"]),
                  BackupSet("www", [str(www)]))
    log = tmp_path / "log" / "ketch.log"
    report = run_jobs(cfg, log_path=str(log))
    assert report.exit_code == 0, report.text()
    assert [(i.kind, i.name, i.ok) for i in report.items] == [("set", "etc", True),
                                                              ("set", "www", True)]
    assert report.items[0].files == 2 and report.items[1].files == 3  # *.tmp excluded in etc
    assert report.items[0].bytes_new > 100_000
    with LocalRepository(cfg.repository) as repo:
        for item in report.items:
            assert repo.read_ref(b"refs/heads/" + item.name.encode()) == bytes.fromhex(
                item.commit or "")
    text = log.read_text()
    assert "set etc: ok" in text
    logged = json.loads(text.splitlines()[-1].removeprefix("json: "))
    assert logged["status"] == "OK" and len(logged["items"]) == 2
    git(cfg.repository, "fsck", "--strict")
    # Only the named set runs.
    again = run_jobs(cfg, only=["www"])
    assert [i.name for i in again.items] == ["www"]


def test_one_failure_does_not_stop_the_others(tmp_path: Path) -> None:
    good = _tree(tmp_path / "good")
    cfg = _config(tmp_path, BackupSet("bad", [str(tmp_path / "missing")]),
                  BackupSet("good", [str(good)]))
    report = run_jobs(cfg)
    assert report.exit_code == 2
    assert not report.items[0].ok and "no such file" in (report.items[0].error or "")
    assert report.items[1].ok and report.items[1].files == 3
    assert "missing" in report.text()


def test_unreachable_repository_fails_the_run(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH_RSH", "false")
    cfg = Config(repository="nohost.invalid:/srv/x", sets=[BackupSet("s", [str(tmp_path)])],
                 source=str(tmp_path / "c.toml"), lock_file=str(tmp_path / "l"))
    report = run_jobs(cfg)
    assert report.exit_code == 2
    assert report.errors and "nohost.invalid" in report.errors[0]
    assert "\n" not in report.errors[0]


def test_overlapping_runs_are_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, BackupSet("s", [str(_tree(tmp_path / "s"))]))
    with run_lock(default_lock_path(cfg)), pytest.raises(RunLocked, match="in progress"):
        run_jobs(cfg)
    assert run_jobs(cfg).exit_code == 0  # released afterwards


def test_unknown_names_are_usage_errors(tmp_path: Path) -> None:
    cfg = _config(tmp_path, BackupSet("s", [str(tmp_path)]))
    with pytest.raises(Exception, match="no set or dump named nope"):
        run_jobs(cfg, only=["nope"])
