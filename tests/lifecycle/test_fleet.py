"""The backup server's side of retention: its config (/etc/ketch/server.toml),
and prune / gc over every repository under ROOT, each machine by its own
policy, with reports ready to print (`ketch prune --all`, `ketch gc --all`)."""

from __future__ import annotations

import json
import os
import pwd
import textwrap
from pathlib import Path

import pytest

from ketch.errors import EXIT_FAILED, EXIT_OK
from ketch.git import objects as gobj
from ketch.lifecycle.fleet import find_repositories, gc_all, prune_all
from ketch.lifecycle.policy import KeepPolicy
from ketch.lifecycle.serverconfig import (
    ServerConfig,
    ServerConfigError,
    load_server_config,
    parse_server_config,
)
from ketch.localrepo import LocalRepository, init_repository
from ketch.save import SaveOptions, save
from tests.conftest import RunKetch
from tests.gitutil import git

DAY = 86400
T0 = 1_700_000_000  # 2023-11-14, a Tuesday


def _config(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "server.toml"
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


# -- the server config -------------------------------------------------------------------


def test_server_config_gives_each_machine_its_policy(tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    path = _config(tmp_path, """
        root = "/srv/ketch"
        [retention]
        keep-daily = 7
        keep-weekly = 4
        [machine.web1]
        keep-last = 30
        keep-within = "2w"
        [machine.archive]
        [gc]
        threshold = 25
        [schedule]
        time = "05:30"
        """)
    monkeypatch.setenv("KETCH_SERVER_CONFIG", str(path))
    cfg = load_server_config()
    assert (cfg.source, cfg.root, cfg.gc_threshold, cfg.time) == (
        str(path), "/srv/ketch", 25.0, "05:30")
    assert cfg.policy_for("db1") == KeepPolicy.from_mapping({"keep-daily": 7, "keep-weekly": 4})
    assert cfg.policy_for("web1") == KeepPolicy.from_mapping({"keep-last": 30,
                                                              "keep-within": "2w"})
    archive = cfg.policy_for("archive")
    assert archive is not None and archive.empty  # its own empty table: keep every save
    bare = parse_server_config("", "s.toml")
    assert (bare.policy_for("web1"), bare.gc_threshold, bare.time) == (None, 10.0, "06:00")


SERVER_MISTAKES = [
    ('[retention]\nkeep-dialy = 7\n', "retention.keep-dialy: unknown key (did you mean "
     "'keep-daily'?)"),
    ('[machine.web1]\nkeep-last = -2\n', "machine.web1.keep-last: expected 0 or more, got -2"),
    ('[machine.web1]\nkeep-weekly = "4"\n', "machine.web1.keep-weekly: expected an integer, "
     "got a string"),
    ('[machine]\nweb1 = 7\n', "machine.web1: expected a table, got an integer"),
    ('[gc]\nthreshold = 150\n', "gc.threshold: expected a percentage 0-100, got 150"),
    ('[gc]\ntreshold = 5\n', "gc.treshold: unknown key (did you mean 'threshold'?)"),
    ('[schedule]\ntime = "6am"\n', "schedule.time: expected HH:MM (24-hour local time, e.g. "
     "\"06:00\"), got '6am'"),
    ('root = "srv"\n', "root: expected an absolute path, got 'srv'"),
    ('[machines.web1]\nkeep-last = 1\n', "machines: unknown key (did you mean 'machine'?)"),
]


@pytest.mark.parametrize("text,message", SERVER_MISTAKES, ids=[m[1].split(":")[0]
                                                                for m in SERVER_MISTAKES])
def test_server_config_mistake_is_one_line_naming_file_and_key(tmp_path: Path, text: str,
                                                               message: str) -> None:
    path = _config(tmp_path, text)
    with pytest.raises(ServerConfigError) as e:
        load_server_config(str(path))
    assert str(e.value) == f"{path}: {message}"


def test_missing_or_broken_server_config(tmp_path: Path) -> None:
    with pytest.raises(ServerConfigError, match="server.toml: no such file"):
        load_server_config(str(tmp_path / "server.toml"))
    path = _config(tmp_path, "[retention\n")
    with pytest.raises(ServerConfigError, match="TOML syntax error") as e:
        load_server_config(str(path))
    assert "\n" not in str(e.value)


# -- every repository under ROOT -----------------------------------------------------------


def _machine(root: Path, name: str, days: int) -> Path:
    """ROOT/NAME holding one save a day for `days` days, each with 200 kB of its own
    (saved in-process: a subprocess per save made the fixture 3x slower)."""
    repo = root / name
    init_repository(str(repo))
    data = root.parent / f"data-{name}"
    data.mkdir()
    with LocalRepository(str(repo)) as r:
        for day in range(days):
            (data / "f").write_bytes(os.urandom(200_000))
            save(r, SaveOptions(name="files", paths=[str(data)], date=T0 + day * DAY))
    return repo


def _saves(repo: Path) -> int:
    return len(git(repo, "rev-list", "refs/heads/files").split())


@pytest.fixture
def fleet(tmp_path: Path) -> Path:
    root = tmp_path / "root"
    root.mkdir()
    for name in ("web1", "db1", "archive"):
        _machine(root, name, 5)
    (root / "not-a-repo").mkdir()
    (root / "README").write_text("the machines' repositories\n")
    return root


def test_prune_all_applies_each_machines_policy(fleet: Path, tmp_path: Path) -> None:
    cfg = parse_server_config(textwrap.dedent("""
        [retention]
        keep-last = 2
        [machine.db1]
        keep-last = 1
        [machine.archive]
        """), "server.toml")
    assert [os.path.basename(p) for p in find_repositories(str(fleet))] == [
        "archive", "db1", "web1"]
    dry = prune_all(str(fleet), cfg, dry_run=True)
    assert [_saves(fleet / n) for n in ("web1", "db1", "archive")] == [5, 5, 5]
    assert dry.totals == {"kept": 3, "removed": 7}
    report = prune_all(str(fleet), cfg)
    assert report.exit_code == EXIT_OK
    assert [(m.machine, m.status) for m in report.machines] == [
        ("archive", "skipped"), ("db1", "done"), ("web1", "done")]
    assert [_saves(fleet / n) for n in ("web1", "db1", "archive")] == [2, 1, 5]
    lines = report.text().splitlines()
    assert lines[0].startswith(f"prune --all {fleet}: 2 repositories done, 1 skipped (")
    assert lines[1:] == [
        "  archive  skipped: [machine.archive] keeps every save (it sets no keep-* key)",
        "  db1      1 branch: 1 save kept, 4 removed",
        "  web1     1 branch: 2 saves kept, 3 removed",
        "total: 3 saves kept, 7 removed",
    ]
    as_json = json.loads(json.dumps(report.as_dict()))
    assert as_json["exit_code"] == 0 and as_json["machines"][1]["report"] is not None
    for name in ("web1", "db1", "archive"):
        git(fleet / name, "fsck", "--strict")


def test_machine_without_a_policy_is_skipped_and_a_broken_one_fails_alone(
        fleet: Path) -> None:
    cfg = ServerConfig(source="/etc/ketch/server.toml",
                       machines={"web1": KeepPolicy.from_mapping({"keep-last": 1})})
    # A branch whose commit is gone: its repository cannot be pruned.
    (fleet / "db1" / "refs" / "heads" / "files").write_text("ab" * 20 + "\n")
    report = prune_all(str(fleet), cfg)
    by_name = {m.machine: m for m in report.machines}
    assert by_name["archive"].summary == (
        "no [machine.archive] and no [retention] in /etc/ketch/server.toml")
    assert by_name["web1"].status == "done" and _saves(fleet / "web1") == 1
    # db1 has no policy either: skipped before its broken ref is read.
    assert by_name["db1"].status == "skipped"
    cfg.default = KeepPolicy.from_mapping({"keep-last": 1})
    again = prune_all(str(fleet), cfg)
    failed = {m.machine: m for m in again.machines}["db1"]
    assert failed.status == "failed" and again.exit_code == EXIT_FAILED
    assert "\n" not in failed.summary and "FAILED: " in again.text()


def test_gc_all_reclaims_in_every_repository(fleet: Path) -> None:
    for name in ("web1", "db1"):
        with LocalRepository(str(fleet / name)) as repo:
            w = repo.writer()
            w.write(gobj.BLOB, os.urandom(1_000_000))  # garbage: nothing refers to it
            w.close()
    dry = gc_all(str(fleet), threshold=10.0, dry_run=True)
    assert dry.totals["bytes_reclaimed"] == 0 or dry.dry_run
    report = gc_all(str(fleet), threshold=10.0)
    assert report.exit_code == EXIT_OK
    assert [m.machine for m in report.machines] == ["archive", "db1", "web1"]
    assert report.totals["bytes_reclaimed"] >= 1_900_000, report.totals
    assert report.text().splitlines()[-1].startswith("total: ")
    assert " MB reclaimed (" in report.text()
    json.dumps(report.as_dict())
    for name in ("web1", "db1", "archive"):
        git(fleet / name, "fsck", "--strict")


def test_root_that_is_not_a_directory(tmp_path: Path) -> None:
    with pytest.raises(Exception, match="No such file or directory"):
        prune_all(str(tmp_path / "nowhere"), ServerConfig())


def _readme_toml(after: str) -> str:
    text = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    rest = text[text.index(after):]
    start = rest.index("```toml\n") + len("```toml\n")
    return rest[start:rest.index("```\n", start)]


def test_readme_server_config_loads() -> None:
    cfg = parse_server_config(_readme_toml("## Retention on the backup server"), "README")
    assert cfg.root == "/srv/ketch" and cfg.time == "06:00"
    assert cfg.policy_for("web1") == KeepPolicy.from_mapping({"keep-daily": 30,
                                                              "keep-yearly": 5})
    archive = cfg.policy_for("archive")
    assert archive is not None and archive.empty


def test_run_as_root_the_owner_gets_back_what_was_written(fleet: Path) -> None:
    """The machines' server runs as the repositories' owner: a reflog or ref
    written by root (an admin's `sudo ketch prune --all`) would refuse it."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give a repository to another user")
    nobody = pwd.getpwnam("nobody")
    web1 = fleet / "web1"
    for p in [web1, *web1.rglob("*")]:
        os.lchown(p, nobody.pw_uid, nobody.pw_gid)
    cfg = ServerConfig(default=KeepPolicy.from_mapping({"keep-last": 1}))
    assert prune_all(str(fleet), cfg).exit_code == EXIT_OK
    with LocalRepository(str(web1)) as repo:
        w = repo.writer()
        w.write(gobj.BLOB, os.urandom(100_000))
        w.close()
    assert gc_all(str(fleet), threshold=0.0).exit_code == EXIT_OK
    with LocalRepository(str(web1)) as repo:
        head = repo.read_ref(b"refs/heads/files")
        assert head is not None and not gobj.decode_commit(repo.read(head)[1]).parents
    assert {p.stat().st_uid for p in web1.rglob("*")} == {nobody.pw_uid}
    assert (fleet / "db1" / "objects").stat().st_uid == 0  # root's repositories stay root's


def test_the_commands_the_nightly_job_runs(fleet: Path, tmp_path: Path,
                                           run_ketch: RunKetch) -> None:
    """`ketch prune --all ROOT` then `ketch gc --all ROOT`, the config from
    $KETCH_SERVER_CONFIG as the installed job passes it."""
    cfg = _config(tmp_path, """
        [retention]
        keep-last = 2
        [machine.db1]
        keep-last = 1
        [gc]
        threshold = 0
        """)
    env = {"KETCH_SERVER_CONFIG": str(cfg)}
    before = {n: _bytes(fleet / n) for n in ("web1", "db1", "archive")}
    got = run_ketch("prune", "--all", fleet, env=env, check=True)
    assert "db1      1 branch: 1 save kept, 4 removed" in got.stdout.decode()
    assert [_saves(fleet / n) for n in ("web1", "db1", "archive")] == [2, 1, 2]
    got = run_ketch("gc", "--all", fleet, "--json", env=env, check=True)
    report = json.loads(got.stdout)
    assert [m["machine"] for m in report["machines"]] == ["archive", "db1", "web1"]
    assert report["totals"]["bytes_reclaimed"] > 0
    for name in ("web1", "db1", "archive"):
        assert _bytes(fleet / name) < before[name]
        git(fleet / name, "fsck", "--strict")
    # keep options belong to the server config there; a ROOT is not a branch
    bad = run_ketch("prune", "--all", fleet, "--keep-last", "3", env=env)
    assert bad.returncode == 2 and b"no keep options" in bad.stderr
    bad = run_ketch("gc", "--all", fleet, "-d", fleet / "web1", env=env)
    assert bad.returncode == 2 and b"not both" in bad.stderr


def _bytes(repo: Path) -> int:
    return sum(f.stat().st_size for f in (repo / "objects").rglob("*") if f.is_file())
