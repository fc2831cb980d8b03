"""`ketch schedule install --server`: the backup server's nightly retention
(`ketch prune --all ROOT`, then `ketch gc --all ROOT`) as a systemd timer that
`systemd-analyze verify` accepts or a cron file that /bin/sh really runs, with
the same "will it actually fire here" checks as a machine's backup."""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from ketch.jobs.model import Schedule
from ketch.jobs.schedule import SERVER_UNIT, render_cron, render_systemd
from ketch.jobs.serverjob import ServerJob
from ketch.localrepo import init_repository
from tests.conftest import RunKetch
from tests.jobs.conftest import InNamespace
from tests.jobs.test_schedule import PYTHON_ARGV, _cron_jobs, _verify, needs_analyze

SERVER_CONFIG = "/etc/ketch/server.toml"


@needs_analyze
def test_server_units_verify(tmp_path: Path) -> None:
    units = render_systemd(SERVER_CONFIG, Schedule("06:00", "0"), PYTHON_ARGV,
                           unit=SERVER_UNIT, server=ServerJob("/srv/ketch repos", "backup"))
    service = units[f"{SERVER_UNIT}.service"]
    assert "Environment=KETCH_SERVER_CONFIG=/etc/ketch/server.toml\n" in service
    assert "\nUser=backup\n" in service
    assert service.index(" prune --all ") < service.index(" gc --all ")
    assert '"/srv/ketch repos"' in service and "RandomizedDelaySec" not in service
    proc = _verify(tmp_path, units)
    assert (proc.returncode, proc.stderr) == (0, "")


@pytest.mark.parametrize("prune_exit,gc_runs", [(0, True), (1, True), (2, False)])
def test_server_cron_job_runs_prune_then_gc_in_sh(tmp_path: Path, prune_exit: int,
                                                  gc_runs: bool) -> None:
    """The job as cron hands it to /bin/sh: gc follows a prune that did not fail,
    both see the server config, and their reports are appended to the log."""
    calls = tmp_path / "calls"
    fake = tmp_path / "fake ketch"
    fake.write_text(f"#!/bin/sh\necho \"$* $KETCH_SERVER_CONFIG\" >> '{calls}'\n"
                    f"echo report of $1\n[ \"$1\" = prune ] && exit {prune_exit}\nexit 0\n")
    fake.chmod(0o755)
    config = "/etc/ketch/100% server.toml"
    root = tmp_path / "srv ketch"
    root.mkdir()
    [(fields, user, command)] = _cron_jobs(render_cron(
        config, Schedule("06:30", "0"), [str(fake)], server=ServerJob(str(root), "backup")))
    assert (fields, user) == (["30", "6", "*", "*", "*"], "backup")
    subprocess.run(["/bin/sh", "-c", command], timeout=30, env={"PATH": "/usr/bin:/bin"})
    log = root / "ketch-retention.log"
    expected = [f"prune --all {root} {config}"] + (
        [f"gc --all {root} {config}"] if gc_runs else [])
    assert calls.read_text().splitlines() == expected
    assert log.read_text().splitlines() == ["report of prune"] + (
        ["report of gc"] if gc_runs else [])


def _server_config(tmp_path: Path, time: str, root: Path | None = None) -> Path:
    path = tmp_path / "server.toml"
    path.write_text((f'root = "{root}"\n' if root else "")
                    + f'[retention]\nkeep-daily = 7\n[schedule]\ntime = "{time}"\n')
    return path


def test_cli_install_show_remove_server(tmp_path: Path, run_ketch: RunKetch,
                                       in_pid_namespace: InNamespace) -> None:
    root = tmp_path / "repos"
    root.mkdir()
    config = _server_config(tmp_path, "05:45", root)
    cron, sdir = tmp_path / "cron.d" / "ketch-retention", tmp_path / "systemd"
    where = ["-c", config, "--cron-file", cron, "--systemd-dir", sdir]
    proc = in_pid_namespace("schedule", "install", "--server", "--cron", *where,
                            cron_running=True)
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout.decode()
    assert "schedule: cron" in out and " 05:45 " in out and "at random" not in out
    [(fields, user, command)] = _cron_jobs(cron.read_text())
    assert fields[:2] == ["45", "5"] and f"prune --all {root}" in command
    assert user == pwd.getpwuid(os.getuid()).pw_name  # the owner of ROOT
    proc = in_pid_namespace("schedule", "show", "--server", "--json", *where,
                            cron_running=True)
    shown = json.loads(proc.stdout)
    assert (shown["kind"], shown["up_to_date"], proc.returncode) == ("cron", True, 0)
    # The server config moves on; the installed job does not.
    _server_config(tmp_path, "07:00", root)
    proc = in_pid_namespace("schedule", "show", "--server", *where, cron_running=True)
    assert proc.returncode == 2
    assert ("the installed schedule differs from the config (installed: 05:45, config: "
            "07:00): run `ketch schedule install --server` again") in proc.stdout.decode()
    # The machine's own backup schedule is another entry, left alone.
    machine = run_ketch("schedule", "show", "--cron-file", tmp_path / "cron.d" / "ketch",
                        "--systemd-dir", sdir, "-c", tmp_path / "no-ketch.toml")
    assert b"ketch-retention" not in machine.stdout
    proc = run_ketch("schedule", "remove", "--server", "--cron-file", cron,
                     "--systemd-dir", sdir, check=True)
    assert proc.stdout.decode() == f"removed {cron}\n"


