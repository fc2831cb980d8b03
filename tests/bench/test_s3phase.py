"""The benchmark's s3 phase at a tiny scale, against a real SeaweedFS: every
restore (local, from -r s3:// straight, through the relay with and without
delay, one file) compares equal to DATA, the relayed ones carry requests,
bytes and what the save needed, and saving to S3 shows either its rows or
"not supported yet" ones, never a failure for lack of it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.services.seaweedfs import required_weed

ROOT = Path(__file__).resolve().parents[2]
FLEET = 8


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    required_weed()
    pytest.importorskip("boto3")
    cache = tmp_path_factory.mktemp("bench")
    out = cache / "results.json"
    env = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    env["KETCH_BENCH_FLEET"] = str(FLEET)  # 50 machines' saves: most of the phase's time
    proc = subprocess.run(
        [sys.executable, str(ROOT / "bench" / "bench.py"), "--phase", "s3", "--scale", "0.002",
         "--cache-dir", str(cache), "--results", str(out), "--ketch", f"{sys.executable} -m ketch"],
        capture_output=True, env=env, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr.decode(errors="replace")[-3000:]
    loaded = json.loads(out.read_text())
    assert isinstance(loaded, dict)
    return loaded


def _rows(results: dict[str, object]) -> dict[tuple[str, str], dict[str, object]]:
    rows = results["rows"]
    assert isinstance(rows, list)
    return {(r["phase"], r["tool"]): r for r in rows}


def test_restores_verified_and_counted(results: dict[str, object]) -> None:
    rows = _rows(results)
    for key in [("s3:restore", "ketch"), ("s3:restore", "ketch -r s3"),
                ("s3:restore-0ms", "ketch -r s3 +0ms"), ("s3:restore-30ms", "ketch -r s3 +30ms")]:
        assert rows[key]["ok"], (key, rows[key]["note"])
        assert rows[key]["verified"] == "identical", key
    for key in [("s3:restore-0ms", "ketch -r s3 +0ms"), ("s3:restore-30ms", "ketch -r s3 +30ms")]:
        r = rows[key]
        needed, down = r["needed"], r["downloaded"]
        assert isinstance(needed, int) and isinstance(down, int) and needed > 0, key
        assert down >= needed, key  # the entries, and HTTP heads, idx, manifest besides
        assert isinstance(r["requests"], int) and r["requests"] > 0, key
    one = rows[("s3:one-file", "ketch -r s3 +30ms")]
    assert one["ok"] and one["verified"] == "identical", one["note"]
    assert isinstance(one["requests"], int) and one["requests"] > 0


def test_saves_to_s3_measured(results: dict[str, object]) -> None:
    rows = _rows(results)
    info = results["s3"]
    assert isinstance(info, dict) and info["save_to_s3"] == "supported", info
    for phase in ("s3:save-initial", "s3:save-day", "s3:fleet"):
        r = rows[(phase, "ketch -r s3")]
        assert r["ok"], (phase, r["note"])
    day = rows[("s3:save-day", "ketch -r s3")]
    assert isinstance(day["requests"], int) and day["requests"] > 0, day
    fleet = rows[("s3:fleet", "ketch -r s3")]
    assert str(fleet["note"]).startswith(f"{FLEET}/{FLEET} saves present, 0 errors"), fleet
    ratios = results["ratios"]
    assert isinstance(ratios, list)
    targets = [t for x in ratios if x["phase"].startswith("s3:") for t in x["targets"]]
    assert targets and all(t["met"] in (True, False, None) for t in targets)
