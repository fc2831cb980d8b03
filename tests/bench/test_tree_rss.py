"""The benchmark's memory figure of a command that forks: GNU time's %M (and
wait4's ru_maxrss) is the peak of the biggest single process, the tree's PSS
is the sum over every process, so two forked children holding HOLD bytes
each count twice; a command without children gets about its own RSS."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from types import ModuleType

import pytest

BENCH = Path(__file__).resolve().parents[2] / "bench"
MIB = 1024  # KiB
HOLD = 48  # MiB of private, touched memory in each process that holds some

TOUCH = f"""
b = bytearray({HOLD} << 20)
b[::4096] = b"\\x01" * len(range(0, len(b), 4096))  # every page written: private
time.sleep(0.5)
"""
# two children hold HOLD MiB each at once; the parent, almost nothing
FORKS = f"""
import os, time
pids = []
for _ in range(2):
    pid = os.fork()
    if pid == 0:
{textwrap.indent(TOUCH.strip(), " " * 8)}
        os._exit(0)
    pids.append(pid)
for pid in pids:
    _, status = os.waitpid(pid, 0)
    assert status == 0
"""
ALONE = f"import time\n{TOUCH}"


def _common() -> ModuleType:
    """bench/ketchbench/common.py."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    import ketchbench.common

    return ketchbench.common


@pytest.fixture(params=["gnu-time", "wait4"])
def common(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> ModuleType:
    """ketchbench.common, measuring under GNU time or (without it) with wait4."""
    mod = _common()
    if request.param == "gnu-time":
        if not os.access(mod.GNU_TIME, os.X_OK):
            pytest.skip(f"no {mod.GNU_TIME}")
    else:
        monkeypatch.setattr(mod, "GNU_TIME", "/nonexistent/time")
    return mod


def test_forked_children_count_together(common: ModuleType) -> None:
    m = common.measure([sys.executable, "-c", FORKS], dict(os.environ))
    assert m.returncode == 0, m.stderr.decode(errors="replace")
    assert m.max_rss_kib is not None and m.tree_pss_kib is not None
    # no single process held more than its HOLD and an interpreter (wait4's
    # figure also counts the fork of this process before the exec: its floor)...
    assert m.max_rss_kib < max((HOLD + 22) * MIB, _floor(common)), (
        m.max_rss_kib, m.tree_pss_kib)
    # ...the tree held both children's at once
    assert m.tree_pss_kib >= 2 * HOLD * MIB, (m.max_rss_kib, m.tree_pss_kib)
    assert m.peak_kib == max(m.max_rss_kib, m.tree_pss_kib)


def test_one_process_alone(common: ModuleType) -> None:
    m = common.measure([sys.executable, "-c", ALONE], dict(os.environ))
    assert m.returncode == 0, m.stderr.decode(errors="replace")
    assert m.max_rss_kib is not None and m.tree_pss_kib is not None
    assert m.tree_pss_kib >= HOLD * MIB, (m.max_rss_kib, m.tree_pss_kib)
    floor = _floor(common)
    assert m.tree_pss_kib <= m.max_rss_kib + MIB, (m.max_rss_kib, m.tree_pss_kib)
    if m.max_rss_kib > floor:
        # The command's own peak: PSS leaves out shares of the libraries only.
        assert m.max_rss_kib - 12 * MIB <= m.tree_pss_kib, (m.max_rss_kib, m.tree_pss_kib)
    assert m.peak_kib == max(m.max_rss_kib, m.tree_pss_kib)


def _floor(common: ModuleType) -> int:
    """What wait4's peak RSS may say whatever the command does: the fork of
    this process (pytest, large by the end of a run) before its exec. Under
    GNU time, the fork is of the small `time` process: nothing."""
    if os.access(common.GNU_TIME, os.X_OK):
        return 0
    # Its peak, not its size now: the fork happened earlier, when pytest may
    # have held more than it does after (a run where it held 142 MB at the fork
    # failed against VmRSS).
    status = Path("/proc/self/status").read_text()
    return int(status.split("VmHWM:")[1].split()[0]) + 4 * MIB


def test_children_and_parents() -> None:
    """Both ways of finding a process's children see a child just started."""
    common = _common()
    with subprocess.Popen(["sleep", "5"]) as child:
        try:
            assert child.pid in common._children(os.getpid())
            assert common._ppids()[child.pid] == os.getpid()
        finally:
            child.kill()
