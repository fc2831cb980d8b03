"""A set's restore drill: a random sample of the files of its latest save,
restored with the library's restore into a scratch directory.

Each restored file is then checked one of two ways:
- the live file still has the stat fingerprint the save recorded (mode, size,
  mtime and ctime in nanoseconds: what the save index compares, short of the
  inode numbers a .bupm does not hold): its bytes and metadata (mode, owner,
  mtime) must equal the restored copy's;
- it changed since (or is gone): its content cannot be compared, so every
  object of the file (the chunk tree's trees and blobs) is read again and
  re-hashed against the id that names it. Restore itself already checked the
  blobs against their ids while writing them.
A file that fails either way fails the drill, named by its path.
"""

from __future__ import annotations

import filecmp
import os
import random
import shutil
import stat

from ketch.errors import KetchError
from ketch.git import objects as gobj
from ketch.jobs.drillreport import Check, DrillItem
from ketch.progress import Progress
from ketch.restore import RestoreError, RestoreVerifyError, restore
from ketch.vfs import VFS, Item, show_path


def _sample(vfs: VFS, save: Item, n: int, rng: random.Random) -> list[tuple[bytes, Item]]:
    """Up to `n` regular files of the save, uniformly (reservoir), with at least
    one chunked file when the save has one."""
    picked: list[tuple[bytes, Item]] = []
    chunked: tuple[bytes, Item] | None = None
    seen = seen_chunked = 0
    for path, item in vfs.walk(save):
        if item.kind != "file":
            continue
        seen += 1
        if len(picked) < n:
            picked.append((path, item))
        elif (k := rng.randrange(seen)) < n:
            picked[k] = (path, item)
        if item.chunked:
            seen_chunked += 1
            if rng.randrange(seen_chunked) == 0:
                chunked = (path, item)
    if chunked is not None and not any(i.chunked for _, i in picked):
        picked[rng.randrange(len(picked))] = chunked
    return sorted(picked, key=lambda p: p[0])


def _fingerprint_matches(st: os.stat_result, item: Item) -> bool:
    m = item.meta
    return (m is not None and m.mode == st.st_mode and m.size == st.st_size
            and m.mtime == st.st_mtime_ns and m.ctime == st.st_ctime_ns)


def _compare(restored: str, live: str, st: os.stat_result) -> str | None:
    """Why the restored copy differs from the live file, or None."""
    rs = os.lstat(restored)
    if rs.st_size != st.st_size:
        return f"restored {rs.st_size} bytes, the live file has {st.st_size}"
    if not filecmp.cmp(restored, live, shallow=False):
        return "restored content differs from the live file (whose size and times are unchanged)"
    for what, a, b in (("mode", stat.S_IMODE(rs.st_mode), stat.S_IMODE(st.st_mode)),
                       ("owner", rs.st_uid, st.st_uid), ("group", rs.st_gid, st.st_gid),
                       ("mtime", rs.st_mtime_ns, st.st_mtime_ns)):
        if a != b:
            shown = (oct(a), oct(b)) if what == "mode" else (a, b)
            return f"restored {what} {shown[0]}, the live file has {shown[1]}"
    return None


def verify_ids(vfs: VFS, oid: bytes) -> int:
    """Read every object of a file (its chunk tree, or its one blob) and check
    each against its id; the bytes of content read. Raises KetchError naming
    the object that is missing, unreadable or wrong."""
    total = 0
    todo = [oid]
    while todo:
        cur = todo.pop()
        t, data = vfs.repo.read(cur)
        if gobj.object_id(t, data) != cur:
            raise KetchError(f"object {cur.hex()} does not match its id (damaged in the repository)")
        if t == gobj.TREE:
            todo.extend(e.oid for e in reversed(list(gobj.decode_tree(data))))
        elif t == gobj.BLOB:
            total += len(data)
        else:
            raise KetchError(f"object {cur.hex()} is a {gobj.TYPE_NAMES[t].decode()} "
                             "inside a file")
    return total


def _check_file(vfs: VFS, spec: bytes, rel: bytes, item: Item, scratch: str) -> Check:
    name = "/" + show_path(rel)
    check = Check(name=name, method="compared", size=vfs.size(item), chunked=item.chunked)
    live = b"/" + rel
    try:
        st: os.stat_result | None = os.lstat(live)
    except OSError:
        st = None
    out = os.path.join(scratch, "f")
    try:
        restore(vfs, [spec], out)
        restored = os.path.join(out, os.fsdecode(os.path.basename(rel)))
        if st is not None and stat.S_ISREG(st.st_mode) and _fingerprint_matches(st, item):
            check.error = _compare(restored, os.fsdecode(live), st)
        else:
            check.method = "object ids"
            verify_ids(vfs, item.oid or b"")
    except RestoreVerifyError as e:
        # The scratch directory's name means nothing to the reader.
        check.error = ("; ".join(e.result.errors[:3]) or str(e)).replace(
            os.path.join(out, ""), "")
    except (KetchError, OSError) as e:
        check.error = str(e) if isinstance(e, KetchError) else f"{e.strerror or e}"
    finally:
        shutil.rmtree(out, ignore_errors=True)
    check.ok = check.error is None
    return check


def drill_set(vfs: VFS, item: DrillItem, progress: Progress, *, sample: int, scratch: str,
              rng: random.Random) -> None:
    """Fill `item` with the checks of a sample of the branch's latest save."""
    branch = item.name.encode()
    try:
        saves = vfs.saves(branch)
    except KetchError:
        item.warnings.append("no save yet: nothing to drill")
        return
    save_name, commit, _ = saves[0]
    item.save, item.commit = save_name.decode(), commit.hex()
    prefix = branch + b"/" + save_name
    try:
        save = vfs.resolve(prefix)
        files = _sample(vfs, save, sample, rng)
    except (KetchError, OSError) as e:
        raise RestoreError(f"cannot list the save: {e}") from e
    if not files:
        item.notes.append("the save holds no regular files")
        return
    progress.start(sum(vfs.size(i) for _, i in files), len(files))
    try:
        for rel, f in files:
            check = _check_file(vfs, prefix + b"/" + rel, rel, f, scratch)
            item.checks.append(check)
            progress.advance(check.size, 1)
    finally:
        progress.finish()
