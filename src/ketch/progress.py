"""Progress reporting: the core calls a Progress, the CLI decides how to show it.

The default does nothing, so library code never prints and cron stays quiet.
"""

from __future__ import annotations

from typing import Protocol


class Progress(Protocol):
    # Whether start() is worth its totals: a restore walks every directory
    # for them before it writes anything, which nothing shows in cron.
    wants_totals: bool

    def start(self, total_bytes: int | None, total_files: int | None = None) -> None: ...
    def advance(self, nbytes: int = 0, nfiles: int = 0) -> None: ...
    def warn(self, message: str) -> None: ...
    def finish(self) -> None: ...


class NullProgress:
    """Counts, shows nothing."""

    wants_totals = False

    def __init__(self) -> None:
        self.bytes = 0
        self.files = 0
        self.warnings: list[str] = []

    def start(self, total_bytes: int | None, total_files: int | None = None) -> None:
        pass

    def advance(self, nbytes: int = 0, nfiles: int = 0) -> None:
        self.bytes += nbytes
        self.files += nfiles

    def warn(self, message: str) -> None:
        self.warnings.append(message)

    def finish(self) -> None:
        pass
