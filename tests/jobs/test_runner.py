"""`ketch run`'s engine: sets saved, one report, the lock, failures kept apart;
the report kept in the repository (refs/ketch/run), locally and on a backup
server over real ssh."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from ketch import reportlog
from ketch.jobs.model import BackupSet, Config
from ketch.jobs.runner import RunLocked, default_lock_path, run_jobs, run_lock
from ketch.localrepo import LocalRepository, init_repository
from tests.conftest import RunKetch
from tests.gitutil import git
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import KETCH_SERVER, Machine, build_small_tree
from tests.services.sshd import SshServer


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
    # Kept in the repository, as the dashboard reads it.
    with LocalRepository(cfg.repository) as repo:
        stored = reportlog.latest(repo, "run")
    assert stored is not None and stored.data["exit_code"] == 0
    assert stored.data["status"] == "OK" and stored.data["machine"] == report.machine
    assert [(i["name"], i["ok"], i["files"], i["bytes_new"], i["commit"])
            for i in stored.data["items"]] == [
        (i.name, True, i.files, i.bytes_new, i.commit) for i in report.items]
    assert stored.data["seconds"] > 0 and stored.data["errors"] == []
    git(cfg.repository, "fsck", "--strict")
    # Only the named set runs; its report goes on the chain.
    again = run_jobs(cfg, only=["www"])
    assert [i.name for i in again.items] == ["www"]
    with LocalRepository(cfg.repository) as repo:
        history = reportlog.history(repo, "run")
        assert [[i["name"] for i in r.data["items"]] for r in history] == [["www"],
                                                                           ["etc", "www"]]
        assert [b.decode() for b, _ in repo.iter_refs(b"refs/heads/")] == [
            "refs/heads/etc", "refs/heads/www"]  # the report is no branch
    git(cfg.repository, "fsck", "--strict")


def test_one_failure_does_not_stop_the_others(tmp_path: Path) -> None:
    good = _tree(tmp_path / "good")
    cfg = _config(tmp_path, BackupSet("bad", [str(tmp_path / "missing")]),
                  BackupSet("good", [str(good)]))
    report = run_jobs(cfg)
    assert report.exit_code == 2
    assert not report.items[0].ok and "no such file" in (report.items[0].error or "")
    assert report.items[1].ok and report.items[1].files == 3
    assert "missing" in report.text()
    # A failed run is what the dashboard is for: stored like any other.
    with LocalRepository(cfg.repository) as repo:
        stored = reportlog.latest(repo, "run")
    assert stored is not None
    assert stored.data["exit_code"] == 2 and stored.data["status"] == "FAILED"
    bad, good = stored.data["items"]
    assert (bad["name"], bad["ok"], bad["commit"]) == ("bad", False, None)
    assert "no such file" in bad["error"]
    assert (good["name"], good["ok"], good["files"]) == ("good", True, 3)
    assert good["commit"] == git(cfg.repository, "rev-parse", "refs/heads/good").decode().strip()
    git(cfg.repository, "fsck", "--strict")


def test_a_report_that_cannot_be_stored_is_a_warning(tmp_path: Path) -> None:
    """A ref lock left behind by a writer that crashed: the saves stand, the run
    says why its report is missing, and the next run stores its own."""
    cfg = _config(tmp_path, BackupSet("s", [str(_tree(tmp_path / "s"))]))
    lock = Path(cfg.repository) / "refs" / "ketch" / "run.lock"
    lock.parent.mkdir()
    lock.write_text("")
    report = run_jobs(cfg)
    assert report.exit_code == 1 and report.items[0].ok
    [warning] = report.warnings
    assert warning.startswith("run report not stored: cannot lock ref refs/ketch/run: ")
    assert "warning: run report not stored" in report.text()
    with LocalRepository(cfg.repository) as repo:
        assert reportlog.latest(repo, "run") is None
        assert repo.read_ref(b"refs/heads/s") == bytes.fromhex(report.items[0].commit or "")
    lock.unlink()
    assert run_jobs(cfg).exit_code == 0
    with LocalRepository(cfg.repository) as repo:
        assert [r.data["exit_code"] for r in reportlog.history(repo, "run")] == [0]


def test_unreachable_repository_fails_the_run(tmp_path: Path,
                                              monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("KETCH_RSH", "false")
    cfg = Config(repository="nohost.invalid:/srv/x", sets=[BackupSet("s", [str(tmp_path)])],
                 source=str(tmp_path / "c.toml"), lock_file=str(tmp_path / "l"))
    report = run_jobs(cfg)
    assert report.exit_code == 2
    assert report.errors and "nohost.invalid" in report.errors[0]
    assert "\n" not in report.errors[0]
    assert report.warnings == [] and report.notes == []  # nowhere to store it, nothing said


def test_a_run_over_ssh_stores_its_report_on_the_server(
        sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> None:  # noqa: F811
    """With an append-only key, as a backup server hands out: each report moves
    refs/ketch/run forward, which that key allows."""
    repo = tmp_path / "srv" / "web1"
    run_ketch("init", "-d", repo, check=True)
    data = tmp_path / "data"
    build_small_tree(data)
    m = Machine.new(sshd, "run-report-append-only", forced=f"{KETCH_SERVER} --append-only")
    config = tmp_path / "ketch.toml"
    config.write_text(f'repository = "{m.url(repo)}"\nlock_file = "{tmp_path}/run.lock"\n'
                      f'log_file = "{tmp_path}/ketch.log"\n[[set]]\nname = "files"\npaths = ["{data}"]\n'
                      f'[[set]]\nname = "gone"\npaths = ["{tmp_path}/missing"]\n')
    first = run_ketch("run", "--config", config, "--json", "--no-notify", env=m.env)
    assert first.returncode == 2, first.stderr
    assert json.loads(first.stdout)["warnings"] == []
    ok = run_ketch("run", "--config", config, "--json", "--no-notify", "files", env=m.env)
    assert ok.returncode == 0, ok.stderr
    with LocalRepository(str(repo)) as server:
        history = reportlog.history(server, "run")
        head = server.read_ref(b"refs/heads/files")
    assert [r.data["exit_code"] for r in history] == [0, 2]
    assert [(i["name"], i["ok"]) for i in history[1].data["items"]] == [("files", True),
                                                                        ("gone", False)]
    assert history[0].data["items"][0]["commit"] == (head or b"").hex()
    assert history[0].data["repository"] == m.url(repo)
    git(repo, "fsck", "--strict", "--no-dangling")


def test_overlapping_runs_are_refused(tmp_path: Path) -> None:
    cfg = _config(tmp_path, BackupSet("s", [str(_tree(tmp_path / "s"))]))
    with run_lock(default_lock_path(cfg)), pytest.raises(RunLocked, match="in progress"):
        run_jobs(cfg)
    assert run_jobs(cfg).exit_code == 0  # released afterwards


def test_unknown_names_are_usage_errors(tmp_path: Path) -> None:
    cfg = _config(tmp_path, BackupSet("s", [str(tmp_path)]))
    with pytest.raises(Exception, match="no set or dump named nope"):
        run_jobs(cfg, only=["nope"])
