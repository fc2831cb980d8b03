"""Retention in `ketch run`: after the saves, prune each branch whose item has
a policy, then collect the garbage that freed, where the repository allows it.

An S3 mirror cannot be written, and a backup server's append-only key may add
saves but never remove one: there retention belongs to whoever writes the
repository (the server's own config, `ketch prune --all`), and the run says so
once, as a note: nothing failed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import KetchError
from ketch.jobs.model import Retention
from ketch.lifecycle.fleet import prune_counts
from ketch.lifecycle.gc import GcRun
from ketch.lifecycle.prune import prune
from ketch.lifecycle.serverconfig import DEFAULT_THRESHOLD, policy_of
from ketch.progress import Progress
from ketch.repo import AppendOnlyRepository, ReadOnlyRepository, Repository

SERVER_OWNS_IT = ("retention not applied: the backup server's key is append-only, so the "
                  "server prunes this repository itself (its /etc/ketch/server.toml)")


@dataclass
class RetentionReport:
    """One branch's prune in a run."""

    kind: str  # "set" or "dump"
    name: str
    kept: int = 0
    removed: int = 0
    error: str | None = None


@dataclass
class RetentionDone:
    branches: list[RetentionReport] = field(default_factory=list)
    gc: dict[str, Any] | None = None  # the gc's report, when saves were removed
    notes: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)


def _why(e: KetchError | OSError) -> str:
    if isinstance(e, OSError):
        return f"{e.filename + ': ' if e.filename else ''}{e.strerror or e}"
    return str(e)


def apply_retention(repo: Repository, policies: list[tuple[str, str, Retention | None]],
                    saved: set[tuple[str, str]],
                    progress_for: Callable[[str], Progress], *,
                    par2: bool = False) -> RetentionDone:
    """Prune the branch of each (kind, name, table) in `policies` whose item is in
    `saved` (saved by this run), then gc if that removed a save (`par2`: with
    parity for the packs it writes)."""
    done = RetentionDone()
    if not policies:
        return done
    try:
        writable = repo.writable()
    except ReadOnlyRepository as e:
        done.notes.append(f"retention not applied: {e}")
        return done
    for kind, name, table in policies:
        if (kind, name) not in saved or not table:
            continue
        try:
            got = prune(writable, [name], policy_of(table),
                        progress=progress_for(f"retention {kind} {name}"))
        except AppendOnlyRepository:
            done.notes.append(SERVER_OWNS_IT)
            return done
        except (KetchError, OSError) as e:
            done.branches.append(RetentionReport(kind, name, error=_why(e)))
            continue
        kept, removed = prune_counts(got)
        # A branch that kept moving is left as it was (an error of the report's).
        error = "; ".join(got.errors) or None
        done.branches.append(RetentionReport(kind, name, kept, removed, error))
        done.warnings.extend(f"retention {kind} {name}: {w}" for w in got.warnings)
    if any(b.removed for b in done.branches):
        try:
            done.gc = writable.collect_garbage(GcRun(threshold=DEFAULT_THRESHOLD, par2=par2))
            # e.g. saves that still held their leases when gc stopped waiting
            done.warnings.extend(f"gc: {w}" for w in done.gc.get("warnings", []))
        except AppendOnlyRepository:
            done.notes.append(SERVER_OWNS_IT)
        except (KetchError, OSError) as e:
            done.warnings.append(f"gc after the prune: {_why(e)}")
    return done
