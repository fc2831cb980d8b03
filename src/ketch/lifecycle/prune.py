"""Remove the saves a policy does not keep from branch histories.

A branch's saves are its first-parent chain from the head. The chain is
rewritten to hold only the kept saves, oldest first: a kept commit is copied
with only its first parent line changed (tree, author, committer, message and
any other header stay byte for byte, so `ls`, `restore`, `bup` and `git log`
show it as before), and the kept commits below the oldest removed one keep
their ids. The branch then moves by compare-and-swap; when a save moved it
meanwhile, the whole decision is made again from the new head, so that save is
never lost. What the removed saves alone held is gc's to free.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

from ketch.errors import KetchError, RefConflict, RefNotFound
from ketch.git import objects as gobj
from ketch.git.refnames import shown_name
from ketch.interrupt import held, stop_signals
from ketch.lifecycle.policy import Decision, KeepPolicy, decide
from ketch.progress import NullProgress, Progress
from ketch.repo import WritableRepository
from ketch.text import plural

HEADS = b"refs/heads/"
# A branch that keeps moving under prune (a save every few milliseconds) is
# given up on after this many tries, with an error, rather than looped on.
ATTEMPTS = 10


@dataclass
class BranchResult:
    """One branch: its saves (head first) and where it pointed before and after."""

    name: str
    decisions: list[Decision]
    old_head: bytes
    new_head: bytes
    # Kept commits that were rewritten: old id -> new id.
    rewritten: dict[bytes, bytes] = field(default_factory=dict)
    attempts: int = 1

    @property
    def kept(self) -> int:
        return sum(d.keep for d in self.decisions)

    @property
    def removed(self) -> int:
        return len(self.decisions) - self.kept

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "old_head": self.old_head.hex(),
            "new_head": self.new_head.hex(),
            "kept": self.kept,
            "removed": self.removed,
            # More than 1: saves landed while prune ran, and it decided again.
            "attempts": self.attempts,
            "saves": [
                {
                    "commit": d.commit.hex(),
                    # The id it has now: a rewritten copy, or itself.
                    "new_commit": self.rewritten.get(d.commit, d.commit).hex() if d.keep else None,
                    "time": d.time,
                    "date": time.strftime("%Y-%m-%dT%H:%M:%S%z", time.localtime(d.time)),
                    "keep": d.keep,
                    "reasons": d.reasons,
                }
                for d in self.decisions
            ],
        }


@dataclass
class PruneReport:
    policy: KeepPolicy
    dry_run: bool
    branches: list[BranchResult] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # Branches left as they were because they kept moving (a message each).
    errors: list[str] = field(default_factory=list)

    @property
    def exit_code(self) -> int:
        return 2 if self.errors else 1 if self.warnings else 0

    def as_dict(self) -> dict[str, Any]:
        return {
            "policy": self.policy.describe(),
            "dry_run": self.dry_run,
            "kept": sum(b.kept for b in self.branches),
            "removed": sum(b.removed for b in self.branches),
            "branches": [b.as_dict() for b in self.branches],
            "warnings": self.warnings,
            "errors": self.errors,
        }


def _first_parent_chain(repo: WritableRepository, head: bytes,
                        progress: Progress) -> list[tuple[bytes, int, bytes]]:
    """(commit, committer time, raw commit) from `head` down its first parents."""
    chain = []
    oid: bytes | None = head
    while oid is not None:
        data = repo.read_typed(oid, gobj.COMMIT)
        c = gobj.decode_commit(data)
        chain.append((oid, c.committer_time, data))
        progress.advance(nfiles=1)
        oid = c.parents[0] if c.parents else None
    return chain


def with_first_parent(data: bytes, parent: bytes | None) -> bytes:
    """The raw commit `data` with its first `parent` line replaced (None: removed,
    the other parents move up); every other byte as it was."""
    end = data.find(b"\n\n")
    header, rest = (data[:end], data[end:]) if end >= 0 else (data, b"")
    lines = header.split(b"\n")
    # Continuation lines of a multi-line header start with a space, so they never match.
    at = next((i for i, ln in enumerate(lines) if ln.startswith(b"parent ")), None)
    line = [b"parent " + parent.hex().encode()] if parent is not None else []
    if at is None:
        lines[1:1] = line  # a root commit gains a parent after its tree line
    else:
        lines[at:at + 1] = line
    return b"\n".join(lines) + rest


def _rewrite(repo: WritableRepository, chain: list[tuple[bytes, int, bytes]],
             keep: list[bool]) -> tuple[bytes, dict[bytes, bytes]]:
    """Write the kept commits of `chain` (head first) as one first-parent chain:
    (its head, old id -> new id of the rewritten ones)."""
    oldest_first = list(zip(reversed(chain), reversed(keep), strict=True))
    first_removed = next(i for i, (_, k) in enumerate(oldest_first) if not k)
    # Everything below the first removed save is kept, and keeps its id.
    parent = oldest_first[first_removed - 1][0][0] if first_removed else None
    rewritten: dict[bytes, bytes] = {}
    w = repo.writer()
    try:
        for (oid, _, data), k in oldest_first[first_removed + 1:]:
            if k:
                parent = rewritten[oid] = w.write(gobj.COMMIT, with_first_parent(data, parent))
    except BaseException:
        w.abort()
        raise
    w.close()
    assert parent is not None  # the head is always kept
    return parent, rewritten


class _LeftAlone(KetchError):
    """A branch prune does not touch, and says why (a warning)."""


def _prune_branch(repo: WritableRepository, name: bytes, policy: KeepPolicy, *,
                  dry_run: bool, progress: Progress) -> BranchResult:
    ref = HEADS + name
    for attempt in range(1, ATTEMPTS + 1):
        head = repo.read_ref(ref)
        if head is None:
            raise _LeftAlone(f"branch {shown_name(name)} was deleted while prune ran")
        kind, _ = repo.read(head)
        if kind != gobj.COMMIT:
            raise _LeftAlone(f"branch {shown_name(name)} points at a "
                             f"{gobj.TYPE_NAMES[kind].decode()}, not a save: left alone")
        chain = _first_parent_chain(repo, head, progress)
        decisions = decide([(oid, t) for oid, t, _ in chain], policy)
        result = BranchResult(shown_name(name), decisions, head, head, attempts=attempt)
        keep = [d.keep for d in decisions]
        if dry_run or all(keep):
            return result
        message = (f"ketch prune: {policy.describe()}: kept {result.kept}, "
                   f"removed {plural(result.removed, 'save')}").encode()
        try:
            # Held as a save holds it, from the first write to the moved branch:
            # gc waits for it before deleting what it hides.
            with repo.writing():
                result.new_head, result.rewritten = _rewrite(repo, chain, keep)
                with held():  # Ctrl-C waits: the ref and its reflog move together
                    repo.update_ref(ref, result.new_head, head, message=message)
            return result
        except RefConflict:
            continue  # a save landed: decide again from the new head
    raise RefConflict(f"branch {shown_name(name)} kept moving while prune ran; gave up after "
                      f"{ATTEMPTS} attempts (nothing of it was removed)")


def branch_names(repo: WritableRepository) -> list[bytes]:
    return sorted(ref[len(HEADS):] for ref, _ in repo.iter_refs(HEADS))


def prune(repo: WritableRepository, names: list[str] | None, policy: KeepPolicy, *,
          dry_run: bool = False, progress: Progress | None = None) -> PruneReport:
    """Apply `policy` to each branch of `names` (None: every branch). Unknown
    names fail (RefNotFound) before any branch is touched."""
    progress = progress or NullProgress()
    report = PruneReport(policy, dry_run)
    existing = branch_names(repo)
    if names is None:
        todo = existing
    else:
        todo = [n.encode("utf-8", "surrogateescape") for n in names]
        unknown = [n for n in todo if n not in existing]
        if unknown:
            have = ", ".join(shown_name(n) for n in existing) or "none"
            raise RefNotFound(f"no such {'branch' if len(unknown) == 1 else 'branches'}: "
                              f"{', '.join(shown_name(n) for n in unknown)} (branches: {have})")
    with stop_signals():
        for name in dict.fromkeys(todo):
            try:
                report.branches.append(
                    _prune_branch(repo, name, policy, dry_run=dry_run, progress=progress))
            except _LeftAlone as e:
                progress.warn(str(e))
                report.warnings.append(str(e))
            except RefConflict as e:
                report.errors.append(str(e))
    progress.finish()
    return report
