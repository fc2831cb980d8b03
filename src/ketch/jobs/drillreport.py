"""What a restore drill found, as text, JSON, and a commit in the repository.

Reports are kept in the repository they are about, on `refs/ketch/drill`
(ketch.reportlog), so the backup server and its dashboard see when the backups
were last proven restorable.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from ketch import reportlog
from ketch.errors import EXIT_FAILED, EXIT_OK, EXIT_WARNINGS
from ketch.repo import ReadOnlyRepository, Repository
from ketch.text import plural

DRILL_REF = reportlog.ref_for("drill")


@dataclass
class Check:
    """One file restored (a set) or loaded (a dump)."""

    name: str  # the path in the save
    method: str  # compared | object ids | loaded | integrity_check | checksum
    ok: bool = True
    size: int = 0
    chunked: bool = False
    error: str | None = None
    detail: str = ""  # what was found, in words: "3 tables, 1,200 rows"
    tables: dict[str, int] | None = None  # loaded dumps: "db.table" -> rows
    sha256: str | None = None  # command dumps


@dataclass
class DrillItem:
    kind: str  # "set" or "dump"
    name: str
    save: str | None = None  # the save drilled (its name, e.g. 2026-12-03-220000)
    commit: str | None = None
    checks: list[Check] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    error: str | None = None  # the item could not be drilled at all
    seconds: float = 0.0

    @property
    def failed(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    @property
    def ok(self) -> bool:
        return self.error is None and not self.failed


@dataclass
class DrillReport:
    machine: str
    config: str
    repository: str
    started: str
    sample: int
    seconds: float = 0.0
    items: list[DrillItem] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    stored: str | None = None  # the commit on refs/ketch/drill holding this report

    @property
    def exit_code(self) -> int:
        if self.errors or any(not i.ok for i in self.items):
            return EXIT_FAILED
        if self.warnings or any(i.warnings for i in self.items):
            return EXIT_WARNINGS
        return EXIT_OK

    @property
    def status(self) -> str:
        return {EXIT_OK: "OK", EXIT_WARNINGS: "WARNINGS"}.get(self.exit_code, "FAILED")

    def as_dict(self) -> dict[str, object]:
        d = asdict(self)
        d["exit_code"] = self.exit_code
        d["status"] = self.status
        for item, raw in zip(self.items, d["items"], strict=True):
            raw["ok"] = item.ok
            raw["tried"] = len(item.checks)
            raw["passed"] = len(item.checks) - len(item.failed)
            raw["failed"] = len(item.failed)
        return d

    def text(self) -> str:
        lines = [f"ketch drill on {self.machine}: {self.status} "
                 f"({plural(len(self.items), 'item')}, {self.seconds:.1f} s) <- {self.repository}"]
        for i in self.items:
            where = f" {i.save}" if i.save else ""
            if i.error:
                lines.append(f"  {i.kind} {i.name}{where}: FAILED: {i.error}")
            else:
                passed = len(i.checks) - len(i.failed)
                state = "ok" if i.ok else "FAILED"
                lines.append(f"  {i.kind} {i.name}{where}: {state}, "
                             f"{passed} of {plural(len(i.checks), 'file')} passed, "
                             f"{i.seconds:.1f} s")
            for c in i.checks:
                if not c.ok:
                    lines.append(f"    FAILED {c.name}: {c.error}")
                elif i.kind == "dump":
                    lines.append(f"    {c.name}: {c.method}" + (f", {c.detail}" if c.detail else ""))
            lines.extend(f"    warning: {w}" for w in i.warnings)
            lines.extend(f"    note: {n}" for n in i.notes)
        lines.extend(f"  error: {e}" for e in self.errors)
        lines.extend(f"  warning: {w}" for w in self.warnings)
        lines.extend(f"  note: {n}" for n in self.notes)
        if self.stored:
            lines.append(f"  report stored as {self.stored[:12]} on {DRILL_REF.decode()}")
        return "\n".join(lines)


def store_report(repo: Repository, report: DrillReport) -> str | None:
    """Commit the report onto refs/ketch/drill; its id, or None (with a note on
    the report) where the repository cannot be written (an S3 mirror)."""
    try:
        return reportlog.store(repo, "drill", report.as_dict(), report.status)
    except ReadOnlyRepository as e:
        report.notes.append(f"report not stored in the repository: {e}")
        return None


def read_reports(repo: Repository, limit: int = 10) -> list[dict[str, object]]:
    """The newest stored reports first (for the tests)."""
    return [r.data for r in reportlog.history(repo, "drill", limit)]
