"""`ketch config init|check` as a user meets them: questions on a real
pseudo-terminal, answers piped in, set paths that do not exist, a repository
that opens but cannot be written, a schedule that will not fire."""

from __future__ import annotations

import os
import select
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from ketch.jobs.config import load_config
from ketch.jobs.configinit import DEFAULT_REPOSITORY
from ketch.jobs.model import Schedule
from ketch.jobs.schedule import install
from ketch.localrepo import init_repository
from tests.conftest import RunKetch, _subprocess_env
from tests.jobs.conftest import InNamespace


class Terminal:
    """A ketch command on a pseudo-terminal: wait for a prompt, type an answer."""

    def __init__(self, *args: str | Path) -> None:
        self.master, slave = os.openpty()
        self.proc = subprocess.Popen([sys.executable, "-m", "ketch", *map(os.fspath, args)],
                                     stdin=slave, stdout=slave, stderr=slave,
                                     env=_subprocess_env({"TERM": "dumb"}),
                                     start_new_session=True)
        os.close(slave)
        self.out, self.seen = "", 0

    def _read(self, timeout: float = 60) -> bool:
        ready, _, _ = select.select([self.master], [], [], timeout)
        assert ready, f"no output for {timeout} s; so far:\n{self.out}"
        try:
            data = os.read(self.master, 4096)
        except OSError:  # EIO: the program ended and closed the terminal
            return False
        self.out += data.decode(errors="replace")
        return bool(data)

    def answer(self, prompt: str, text: str) -> None:
        while prompt not in self.out[self.seen:]:
            assert self._read(), f"ended before {prompt!r}:\n{self.out}"
        self.seen = self.out.index(prompt, self.seen) + len(prompt)
        os.write(self.master, text.encode() + b"\n")

    def finish(self) -> int:
        while self._read():
            pass
        os.close(self.master)
        return self.proc.wait(timeout=60)


def test_init_on_a_terminal_takes_named_sets_and_asks_about_missing_paths(
        tmp_path: Path) -> None:
    etc, www, www2 = tmp_path / "etc", tmp_path / "www", tmp_path / "www2"
    for d in (etc, www, www2):
        d.mkdir()
    cfg = tmp_path / "conf" / "ketch.toml"
    term = Terminal("config", "init", "-c", cfg, "--no-detect")
    term.answer("Where should backups go?", str(tmp_path / "repo"))
    term.answer("Which directories should be backed up?", f"etc={tmp_path}/nonexistent")
    term.answer("Keep it anyway? [y/N]", "n")
    term.answer("Which directories should be backed up?", f"etc={etc} web={www},{www2}")
    term.answer("When should the nightly backup start?", "03:00")
    assert term.finish() == 0, term.out
    assert f"{tmp_path}/nonexistent: does not exist; a run fails the set" in term.out
    loaded = load_config(str(cfg))
    assert [(s.name, s.paths) for s in loaded.sets] == [("etc", [str(etc)]),
                                                        ("web", [str(www), str(www2)])]
    assert loaded.schedule.time == "03:00"


def test_init_on_a_terminal_keeps_a_missing_path_when_told(tmp_path: Path) -> None:
    cfg = tmp_path / "ketch.toml"
    term = Terminal("config", "init", "-c", cfg, "--no-detect", "--repository",
                    tmp_path / "repo", "--time", "03:00", "--set", f"later={tmp_path}/later")
    term.answer("Keep it anyway? [y/N]", "y")
    assert term.finish() == 0, term.out
    assert load_config(str(cfg)).sets[0].paths == [f"{tmp_path}/later"]


def test_init_from_a_pipe_without_yes_refuses_to_guess(run_ketch: RunKetch,
                                                       tmp_path: Path) -> None:
    cfg = tmp_path / "ketch.toml"
    had_default = os.path.exists(DEFAULT_REPOSITORY)
    proc = run_ketch("config", "init", "-c", cfg,
                     input=f"{tmp_path}/repo\n/etc\n03:00\n".encode())
    assert proc.returncode == 2
    assert proc.stderr.decode() == ("ketch: error: no terminal to ask on: give --repository "
                                    "and --set, or --yes to take the defaults\n")
    assert not cfg.exists() and not (tmp_path / "repo").exists()
    assert os.path.exists(DEFAULT_REPOSITORY) == had_default
    # Every answer given as a flag: nothing to guess.
    (tmp_path / "etc").mkdir()
    run_ketch("config", "init", "-c", cfg, "--repository", tmp_path / "repo", "--set",
              f"etc={tmp_path}/etc", "--no-detect", check=True)
    assert load_config(str(cfg)).repository == str(tmp_path / "repo")


