"""What a gc did (or, with --dry-run, would do), and how it reports progress."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Protocol

from ketch.errors import EXIT_OK, EXIT_WARNINGS
from ketch.progress import NullProgress, Progress


class GcProgress(Progress, Protocol):
    def phase(self, label: str, total_bytes: int | None = None) -> None:
        """A new step begins (`advance` then counts objects, or bytes once a
        total is given)."""


class NullGcProgress(NullProgress):
    def __init__(self) -> None:
        super().__init__()
        self.phases: list[str] = []

    def phase(self, label: str, total_bytes: int | None = None) -> None:
        self.phases.append(label)


@dataclass
class GcReport:
    dry_run: bool = False
    bytes_before: int = 0
    bytes_after: int = 0
    packs_before: int = 0
    packs_rewritten: int = 0  # their live objects copied into new packs
    packs_deleted: int = 0  # every pack gc removed (the rewritten ones included)
    packs_written: int = 0
    objects_live: int = 0
    objects_dropped: int = 0
    objects_rescued: int = 0  # became reachable again while gc ran
    reflog_entries_expired: int = 0
    saves_waited: int = 0
    recovered_packs: int = 0  # left hidden by a gc that was killed, deleted now
    seconds: float = 0.0
    warnings: list[str] = field(default_factory=list)

    @property
    def bytes_reclaimed(self) -> int:
        return self.bytes_before - self.bytes_after

    @property
    def exit_code(self) -> int:
        return EXIT_WARNINGS if self.warnings else EXIT_OK

    def as_dict(self) -> dict[str, Any]:
        return {
            "dry_run": self.dry_run,
            "bytes_before": self.bytes_before,
            "bytes_after": self.bytes_after,
            "bytes_reclaimed": self.bytes_reclaimed,
            "packs_before": self.packs_before,
            "packs_rewritten": self.packs_rewritten,
            "packs_deleted": self.packs_deleted,
            "packs_written": self.packs_written,
            "objects_live": self.objects_live,
            "objects_dropped": self.objects_dropped,
            "objects_rescued": self.objects_rescued,
            "reflog_entries_expired": self.reflog_entries_expired,
            "saves_waited": self.saves_waited,
            "recovered_packs": self.recovered_packs,
            "seconds": round(self.seconds, 3),
            "warnings": list(self.warnings),
        }


def objects_bytes(objects_dir: str) -> int:
    """Bytes of every file under objects/ (packs, idx, midx, bloom, loose)."""
    total = 0
    for dirpath, _, filenames in os.walk(objects_dir):
        for fn in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, fn)).st_size
            except FileNotFoundError:
                continue
    return total
