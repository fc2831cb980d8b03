"""The terminal's progress line for long commands: drawn only on a terminal, by
rich (ketch.cli.meter), and not at all in cron."""

from __future__ import annotations

import os
import sys
import time

import click

from ketch.text import plural


def show_progress() -> bool:
    return sys.stderr.isatty() and not os.environ.get("KETCH_QUIET")


class TermProgress:
    """Bytes, rate and ETA on stderr, redrawn at most a few times a second.

    Built only when `show_progress()` says so: rich (in ketch.cli.meter, which
    draws the line) is imported here, on a terminal, and nowhere else. `total`
    may be set later, from another thread (save's stat walk)."""

    wants_totals = True

    def __init__(self, label: str) -> None:
        from ketch.cli.meter import Meter

        self.label = label
        self._total: int | None = None
        self.bytes = 0
        self.files = 0
        self._last = 0.0
        self.warnings: list[str] = []
        self._meter = Meter(label)
        # An error ending the command ends the line first (and gives the cursor back).
        ctx = click.get_current_context(silent=True)
        if ctx is not None:
            ctx.call_on_close(self.finish)

    @property
    def total(self) -> int | None:
        return self._total

    @total.setter
    def total(self, value: int | None) -> None:
        self._total = value
        self._meter.set_total(value)

    def start(self, total_bytes: int | None, total_files: int | None = None) -> None:
        self.total = total_bytes

    def advance(self, nbytes: int = 0, nfiles: int = 0) -> None:
        # Per file and per block: counting is all this does between redraws.
        self.bytes += nbytes
        self.files += nfiles
        now = time.monotonic()
        if now - self._last >= 0.2:
            self._last = now
            self._meter.show(self.bytes, self.files)

    def warn(self, message: str) -> None:
        self.warnings.append(message)
        self._meter.say(message)

    def note(self, message: str) -> None:
        """A line above the meter that is not a warning (restore -v's names)."""
        self._meter.say(message)

    def finish(self) -> None:
        self._meter.close(self.bytes, self.files)


class PhaseMeter:
    """A job's phases on the terminal (gc, fsck): a count of objects while marking and
    rescuing, bytes with % and ETA while rewriting."""

    wants_totals = True

    def __init__(self) -> None:
        from ketch.cli.meter import StatusLine

        self._status = StatusLine()
        self._meter: TermProgress | None = None
        self._label = ""
        self._objects = 0
        self._last = 0.0
        self.warnings: list[str] = []

    def _end_meter(self) -> None:
        if self._meter is not None:
            self._meter.finish()
            self._meter = None

    def phase(self, label: str, total_bytes: int | None = None) -> None:
        self._end_meter()
        self._label, self._objects = label, 0
        if total_bytes is not None:
            self._status.close()
            self._meter = TermProgress(label)
            self._meter.start(total_bytes)
        else:
            self._status.show(f"{label}…")

    def start(self, total_bytes: int | None, total_files: int | None = None) -> None:
        pass

    def advance(self, nbytes: int = 0, nfiles: int = 0) -> None:
        if self._meter is not None:
            self._meter.advance(nbytes, nfiles)
            return
        self._objects += nfiles
        now = time.monotonic()
        if now - self._last >= 0.2:
            self._last = now
            self._status.show(f"{self._label}: {plural(self._objects, 'object', grouped=True)}")

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def finish(self) -> None:
        self._end_meter()
        self._status.close()
