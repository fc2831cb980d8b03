"""The nightly timer: units that `systemd-analyze verify` accepts, `next_run`
against `systemd-analyze calendar`, a cron line that parses (croniter plus a
strict parser here) and that /bin/sh really runs, and install/show/remove into
temporary directories (systemctl itself only where systemd is running)."""

from __future__ import annotations

import json
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from ketch.errors import UsageError
from ketch.jobs.firing import running_cron
from ketch.jobs.model import Schedule
from ketch.jobs.schedule import (
    install,
    next_run,
    parse_delay,
    parse_time,
    remove,
    render_cron,
    render_systemd,
    show,
    systemd_running,
)
from tests.conftest import RunKetch, in_ci
from tests.jobs.conftest import InNamespace

ANALYZE = shutil.which("systemd-analyze")
# CI installs it (scripts/install-deps.sh): there a missing tool must fail, not skip.
needs_analyze = pytest.mark.skipif(
    ANALYZE is None and not in_ci(),
    reason="systemd-analyze is not installed (Debian package systemd)")
PYTHON_ARGV = [os.path.abspath(sys.executable), "-m", "ketch"]  # a real executable


@pytest.fixture
def config(tmp_path: Path) -> str:
    path = tmp_path / "etc" / "ketch.toml"
    path.parent.mkdir()
    path.write_text('repository = "/srv/ketch"\n')
    return str(path)


# -- parsing ---------------------------------------------------------------------

def test_parse_time_and_delay() -> None:
    assert parse_time("22:00") == (22, 0)
    assert parse_time("7:05") == (7, 5)
    for bad in ("24:00", "22:60", "22", "10pm", "22:00:00", ""):
        with pytest.raises(UsageError):
            parse_time(bad)
    assert parse_delay("30m") == 1800
    assert parse_delay("1h 30min") == 5400
    assert parse_delay("90") == parse_delay("90s") == 90
    assert parse_delay("0") == 0
    assert parse_delay("1.5h") == 5400
    for bad in ("", "30x", "m", "-5m", "1h;rm", "30M"):
        with pytest.raises(UsageError):
            parse_delay(bad)


# -- systemd -----------------------------------------------------------------------

def test_render_systemd() -> None:
    units = render_systemd("/etc/ketch/ketch.toml", Schedule("03:07", "45m"),
                           ["/usr/local/bin/ketch"])
    assert sorted(units) == ["ketch-backup.service", "ketch-backup.timer"]
    service, timer = units["ketch-backup.service"], units["ketch-backup.timer"]
    lines = service.splitlines()
    for want in ("Type=oneshot", "Wants=network-online.target", "After=network-online.target",
                 "ExecStart=/usr/local/bin/ketch run -q --config /etc/ketch/ketch.toml",
                 "Nice=19", "IOSchedulingClass=idle", "SuccessExitStatus=1"):
        assert want in lines
    lines = timer.splitlines()
    for want in ("OnCalendar=*-*-* 03:07:00", "RandomizedDelaySec=45m", "Persistent=true",
                 "Unit=ketch-backup.service", "WantedBy=timers.target"):
        assert want in lines


def test_render_rejects_relative_paths() -> None:
    with pytest.raises(UsageError, match="absolute"):
        render_systemd("ketch.toml", Schedule(), ["/usr/bin/ketch"])
    with pytest.raises(UsageError, match="absolute"):
        render_cron("/etc/ketch/ketch.toml", Schedule(), ["ketch"])
    with pytest.raises(UsageError, match="control"):
        render_cron("/etc/ketch/k\nx.toml", Schedule(), ["/usr/bin/ketch"])


def _verify(unit_dir: Path, units: dict[str, str]) -> subprocess.CompletedProcess[str]:
    for name, text in units.items():
        (unit_dir / name).write_text(text)
    assert ANALYZE is not None
    # Plain `verify FILE...` works without a running systemd (checked in a
    # container whose PID 1 is not systemd). It exits 0 on mere warnings such as
    # an unknown key or a bad time span, so its stderr must be empty as well.
    return subprocess.run([ANALYZE, "verify", *(str(unit_dir / n) for n in units)],
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, "SYSTEMD_LOG_COLOR": "0"})


