"""A quick stat walk for `save`'s progress meter: how many bytes the paths hold,
so that the meter can show a percentage and an ETA when the index has no sizes
for them (a first save, or --no-index)."""

from __future__ import annotations

import os
import stat
import threading
from collections.abc import Callable

from ketch.excludes import ExcludeRules


def total_size(paths: list[str], rules: ExcludeRules,
               stop: threading.Event | None = None) -> int | None:
    """Bytes of the regular files under `paths`, minus what `rules` exclude (the
    way `save` excludes them); None when `stop` is set before the walk ends."""
    total = 0
    stack: list[tuple[bytes, int]] = []
    for p in paths:
        top = os.fsencode(os.path.abspath(p))
        try:
            st = os.lstat(top)
        except OSError:
            continue  # save reports it
        if stat.S_ISDIR(st.st_mode):
            stack.append((top, st.st_dev))
        elif stat.S_ISREG(st.st_mode):
            total += st.st_size
    while stack:
        if stop is not None and stop.is_set():
            return None
        d, dev = stack.pop()
        if rules.if_present and rules.has_marker(d):
            continue
        try:
            with os.scandir(d) as it:
                entries = list(it)
        except OSError:
            continue
        for e in entries:
            try:
                st = e.stat(follow_symlinks=False)
            except OSError:
                continue
            is_dir = stat.S_ISDIR(st.st_mode)
            if rules and rules.excluded(e.path, e.name, is_dir):
                continue
            if is_dir:
                if not (rules.one_file_system and st.st_dev != dev):
                    stack.append((e.path, st.st_dev))
            elif stat.S_ISREG(st.st_mode):
                total += st.st_size
    return total


def scan_in_background(jobs: list[tuple[str, ExcludeRules]],
                       done: Callable[[int], None]) -> threading.Event:
    """Sum `total_size` over (path, rules) `jobs` in a daemon thread and call
    `done(total)` at its end; set the returned event to abandon it (the save
    finished first)."""
    stop = threading.Event()

    def run() -> None:
        total = 0
        for path, rules in jobs:
            size = total_size([path], rules, stop)
            if size is None:
                return
            total += size
        if not stop.is_set():
            done(total)

    threading.Thread(target=run, name="ketch-scan", daemon=True).start()
    return stop
