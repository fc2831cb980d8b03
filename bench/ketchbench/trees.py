"""Comparing a tree with its restored copy."""

from __future__ import annotations

import os
import stat
from pathlib import Path


def _entry(path: str) -> tuple[os.stat_result, str | None]:
    st = os.lstat(path)
    return st, os.readlink(path) if stat.S_ISLNK(st.st_mode) else None


def _same_bytes(a: str, b: str) -> bool:
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(1 << 20), fb.read(1 << 20)
            if x != y:
                return False
            if not x:
                return True


def compare_entry(rel: str, a: str, b: str) -> str | None:
    """What differs between ``a`` and ``b`` (one path each side), if anything:
    type, content or link target, permissions (not of symlinks), owner, mtime."""
    sa, la = _entry(a)
    sb, lb = _entry(b)
    if stat.S_IFMT(sa.st_mode) != stat.S_IFMT(sb.st_mode):
        return f"{rel}: type {stat.filemode(sa.st_mode)} vs {stat.filemode(sb.st_mode)}"
    if la != lb:
        return f"{rel}: symlink -> {la!r} vs {lb!r}"
    if stat.S_ISREG(sa.st_mode):
        if sa.st_size != sb.st_size:
            return f"{rel}: size {sa.st_size} vs {sb.st_size}"
        if not _same_bytes(a, b):
            return f"{rel}: content differs"
    if la is None and stat.S_IMODE(sa.st_mode) != stat.S_IMODE(sb.st_mode):
        return f"{rel}: mode {oct(stat.S_IMODE(sa.st_mode))} vs {oct(stat.S_IMODE(sb.st_mode))}"
    if (sa.st_uid, sa.st_gid) != (sb.st_uid, sb.st_gid):
        return f"{rel}: owner {sa.st_uid}:{sa.st_gid} vs {sb.st_uid}:{sb.st_gid}"
    if sa.st_mtime_ns != sb.st_mtime_ns:
        return f"{rel}: mtime {sa.st_mtime_ns} vs {sb.st_mtime_ns}"
    return None


def compare_trees(src: Path, dst: Path) -> list[str]:
    """Every difference between the tree ``src`` and its restored copy ``dst``:
    missing or extra names, and what compare_entry finds."""
    top = compare_entry(".", str(src), str(dst))
    problems: list[str] = [top] if top else []
    for dirpath, dirnames, filenames in os.walk(src):
        rel_dir = os.path.relpath(dirpath, src)
        other = os.path.join(dst, rel_dir)
        dirnames.sort()
        names = set(dirnames) | set(filenames)
        try:
            there = set(os.listdir(other))
        except OSError as e:
            problems.append(f"{rel_dir}: {e.strerror}")
            dirnames.clear()
            continue
        problems += [f"{os.path.join(rel_dir, n)}: missing" for n in sorted(names - there)]
        problems += [f"{os.path.join(rel_dir, n)}: extra" for n in sorted(there - names)]
        for name in sorted(names & there):
            rel = os.path.normpath(os.path.join(rel_dir, name))
            diff = compare_entry(rel, os.path.join(dirpath, name), os.path.join(other, name))
            if diff:
                problems.append(diff)
        dirnames[:] = [
            d for d in dirnames if d in there and not os.path.islink(os.path.join(dirpath, d))
        ]
    return problems
