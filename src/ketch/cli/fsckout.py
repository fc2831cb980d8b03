"""What `ketch fsck` prints: a head line per repository (ok, WARNINGS or
DAMAGED, with what was checked), then one line per problem and per repair."""

from __future__ import annotations

from typing import Any

from ketch.errors import EXIT_FAILED, EXIT_OK
from ketch.text import plural


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def head(report: dict[str, Any]) -> str:
    code = report["exit_code"]
    state = {EXIT_OK: "ok", EXIT_FAILED: "DAMAGED"}.get(code, "WARNINGS")
    n = len(report["problems"])
    what = [plural(report["packs"], "pack", grouped=True),
            plural(report["objects"], "object", grouped=True)]
    if report.get("refs"):
        what.append(plural(report["refs"], "ref"))
    if report.get("objects_reachable"):
        what.append(f"{report['objects_reachable']:,} reachable")
    secs = report["seconds"]
    done = f"in {secs:.1f} s"
    if report.get("bytes_read"):
        rate = report["bytes_read"] / secs / 1e6 if secs > 0 else 0.0
        done = f"{_mb(report['bytes_read'])} read {done} ({rate:,.0f} MB/s)"
    if report.get("objects_read"):
        done += f", {plural(report['objects_read'], 'object', grouped=True)} inflated"
    problems = f": {plural(n, 'problem')}" if n else ""
    mode = " (quick)" if report.get("quick") else ""
    return f"{report['repository']}: {state}{problems}{mode} ({', '.join(what)}; {done})"


def text(report: dict[str, Any]) -> str:
    lines = [head(report)]
    for p in report["problems"]:
        lines.append(f"  {p['severity']}: {p['message']}")
    for r in report.get("repairs", []):
        lines.append(f"  {r['result']}: {r['message']}")
    if report.get("parity_generated"):
        lines.append(f"  parity written for {plural(report['parity_generated'], 'pack')}")
    return "\n".join(lines)
