"""A path compared between two saves: the files added, removed and changed
below it, and a line diff when it is one small text file.

Equal trees have equal ids, so a subtree that did not change is skipped
whole: comparing two nightly saves of a large machine reads only the
directories that changed.
"""

from __future__ import annotations

import difflib
from collections.abc import Iterator
from dataclasses import dataclass, field

from ketch.vfs import VFS, Item
from ketch.web.browse import display, href, text_of

MAX_CHANGES = 5000  # a listing past this is cut, and says so
DIFF_LIMIT = 256 << 10  # each side, for a line diff
DIFF_LINES = 5000


@dataclass(frozen=True)
class Change:
    what: str  # "added", "removed", "changed", "type"
    path: str  # display form, relative to the compared path
    href_a: str | None  # the entry in the older save (URL path under the machine)
    href_b: str | None


@dataclass
class Comparison:
    changes: list[Change] = field(default_factory=list)
    truncated: bool = False
    diff: list[str] | None = None  # a unified diff, when both sides are small text
    note: str = ""

    def as_dict(self) -> dict[str, object]:
        return {"changes": [c.__dict__ for c in self.changes], "truncated": self.truncated,
                "diff": self.diff, "note": self.note}


def _same(a: Item, b: Item) -> bool:
    return a.oid == b.oid and a.kind == b.kind and a.target == b.target


def _whole(vfs: VFS, item: Item, rel: bytes, what: str) -> Iterator[tuple[str, bytes]]:
    for sub, _ in vfs.walk(item):
        yield what, (rel + b"/" + sub if rel and sub else rel or sub)


def _walk(vfs: VFS, a: Item | None, b: Item | None, rel: bytes
          ) -> Iterator[tuple[str, bytes]]:
    if a is not None and b is not None:
        if _same(a, b):
            return
        if a.is_dir and b.is_dir:
            left = {i.name: i for i in vfs.contents(a)}
            right = {i.name: i for i in vfs.contents(b)}
            for name in sorted(left.keys() | right.keys()):
                sub = rel + b"/" + name if rel else name
                yield from _walk(vfs, left.get(name), right.get(name), sub)
            return
        if not a.is_dir and not b.is_dir:
            yield "changed", rel
            return
    # One side only, or a file that became a directory (or the reverse).
    if a is not None:
        yield from _whole(vfs, a, rel, "removed")
    if b is not None:
        yield from _whole(vfs, b, rel, "added")


def compare(vfs: VFS, a: Item, b: Item, base_a: bytes, base_b: bytes) -> Comparison:
    """What changed from `a` (at `base_a`, a path under the machine) to `b`."""
    out = Comparison()
    for what, rel in _walk(vfs, a, b, b""):
        if len(out.changes) >= MAX_CHANGES:
            out.truncated = True
            break
        pa = base_a + (b"/" + rel if rel else b"")
        pb = base_b + (b"/" + rel if rel else b"")
        out.changes.append(Change(what, display(rel) or ".",
                                  href(pa) if what != "added" else None,
                                  href(pb) if what != "removed" else None))
    if not a.is_dir and not b.is_dir and not _same(a, b):
        ta, tb = text_of(vfs, a, DIFF_LIMIT), text_of(vfs, b, DIFF_LIMIT)
        if ta is None or tb is None:
            out.note = "not compared line by line: binary, or larger than 256 KiB"
        else:
            lines = list(difflib.unified_diff(ta.splitlines(), tb.splitlines(),
                                              display(base_a), display(base_b), lineterm=""))
            if len(lines) > DIFF_LINES:
                out.note = f"diff cut at {DIFF_LINES} of {len(lines)} lines"
                lines = lines[:DIFF_LINES]
            out.diff = lines
    return out
