"""Whether an installed schedule will actually fire on this machine.

A cron file with no cron daemon to read it, or a systemd timer where systemd
is not PID 1 (a container), is a backup that never happens; `schedule
install`, `schedule show` and `config check` say so instead of reporting
success. Only the process table and the file system are read.
"""

from __future__ import annotations

import os
import shutil

SYSTEMD_RUNNING_FLAG = "/run/systemd/system"  # what sd_booted() checks
CRON_DAEMONS = ("cron", "crond", "cronie")  # Debian's cron, cronie, busybox's applet link
# Where a daemon lives, whatever PATH the user who runs ketch has.
SBIN_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
OWN_SCHEDULER = "or run ketch from your own scheduler"


def _read(path: str) -> bytes | None:
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:  # the process ended, or /proc hides it
        return None


def systemd_is_init(proc_dir: str = "/proc") -> bool:
    """systemd runs as PID 1 (booted with systemd), not merely installed. The
    flag directory alone can be there in a container sharing the host's /run."""
    if not os.path.isdir(SYSTEMD_RUNNING_FLAG):
        return False
    comm = _read(os.path.join(proc_dir, "1", "comm"))
    return comm is None or comm.strip() == b"systemd"  # unreadable: trust the flag


def running_cron(proc_dir: str = "/proc") -> list[tuple[int, str]]:
    """(pid, name) of every live cron daemon in the process table."""
    found = []
    for entry in os.listdir(proc_dir):
        if not entry.isdigit():
            continue
        base = os.path.join(proc_dir, entry)
        comm = (_read(os.path.join(base, "comm")) or b"").strip().decode(errors="replace")
        if comm == "busybox":  # `busybox crond`: the applet is the first argument
            argv = (_read(os.path.join(base, "cmdline")) or b"").split(b"\0")
            comm = "crond" if b"crond" in (os.path.basename(a) for a in argv[:2]) else comm
        if comm not in CRON_DAEMONS:
            continue
        stat = _read(os.path.join(base, "stat")) or b""
        state = stat.rpartition(b")")[2].split()[:1]
        if state == [b"Z"]:  # exited, not yet reaped: runs nothing
            continue
        found.append((int(entry), comm))
    return found


def cron_binary(search_path: str = SBIN_PATH) -> str | None:
    for name in CRON_DAEMONS:
        if found := shutil.which(name, path=search_path):
            return found
    return None


def why_it_will_not_fire(kind: str, *, proc_dir: str = "/proc",
                         search_path: str = SBIN_PATH) -> str | None:
    """None if a schedule of `kind` ("systemd" or "cron") will run here; else
    one line saying why not and what to do."""
    if kind == "systemd":
        if systemd_is_init(proc_dir):
            return None
        return ("systemd is not running as PID 1 here, so the timer never fires: use a "
                f"cron entry (--cron) with a running cron daemon, {OWN_SCHEDULER}")
    if running_cron(proc_dir):
        return None
    binary = cron_binary(search_path)
    if binary:
        name = os.path.basename(binary)
        return (f"the cron daemon {binary} is installed but not running: "
                f"service {name} start ({OWN_SCHEDULER})")
    return ("no cron daemon is running: apt-get install cron && service cron start "
            f"({OWN_SCHEDULER})")
