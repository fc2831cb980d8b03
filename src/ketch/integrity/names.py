"""What each bad object damages, in a user's words: `web1: 2026-11-20-220000:
/etc/nginx/nginx.conf`. Run only when the reachability walk found trouble: it
walks every save again, newest first, with paths (bup's names demangled; the
chunks of a file are that file), and names the first save and path that need
each bad object, counting the other saves that need it too.

A tree is read once: a clean one is marked in a bitmap beside the LiveSet's
marks, one holding bad objects remembers which (few), so a later save that
shares it counts them without walking it again.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

from ketch.buptree import demangle
from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.integrity.reach import Trouble
from ketch.lifecycle.liveset import LiveSet
from ketch.vfs import save_names

Read = Callable[[bytes], tuple[int, bytes]]
_EMPTY: frozenset[bytes] = frozenset()


@dataclass
class Finding:
    trouble: Trouble
    ref: str | None = None
    save: str | None = None
    path: str | None = None
    saves: int = 0  # saves that need it
    _last: bytes = b""


def ref_label(ref: bytes) -> str:
    name = ref.decode(errors="replace")
    for prefix, label in (("refs/heads/", ""), ("refs/tags/", "tag ")):
        if name.startswith(prefix):
            return label + name[len(prefix):]
    return name


def _show(path: bytes) -> str:
    return (path or b"/").decode(errors="backslashreplace")


class Namer:
    def __init__(self, read: Read, live: LiveSet, trouble: dict[bytes, Trouble]) -> None:
        self.read = read
        self.live = live
        self.trouble = trouble
        self.findings: dict[bytes, Finding] = {}
        self._clean = [np.zeros(ix.count, dtype=bool) for ix in live.idx]
        self._dirty: dict[bytes, frozenset[bytes]] = {}
        self._commits: set[bytes] = set()
        self._ref = ""
        self._save = ""
        self._commit = b""

    def _hit(self, oid: bytes, path: bytes | None) -> None:
        f = self.findings.get(oid)
        if f is None:
            f = self.findings[oid] = Finding(self.trouble[oid], self._ref, self._save or None,
                                             None if path is None else _show(path))
        if f._last != self._commit:
            f._last = self._commit
            f.saves += 1

    def name_all(self, refs: list[tuple[bytes, bytes]]) -> list[Finding]:
        old = sys.getrecursionlimit()
        sys.setrecursionlimit(max(old, 20000))
        try:
            for ref, tip in refs:
                self._branch(ref, tip)
        finally:
            sys.setrecursionlimit(old)
        for oid, t in self.trouble.items():
            if oid not in self.findings:
                self.findings[oid] = Finding(t)
        return list(self.findings.values())

    def _branch(self, ref: bytes, tip: bytes) -> None:
        self._ref, self._save, self._commit = ref_label(ref), "", b"ref:" + ref
        commits: list[tuple[int, bytes, bytes]] = []  # (time, id, tree)
        todo = [tip]
        while todo:
            c = todo.pop()
            if c in self._commits:
                continue
            self._commits.add(c)
            if c in self.trouble:
                self._hit(c, None)
                continue
            try:
                t, data = self.read(c)
                if t == gobj.TAG:
                    todo.append(bytes.fromhex(data.split(b"\n", 1)[0].split(b" ")[1].decode()))
                    continue
                commit = gobj.decode_commit(data)
            except (KetchError, ValueError, IndexError):
                continue  # the walk has said what is wrong with it
            commits.append((commit.author_time, c, commit.tree))
            todo.extend(commit.parents)
        commits.sort(key=lambda x: -x[0])
        for name, (_, c, tree) in zip(save_names([t for t, _, _ in commits]), commits,
                                      strict=True):
            self._save, self._commit = name.decode(), c
            self._tree(tree, b"", False)

    def _locate(self, oid: bytes) -> tuple[int, int]:
        which, pos = self.live.locate(np.array([oid], dtype="S20"))
        return int(which[0]), int(pos[0])

    def _tree(self, oid: bytes, path: bytes, in_file: bool) -> frozenset[bytes]:
        if oid in self.trouble:
            self._hit(oid, path)
            return frozenset([oid])
        known = self._dirty.get(oid)
        if known is not None:
            for o in known:
                self._hit(o, None)
            return known
        k, p = self._locate(oid)
        if k >= 0 and self._clean[k][p]:
            return _EMPTY
        try:
            t, data = self.read(oid)
            entries = list(gobj.decode_tree(data)) if t == gobj.TREE else []
        except (KetchError, ValueError):
            return _EMPTY  # the walk has said what is wrong with it
        bad: set[bytes] = set()
        for e in entries:
            if e.mode == 0o160000:
                continue
            if in_file:
                child_path, child_in_file = path, True
            elif e.name == b".bupm":
                child_path, child_in_file = path + b"/.bupm", True
            else:
                fsname, chunked = demangle(e.name, e.mode)
                child_path, child_in_file = path + b"/" + fsname, chunked
            if e.mode == gobj.MODE_TREE:
                bad |= self._tree(e.oid, child_path, child_in_file)
            elif e.oid in self.trouble:
                self._hit(e.oid, child_path)
                bad.add(e.oid)
        if bad:
            self._dirty[oid] = frozenset(bad)
            return self._dirty[oid]
        if k >= 0:
            self._clean[k][p] = True
        return _EMPTY
