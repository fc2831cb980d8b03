"""Is everything a new commit reaches stored? git's connectivity check, for the
server's update-ref.

A ref must never point at a commit whose tree lacks an object: a restore of it
would fail years later. Walking the whole tree of every new save would cost as
much as the save, so, as git's receive-pack does, the walk stops at what the
branch already reaches: a commit in the old head's history is complete (gc
keeps everything reachable), and a subtree identical to the one at the same
place in the parent's tree is too. What is left is what the save changed.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence

from ketch.errors import KetchError, ObjectNotFound
from ketch.git import objects as gobj
from ketch.localrepo import LocalRepository
from ketch.repo import Repository

_TREE = 0o040000
_GITLINK = 0o160000
# Enough to say what is wrong; a broken save may lack millions of objects.
MAX_REPORTED = 20


HasMany = Callable[[Sequence[bytes]], list[bool]]


class _Walk:
    def __init__(self, repo: Repository, has_many: HasMany) -> None:
        self.repo = repo
        self.has_many = has_many
        self.missing: list[bytes] = []
        self._blobs: list[bytes] = []
        self._seen_trees: set[bytes] = set()

    def _entries(self, tree: bytes) -> list[tuple[int, bytes, bytes]] | None:
        try:
            t, data = self.repo.read(tree)
        except ObjectNotFound:
            self.missing.append(tree)
            return None
        if t != gobj.TREE:
            self.missing.append(tree)  # named as a tree, stored as something else
            return None
        return [(e.mode, e.name, e.oid) for e in gobj.decode_tree(data)]

    def _blob(self, oid: bytes) -> None:
        self._blobs.append(oid)
        if len(self._blobs) >= 4096:
            self.flush()

    def flush(self) -> None:
        if self._blobs:
            there = self.has_many(self._blobs)
            self.missing += [o for o, ok in zip(self._blobs, there, strict=True) if not ok]
            self._blobs = []

    def tree(self, new: bytes, base: bytes | None) -> None:
        """Check `new`, trusting whatever it shares with the complete tree `base`."""
        stack: list[tuple[bytes, bytes | None]] = [(new, base)]
        while stack and len(self.missing) < MAX_REPORTED:
            new, base = stack.pop()
            if new == base or new in self._seen_trees:
                continue
            self._seen_trees.add(new)
            entries = self._entries(new)
            if entries is None:
                continue
            known: dict[bytes, tuple[int, bytes]] = {}
            if base is not None:
                # The base is complete, so reading it cannot fail for want of objects.
                for mode, name, oid in self._entries(base) or []:
                    known[name] = (mode, oid)
            for mode, name, oid in entries:
                old = known.get(name)
                if old is not None and old[1] == oid:
                    continue
                if mode == _TREE:
                    stack.append((oid, old[1] if old is not None and old[0] == _TREE else None))
                elif mode != _GITLINK:
                    self._blob(oid)
        self.flush()


def history(repo: Repository, head: bytes) -> set[bytes]:
    """Every commit `head` reaches, itself included."""
    seen = {head}
    todo = [head]
    while todo:
        try:
            t, data = repo.read(todo.pop())
        except ObjectNotFound:
            continue
        if t != gobj.COMMIT:
            continue
        for p in gobj.decode_commit(data).parents:
            if p not in seen:
                seen.add(p)
                todo.append(p)
    return seen


def _new_commits(repo: Repository, new: bytes, old: bytes | None) -> Iterator[bytes]:
    """Commits reachable from `new` but not from `old`, children before parents."""
    known: set[bytes] | None = None
    seen: set[bytes] = set()
    todo = [new]
    while todo:
        cur = todo.pop()
        if cur in seen or cur == old:
            continue
        if known is None and old is not None and cur != new:
            known = history(repo, old)  # only when the new one is not a child of old
        if known is not None and cur in known:
            continue
        seen.add(cur)
        yield cur
        try:
            t, data = repo.read(cur)
        except ObjectNotFound:
            continue
        if t == gobj.COMMIT:
            todo += gobj.decode_commit(data).parents


def missing_objects(repo: Repository, new: bytes, old: bytes | None,
                    has_many: HasMany | None = None) -> list[bytes]:
    """Objects reachable from commit `new` that are not stored (at most
    MAX_REPORTED of them), trusting the history of `old` (None: trust nothing).
    `has_many` says which blobs are stored (default: the repository's)."""
    walk = _Walk(repo, has_many or repo.has_many)
    for cid in _new_commits(repo, new, old):
        try:
            t, data = repo.read(cid)
        except ObjectNotFound:
            walk.missing.append(cid)
            continue
        if t == gobj.TREE:  # a tag may name a tree
            walk.tree(cid, None)
            continue
        if t != gobj.COMMIT:
            continue  # a blob is complete; an annotated tag is left to git's own checks
        c = gobj.decode_commit(data)
        base = None
        if c.parents:
            try:
                pt, pdata = repo.read(c.parents[0])
            except ObjectNotFound:
                pt, pdata = 0, b""
                walk.missing.append(c.parents[0])
            if pt == gobj.COMMIT:
                base = gobj.decode_commit(pdata).tree
        walk.tree(c.tree, base)
        if len(walk.missing) >= MAX_REPORTED:
            break
    return walk.missing[:MAX_REPORTED]


def descends(repo: Repository, new: bytes, old: bytes) -> bool:
    """Is `old` an ancestor of (or equal to) `new`? (what an append-only key may do)"""
    return old in history(repo, new)


def check_complete(repo: LocalRepository, oid: bytes, old: bytes | None) -> None:
    """Never point a ref at a commit that reaches a missing object (a cut
    connection, or a save that counted on an object gc has collected). What
    packs gc is retiring hold counts: gc copies it back before it deletes."""
    if not repo.stored_many([oid])[0]:
        raise KetchError(f"update-ref: object {oid.hex()} is not in the repository")
    lost = missing_objects(repo, oid, old, repo.stored_many)
    if lost:
        more = " and more" if len(lost) >= MAX_REPORTED else ""
        raise KetchError(f"update-ref: commit {oid.hex()} refers to missing objects "
                         f"({lost[0].hex()}{more}); save again")
