"""gc for a repository in a bucket (`ketch gc -r s3://…`), safe while machines save.

A local gc waits for the saves that began before it (their leases); in a
bucket a save holds no lease (a machine's key may not delete what it would
leave behind). Time and the manifest's compare-and-swap stand in for them:

1. Lock: `NAME/gc-lock`, created with If-None-Match (one gc at a time; a lock
   older than STALE_LOCK is a killed gc's, taken over by If-Match).
2. Mark every object reachable from the manifest's refs, over every pack
   (the idx files, whole, in the cache; trees and commits read by ranged GETs).
3. Retire: a pack whose garbage is above the threshold, or that holds a
   garbage tree or commit, has its live objects copied into new packs and is
   marked `retired` in the manifest. A retired pack is still read but never
   deduplicated against: a save that starts from now on cannot come to need it.
4. Delete the packs retired at least `wait` seconds ago: first copy out
   anything reachable now that only they hold (a save that deduplicated
   against one before it was retired), then take them out of the manifest by
   compare-and-swap. If the manifest changed since the mark (a save
   published), the swap fails and the deletion waits for the next gc: the
   mark no longer covers every ref. A save that still counts on a deleted pack
   (it ran longer than `wait`) finds it gone from the manifest when it
   publishes and fails with nothing lost (ketch.offsite.bucket).
5. Delete the deleted packs' files; unlock.

With `--wait 0` a gc deletes in the same run what it retires.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import Iterator
from typing import Any, cast

import numpy as np

from ketch.errors import CorruptObject, KetchError, UsageError
from ketch.git import objects as gobj
from ketch.lifecycle.gc import DEFAULT_WAIT, GcBusy
from ketch.lifecycle.gcreport import GcProgress, GcReport, NullGcProgress
from ketch.lifecycle.gcwalk import Walker
from ketch.lifecycle.liveset import LiveSet, ids_to_bytes
from ketch.lifecycle.sweep import entry_sizes
from ketch.offsite import locator
from ketch.offsite.bucket import BucketRepository
from ketch.offsite.manifest import Manifest, PackEntry, pack_prefix
from ketch.offsite.store import NotFound, PreconditionFailed, StoreError
from ketch.progress import Progress

STALE_LOCK = 6 * 3600.0
_HEAD_GAP = 64 << 10  # garbage entries' first bytes: merged into one GET across this
_HEAD_SPAN = 4 << 20
_COPY_BATCH = 2048


def _check_may_delete(repo: BucketRepository) -> None:
    """gc deletes: a key that may not (a machine's) fails here, before the lock
    it could not remove either."""
    key = f"{repo.name}/gc-probe-{uuid.uuid4().hex}"
    repo.store.put_if(key, b"", None)
    try:
        repo.store.delete(key)
    except StoreError as e:
        raise StoreError(f"{repo.where}: this key may not delete ({e}); gc needs the "
                         "server's or the owner's key") from None


def _lock_key(repo: BucketRepository) -> str:
    return f"{repo.name}/gc-lock"


@contextlib.contextmanager
def _gc_lock(repo: BucketRepository) -> Iterator[None]:
    key = _lock_key(repo)
    body = json.dumps({"host": socket.gethostname(), "pid": os.getpid(),
                       "time": time.time()}).encode()
    try:
        repo.store.put_if(key, body, None)
    except PreconditionFailed:
        try:
            raw, tag = repo.store.get_tagged(key)
            began = float(json.loads(raw)["time"])
        except NotFound:
            began, tag = 0.0, ""
        except (ValueError, KeyError, TypeError):
            began = 0.0
        if time.time() - began < STALE_LOCK:
            raise GcBusy(f"{repo.where}: another gc is running on this repository "
                         f"(its lock: {key})") from None
        try:
            repo.store.put_if(key, body, tag or None)
        except PreconditionFailed:
            raise GcBusy(f"{repo.where}: another gc took over a stale lock first") from None
    try:
        yield
    finally:
        with contextlib.suppress(KetchError):
            repo.store.delete(key)


class _BucketWalker(Walker):
    """gc's mark walk, reading trees and commits from the bucket."""

    def __init__(self, repo: BucketRepository, live: LiveSet, progress: GcProgress) -> None:
        # No loose objects in a bucket: a directory that holds none.
        super().__init__(os.path.join(repo.cache_dir, "no-loose-objects"), live,
                         on_objects=lambda n: progress.advance(nfiles=n))
        self.repo = repo

    def _visit(self, batch: list[bytes], what: str) -> list[tuple[bytes, int, int]]:
        out = super()._visit(batch, what)
        if what == "object" and out:
            self.repo.prefetch([oid for oid, _, _ in out])  # read together, by pack
        return out

    def read_at(self, k: int, pos: int) -> tuple[int, bytes]:
        oid = ids_to_bytes(self.live.idx[k].ids[pos : pos + 1])[0]
        return self.repo.read(oid)


def _garbage_tree(repo: BucketRepository, entry: PackEntry, offsets: list[int]) -> bool:
    """Whether any of these entries (garbage) is not a blob: its type is in its
    first byte, read by ranged GETs merged across small gaps."""
    offsets.sort()
    i = 0
    while i < len(offsets):
        j = i
        while (j + 1 < len(offsets) and offsets[j + 1] - offsets[j] <= _HEAD_GAP
               and offsets[j + 1] - offsets[i] <= _HEAD_SPAN):
            j += 1
        start = offsets[i]
        data = repo.pack_range(entry, start, offsets[j] + 1)
        for off in offsets[i : j + 1]:
            if (data[off - start] >> 4) & 7 != gobj.BLOB:
                return True
        i = j + 1
    return False


def _copy(repo: BucketRepository, oids: list[bytes], progress: GcProgress) -> int:
    """Copy `oids` (read from wherever they are) into new packs; how many."""
    if not oids:
        return 0
    w = repo.copying_writer()
    try:
        for i in range(0, len(oids), _COPY_BATCH):
            batch = oids[i : i + _COPY_BATCH]
            for oid, t, data in repo.read_many(batch):
                if gobj.object_id(t, data) != oid:
                    raise CorruptObject(f"{repo.where}: object {oid.hex()} does not match "
                                        "its id; gc deletes nothing")
                w.write(t, data)
                progress.advance(nbytes=len(data))
        w.close()
    except BaseException:
        w.abort()
        raise
    return len(oids)


class _BucketGc:
    def __init__(self, repo: BucketRepository, threshold: float, wait: float,
                 progress: GcProgress) -> None:
        self.repo, self.threshold, self.wait, self.progress = repo, threshold, wait, progress
        self.report = GcReport()

    def run(self, dry_run: bool) -> GcReport:
        repo, report = self.repo, self.report
        report.dry_run = dry_run
        repo.refresh_manifest()
        m = repo.manifest
        report.bytes_before = sum(p.pack.size + p.idx.size for p in m.packs)
        report.packs_before = len(m.packs)
        generation = m.generation
        packs = list(m.packs)
        tips = [bytes.fromhex(v) for v in m.refs.values()]
        idx_dir = os.path.join(repo.cache_dir, "gc-idx")
        live = LiveSet(repo.fetch_idx_files(packs, idx_dir))
        try:
            self.progress.phase("Marking")
            walker = _BucketWalker(repo, live, self.progress)
            try:
                walker.walk(tips)
            finally:
                walker.close()
            report.objects_live = live.marked
            now = time.time_ns()
            expired = [k for k, p in enumerate(packs)
                       if p.retired and now - p.retired >= self.wait * 1e9]
            doomed = self._doomed(live, packs)
            report.objects_dropped = sum(
                int((~live.marks[k]).sum()) for k in doomed + expired)
            if dry_run:
                report.packs_rewritten = len(doomed)
                report.packs_deleted = len(expired) + (len(doomed) if self.wait <= 0 else 0)
                report.bytes_after = report.bytes_before - sum(
                    packs[k].pack.size + packs[k].idx.size for k in expired)
                return report
            # Retired now, and deleted now too when --wait is 0.
            if self.wait <= 0:
                expired = sorted({*expired, *doomed})
            gone = {packs[k].pack.name for k in expired}
            copy: list[bytes] = []
            if doomed:
                self.progress.phase("Rewriting", sum(packs[k].pack.size for k in doomed))
                for k in doomed:
                    copy += ids_to_bytes(live.idx[k].ids[live.marks[k]])
            copy += self._only_in(live, expired, doomed)
            report.packs_rewritten = len(doomed)
            _copy(repo, list(dict.fromkeys(copy)), self.progress)
            new = repo.uploaded_packs()
            report.packs_written = len(new)
            retire = {packs[k].pack.name for k in doomed}
            deleted = self._swap(generation, new, retire, gone)
            repo.named(new)
            self._delete(deleted)
        finally:
            live.close()
        repo.refresh_manifest()
        report.bytes_after = sum(p.pack.size + p.idx.size for p in repo.manifest.packs)
        return report

    def _delete(self, deleted: list[PackEntry]) -> None:
        for p in deleted:
            self.repo.delete_pack(p)
        self.report.packs_deleted = len(deleted)
        if deleted:
            # The locator named packs that are gone: a new one.
            locator.refresh(self.repo, force=True)
        self._sweep_locators()

    def _sweep_locators(self) -> None:
        """Locators no manifest names: replaced by a writer whose key may not
        delete. Listed before the manifest is read: one uploaded meanwhile and
        not named yet is its writer's to upload again (locator.refresh)."""
        repo = self.repo
        listed = [k for k, _ in repo.store.list(pack_prefix(repo.name))
                  if locator.is_locator(k.rsplit("/", 1)[-1])]
        repo.refresh_manifest()
        named = repo.manifest.locator
        for k in listed:
            if named is None or k.rsplit("/", 1)[-1] != named.name:
                repo.store.delete(k)

    def _doomed(self, live: LiveSet, packs: list[PackEntry]) -> list[int]:
        out = []
        for k, p in enumerate(packs):
            if p.retired:
                continue
            marks = live.marks[k]
            if marks.all():
                continue
            offs, sizes = entry_sizes(live, k, p.pack.size)
            garbage = p.pack.size if not marks.any() else int(sizes[~marks].sum())
            share = 100.0 * garbage / p.pack.size if p.pack.size else 0.0
            if share > self.threshold or _garbage_tree(
                    self.repo, p, [int(o) for o in offs[~marks]]):
                out.append(k)
        return out

    def _only_in(self, live: LiveSet, going: list[int], doomed: list[int]) -> list[bytes]:
        """Reachable objects that only packs about to go hold (a doomed pack's are
        copied anyway)."""
        if not going:
            return []
        staying = [k for k in range(len(live.idx)) if k not in set(going) | set(doomed)]
        wanted = [ids_to_bytes(live.idx[k].ids[live.marks[k]]) for k in going if k not in doomed]
        ids = np.unique(np.array([o for group in wanted for o in group], dtype="S20"))
        if not ids.size:
            return []
        held = np.zeros(len(ids), dtype=bool)
        for k in staying:
            held |= live.idx[k].contains_many(ids)
        found = ids_to_bytes(ids[~held])
        self.report.objects_rescued += len(found)
        return found

    def _swap(self, generation: int, new: list[PackEntry], retire: set[str],
              gone: set[str]) -> list[PackEntry]:
        """The manifest: new packs named, `retire` marked, `gone` taken out when
        nothing changed since the mark (else they wait for the next gc). The
        packs taken out."""
        now = time.time_ns()
        deleted: list[PackEntry] = []

        def edit(m: Manifest) -> bool:
            deleted.clear()
            names = {p.pack.name for p in m.packs}
            m.packs.extend(p for p in new if p.pack.name not in names)
            unchanged = m.generation == generation
            kept = []
            for p in m.packs:
                if unchanged and p.pack.name in gone:
                    deleted.append(p)
                    continue
                if p.pack.name in retire and not p.retired:
                    p = PackEntry(p.pack, p.idx, p.mtime, p.parity, now)
                kept.append(p)
            m.packs[:] = kept
            return bool(new or retire or deleted)

        self.repo.change_manifest(edit)
        if gone and not deleted:
            self.report.warnings.append(
                f"saves published while gc ran: the {len(gone)} pack(s) due to go stay "
                "until the next gc")
        return deleted


def reachable(repo: BucketRepository, progress: Progress | None = None) -> tuple[int, str | None]:
    """fsck's walk of a repository in a bucket: (objects reachable from the
    refs, the first problem met: a missing or damaged object, or None)."""
    shown = cast(GcProgress, progress) if progress is not None else NullGcProgress()
    repo.refresh_manifest()
    m = repo.manifest
    live = LiveSet(repo.fetch_idx_files(list(m.packs), os.path.join(repo.cache_dir, "gc-idx")))
    try:
        walker = _BucketWalker(repo, live, shown)
        try:
            walker.walk([bytes.fromhex(v) for v in m.refs.values()])
        except KetchError as e:
            return live.marked, str(e).replace("; gc deletes nothing", "")
        finally:
            walker.close()
        return live.marked, None
    finally:
        live.close()


def collect_bucket(repo: BucketRepository, options: dict[str, Any],
                   progress: Progress | None) -> dict[str, Any]:
    """Run a gc on `repo` with a GcRun's options; its report (as_dict)."""
    threshold = float(options.get("threshold", 10.0))
    wait = float(options.get("wait", DEFAULT_WAIT))
    dry_run = bool(options.get("dry_run", False))
    if options.get("par2"):
        raise UsageError("--par2: a repository in a bucket has no parity files")
    if not 0.0 <= threshold <= 100.0:
        raise UsageError(f"--threshold must be a percentage from 0 to 100, got {threshold:g}")
    if wait < 0:
        raise UsageError(f"--wait must be 0 or more seconds, got {wait:g}")
    shown = cast(GcProgress, progress) if progress is not None else NullGcProgress()
    started = time.monotonic()
    gc = _BucketGc(repo, threshold, wait, shown)
    if dry_run:
        report = gc.run(True)
    else:
        _check_may_delete(repo)
        with _gc_lock(repo):
            report = gc.run(False)
    report.seconds = time.monotonic() - started
    shown.finish()
    return report.as_dict()