@needs_analyze
@pytest.mark.parametrize("sched", [Schedule(), Schedule("00:00", "0"),
                                   Schedule("23:59", "1h 30min"), Schedule("7:05", "90")])
def test_systemd_analyze_verify(tmp_path: Path, sched: Schedule) -> None:
    proc = _verify(tmp_path, render_systemd("/etc/ketch/ketch.toml", sched, PYTHON_ARGV))
    assert (proc.returncode, proc.stderr) == (0, "")


@needs_analyze
def test_systemd_analyze_verify_quoting(tmp_path: Path) -> None:
    # A program path with a space: quoted wrongly, systemd would look for a
    # program "…/my" and verify would fail. % and $ in the config path would be
    # specifiers and variables if not escaped.
    bindir = tmp_path / "my bin"
    bindir.mkdir()
    (bindir / "python").symlink_to(sys.executable)
    units = render_systemd("/etc/ketch/100% \"mine\" $HOME %q.toml", Schedule(),
                           [str(bindir / "python"), "-m", "ketch"])
    assert 'ExecStart="' in units["ketch-backup.service"]
    proc = _verify(tmp_path, units)
    assert (proc.returncode, proc.stderr) == (0, "")


@needs_analyze
def test_systemd_analyze_verify_catches_mistakes(tmp_path: Path) -> None:
    """The check above can fail: a broken timer and a missing program are reported."""
    units = render_systemd("/etc/ketch/ketch.toml", Schedule(), PYTHON_ARGV)
    units["ketch-backup.timer"] = units["ketch-backup.timer"].replace("00:00", "61:00")
    proc = _verify(tmp_path, units)
    assert "Failed to parse calendar specification" in proc.stderr
    units = render_systemd("/etc/ketch/ketch.toml", Schedule(), ["/nonexistent/ketch"])
    proc = _verify(tmp_path, units)
    assert proc.returncode != 0 and "/nonexistent/ketch" in proc.stderr


@pytest.fixture
def local_tz() -> Iterator[object]:
    """Switch this process's local time zone (TZ + tzset), restored afterwards."""
    old = os.environ.get("TZ")

    def switch(zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    yield switch
    if old is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = old
    time.tzset()


def _systemd_next(zone: str, spec: str, base: float) -> datetime:
    assert ANALYZE is not None
    proc = subprocess.run([ANALYZE, "calendar", f"--base-time=@{int(base)}", spec],
                          capture_output=True, text=True, timeout=60, check=True,
                          env={**os.environ, "TZ": zone})
    # "Next elapse: Mon 2026-03-30 02:30:00 CEST", then "(in UTC): …" unless local is UTC
    found = dict(re.findall(r"^\s*(Next elapse|\(in UTC\)): \w+ (\S+ \S+)", proc.stdout, re.M))
    text = found.get("(in UTC)") or found["Next elapse"]
    return datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=UTC)


@needs_analyze
@pytest.mark.parametrize("zone", ["UTC", "Europe/Berlin", "America/New_York",
                                  "Australia/Lord_Howe"])
def test_next_run_matches_systemd_calendar(zone: str, local_tz: object) -> None:
    if not Path("/usr/share/zoneinfo", zone).exists() and not in_ci():
        pytest.skip(f"no time zone data for {zone} (Debian package tzdata)")
    assert callable(local_tz)
    local_tz(zone)
    bases = [datetime(2026, m, d, h, mi, s).timestamp() for m, d, h, mi, s in [
        (1, 15, 12, 0, 0), (1, 15, 22, 0, 0), (1, 15, 21, 59, 59), (3, 7, 23, 30, 0),
        (3, 28, 23, 30, 0), (3, 29, 1, 0, 0), (4, 4, 23, 0, 0), (10, 3, 23, 0, 0), (10, 24, 23, 30, 0),
        (10, 25, 2, 45, 0), (10, 31, 23, 30, 0), (11, 1, 1, 15, 0), (12, 31, 23, 59, 0)]]
    for hhmm in ("22:00", "02:30", "02:15", "00:00", "01:30", "23:59"):
        for base in bases:
            ours = next_run(Schedule(hhmm), datetime.fromtimestamp(base, UTC))
            theirs = _systemd_next(zone, f"*-*-* {hhmm}:00", base)
            assert ours == theirs, (zone, hhmm, datetime.fromtimestamp(base))
    # Right at the first of two 02:30s (clocks going back): not again at the second.
    if zone == "Europe/Berlin":
        first = datetime(2026, 10, 25, 0, 30, tzinfo=UTC)
        assert next_run(Schedule("02:30"), first) == datetime(2026, 10, 26, 1, 30, tzinfo=UTC)