def test_a_missing_set_path_is_an_error_in_init_check_and_run(run_ketch: RunKetch,
                                                              tmp_path: Path) -> None:
    cfg = tmp_path / "ketch.toml"
    flags = ["config", "init", "-c", cfg, "--repository", tmp_path / "repo", "--no-detect",
             "--set", f"etc={tmp_path}/nonexistent"]
    proc = run_ketch(*flags)
    assert proc.returncode == 2
    assert proc.stderr.decode() == (f"ketch: error: {tmp_path}/nonexistent: does not exist (a "
                                    "run would fail its set): create it first, or pass "
                                    "--allow-missing\n")
    assert not cfg.exists() and not (tmp_path / "repo").exists()

    run_ketch(*flags, "--allow-missing", check=True)
    proc = run_ketch("config", "check", "-c", cfg,
                     env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 2
    assert (f"✗ set etc: {tmp_path}/nonexistent: does not exist (a run fails this set until "
            "it does)") in proc.stdout.decode()
    proc = run_ketch("run", "-c", cfg, env={"XDG_STATE_HOME": str(tmp_path / "state")})
    assert proc.returncode == 2


def _config(tmp_path: Path, repo: Path, extra: str = "") -> Path:
    (tmp_path / "data").mkdir(exist_ok=True)
    cfg = tmp_path / "ketch.toml"
    cfg.write_text(f'repository = "{repo}"\nlog_file = "{tmp_path}/log/ketch.log"\n'
                   f'lock_file = "{tmp_path}/ketch.lock"\n[[set]]\nname = "data"\n'
                   f'paths = ["{tmp_path}/data"]\n{extra}')
    return cfg


def test_check_writes_into_the_repository(run_ketch: RunKetch, tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    init_repository(str(repo))
    cfg = _config(tmp_path, repo)
    proc = run_ketch("config", "check", "-c", cfg)
    assert f"✓ repository {repo}: opens; 0 branches, writable\n" in proc.stdout.decode()
    assert os.listdir(repo / "objects" / "pack") == []  # the probe left nothing

    # Opens and reads fine, yet a save could not write a pack: a read-only mount.
    pack = repo / "objects" / "pack"
    script = f'mount --bind -o ro "{pack}" "{pack}" && exec "$@"'
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("unshare is not installed")
    proc = subprocess.run([unshare, "--mount", "/bin/sh", "-c", script, "sh", sys.executable,
                           "-m", "ketch", "config", "check", "-c", str(cfg)],
                          capture_output=True, env=_subprocess_env(None), timeout=120,
                          check=False)
    if b"mount" in proc.stderr and b"ketch" not in proc.stderr:
        pytest.skip(f"cannot bind-mount here: {proc.stderr.decode().strip()}")
    assert proc.returncode == 2
    assert (f"✗ repository {repo}: opens; 0 branches, but cannot write to {pack}: "
            "Read-only file system\n") in proc.stdout.decode()


def test_check_fails_an_installed_schedule_that_will_not_fire(
        tmp_path: Path, in_pid_namespace: InNamespace) -> None:
    # No cron daemon in a PID namespace of its own, whatever runs on the machine.
    repo = tmp_path / "repo"
    init_repository(str(repo))
    cfg = _config(tmp_path, repo)
    cron = tmp_path / "cron.d" / "ketch"
    install(str(cfg), Schedule(), cron_path=str(cron), systemd_dir=str(tmp_path / "sd"),
            use_systemd=False)
    proc = in_pid_namespace("config", "check", "-c", cfg, "--cron-file", cron,
                            "--systemd-dir", tmp_path / "sd")
    assert proc.returncode == 2
    [line] = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("✗")]
    assert line.startswith(f"✗ schedule (cron: {cron}): ")
    assert "cron" in line and "your own scheduler" in line


def test_check_of_the_schedule_with_a_cron_daemon(tmp_path: Path,
                                                  in_pid_namespace: InNamespace) -> None:
    repo = tmp_path / "repo"
    init_repository(str(repo))
    cfg = _config(tmp_path, repo, '[notify]\nping_url = "https://hc-ping.com/x"\n')
    cron, sd = tmp_path / "cron.d" / "ketch", tmp_path / "sd"
    where = ["--cron-file", cron, "--systemd-dir", sd]
    proc = in_pid_namespace("config", "check", "-c", cfg, *where, cron_running=True)
    assert proc.returncode == 1  # not installed yet
    assert "! schedule: not installed (`ketch schedule install`)\n" in proc.stdout.decode()

    install(str(cfg), load_config(str(cfg)).schedule, cron_path=str(cron),
            systemd_dir=str(sd), use_systemd=False, drill=load_config(str(cfg)).drill.scheduled)
    proc = in_pid_namespace("config", "check", "-c", cfg, *where, cron_running=True)
    out = proc.stdout.decode()
    assert proc.returncode == 0, out
    assert f"✓ schedule (cron: {cron}): daily at 22:00, up to 30m later; next run " in out
    assert "; restore drill Sun 04:00\n" in out

    cfg.write_text(cfg.read_text() + '[schedule]\ntime = "23:15"\n')
    proc = in_pid_namespace("config", "check", "-c", cfg, *where, cron_running=True)
    out = proc.stdout.decode()
    assert proc.returncode == 2, out
    assert (f"✗ schedule (cron: {cron}): the installed schedule differs from the config "
            "(installed: 22:00, config: 23:15): run `ketch schedule install` again") in out
