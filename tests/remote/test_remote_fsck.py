"""fsck over ssh (the server's `fsck` command), against a real sshd: the
server reads its own packs and reports the same damage as a local fsck, while
the connection carries only the report; an append-only key may check but not
write parity or repair."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from ketch.integrity.fsck import FsckRun, check_repository
from ketch.localrepo import LocalRepository, init_repository
from ketch.remote.location import open_location
from ketch.repo import AppendOnlyRepository
from tests.conftest import RunKetch
from tests.remote.test_remote import Machine, build_small_tree
from tests.remote.test_remote_gc import _append_only, _use
from tests.services.sshd import SshServer


def _damaged_repo(repo: Path, tree: Path, run_ketch: RunKetch) -> int:
    init_repository(str(repo))
    run_ketch("save", "-d", repo, "-n", "t", tree, check=True)
    packs = list((repo / "objects" / "pack").glob("*.pack"))
    pack = max(packs, key=lambda p: p.stat().st_size)
    raw = bytearray(pack.read_bytes())
    raw[len(raw) // 2] ^= 0xFF
    pack.write_bytes(raw)
    return sum(p.stat().st_size for p in packs)


def test_server_reads_the_packs_and_reports_the_damage(sshd: SshServer, run_ketch: RunKetch,
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    build_small_tree(tree)
    repo = tmp_path / "srv" / "repo"
    size = _damaged_repo(repo, tree, run_ketch)
    with LocalRepository(str(repo)) as local:
        here = check_repository(local, read_data=100).as_dict()
    m = Machine.new(sshd, "fsck_remote")
    _use(m, monkeypatch)
    with open_location(m.url(repo)) as remote:
        there = remote.check_integrity(FsckRun(read_data=100))
        traffic = remote.traffic()
    assert there["exit_code"] == 2
    assert [p["message"] for p in there["problems"]] == [p["message"] for p in here["problems"]]
    assert any("/sub/big: blob" in p["message"] for p in there["problems"])
    assert traffic is not None and sum(traffic) < size / 20, (traffic, size)
    out = run_ketch("fsck", "-r", m.url(repo), env=m.env)
    assert out.returncode == 2 and b"/sub/big: blob" in out.stdout


def test_append_only_key_checks_but_may_not_repair(sshd: SshServer, run_ketch: RunKetch,
                                                   tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    tree = tmp_path / "tree"
    build_small_tree(tree)
    repo = tmp_path / "repos" / "web"
    _damaged_repo(repo, tree, run_ketch)
    before = sorted(os.listdir(repo / "objects" / "pack"))
    m = _append_only(sshd, "fsck_append_only", repo)
    _use(m, monkeypatch)
    with open_location(m.url(repo)) as remote:
        assert remote.check_integrity(FsckRun())["exit_code"] == 2
        with pytest.raises(AppendOnlyRepository) as e:
            remote.check_integrity(FsckRun(generate=True))
    assert "append-only: fsck -g and --repair write" in str(e.value)
    out = run_ketch("fsck", "-r", m.url(repo), "--repair", env=m.env)
    assert out.returncode == 2 and out.stderr.count(b"\n") == 1
    assert sorted(os.listdir(repo / "objects" / "pack")) == before