def test_next_run_naive_is_local_time() -> None:
    got = next_run(Schedule("22:00"), datetime(2026, 1, 15, 21, 0))
    assert got.replace(tzinfo=None) == datetime(2026, 1, 15, 22, 0)
    assert got.tzinfo is not None
    got = next_run(Schedule("22:00"), datetime(2026, 1, 15, 22, 0))
    assert got.replace(tzinfo=None) == datetime(2026, 1, 16, 22, 0)


# -- cron ----------------------------------------------------------------------------

_FIELD_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def _cron_jobs(text: str) -> list[tuple[list[str], str, str]]:
    """A strict reading of an /etc/cron.d file: comments, NAME=value lines and
    `M H DOM MON DOW USER COMMAND` jobs with plain numbers or *; the command
    as /bin/sh gets it (cron turns a bare % into a newline and \\% into %)."""
    assert text.endswith("\n")
    jobs = []
    for line in text.splitlines():
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        if re.fullmatch(r"[A-Z_]+=\S+", line):
            continue
        fields = line.split(None, 6)
        assert len(fields) == 7, line
        for value, (lo, hi) in zip(fields[:5], _FIELD_RANGES, strict=True):
            assert value == "*" or (value.isdigit() and lo <= int(value) <= hi), line
        command = fields[6]
        assert re.search(r"(?<!\\)%", command) is None, "an unescaped % ends the command"
        jobs.append((fields[:5], fields[5], command.replace("\\%", "%")))
    return jobs


def test_cron_line_parses() -> None:
    from croniter import croniter
    text = render_cron("/etc/ketch/ketch.toml", Schedule("03:07", "45m"),
                       ["/usr/local/bin/ketch"])
    assert "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin" in text
    [(fields, user, command)] = _cron_jobs(text)
    assert (fields, user) == (["7", "3", "*", "*", "*"], "root")
    assert command.startswith("sleep $(( $(od -An -N4 -tu4 /dev/urandom) % 2701 )); ")
    assert command.endswith("/usr/local/bin/ketch run -q --config /etc/ketch/ketch.toml >/dev/null")
    subprocess.run(["/bin/sh", "-n", "-c", command], check=True)
    expr = " ".join(fields)
    assert croniter.is_valid(expr)
    for base in (datetime(2026, 1, 15, 12, 0), datetime(2026, 7, 15, 3, 7),
                 datetime(2026, 12, 31, 23, 59)):
        theirs = croniter(expr, base).get_next(datetime)
        assert next_run(Schedule("03:07"), base).replace(tzinfo=None) == theirs


def test_cron_no_delay() -> None:
    [(fields, _, command)] = _cron_jobs(render_cron("/etc/k.toml", Schedule("0:00", "0"),
                                                    ["/usr/bin/ketch"]))
    assert fields[:2] == ["0", "0"]
    assert command == "/usr/bin/ketch run -q --config /etc/k.toml >/dev/null"


def test_cron_command_runs_in_sh(tmp_path: Path) -> None:
    """The job as cron would hand it to /bin/sh: the random sleep works in a shell
    without $RANDOM, and odd config paths arrive as one argument."""
    out = tmp_path / "args"
    fake = tmp_path / "fake ketch"
    fake.write_text(f"#!/bin/sh\nfor a; do printf '%s\\n' \"$a\"; done > '{out}'\n")
    fake.chmod(0o755)
    cfg = "/etc/ketch/100% 'mine' $HOME.toml"
    [(_, _, command)] = _cron_jobs(render_cron(cfg, Schedule("22:00", "1s"), [str(fake)]))
    subprocess.run(["/bin/sh", "-c", command], check=True, timeout=30,
                   env={"PATH": "/usr/bin:/bin"})
    assert out.read_text().splitlines() == ["run", "-q", "--config", cfg]


