"""The nightly `ketch run`: a systemd timer, or an /etc/cron.d entry where
systemd is not running.

Rendering (`render_systemd`, `render_cron`) and `next_run` are pure; only
`install` and `remove` touch the system (files, `systemctl`). Both kinds run at
the config's `[schedule] time` in the machine's local time zone, after a random
delay of up to `randomized_delay`, so a fleet of machines does not hit one
backup server at the same second.

On a backup server (a `ServerJob`: `schedule install --server ROOT`) the job is
retention instead: `ketch prune --all ROOT`, then `ketch gc --all ROOT`
(skipped when prune failed), with the server config in $KETCH_SERVER_CONFIG,
at the server config's `[schedule] time`, without a random delay, and as the
user who owns ROOT. Beside the nightly run: the restore drill (`ketch drill`, at
`[drill] schedule`), its own systemd units, or a second line in the cron file.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

from ketch.errors import KetchError, UsageError
from ketch.jobs.drillschedule import DRILL_UNIT, render_drill_cron_line, render_drill_systemd
from ketch.jobs.firing import SYSTEMD_RUNNING_FLAG, systemd_is_init, why_it_will_not_fire
from ketch.jobs.model import Schedule
from ketch.jobs.serverjob import USER_RX, ServerJob

UNIT = "ketch-backup"
SERVER_UNIT = "ketch-retention"
SYSTEMD_DIR = "/etc/systemd/system"
CRON_PATH = "/etc/cron.d/ketch"
SERVER_CRON_PATH = "/etc/cron.d/ketch-retention"
MARKER = "# Written by `ketch schedule install`; `ketch schedule remove` deletes it."
SERVER_MARKER = ("# Written by `ketch schedule install --server`; `ketch schedule remove --server` "
                 "deletes it.")
# cron starts jobs with PATH=/usr/bin:/bin, where mysqldump in /usr/sbin or a
# pg_dump in /usr/local/bin would not be found.
CRON_ENV_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_TIME_RX = re.compile(r"(\d{1,2}):(\d{2})")
# A subset of systemd.time(7) time spans, so whatever we accept systemd accepts too.
_SPAN_UNITS: dict[str, float] = {
    "ms": 0.001, "msec": 0.001, "": 1, "s": 1, "sec": 1, "secs": 1, "second": 1, "seconds": 1,
    "m": 60, "min": 60, "mins": 60, "minute": 60, "minutes": 60,
    "h": 3600, "hr": 3600, "hour": 3600, "hours": 3600,
    "d": 86400, "day": 86400, "days": 86400, "w": 604800, "week": 604800, "weeks": 604800,
}
_SPAN_RX = re.compile(r"\s*(\d+(?:\.\d+)?)\s*([a-z]*)\s*")


@dataclass
class ScheduleInfo:
    """What is installed (or was just installed/removed) and when it runs next."""

    kind: str | None  # "systemd", "cron", or None: nothing installed
    files: list[str] = field(default_factory=list)  # our files that exist (removed: deleted)
    units_present: bool = False  # every file of `kind` exists
    up_to_date: bool | None = None  # installed files equal what install would write now
    time: str = ""
    randomized_delay: str = ""
    delay_seconds: int = 0
    enabled: bool = True
    installed_time: str | None = None  # HH:MM read back from the installed entry
    next_run: datetime | None = None  # of the installed entry, before the random delay
    problem: str | None = None  # why the installed entry will not fire here
    systemctl: str | None = None  # `systemctl list-timers` output, when systemd runs
    notes: list[str] = field(default_factory=list)

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["next_run"] = self.next_run.isoformat() if self.next_run else None
        return d


def parse_time(text: str) -> tuple[int, int]:
    """`HH:MM` (24-hour, local time) -> (hour, minute)."""
    m = _TIME_RX.fullmatch(text.strip())
    if not m or int(m[1]) > 23 or int(m[2]) > 59:
        raise UsageError(f"schedule time {text!r}: use HH:MM, 24-hour local time, e.g. 22:00")
    return int(m[1]), int(m[2])


def parse_delay(text: str) -> int:
    """A systemd time span (`30m`, `1h 30min`, `90`) -> whole seconds."""
    # Case matters as in systemd, where "M" is a month and "m" a minute.
    total, pos, text = 0.0, 0, text.strip()
    while pos < len(text):
        m = _SPAN_RX.match(text, pos)
        if not m or m.end() == pos or m[2] not in _SPAN_UNITS:
            raise UsageError(f"randomized_delay {text!r}: use a time span like 30m, 1h or 90s")
        total += float(m[1]) * _SPAN_UNITS[m[2]]
        pos = m.end()
    if not text:
        raise UsageError("randomized_delay is empty: use 0 for no delay")
    return int(total)


def next_run(sched: Schedule, now: datetime | None = None) -> datetime:
    """When the timer next elapses after `now`, before its random delay, as
    systemd computes `OnCalendar=*-*-* HH:MM:00` in local time (naive `now` is
    local time): on a day whose HH:MM the clocks jump over, it does not run; on
    a day with HH:MM twice, it runs at the first one only."""
    hour, minute = parse_time(sched.time)
    now_ts = (now or datetime.now()).timestamp()
    day = datetime.fromtimestamp(now_ts).date()
    for offset in range(4):
        d = day + timedelta(days=offset)
        times = []
        for isdst in (1, 0):  # both readings of an hour that happens twice
            try:
                ts = time.mktime((d.year, d.month, d.day, hour, minute, 0, 0, 0, isdst))
            except (OverflowError, ValueError):
                continue
            lt = time.localtime(ts)
            if (lt.tm_mday, lt.tm_hour, lt.tm_min) == (d.day, hour, minute):
                times.append(ts)
        if times and min(times) > now_ts:
            return datetime.fromtimestamp(min(times)).astimezone()
    raise KetchError(f"no local time {sched.time} in the next days (time zone data?)")


def default_ketch_argv() -> list[str]:
    """How the timer starts ketch: this installation's `ketch` script (next to
    the running interpreter, so a venv's ketch is not swapped for another one on
    PATH), else `ketch` on PATH, else `python -m ketch`."""
    sibling = Path(sys.executable).parent / "ketch"
    if os.access(sibling, os.X_OK):
        return [os.path.abspath(sibling)]
    found = shutil.which("ketch")
    if found:
        return [os.path.abspath(found)]
    return [os.path.abspath(sys.executable), "-m", "ketch"]


def _check_args(config_path: str, ketch_argv: list[str], server: ServerJob | None = None) -> None:
    if not os.path.isabs(config_path):
        raise UsageError(f"config path {config_path!r} must be absolute: the timer runs in /")
    if server is not None and not os.path.isabs(server.root):
        raise UsageError(f"ROOT {server.root!r} must be absolute: the timer runs in /")
    if server is not None and not USER_RX.match(server.user):
        raise UsageError(f"user {server.user!r}: not a name a unit or crontab can hold")
    if not ketch_argv or not os.path.isabs(ketch_argv[0]):
        raise UsageError(f"ketch command {ketch_argv!r}: the program must be an absolute path")
    for arg in [config_path, *ketch_argv, *([server.root] if server else [])]:
        if any(ord(c) < 32 or c == "\x7f" for c in arg):
            raise UsageError(f"{arg!r}: control characters cannot be written into a unit or crontab")


def _systemd_quote(arg: str) -> str:
    """One ExecStart= word: `%` is a unit specifier and `$` a variable there."""
    arg = arg.replace("%", "%%").replace("$", "$$")
    if re.fullmatch(r"[\w./:=@+,-]+", arg):
        return arg
    return '"' + arg.replace("\\", "\\\\").replace('"', '\\"') + '"'


def render_systemd(config_path: str, sched: Schedule, ketch_argv: list[str], *,
                   unit: str = UNIT, server: ServerJob | None = None) -> dict[str, str]:
    """`{UNIT.service: text, UNIT.timer: text}` for `ketch run --config CONFIG`
    (with `server`: the backup server's prune and gc of its ROOT)."""
    if server is not None:
        return _render_server_systemd(config_path, sched, ketch_argv, unit, server)
    _check_args(config_path, ketch_argv)
    hour, minute = parse_time(sched.time)
    delay = sched.randomized_delay.strip()
    parse_delay(delay)
    exec_start = " ".join(_systemd_quote(a) for a in [*ketch_argv, "run", "-q", "--config", config_path])
    service = f"""{MARKER}
# config: {config_path}
[Unit]
Description=ketch backup
# A remote repository needs the network; a local one does not mind waiting for it.
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={exec_start}
# 1 = completed with warnings: reported by the run itself, not a failed unit.
SuccessExitStatus=1
# A backup should not slow down the machine's real work.
Nice=19
IOSchedulingClass=idle
"""
    timer = f"""{MARKER}
[Unit]
Description=nightly ketch backup at {hour:02d}:{minute:02d}

[Timer]
OnCalendar=*-*-* {hour:02d}:{minute:02d}:00
# Spread a fleet's runs so they do not all hit one backup server at once.
RandomizedDelaySec={delay}
# A machine that was off at {hour:02d}:{minute:02d} catches up when it boots.
Persistent=true
Unit={unit}.service

[Install]
WantedBy=timers.target
"""
    return {f"{unit}.service": service, f"{unit}.timer": timer}


def _render_server_systemd(config_path: str, sched: Schedule, ketch_argv: list[str], unit: str,
                           server: ServerJob) -> dict[str, str]:
    _check_args(config_path, ketch_argv, server)
    root = server.root
    hour, minute = parse_time(sched.time)
    prune, gc = (" ".join(_systemd_quote(a) for a in [*ketch_argv, verb, "--all", root])
                 for verb in ("prune", "gc"))
    env = _systemd_quote(f"KETCH_SERVER_CONFIG={config_path}")
    service = f"""{SERVER_MARKER}
# config: {config_path}
[Unit]
Description=ketch retention of the repositories under {root.replace("%", "%%")}

[Service]
Type=oneshot
# The repositories' owner: what prune and gc write stays writable by its server.
User={server.user}
Environment={env}
# One after the other; gc only when prune did not fail (1 = warnings is fine).
ExecStart={prune}
ExecStart={gc}
SuccessExitStatus=1
Nice=19
# Not the idle class: on a busy server it could starve gc for the whole night.
IOSchedulingClass=best-effort
IOSchedulingPriority=7
"""
    timer = f"""{SERVER_MARKER}
[Unit]
Description=nightly ketch retention at {hour:02d}:{minute:02d}

[Timer]
OnCalendar=*-*-* {hour:02d}:{minute:02d}:00
# A server that was off at {hour:02d}:{minute:02d} catches up when it boots.
Persistent=true
Unit={unit}.service

[Install]
WantedBy=timers.target
"""
    return {f"{unit}.service": service, f"{unit}.timer": timer}


def _render_server_cron(config_path: str, sched: Schedule, ketch_argv: list[str],
                        server: ServerJob) -> str:
    _check_args(config_path, ketch_argv, server)
    hour, minute = parse_time(sched.time)
    env = f"KETCH_SERVER_CONFIG={shlex.quote(config_path)}"
    prune, gc = (f"{env} {shlex.join([*ketch_argv, verb, '--all', server.root])}"
                 for verb in ("prune", "gc"))
    command = (f"{{ {prune}; [ $? -le 1 ] && {gc}; }} >>{shlex.quote(server.log)}"
               ).replace("%", "\\%")
    return f"""{SERVER_MARKER}
# config: {config_path}
# Nightly at {hour:02d}:{minute:02d}: prune, then gc (only if prune did not fail), of
# every repository under {server.root}, as their owner {server.user}.
# Reports go to {server.log}; cron mails what reaches stderr (errors).
SHELL=/bin/sh
PATH={CRON_ENV_PATH}
{minute} {hour} * * * {server.user} {command}
"""


def render_cron(config_path: str, sched: Schedule, ketch_argv: list[str], *,
                server: ServerJob | None = None, drill: str | None = None) -> str:
    """An /etc/cron.d file (with the user field) running the backup as root (with
    `server`: the backup server's prune and gc of its ROOT)."""
    if server is not None:
        return _render_server_cron(config_path, sched, ketch_argv, server)
    _check_args(config_path, ketch_argv)
    hour, minute = parse_time(sched.time)
    delay = parse_delay(sched.randomized_delay)
    command = shlex.join([*ketch_argv, "run", "-q", "--config", config_path])
    if delay > 0:
        # RandomizedDelaySec for cron: /bin/sh has no $RANDOM, od does.
        command = f"sleep $(( $(od -An -N4 -tu4 /dev/urandom) % {delay + 1} )); {command}"
    # cron turns an unescaped % into a newline and strips the backslash of \%.
    command = command.replace("%", "\\%")
    return f"""{MARKER}
# config: {config_path}
# Nightly at {hour:02d}:{minute:02d} plus up to {delay} s at random. The run writes its own
# log and sends its own notifications; cron mails only what reaches stderr (errors).
SHELL=/bin/sh
PATH={CRON_ENV_PATH}
{minute} {hour} * * * root {command} >/dev/null
""" + (render_drill_cron_line(config_path, drill, ketch_argv) if drill else "")


def systemd_running() -> bool:
    return systemd_is_init()


def _write(path: Path, text: str) -> None:
    """Atomically, mode 0644: cron ignores group- or world-writable files."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".ketch-", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def _systemctl(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(["systemctl", *args], capture_output=True, text=True,
                              timeout=60, stdin=subprocess.DEVNULL, check=False)
    except (OSError, subprocess.TimeoutExpired) as e:
        raise KetchError(f"systemctl {' '.join(args)}: {e}") from None
    if check and proc.returncode != 0:
        why = proc.stderr.strip() or f"exit status {proc.returncode}"
        raise KetchError(f"systemctl {' '.join(args)}: {why}")
    return proc


def _unit_paths(systemd_dir: str, unit: str) -> list[Path]:
    return [Path(systemd_dir, f"{unit}.service"), Path(systemd_dir, f"{unit}.timer")]


def _remove_systemd(systemd_dir: str, unit: str, run_systemctl: bool) -> list[str]:
    paths = [p for p in _unit_paths(systemd_dir, unit) if p.exists()]
    if not paths:
        return []
    if run_systemctl and systemd_running():
        # Not checked: the timer may already be disabled or never have been loaded.
        _systemctl("disable", "--now", f"{unit}.timer", check=False)
    for p in paths:
        p.unlink()
    if run_systemctl and systemd_running():
        _systemctl("daemon-reload")
    return [str(p) for p in paths]


def _remove_cron(cron_path: str) -> list[str]:
    p = Path(cron_path)
    if not p.exists():
        return []
    p.unlink()
    return [cron_path]


def install(config_path: str, sched: Schedule, *, ketch_argv: list[str] | None = None,
            systemd_dir: str = SYSTEMD_DIR, cron_path: str = CRON_PATH,
            use_systemd: bool | None = None, run_systemctl: bool = True,
            unit: str = UNIT, proc_dir: str = "/proc",
            server: ServerJob | None = None, drill: str | None = None) -> ScheduleInfo:
    """Write the timer (and enable it) or the cron file; replaces the other kind
    if it was installed before. `run_systemctl=False` only writes the files.
    `server`: the backup server's retention job instead of `ketch run`.
    `drill`: the `[drill] schedule` of a restore drill installed beside the run.

    The files are written even where they will not fire (so that starting the
    daemon later is all it takes); the returned `problem` then says why."""
    if not sched.enabled:
        raise UsageError("[schedule] enabled = false in the config: set it to true to install "
                         "the timer, or run `ketch schedule remove`")
    argv = ketch_argv or default_ketch_argv()
    _check_args(config_path, argv, server)
    if not os.path.isfile(config_path):
        raise UsageError(f"{config_path}: no such config file")
    if not os.access(argv[0], os.X_OK):
        raise UsageError(f"{argv[0]}: not an executable program")
    notes: list[str] = []
    if use_systemd is None:
        use_systemd = systemd_running()
        if not use_systemd:
            notes.append("systemd is not running as PID 1 here: using cron")
    if use_systemd:
        if run_systemctl and not systemd_running():
            raise UsageError(f"systemd is not running here (not PID 1, or no "
                             f"{SYSTEMD_RUNNING_FLAG}): use a cron entry instead (--cron)")
        units = render_systemd(config_path, sched, argv, unit=unit, server=server)
        units.update(render_drill_systemd(config_path, drill, argv, MARKER, _systemd_quote))
        if not drill and unit == UNIT:  # `[drill] enabled = false` since the last install
            _remove_systemd(systemd_dir, DRILL_UNIT, run_systemctl)
        for name, text in units.items():
            _write(Path(systemd_dir, name), text)
        if removed := _remove_cron(cron_path):
            notes.append(f"removed the cron entry {removed[0]}")
        if run_systemctl:
            _systemctl("daemon-reload")
            _systemctl("enable", "--now", f"{unit}.timer",
                       *([f"{DRILL_UNIT}.timer"] if drill else []))
        else:
            notes.append("systemctl not run: the timer is written but not enabled")
    else:
        _write(Path(cron_path), render_cron(config_path, sched, argv, server=server, drill=drill))
        removed = _remove_systemd(systemd_dir, unit, run_systemctl) + (
            _remove_systemd(systemd_dir, DRILL_UNIT, run_systemctl) if unit == UNIT else [])
        if removed:
            notes.append(f"removed the systemd units {', '.join(removed)}")
    info = show(config_path, sched, ketch_argv=argv, systemd_dir=systemd_dir,
                cron_path=cron_path, run_systemctl=run_systemctl, unit=unit, proc_dir=proc_dir,
                server=server, drill=drill)
    info.notes[:0] = notes
    return info


def remove(*, systemd_dir: str = SYSTEMD_DIR, cron_path: str = CRON_PATH,
           run_systemctl: bool = True, unit: str = UNIT) -> ScheduleInfo:
    """Disable and delete the timer and/or the cron file; `files` lists what went."""
    removed = _remove_systemd(systemd_dir, unit, run_systemctl) + _remove_cron(cron_path) + (
        _remove_systemd(systemd_dir, DRILL_UNIT, run_systemctl) if unit == UNIT else [])
    kind = ("systemd" if any(f.endswith(".timer") for f in removed)
            else "cron" if removed else None)
    return ScheduleInfo(kind=kind, files=removed,
                        notes=[] if removed else ["no schedule was installed"])


_CRON_JOB_RX = re.compile(r"^(\d{1,2}) (\d{1,2}) \* \* \* ", re.M)
_TIMER_RX = re.compile(r"^OnCalendar=\*-\*-\* (\d{2}):(\d{2}):00$", re.M)


def _installed_time(path: Path, kind: str) -> str | None:
    """HH:MM of the entry on disk (the file decides when it runs, not the config)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError):
        return None
    if kind == "cron":
        m = _CRON_JOB_RX.search(text)
        return f"{int(m[2]):02d}:{int(m[1]):02d}" if m else None
    m = _TIMER_RX.search(text)
    return f"{m[1]}:{m[2]}" if m else None


