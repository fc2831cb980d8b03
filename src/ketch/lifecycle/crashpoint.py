"""Named points where the crash-safety tests SIGKILL gc.

`reach("name")` does nothing unless $KETCH_TEST_CRASH names that point:
`name` kills at the first reach, `name:N` at the N-th. A kill is the worst a
crash can do to gc's own files (no cleanup runs, no buffer is flushed), so the
tests that kill here show what a power cut or an OOM kill leaves behind.
"""

from __future__ import annotations

import os
import signal

_counts: dict[str, int] = {}


def _target() -> tuple[str, int] | None:
    spec = os.environ.get("KETCH_TEST_CRASH")
    if not spec:
        return None
    name, _, nth = spec.partition(":")
    return name, int(nth) if nth else 1


def reach(name: str) -> None:
    target = _target()
    if target is None or target[0] != name:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] >= target[1]:
        os.kill(os.getpid(), signal.SIGKILL)