def test_server_job_runs_as_the_owner_of_root(tmp_path: Path, run_ketch: RunKetch,
                                              request: pytest.FixtureRequest) -> None:
    """Files prune and gc write (refs, reflogs, packs) must stay writable by the
    machines' forced-command server, which runs as the repositories' owner."""
    if os.geteuid() != 0:
        pytest.skip("needs root, to give ROOT to another user")
    # Where the job's user can reach them (pytest's own directories are root's alone).
    etc = Path(tempfile.mkdtemp(prefix="ketch-server-"))
    request.addfinalizer(lambda: shutil.rmtree(etc))
    etc.chmod(0o755)
    root = etc / "repos"
    root.mkdir()
    os.chown(root, pwd.getpwnam("nobody").pw_uid, -1)
    config = _server_config(etc, "06:00", root)
    cron, sdir = tmp_path / "cron.d" / "ketch-retention", tmp_path / "systemd"
    run_ketch("schedule", "install", "--server", "--cron", "-c", config, "--cron-file", cron,
              "--systemd-dir", sdir)  # written whether or not a cron daemon runs here
    [(_, user, command)] = _cron_jobs(cron.read_text())
    assert user == "nobody" and f">>{root}/ketch-retention.log" in command
    config.chmod(0o600)  # root's alone: nobody could not read it at night
    proc = run_ketch("schedule", "install", "--server", "--cron", "-c", config, "--cron-file",
                     cron, "--systemd-dir", sdir)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.startswith(f"ketch: error: {config} is mode 600"), err
    assert err.endswith(f"the nightly job runs as nobody, who could not read it (chmod 644 "
                        f"{config}, or give it to nobody)\n")
    config.chmod(0o644)
    hidden = tmp_path / "repos"  # behind pytest's 0700 directory
    hidden.mkdir()
    os.chown(hidden, pwd.getpwnam("nobody").pw_uid, -1)
    proc = run_ketch("schedule", "install", "--server", "--cron", "-c", config, "--cron-file",
                     cron, "--systemd-dir", sdir, hidden)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and err.endswith(
        f"the nightly job runs as nobody, who could not reach {hidden}\n"), err
    # The repositories decide, not ROOT; and they must agree.
    for name, owner in (("web1", "backup"), ("db1", "daemon")):
        init_repository(str(root / name))
        os.chown(root / name, pwd.getpwnam(owner).pw_uid, -1)
    proc = run_ketch("schedule", "install", "--server", "--cron", "-c", config, "--cron-file",
                     cron, "--systemd-dir", sdir)
    assert proc.returncode == 2 and proc.stderr.decode() == (
        f"ketch: error: the repositories under {root} belong to daemon, backup: the nightly "
        "job runs as one user (chown -R the others to it)\n")


def test_server_install_checks_that_it_will_fire_and_what_it_needs(
        tmp_path: Path, run_ketch: RunKetch, in_pid_namespace: InNamespace) -> None:
    root = tmp_path / "repos"
    root.mkdir()
    config = _server_config(tmp_path, "06:00")
    cron = tmp_path / "cron.d" / "ketch-retention"
    where = ["-c", config, "--cron-file", cron, "--systemd-dir", tmp_path / "systemd"]
    proc = run_ketch("schedule", "install", "--server", *where)
    assert proc.returncode == 2
    assert proc.stderr.decode() == (f"ketch: error: which repositories? give ROOT, or set "
                                    f"root in {config}\n")
    # No cron daemon in the namespace: written, but it says it will not run.
    proc = in_pid_namespace("schedule", "install", "--server", *where, root)
    err = proc.stderr.decode()
    assert proc.returncode == 2 and len(err.splitlines()) == 1 and "cron" in err, err
    assert proc.stdout.decode() == f"wrote {cron}, but it will not run\n"
    proc = run_ketch("schedule", "install", "--server", "-c", tmp_path / "none.toml", root)
    assert proc.returncode == 2 and b"none.toml: no such file" in proc.stderr
    proc = run_ketch("schedule", "install", root)
    assert proc.returncode == 2 and b"ROOT is for --server" in proc.stderr
