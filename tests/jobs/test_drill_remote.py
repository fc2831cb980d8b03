"""`ketch drill` of a repository on a backup server over real ssh, with an
append-only key as a backup server hands out: the report is stored on the
server's refs/ketch/drill (the one ref outside branches and tags that
update-ref accepts), and gc there keeps it. And of an S3 mirror (real
SeaweedFS), which is read-only: the drill runs, the report is not stored."""

from __future__ import annotations

from pathlib import Path

from ketch.jobs.drillreport import read_reports
from ketch.lifecycle.gc import collect
from ketch.localrepo import LocalRepository
from tests.conftest import RunKetch
from tests.offsite.conftest import s3_env, s3_server, s3_url  # noqa: F401 - fixtures
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import KETCH_SERVER, Machine, build_small_tree, fsck
from tests.services.sshd import SshServer


def test_drill_over_ssh_stores_its_report_on_the_server(
        sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> None:  # noqa: F811
    repo = tmp_path / "srv" / "repo"
    run_ketch("init", "-d", repo, check=True)
    data = tmp_path / "data"
    build_small_tree(data)
    m = Machine.new(sshd, "drill-append-only", forced=f"{KETCH_SERVER} --append-only")
    config = tmp_path / "ketch.toml"
    config.write_text(f'repository = "{m.url(repo)}"\n[[set]]\nname = "files"\n'
                      f'paths = ["{data}"]\n')
    run_ketch("run", "-q", "--config", config, env=m.env, check=True)
    for _ in range(2):  # the second drill's report moves the ref forward: append-only allows it
        proc = run_ketch("drill", "--config", config, env=m.env)
        out = proc.stdout.decode()
        assert proc.returncode == 0, out + proc.stderr.decode()
        assert "set files" in out and "2 of 2 files passed" in out and "report stored" in out
    server = LocalRepository(str(repo))
    reports = read_reports(server)
    assert [r["status"] for r in reports] == ["OK", "OK"]
    fsck(repo)
    # gc's roots are all refs: the reports (reachable only from refs/ketch/drill) stay.
    collect(server, threshold=0.0)
    server.close()
    assert len(read_reports(LocalRepository(str(repo)))) == 2
    fsck(repo)


def test_drill_of_an_s3_mirror_reports_but_cannot_store(
        s3_url: str, run_ketch: RunKetch, tmp_path: Path) -> None:  # noqa: F811
    repo = tmp_path / "repo"
    run_ketch("init", "-d", repo, check=True)
    data = tmp_path / "data"
    build_small_tree(data)
    run_ketch("save", "-d", repo, "-n", "files", data, check=True)
    run_ketch("mirror", "push", repo, s3_url, check=True)
    config = tmp_path / "ketch.toml"
    config.write_text(f'repository = "{s3_url}/repo"\n[[set]]\nname = "files"\n'
                      f'paths = ["{data}"]\n')
    proc = run_ketch("drill", "--config", config)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out + proc.stderr.decode()
    assert "set files" in out and "2 of 2 files passed" in out
    assert "note: report not stored in the repository: " in out and "read-only" in out