# -- install / show / remove ----------------------------------------------------------

def test_install_cron(tmp_path: Path, config: str) -> None:
    cron, sdir = tmp_path / "cron.d" / "ketch", tmp_path / "systemd"
    sched = Schedule("01:30", "10m")
    info = install(config, sched, cron_path=str(cron), systemd_dir=str(sdir), use_systemd=False)
    assert (info.kind, info.files, info.up_to_date) == ("cron", [str(cron)], True)
    assert stat.S_IMODE(cron.stat().st_mode) == 0o644  # cron ignores group/world-writable
    assert cron.read_text() == render_cron(config, sched, info_argv(cron.read_text()))
    assert not sdir.exists()
    again = show(config, sched, cron_path=str(cron), systemd_dir=str(sdir))
    assert (again.kind, again.up_to_date, again.delay_seconds) == ("cron", True, 600)
    assert show(config, Schedule("02:00"), cron_path=str(cron),
                systemd_dir=str(sdir)).up_to_date is False
    gone = remove(cron_path=str(cron), systemd_dir=str(sdir), run_systemctl=False)
    assert (gone.kind, gone.files) == ("cron", [str(cron)])
    assert not cron.exists()
    assert remove(cron_path=str(cron), systemd_dir=str(sdir)).files == []


def info_argv(cron_text: str) -> list[str]:
    """The program install chose, read back from the job line."""
    [(_, _, command)] = _cron_jobs(cron_text)
    return [command.split("; ")[-1].split(" run -q --config ")[0]]


def test_install_systemd_files_then_switch_to_cron(tmp_path: Path, config: str) -> None:
    cron, sdir = tmp_path / "cron.d" / "ketch", tmp_path / "systemd"
    sched = Schedule("22:00", "30m")
    info = install(config, sched, ketch_argv=PYTHON_ARGV, cron_path=str(cron),
                   systemd_dir=str(sdir), use_systemd=True, run_systemctl=False)
    assert info.kind == "systemd" and info.units_present and info.up_to_date
    for name, text in render_systemd(config, sched, PYTHON_ARGV).items():
        assert (sdir / name).read_text() == text
        assert stat.S_IMODE((sdir / name).stat().st_mode) == 0o644
    assert any("not enabled" in n for n in info.notes)
    assert info.systemctl is None
    as_json = json.loads(json.dumps(info.as_dict()))
    assert as_json["kind"] == "systemd" and as_json["installed_time"] == "22:00"
    if not systemd_running():  # as in a container: the timer would never fire
        assert "not running as PID 1" in as_json["problem"]
        assert as_json["next_run"] is None

    # Switching to cron removes the units (the backup must not run twice).
    info = install(config, sched, ketch_argv=PYTHON_ARGV, cron_path=str(cron),
                   systemd_dir=str(sdir), use_systemd=False, run_systemctl=False)
    assert info.kind == "cron" and not list(sdir.iterdir())
    assert any("removed the systemd units" in n for n in info.notes)


def test_install_refuses(tmp_path: Path, config: str) -> None:
    kw: dict[str, Any] = {"cron_path": str(tmp_path / "cron"), "systemd_dir": str(tmp_path / "sd"),
          "use_systemd": False}
    with pytest.raises(UsageError, match="absolute"):
        install("etc/ketch.toml", Schedule(), **kw)
    with pytest.raises(UsageError, match="no such config"):
        install(str(tmp_path / "missing.toml"), Schedule(), **kw)
    with pytest.raises(UsageError, match="enabled = false"):
        install(config, Schedule(enabled=False), **kw)
    with pytest.raises(UsageError, match="not an executable"):
        install(config, Schedule(), ketch_argv=["/nonexistent/ketch"], **kw)
    assert not (tmp_path / "cron").exists()


