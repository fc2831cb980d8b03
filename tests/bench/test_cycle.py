"""The benchmark's cycle phase, at a tiny scale: ketch, bup, restic and borg
each save, resave, save after the day and restore the same DATA, every
restore compares equal to DATA, and the results carry each tool's figures and
ketch's ratios to the best peer and to bup."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import in_ci

ROOT = Path(__file__).resolve().parents[2]
TOOLS = ["bup", "restic", "borg", "ketch"]
STEPS = ["save-initial", "resave", "save-day", "restore"]


@pytest.fixture(scope="module")
def cycle(tmp_path_factory: pytest.TempPathFactory) -> list[dict[str, object]]:
    missing = [t for t in ("bup", "restic", "borg") if shutil.which(t) is None]
    if missing:
        if in_ci():
            pytest.fail(f"missing {', '.join(missing)} (scripts/install-deps.sh installs them)")
        pytest.skip(f"missing {', '.join(missing)}")
    cache = tmp_path_factory.mktemp("bench")
    results = cache / "results.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--phase", "cycle", "--scale",
         "0.002", "--initial-runs", "1", "--cache-dir", str(cache), "--results", str(results),
         "--ketch", f"{sys.executable} -m ketch"],
        capture_output=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    summary = json.loads(results.read_text())["cycle"]
    assert isinstance(summary, list)
    return summary


def test_every_tool_runs_every_step(cycle: list[dict[str, object]]) -> None:
    assert [s["step"] for s in cycle] == STEPS
    for s in cycle:
        tools = s["tools"]
        assert isinstance(tools, dict)
        assert list(tools) == TOOLS, s["step"]
        for name, t in tools.items():
            assert t["ok"], (s["step"], name, t["note"])
            assert t["seconds"] > 0 and t["cpu_seconds"] is not None, (s["step"], name)
            assert t["max_rss_mib"] > 0 and t["repo_bytes"] > 0, (s["step"], name)
            if s["step"] == "save-initial":
                assert len(t["runs"]) == 1, name
            if s["step"] == "restore":
                assert t["verified"] == "identical", name


def test_ratios_to_the_best_peer_and_to_bup(cycle: list[dict[str, object]]) -> None:
    for s in cycle:
        assert s["best_peer"] in ("restic", "borg"), s["step"]
        assert isinstance(s["time_per_best_peer"], float), s["step"]
        assert isinstance(s["size_per_bup"], float), s["step"]
        targets = s["targets"]
        assert isinstance(targets, list) and targets, s["step"]
        assert all(isinstance(t["met"], bool) for t in targets), s["step"]
    day = cycle[STEPS.index("save-day")]
    assert isinstance(day["growth_per_bup"], float)
    tools = day["tools"]
    assert isinstance(tools, dict)
    assert all(t["repo_growth"] > 0 for t in tools.values())
