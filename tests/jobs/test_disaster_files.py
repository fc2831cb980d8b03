"""Procedure 1 of docs/disaster-recovery.md, rehearsed with the real parts: a
machine backs up to a backup server over ssh (real sshd, an append-only key
from `ketch server setup-client`), night after night. Then a directory is
deleted and a file overwritten by mistake. The lines `ketch runbook --only
files` prints are run one by one, as printed (only the two fixed paths,
/mnt/ketch and /tmp/ketch-restore, moved into the test's directory): the
listings name the lost files, the FUSE mount shows every night's save, the
restore beside the live files differs from them exactly where the damage is,
and the restore in place gives the files back equal to the last save
(bytes, modes, owners, times, symlinks). The mount is gone afterwards."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.conftest import RunKetch
from tests.jobs.rehearsal import ketch_on_path, keygen, printed_commands
from tests.remote.conftest import sshd  # noqa: F401 - a fixture
from tests.remote.test_remote import Machine, future_atimes
from tests.services.mount import require_fuse
from tests.services.sshd import SshServer
from tests.test_restore import snapshot


@pytest.fixture(autouse=True)
def _fuse() -> None:
    require_fuse()


def _machine(sshd: SshServer, run_ketch: RunKetch,  # noqa: F811
             tmp_path: Path) -> tuple[Machine, Path, Path, Path]:
    """Machine web2 on the server under tmp/srv (setup-client's append-only key):
    (machine, its config, its set's directory, the server's root)."""
    srv, www = tmp_path / "srv", tmp_path / "machine" / "srv" / "www"
    key = keygen(tmp_path / "web2")
    got = run_ketch("server", "setup-client", "--root", srv, "--user", "root", "web2",
                    f"{key}.pub", check=True)
    sshd.add_authorized_line(got.stdout.decode().strip())
    m = Machine(sshd, key, remote_command="ignored")
    (www / "docs").mkdir(parents=True)
    (www / "docs" / "manual.pdf").write_bytes(os.urandom(2_500_000))
    (www / "docs" / "faq.txt").write_text("Q: where?\nA: here.\n")
    (www / "index.html").write_text("<h1>v1</h1>\n")
    os.chmod(www / "docs" / "faq.txt", 0o640)
    os.chown(www / "index.html", 33, 33)
    os.symlink("docs/manual.pdf", www / "manual")
    cfg = tmp_path / "machine" / "ketch.toml"
    cfg.write_text(f'repository = "{m.url(srv / "web2")}"\nlock_file = "{tmp_path / "lock"}"\n'
                   f'[[set]]\nname = "www"\npaths = ["{www}"]\n')
    cfg.chmod(0o600)
    future_atimes(www)
    return m, cfg, www, srv


def test_lost_files_are_found_and_restored_from_the_server(
        sshd: SshServer, run_ketch: RunKetch, tmp_path: Path) -> None:  # noqa: F811
    m, cfg, www, _ = _machine(sshd, run_ketch, tmp_path)
    run_ketch("run", "--config", cfg, "-q", env=m.env, check=True)
    (www / "index.html").write_text("<h1>v2</h1>\n")
    future_atimes(www)
    run_ketch("run", "--config", cfg, "-q", env=m.env, check=True)
    last = snapshot(www)
    book = run_ketch("runbook", "-c", cfg, "--machine", "web2", "--only", "files",
                     env=m.env, check=True).stdout.decode()

    # The accident.
    shutil.rmtree(www / "docs")
    (www / "index.html").write_text("overwritten by mistake\n")

    mnt, beside = tmp_path / "mnt", tmp_path / "ketch-restore"
    lines = [c.replace("/mnt/ketch", str(mnt)).replace("/tmp/ketch-restore", str(beside))
             for c in printed_commands(book)]
    env = ketch_on_path(tmp_path / "bin", m.env)
    outputs: list[str] = []
    try:
        for line in lines:
            done = subprocess.run(["bash", "-o", "pipefail", "-c", line], env=env,
                                  capture_output=True, timeout=300)
            out = done.stdout.decode()
            outputs.append(out)
            if line.startswith("diff -r"):
                # The damage, as the operator sees it before restoring in place.
                assert done.returncode == 1 and "Only in" in out and "docs" in out, out
                continue
            assert done.returncode == 0, (line, done.stderr.decode())
            if " mount " in line:
                saves = sorted(os.listdir(mnt / "www"))
                assert len(saves) == 3 and "latest" in saves, saves  # two nights and latest
                old = [s for s in saves if s != "latest"][0]
                assert (mnt / "www" / old / www.relative_to("/") / "index.html") \
                    .read_text() == "<h1>v1</h1>\n"
                mounted = mnt / "www" / "latest" / www.relative_to("/")
                assert (mounted / "docs" / "manual.pdf").stat().st_size == 2_500_000
    finally:
        if os.path.ismount(mnt):
            subprocess.run(["fusermount3", "-u", mnt], check=False)
    listing = "\n".join(outputs)
    assert "docs" in listing and "index.html" in listing
    assert not os.path.ismount(mnt)  # the runbook's last line unmounted it
    assert snapshot(www) == last
    assert snapshot(beside / "www") == last