def test_install_systemd_without_systemd_is_refused(tmp_path: Path, config: str,
                                                    in_pid_namespace: InNamespace) -> None:
    # In a PID namespace of its own PID 1 is not systemd, whatever the machine runs.
    code = ("import sys\n"
            "from ketch.errors import UsageError\n"
            "from ketch.jobs.model import Schedule\n"
            "from ketch.jobs.schedule import install\n"
            "try:\n"
            "    install(sys.argv[1], Schedule(), systemd_dir=sys.argv[2], use_systemd=True)\n"
            "except UsageError as e:\n"
            "    print(e)\n")
    proc = in_pid_namespace(config, tmp_path, code=code)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().startswith("systemd is not running here"), proc.stdout
    assert not list(tmp_path.glob("ketch-backup.*"))


@pytest.mark.allowed_skip("a container (CI's included) cannot run systemd as PID 1")
@pytest.mark.skipif(not systemd_running() or os.geteuid() != 0,
                    reason="needs a running systemd and root (here: a container without "
                           "systemd as PID 1)")
def test_install_with_real_systemctl(config: str) -> None:
    # A throwaway unit name in the runtime unit directory (gone at reboot), so
    # a real `ketch-backup` timer on this machine is left alone.
    unit = f"ketch-test-{uuid.uuid4().hex[:8]}"
    sdir = "/run/systemd/system"
    try:
        info = install(config, Schedule("22:00", "30m"), systemd_dir=sdir, unit=unit,
                       cron_path="/nonexistent/cron.d/ketch-test", use_systemd=True)
        assert info.kind == "systemd" and info.systemctl and f"{unit}.timer" in info.systemctl
    finally:
        remove(systemd_dir=sdir, unit=unit, cron_path="/nonexistent/cron.d/ketch-test")
    assert not Path(sdir, f"{unit}.timer").exists()


def test_cli_install_show_remove(tmp_path: Path, config: str, run_ketch: RunKetch,
                                in_pid_namespace: InNamespace) -> None:
    Path(config).write_text('repository = "/srv/ketch"\n[schedule]\ntime = "04:05"\n'
                            'randomized_delay = "5m"\n')
    cron, sdir = tmp_path / "cron.d" / "ketch", tmp_path / "systemd"
    where = ["--cron-file", cron, "--systemd-dir", sdir]
    proc = in_pid_namespace("schedule", "install", "--cron", "-c", config, *where,
                            cron_running=True)
    assert proc.returncode == 0, proc.stderr
    assert b"schedule: cron" in proc.stdout and b"next run: " in proc.stdout
    [(fields, user, _), (drill_fields, _, drill)] = _cron_jobs(cron.read_text())
    assert fields[:2] == ["5", "4"] and user == "root"
    # The restore drill, weekly by default ([drill] schedule = "Sun 04:00").
    assert drill_fields == ["0", "4", "*", "*", "0"] and " drill -q --config " in drill
    proc = in_pid_namespace("schedule", "show", "--json", "-c", config, *where,
                            cron_running=True)
    shown = json.loads(proc.stdout)
    assert (shown["kind"], shown["time"], shown["up_to_date"]) == ("cron", "04:05", True)
    assert (shown["delay_seconds"], shown["problem"], proc.returncode) == (300, None, 0)
    proc = run_ketch("schedule", "remove", *where, check=True)
    assert proc.stdout.decode() == f"removed {cron}\n"
    proc = run_ketch("schedule", "show", "--config", config, *where)
    assert proc.stdout.startswith(b"schedule: not installed")
    assert b"next run" not in proc.stdout
    assert proc.returncode == 1  # enabled in the config, yet nothing will run it


# -- will it fire? -----------------------------------------------------------------------

def _sched_config(config: str, time_: str) -> None:
    Path(config).write_text(f'repository = "/srv/ketch"\n[schedule]\ntime = "{time_}"\n'
                            'randomized_delay = "5m"\n')


def test_running_cron_sees_a_real_process_named_cron(tmp_path: Path) -> None:
    fake = tmp_path / "cron"
    shutil.copy(shutil.which("sleep") or "/bin/sleep", fake)
    proc = subprocess.Popen([fake, "600"])
    try:
        deadline = time.monotonic() + 10
        while Path(f"/proc/{proc.pid}/comm").read_text() != "cron\n":  # exec done
            assert time.monotonic() < deadline
            time.sleep(0.01)
        assert (proc.pid, "cron") in running_cron()
    finally:
        proc.kill()
        proc.wait()
    assert proc.pid not in [pid for pid, _ in running_cron()]


