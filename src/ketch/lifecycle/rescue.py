"""gc's two-phase deletion: packs are first hidden (moved into
`<repo>/ketch-gc/doomed/`, where neither git, bup nor a new ketch lookup sees
them), and deleted only after the rescue has copied out every object that
became reachable again meanwhile.

A pack is hidden .idx first, then .pack: readers find packs by their idx, so
once the idx has gone a pack is invisible, and a .pack left without its idx by
a kill is finished off by the next gc (`finish_hide`). Deletion goes the same
way round. Every step is a rename or unlink followed by an fsync of the
directory, so a crash at any point leaves each pack either visible, or whole
in doomed/ (rescued and deleted by the next gc).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
from collections.abc import Callable

import numpy as np

from ketch.git.durable import fsync_dir
from ketch.git.pack import PackWriter
from ketch.lifecycle import crashpoint
from ketch.lifecycle.gcwalk import Walker
from ketch.lifecycle.liveset import LiveSet
from ketch.lifecycle.sweep import copy_entries

# Files git keeps beside a pack, named like it; they go wherever the pack goes.
_COMPANIONS = (".rev", ".bitmap", ".mtimes", ".promisor")


class GcDir:
    """`<repo>/ketch-gc/`: gc's lock, its temp packs and the hidden packs."""

    def __init__(self, repo_path: str) -> None:
        self.root = os.path.join(repo_path, "ketch-gc")
        self.lock = os.path.join(self.root, "lock")
        self.tmp = os.path.join(self.root, "tmp")
        self.doomed = os.path.join(self.root, "doomed")

    def create(self) -> None:
        for d in (self.root, self.tmp, self.doomed):
            os.makedirs(d, exist_ok=True)

    def clear_tmp(self) -> int:
        """Remove the temp packs of a killed gc (only gc writes here)."""
        n = 0
        with contextlib.suppress(FileNotFoundError):
            for name in os.listdir(self.tmp):
                shutil.rmtree(os.path.join(self.tmp, name), ignore_errors=True)
                n += 1
        return n

    def doomed_idx(self) -> list[str]:
        return sorted(glob.glob(os.path.join(glob.escape(self.doomed), "*.idx")))


def _move(src: str, dst_dir: str) -> bool:
    try:
        os.rename(src, os.path.join(dst_dir, os.path.basename(src)))
        return True
    except FileNotFoundError:
        return False


def hide(pack_dir: str, doomed: str, pack_paths: list[str]) -> None:
    """Move each pack (idx first) and its companions into `doomed`."""
    for pack in pack_paths:
        base = pack[: -len(".pack")]
        crashpoint.reach("hide-idx")
        _move(base + ".idx", doomed)
        crashpoint.reach("hide-pack")
        _move(pack, doomed)
        for ext in _COMPANIONS:
            _move(base + ext, doomed)
        crashpoint.reach("hide-parity")
        for par2 in glob.glob(glob.escape(base) + "*.par2"):  # its parity (bup's fsck -g)
            _move(par2, doomed)
    fsync_dir(doomed)
    fsync_dir(pack_dir)


def finish_hide(pack_dir: str, doomed: str) -> int:
    """Move the .pack (and companions) that a gc killed between its two renames
    left behind: its idx is in `doomed` and the pack is not. Only those: a pack
    of the same name that is whole in objects/pack (its idx there too) is a
    copy the rescue wrote (a name is the content's hash), and stays."""
    moved = 0
    for idx in glob.glob(os.path.join(glob.escape(doomed), "*.idx")):
        stem = os.path.basename(idx)[: -len(".idx")]
        if os.path.exists(os.path.join(doomed, stem + ".pack")):
            continue
        base = os.path.join(pack_dir, stem)
        if os.path.exists(base + ".idx"):
            continue
        for ext in (".pack", *_COMPANIONS):
            moved += _move(base + ext, doomed)
    if moved:
        fsync_dir(doomed)
        fsync_dir(pack_dir)
    return moved


def delete_doomed(doomed: str) -> int:
    """Delete every hidden pack (idx first); returns how many packs went."""
    n = 0
    for idx in sorted(glob.glob(os.path.join(glob.escape(doomed), "*.idx"))):
        base = idx[: -len(".idx")]
        crashpoint.reach("delete")
        os.unlink(idx)
        for ext in (".pack", *_COMPANIONS):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(base + ext)
        n += 1
    # Strays: a pack or companion whose idx is gone already (a kill between unlinks).
    for p in glob.glob(os.path.join(glob.escape(doomed), "*")):
        with contextlib.suppress(FileNotFoundError):
            os.unlink(p)
    fsync_dir(doomed)
    return n


def drop_orphan_parity(pack_dir: str) -> int:
    """Delete the par2 files of packs that are gone: left by a gc killed between
    moving a pack and its parity, or made by an `fsck -g` that finished after gc
    hid the pack. Returns how many went."""
    n = 0
    for p in glob.glob(os.path.join(glob.escape(pack_dir), "pack-*.par2")):
        base = os.path.join(pack_dir, os.path.basename(p).split(".", 1)[0])
        if not os.path.exists(base + ".pack") and not os.path.exists(base + ".idx"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
                n += 1
    if n:
        fsync_dir(pack_dir)
    return n


def rescue(objects_dir: str, tips: list[bytes], doomed_idx: list[str], *,
           stop: LiveSet | None, new_writer: Callable[[], PackWriter],
           on_objects: Callable[[int], None] | None = None) -> tuple[int, int]:
    """Copy every object reachable from `tips` that only a doomed pack holds into
    a new, durable pack. With `stop` (gc's mark), the walk ends at what the mark
    found; without (after a killed gc) it walks everything. Returns (objects
    walked, objects rescued)."""
    pack_dir = os.path.join(objects_dir, "pack")
    visible = sorted(glob.glob(os.path.join(glob.escape(pack_dir), "*.idx")))
    midx = sorted(glob.glob(os.path.join(glob.escape(pack_dir), "*.midx")))
    # Visible first: an object also in a visible pack is found there, not rescued
    # (and a midx a killed gc left, naming hidden packs, is not used).
    live = LiveSet(visible + doomed_idx, midx, {os.path.basename(p) for p in visible})
    walker = Walker(objects_dir, live, stop=stop, on_objects=on_objects)
    try:
        walker.walk(tips)
        first_doomed = len(visible)
        todo = [(k, np.flatnonzero(live.marks[k])) for k in range(first_doomed, len(live.idx))]
        todo = [(k, p) for k, p in todo if p.size]
        rescued = 0
        if todo:
            w = new_writer()
            try:
                for k, positions in todo:
                    copy_entries(live, k, positions, w, walker.read)
                    rescued += int(positions.size)
                crashpoint.reach("rescue")
                w.close()
            except BaseException:
                w.abort()
                raise
        return walker.found, rescued
    finally:
        walker.close()
        live.close()
