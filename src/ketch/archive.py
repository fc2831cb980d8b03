"""Where a save's sources go in its archive: the directories from `/` down to
each source, as `--strip`, `--strip-path` and `--graft` place them (bup 0.33's
rules), and where each of those directories takes its metadata from."""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from ketch.errors import UsageError


@dataclass(frozen=True)
class Layout:
    """The save's path options: --strip, --strip-path, --graft OLD=NEW."""

    strip: bool = False
    strip_path: str | None = None
    grafts: Sequence[tuple[str, str]] = ()


@dataclass
class Node:
    """A directory of the archive above (or at) the sources."""

    meta_path: bytes | None  # where its metadata comes from; None: empty record
    children: dict[bytes, Node] = field(default_factory=dict)
    source: bytes | None = None  # a real directory whose entries are merged here
    file_source: bytes | None = None  # a non-directory source placed at this name


def _split_abs(path: bytes) -> list[bytes]:
    return [p for p in path.split(b"/") if p]


def _archive_path(src: bytes, layout: Layout, sources: list[bytes]) -> tuple[bytes, Callable[[bytes], bytes | None]]:
    """(archive path of src, metadata source for an archive directory path)."""
    if layout.strip:
        prefix = max((s for s in sources if src == s or src.startswith(s.rstrip(b"/") + b"/")),
                     key=len)
        rest = src[len(prefix):] or b"/"
        return rest, lambda a: prefix if a == b"/" else None
    if layout.strip_path is not None:
        sp = os.fsencode(os.path.abspath(layout.strip_path)).rstrip(b"/")
        if src == sp or src.startswith(sp + b"/"):
            return src[len(sp):] or b"/", lambda a: sp + (a if a != b"/" else b"")
        return src, lambda a: a
    for old_s, new_s in layout.grafts:
        old = os.fsencode(os.path.abspath(old_s)).rstrip(b"/") or b"/"
        new = os.fsencode(new_s).rstrip(b"/") or b"/"
        if src == old or src.startswith(old.rstrip(b"/") + b"/"):
            rest = src[len(old.rstrip(b"/")):]
            arch = (new.rstrip(b"/") + rest) or b"/"

            def meta_of(a: bytes, old: bytes = old, new: bytes = new) -> bytes | None:
                if a == new:
                    return old
                if (new + b"/").startswith(a.rstrip(b"/") + b"/") and len(a) < len(new):
                    return None  # created by the graft: no real directory behind it
                return old.rstrip(b"/") + a[len(new.rstrip(b"/")):]
            return arch, meta_of
    return src, lambda a: a


def build_top(paths: list[str], layout: Layout, warn: Callable[[str], None]) -> Node:
    """The archive's directories from `/` down to each of `paths` (their metadata
    sources), with the sources placed in them."""
    sources = []
    for p in paths:
        ap = os.fsencode(os.path.abspath(p))
        if not os.path.lexists(ap):
            raise UsageError(f"{p}: no such file or directory")
        sources.append(ap)
    if layout.strip and layout.strip_path:
        raise UsageError("--strip and --strip-path cannot be combined")
    if layout.grafts and (layout.strip or layout.strip_path):
        raise UsageError("--graft cannot be combined with --strip or --strip-path")
    root = Node(meta_path=b"/")
    root_sources: set[bytes | None] = set()
    for src in sources:
        arch, meta_of = _archive_path(src, layout, sources)
        parts = _split_abs(arch)
        is_dir = stat.S_ISDIR(os.lstat(src).st_mode)
        if not parts:
            root_sources.add(meta_of(b"/"))
            if is_dir:
                if root.source is not None and root.source != src:
                    warn(f"{os.fsdecode(src)}: merged into the archive root with "
                         f"{os.fsdecode(root.source)}")
                root.source = root.source or src
            continue
        root_sources.add(meta_of(b"/"))
        node = root
        for i, part in enumerate(parts[:-1]):
            a = b"/" + b"/".join(parts[: i + 1])
            node = node.children.setdefault(part, Node(meta_path=meta_of(a)))
        last = parts[-1]
        if last in node.children:
            warn(f"{os.fsdecode(src)}: duplicate archive path {os.fsdecode(arch)}, skipped")
            continue
        if is_dir:
            node.children[last] = Node(meta_path=src, source=src)
        else:
            node.children[last] = Node(meta_path=None, file_source=src)
    if len(root_sources) == 1:
        root.meta_path = root_sources.pop()
    else:
        root.meta_path = None  # sources from different roots: bup writes an empty record
    return root