def test_install_without_a_cron_daemon_fails_here(tmp_path: Path, config: str,
                                                  run_ketch: RunKetch,
                                                  in_pid_namespace: InNamespace) -> None:
    """No cron daemon running (the issue's container; made so by a PID namespace,
    whatever runs on the machine)."""
    _sched_config(config, "04:05")
    cron = tmp_path / "cron.d" / "ketch"
    where = ["--cron-file", cron, "--systemd-dir", tmp_path / "systemd"]
    proc = in_pid_namespace("schedule", "install", "-c", config, *where)
    err = proc.stderr.decode()
    assert proc.returncode == 2, err
    assert len(err.splitlines()) == 1 and err.startswith("ketch: error: ")
    assert ("no cron daemon is running: apt-get install cron && service cron start" in err
            or "is installed but not running: service cron" in err)
    assert "your own scheduler" in err
    assert b"next run" not in proc.stdout
    assert proc.stdout.decode() == f"wrote {cron}, but it will not run\n"
    assert cron.exists()  # ready for when the daemon is started

    proc = in_pid_namespace("schedule", "show", "-c", config, *where)
    assert proc.returncode == 2
    assert b"next run" not in proc.stdout and b"04:05" not in proc.stdout
    assert proc.stderr.decode() == err


def test_install_and_show_in_a_namespace(tmp_path: Path, config: str,
                                         in_pid_namespace: InNamespace) -> None:
    """The same files with and without a cron daemon in the process table."""
    _sched_config(config, "04:05")
    cron = tmp_path / "cron.d" / "ketch"
    where = ["--cron-file", cron, "--systemd-dir", tmp_path / "systemd"]
    proc = in_pid_namespace("schedule", "install", "-c", config, *where)
    assert proc.returncode == 2 and b"cron" in proc.stderr and b"next run" not in proc.stdout
    proc = in_pid_namespace("schedule", "show", "-c", config, *where)
    assert proc.returncode == 2 and b"next run" not in proc.stdout

    proc = in_pid_namespace("schedule", "show", "-c", config, *where, cron_running=True)
    assert (proc.returncode, proc.stderr) == (0, b"")
    [nxt] = [ln for ln in proc.stdout.decode().splitlines() if ln.startswith("next run: ")]
    assert " 04:05 " in nxt

    # The config moves on; the installed entry does not: show says so, and the
    # next run is the installed entry's, not the config's.
    _sched_config(config, "05:30")
    proc = in_pid_namespace("schedule", "show", "-c", config, *where, cron_running=True)
    out = proc.stdout.decode()
    assert proc.returncode == 2, out
    assert ("note: the installed schedule differs from the config (installed: 04:05, "
            "config: 05:30): run `ketch schedule install` again") in out
    [nxt] = [ln for ln in out.splitlines() if ln.startswith("next run: ")]
    assert " 04:05 " in nxt and "05:30" not in nxt
    proc = in_pid_namespace("schedule", "install", "-c", config, *where, cron_running=True)
    assert proc.returncode == 0 and b" 05:30 " in proc.stdout


def test_systemd_timer_without_systemd_as_pid1(tmp_path: Path, config: str,
                                               in_pid_namespace: InNamespace) -> None:
    """In a PID namespace, PID 1 is never systemd: a timer there would not fire."""
    _sched_config(config, "04:05")
    sdir = tmp_path / "systemd"
    install(config, Schedule("04:05", "5m"), systemd_dir=str(sdir), use_systemd=True,
            run_systemctl=False, cron_path=str(tmp_path / "cron"))
    proc = in_pid_namespace("schedule", "show", "-c", config, "--systemd-dir", sdir,
                            "--cron-file", tmp_path / "cron", cron_running=True)
    assert proc.returncode == 2
    assert proc.stderr.decode().startswith("ketch: error: systemd is not running as PID 1 "
                                           "here, so the timer never fires")
    assert b"next run" not in proc.stdout
