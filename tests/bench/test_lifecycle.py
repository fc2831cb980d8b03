"""The benchmark's lifecycle phase, at a tiny scale: it runs every tool to the
end, its results name each tool's figures, and the saves ketch kept after
prune + gc restore byte for byte (checked here, against a replay of the days,
not by the phase's own check)."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from tests.conftest import RunKetch, in_ci

ROOT = Path(__file__).resolve().parents[2]
BENCH = ROOT / "bench"
TOOLS = ("ketch", "bup", "restic", "borg")
DAYS = 8  # Thu 2025-11-20 .. Thu 11-27: the first day is the one save no policy keeps
# keep 7 daily (11-21..11-27), 4 weekly (ISO weeks: 11-27, 11-23), 6 monthly (11-27)
KETCH_KEEPS = list(range(1, DAYS))


def _daily() -> ModuleType:
    """bench/ketchbench/daily.py, the corpus the phase saved."""
    if str(BENCH) not in sys.path:
        sys.path.insert(0, str(BENCH))
    return importlib.import_module("ketchbench.daily")


def _files(root: Path) -> dict[str, tuple[bytes, int]]:
    out = {}
    for path in sorted(root.rglob("*")):
        if path.is_file():
            out[str(path.relative_to(root))] = (path.read_bytes(), path.stat().st_mtime_ns)
    return out


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, object]]:
    missing = [t for t in ("bup", "restic", "borg") if shutil.which(t) is None]
    if missing:
        if in_ci():
            pytest.fail(f"missing {', '.join(missing)} (scripts/install-deps.sh installs them)")
        pytest.skip(f"missing {', '.join(missing)}")
    cache = tmp_path_factory.mktemp("bench")
    results = cache / "results.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    proc = subprocess.run(
        [sys.executable, str(BENCH / "bench.py"), "--phase", "lifecycle", "--scale", "0.005",
         "--lifecycle-days", str(DAYS), "--cache-dir", str(cache), "--results", str(results),
         "--keep", "--ketch", f"{sys.executable} -m ketch"],
        capture_output=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    return cache / "run", json.loads(results.read_text())


def test_results_hold_every_tools_figures(bench_run: tuple[Path, dict[str, object]]) -> None:
    _, result = bench_run
    life = result["lifecycle"]
    assert isinstance(life, dict)
    assert sorted(life["tools"]) == sorted(TOOLS)
    for name, t in life["tools"].items():
        assert t["ok"], name
        assert t["saves_seconds"] > 0 and t["prune_gc_seconds"] > 0, name
        assert t["prune_gc_max_rss_kib"] > 0, name
        sizes = t["repo_bytes"]
        assert all(sizes[k] > 0 for k in ("saved", "pruned", "collected", "fresh")), name
        assert sizes["collected"] <= sizes["saved"], name
        assert 0 < t["kept"] <= DAYS, name  # bup's monthlies and borg keep the first day
        assert t["how"]["encryption"], name
    assert life["tools"]["ketch"]["kept_days"] == KETCH_KEEPS
    assert life["tools"]["restic"]["kept_days"] == KETCH_KEEPS  # the same rule
    assert {r["tool"] for r in result["rows"] if r["phase"] == "lifecycle:prune+gc"} == set(TOOLS)
    labels = [t["target"] for t in life["targets"]]
    assert any("fresh" in x for x in labels) and any("bup" in x for x in labels)
    assert any("restic" in x for x in labels) and any("RSS" in x for x in labels)


def test_ketchs_kept_saves_restore(
    bench_run: tuple[Path, dict[str, object]], run_ketch: RunKetch, tmp_path: Path
) -> None:
    run_dir, _ = bench_run
    repo, data = run_dir / "lifecycle-ketch", run_dir / "lifecycle-data"
    fsck = subprocess.run(["git", f"--git-dir={repo}", "fsck", "--strict"], capture_output=True)
    assert fsck.returncode == 0, fsck.stderr
    utc = {"TZ": "UTC"}  # the saves' names, as the phase made them
    names = run_ketch("-d", repo, "ls", "web1", check=True, env=utc).stdout.decode().split()
    saves = sorted(n for n in names if n != "latest")
    daily = _daily()
    corpus = daily.DailyCorpus(0.005)
    truth = tmp_path / "truth"
    truth.mkdir()
    assert len(saves) == len(KETCH_KEEPS)
    for day in range(DAYS):
        corpus.advance()
        if day not in KETCH_KEEPS:
            continue
        corpus.write(truth)
        save = saves[KETCH_KEEPS.index(day)]
        out = tmp_path / save
        out.mkdir()
        run_ketch("-d", repo, "restore", "-C", out, f"web1/{save}{data}", check=True, env=utc)
        restored = _files(out / data.name)
        assert restored == _files(truth), save
