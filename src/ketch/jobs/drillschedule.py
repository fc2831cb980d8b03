"""When the restore drill runs: `[drill] schedule = "Sun 04:00"` (a weekday
list and a local time; a time alone is daily), rendered as a systemd
OnCalendar= and a cron line beside the nightly run's (ketch.jobs.schedule)."""

from __future__ import annotations

import re
import shlex
from collections.abc import Callable

from ketch.errors import UsageError

DRILL_UNIT = "ketch-drill"
DAYS = ("Mon", "Tue", "Wed", "Thu", "Fri", "Sat", "Sun")
_RX = re.compile(r"(?:([A-Za-z]{3}(?:,[A-Za-z]{3})*)\s+)?([01]?\d|2[0-3]):([0-5]\d)")


def parse_drill_schedule(text: str) -> tuple[list[str], int, int]:
    """`Sun 04:00` -> (["Sun"], 4, 0); no days: every day."""
    m = _RX.fullmatch(text.strip())
    days = [d.capitalize() for d in m[1].split(",")] if m and m[1] else []
    if not m or any(d not in DAYS for d in days):
        raise UsageError(f"drill schedule {text!r}: use [DAY[,DAY...]] HH:MM, e.g. \"Sun 04:00\" "
                         f"(days: {', '.join(DAYS)}; no day: daily)")
    return days, int(m[2]), int(m[3])


def on_calendar(text: str) -> str:
    """systemd's OnCalendar= for a drill schedule."""
    days, hour, minute = parse_drill_schedule(text)
    return (",".join(days) + " " if days else "") + f"*-*-* {hour:02d}:{minute:02d}:00"


def cron_fields(text: str) -> str:
    """The first five fields of a cron line (Sunday is 0)."""
    days, hour, minute = parse_drill_schedule(text)
    dow = ",".join(str((DAYS.index(d) + 1) % 7) for d in days) if days else "*"
    return f"{minute} {hour} * * {dow}"


def drill_argv(ketch_argv: list[str], config_path: str) -> list[str]:
    return [*ketch_argv, "drill", "-q", "--config", config_path]


def render_drill_systemd(config_path: str, schedule: str | None, ketch_argv: list[str],
                         marker: str, quote: Callable[[str], str]) -> dict[str, str]:
    """{ketch-drill.service, ketch-drill.timer}, or {} for no drill (None);
    `quote` is the nightly unit's ExecStart= quoting (passed in: it lives in
    ketch.jobs.schedule)."""
    if schedule is None:
        return {}
    exec_start = " ".join(quote(a) for a in drill_argv(ketch_argv, config_path))
    service = f"""{marker}
# config: {config_path}
[Unit]
Description=ketch restore drill
Wants=network-online.target
After=network-online.target

[Service]
Type=oneshot
ExecStart={exec_start}
# 1 = completed with warnings (e.g. no database server to load a dump into).
SuccessExitStatus=1
Nice=19
IOSchedulingClass=idle
"""
    timer = f"""{marker}
[Unit]
Description=ketch restore drill ({schedule})

[Timer]
OnCalendar={on_calendar(schedule)}
RandomizedDelaySec=30m
Persistent=true
Unit={DRILL_UNIT}.service

[Install]
WantedBy=timers.target
"""
    return {f"{DRILL_UNIT}.service": service, f"{DRILL_UNIT}.timer": timer}


def render_drill_cron_line(config_path: str, schedule: str, ketch_argv: list[str]) -> str:
    """The drill's line in the nightly run's /etc/cron.d file."""
    command = shlex.join(drill_argv(ketch_argv, config_path)).replace("%", "\\%")
    return (f"# Restore drill ({schedule}): restores a sample of every set, loads every dump.\n"
            f"{cron_fields(schedule)} root {command} >/dev/null\n")