def show(config_path: str | None, sched: Schedule, *, ketch_argv: list[str] | None = None,
         systemd_dir: str = SYSTEMD_DIR, cron_path: str = CRON_PATH,
         run_systemctl: bool = True, unit: str = UNIT,
         now: datetime | None = None, proc_dir: str = "/proc",
         server: ServerJob | None = None, drill: str | None = None) -> ScheduleInfo:
    """What is installed, whether it matches the config, whether it will fire
    here, and when it runs next (from the installed entry, not the config).
    `server` and `drill`: as `install` takes them."""
    again = "ketch schedule install" + (" --server" if server is not None else "")
    units = _unit_paths(systemd_dir, unit)
    cron = Path(cron_path)
    info = ScheduleInfo(kind=None, time=sched.time, randomized_delay=sched.randomized_delay,
                        delay_seconds=parse_delay(sched.randomized_delay),
                        enabled=sched.enabled)
    expected: dict[Path, str] = {}
    argv = ketch_argv or default_ketch_argv()
    if any(p.exists() for p in units):
        info.kind, info.files = "systemd", [str(p) for p in units if p.exists()]
        info.units_present = all(p.exists() for p in units)
        info.installed_time = _installed_time(units[1], "systemd")
        if not info.units_present:
            info.notes.append("only part of the systemd units exist: run install again")
        if config_path:
            rendered = render_systemd(config_path, sched, argv, unit=unit, server=server)
            rendered.update(render_drill_systemd(config_path, drill, argv, MARKER, _systemd_quote))
            expected = {Path(systemd_dir, n): t for n, t in rendered.items()}
        info.files += [str(p) for p in _unit_paths(systemd_dir, DRILL_UNIT) if p.exists()]
        if cron.exists():
            info.files.append(cron_path)
            info.notes.append(f"{cron_path} exists too: the backup may run twice")
    elif cron.exists():
        info.kind, info.files, info.units_present = "cron", [cron_path], True
        info.installed_time = _installed_time(cron, "cron")
        if config_path:
            expected = {cron: render_cron(config_path, sched, argv, server=server, drill=drill)}
    if expected:
        info.up_to_date = sched.enabled and all(
            p.exists() and p.read_text(encoding="utf-8") == t for p, t in expected.items())
        if not sched.enabled:
            info.notes.append("the config says [schedule] enabled = false, but a schedule is "
                              "installed: run `ketch schedule remove`")
        elif not info.up_to_date:
            when = (f" (installed: {info.installed_time}, config: {sched.time})"
                    if info.installed_time and info.installed_time != sched.time else "")
            info.notes.append(f"the installed schedule differs from the config{when}: "
                              f"run `{again}` again")
    if info.kind is not None:
        info.problem = why_it_will_not_fire(info.kind, proc_dir=proc_dir)
    if info.kind == "systemd" and run_systemctl and info.problem is None:
        proc = _systemctl("list-timers", "--all", "--no-pager", f"{unit}.timer", check=False)
        info.systemctl = proc.stdout.strip() if proc.returncode == 0 else None
        active = _systemctl("is-active", "--quiet", f"{unit}.timer", check=False)
        if active.returncode != 0:
            info.problem = (f"the timer {unit}.timer is not active: run `{again}` "
                            f"(or systemctl enable --now {unit}.timer)")
    if info.installed_time and info.units_present and info.problem is None:
        info.next_run = next_run(Schedule(time=info.installed_time), now)
    return info
