"""`ketch gc`: delete what no ref reaches, while saves go on.

The steps (the README's "How gc stays safe" tells the story for a sysadmin):

1. Lock `<repo>/ketch-gc/lock` (one gc per repository).
2. Recover: finish what a killed gc left (its temp packs, its reflog locks,
   packs it hid: those are rescued and deleted first).
3. Mark every object reachable from every ref (ketch.lifecycle.gcwalk).
4. Sweep: copy the live objects of each pack whose garbage share is above
   the threshold into new packs, made durable.
5. Expire the reflog lines that name garbage; hide the swept packs.
6. Wait for the saves that began before the hide (their leases); rescue what
   became reachable meanwhile from the hidden packs; delete them.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import os
import shutil
import time
from collections.abc import Iterator
from typing import Any

import numpy as np

from ketch.errors import KetchError, UsageError
from ketch.git.bloom import update_bloom
from ketch.git.midx import auto_midx
from ketch.git.pack import DEFAULT_LEVEL, DEFAULT_MAX_PACK_SIZE, PackWriter
from ketch.git.reflog import clear_stale_expiry, reflog_names
from ketch.integrity import parity
from ketch.lease import held_leases, wait_for
from ketch.lifecycle import crashpoint
from ketch.lifecycle.gcreport import GcProgress, GcReport, NullGcProgress, objects_bytes
from ketch.lifecycle.gcwalk import Walker
from ketch.lifecycle.liveset import LiveSet
from ketch.lifecycle.rescue import (
    GcDir,
    delete_doomed,
    drop_orphan_parity,
    finish_hide,
    hide,
    rescue,
)
from ketch.lifecycle.sweep import PackUsage, copy_entries, holds_garbage_trees, usage
from ketch.localrepo import LocalRepository
from ketch.text import plural

DEFAULT_WAIT = 3600.0


class GcBusy(KetchError):
    """Another gc holds the repository's gc lock."""


@contextlib.contextmanager
def _gc_lock(gcdir: GcDir, repo_path: str, *, create: bool) -> Iterator[None]:
    if not create and not os.path.exists(gcdir.lock):
        yield  # a dry run in a repository no gc has touched: nothing to guard
        return
    if create:
        gcdir.create()
    fd = os.open(gcdir.lock, (os.O_RDWR | os.O_CREAT) if create else os.O_RDONLY, 0o644)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise GcBusy(f"{repo_path}: another gc is running on this repository") from None
        yield
    finally:
        os.close(fd)


def _tips(repo: LocalRepository) -> list[bytes]:
    tips = [oid for _, oid in repo.iter_refs(b"refs/")]
    if repo.refs.read_symref(b"HEAD") is None:
        head = repo.read_ref(b"HEAD")  # detached
        if head is not None:
            tips.append(head)
    return tips


def _listing(pack_dir: str, ext: str) -> list[str]:
    return sorted(glob.glob(os.path.join(glob.escape(pack_dir), "*" + ext)))


class _Gc:
    def __init__(self, repo: LocalRepository, progress: GcProgress, wait: float,
                 par2: bool = False) -> None:
        self.repo = repo
        self.progress = progress
        self.wait = wait
        self.par2 = par2
        self.fresh: list[str] = []  # idx paths of the packs written, for their parity
        self.gcdir = GcDir(repo.path)
        self.report = GcReport()
        self.max_pack_size = (repo.config.get_int("pack", "packSizeLimit")
                              or DEFAULT_MAX_PACK_SIZE)

    def new_writer(self) -> PackWriter:
        # No deduplication against the repository: the packs being swept still
        # hold every object that is copied out of them.
        w = PackWriter(self.repo.objects_dir, level=DEFAULT_LEVEL,
                       max_pack_size=self.max_pack_size, tmp_dir=self.gcdir.tmp,
                       on_pack=self.fresh.append)
        return w

    def protect(self) -> None:
        """Parity for the packs written since (`--par2`), before the packs they
        replace go: the objects they hold are never without recovery data."""
        fresh, self.fresh[:] = list(self.fresh), []
        if not self.par2 or not fresh:
            return
        self.progress.phase(f"Making parity for {plural(len(fresh), 'pack')}")
        for idx in fresh:
            try:
                parity.generate(idx[: -len(".idx")] + ".pack")
            except parity.ParityError as e:
                self.report.warnings.append(str(e))

    def _on_objects(self, n: int) -> None:
        self.progress.advance(nfiles=n)

    def _maintain(self, force_bloom: bool) -> None:
        """midx and bloom for the packs visible now: auto_midx drops the midx
        files naming hidden packs, a forced bloom forgets them."""
        auto_midx(self.repo.pack_dir)
        update_bloom(self.repo.pack_dir, force=force_bloom)
        self.repo.index.refresh()

    # -- recovery ----------------------------------------------------------

    def recover(self) -> bool:
        """Clean up after a killed gc; False when its hidden packs must stay."""
        self.gcdir.create()
        self.gcdir.clear_tmp()
        clear_stale_expiry(os.fsencode(self.repo.path))
        finish_hide(self.repo.pack_dir, self.gcdir.doomed)
        drop_orphan_parity(self.repo.pack_dir)
        doomed = self.gcdir.doomed_idx()
        if not doomed:
            return True
        if not self.wait_and_rescue(None):
            return False
        self.report.recovered_packs = len(doomed)
        self._maintain(force_bloom=False)
        return True

    # -- wait and rescue ---------------------------------------------------

    def wait_and_rescue(self, stop: LiveSet | None) -> bool:
        names = held_leases(self.repo.path)
        if names:
            self.report.saves_waited = len(names)
            shown = [len(names)]

            def on_wait(n: int) -> None:
                if n != shown[0]:
                    shown[0] = n
                    self.progress.phase(f"Waiting for {plural(n, 'save')} that started "
                                        "before gc")

            self.progress.phase(f"Waiting for {plural(len(names), 'save')} that started "
                                "before gc")
            left = wait_for(self.repo.path, names, timeout=self.wait, on_wait=on_wait)
            if left:
                self.report.warnings.append(
                    f"{plural(len(left), 'save')} still running after {self.wait:.0f} s: "
                    f"the packs gc took out of use stay in {self.gcdir.doomed} until the "
                    "next gc")
                return False
        self.progress.phase("Rescuing")
        _, rescued = rescue(self.repo.objects_dir, _tips(self.repo), self.gcdir.doomed_idx(),
                            stop=stop, new_writer=self.new_writer,
                            on_objects=self._on_objects)
        self.report.objects_rescued += rescued
        self.protect()
        crashpoint.reach("rescued")
        delete_doomed(self.gcdir.doomed)
        drop_orphan_parity(self.repo.pack_dir)
        return True

    # -- one gc --------------------------------------------------------------

    def reflogs(self, live: LiveSet) -> None:
        """Drop reflog lines naming garbage: git fsck follows reflogs as it follows
        refs, and a line naming a garbage commit whose tree goes is an error."""
        snapshot_ids: dict[bytes, bool] = {}

        def gone(oid: bytes) -> bool:
            if oid not in snapshot_ids:
                q = np.array([oid], dtype="S20")
                which, _ = live.locate(q)
                if which[0] >= 0:
                    snapshot_ids[oid] = not bool(live.is_marked(q)[0])
                else:  # new since the mark (keep), or missing already (drop)
                    self.repo.index.refresh()
                    snapshot_ids[oid] = not self.repo.exists(oid)
            return snapshot_ids[oid]

        refs = self.repo.refs
        for name in reflog_names(os.fsencode(self.repo.path)):
            self.report.reflog_entries_expired += refs.expire_reflog(
                name, gone, hook=lambda: crashpoint.reach("reflog-locked"))
            crashpoint.reach("reflog")

    def _drop_git_caches(self) -> None:
        """git's commit-graph and multi-pack-index name objects and packs about to
        go (fsck checks them); git writes them again on its next gc."""
        info = os.path.join(self.repo.objects_dir, "info")
        for p in (os.path.join(info, "commit-graph"),
                  os.path.join(self.repo.pack_dir, "multi-pack-index")):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(p)
        shutil.rmtree(os.path.join(info, "commit-graphs"), ignore_errors=True)

    def sweep(self, live: LiveSet, walker: Walker, doomed: list[PackUsage]) -> list[str]:
        """Copy the live objects of `doomed` into new packs; their idx paths."""
        total = sum(u.live_bytes for u in doomed)
        self.progress.phase("Rewriting", total)
        w = self.new_writer()
        try:
            for u in doomed:
                positions = np.flatnonzero(live.marks[u.k])
                if positions.size:
                    copy_entries(live, u.k, positions, w, walker.read,
                                 on_bytes=lambda n: self.progress.advance(nbytes=n))
                    self.report.packs_rewritten += 1
            crashpoint.reach("rewrite-close")
            written = w.close()
        except BaseException:
            w.abort()
            raise
        self.report.packs_written = len(written)
        self.protect()
        return written

    def run(self, threshold: float, dry_run: bool) -> GcReport:
        repo, report = self.repo, self.report
        report.dry_run = dry_run
        report.bytes_before = objects_bytes(repo.objects_dir)
        if not dry_run and not self.recover():
            report.bytes_after = objects_bytes(repo.objects_dir)
            return report
        # The tips before the packs: a save makes its pack durable before it moves
        # its branch, so every tip read here is in a pack listed after it. Listed
        # the other way round, a save landing in between left gc a tip it could
        # not find.
        tips = _tips(repo)
        idx_paths = _listing(repo.pack_dir, ".idx")
        live = LiveSet(idx_paths, _listing(repo.pack_dir, ".midx"))
        walker = Walker(repo.objects_dir, live, on_objects=self._on_objects)
        try:
            self.progress.phase("Marking")
            walker.walk(tips)
            crashpoint.reach("marked")
            usages = usage(live)
            report.packs_before = len(usages)
            report.objects_live = live.marked + len(walker.loose)
            doomed = [u for u in usages if not u.kept and u.garbage_bytes > 0
                      and (u.share > threshold or holds_garbage_trees(live, u))]
            report.objects_dropped = sum(u.objects - u.live_objects for u in doomed)
            report.packs_deleted = len(doomed)
            if dry_run:
                report.packs_rewritten = sum(1 for u in doomed if u.live_objects)
                report.bytes_after = report.bytes_before - sum(
                    u.garbage_bytes + (u.idx_bytes if not u.live_objects else 0) for u in doomed)
                return report
            if doomed:
                written = {os.path.basename(p) for p in self.sweep(live, walker, doomed)}
                # A pack's name is its content's hash: the new pack may be one a
                # killed gc wrote already (the same objects copied again), and that
                # one holds live objects now.
                doomed = [u for u in doomed if os.path.basename(u.idx_path) not in written]
                report.packs_deleted = len(doomed)
                crashpoint.reach("new-packs")
                self.reflogs(live)
                self._drop_git_caches()
                hide(repo.pack_dir, self.gcdir.doomed, [u.pack_path for u in doomed])
                crashpoint.reach("hidden")
                self._maintain(force_bloom=True)
                crashpoint.reach("maintained")
                self.wait_and_rescue(live)
        finally:
            walker.close()
            live.close()
        report.bytes_after = objects_bytes(repo.objects_dir)
        return report


def collect(repo: LocalRepository, *, threshold: float = 10.0, dry_run: bool = False,
            progress: GcProgress | None = None, wait: float = DEFAULT_WAIT,
            par2: bool = False) -> GcReport:
    """Delete the objects no ref reaches, from the packs where they are more than
    `threshold` percent of the bytes. `wait`: how long to wait for saves that
    began before gc hid the old packs (after that they stay hidden, exit 1).
    `par2`: make parity for the packs gc writes (a pack par2 fails on: a warning)."""
    if not 0.0 <= threshold <= 100.0:
        raise UsageError(f"--threshold must be a percentage from 0 to 100, got {threshold:g}")
    if wait < 0:
        raise UsageError(f"--wait must be 0 or more seconds, got {wait:g}")
    if par2 and not dry_run and not parity.available():
        raise parity.ParityError(parity.NOT_INSTALLED)
    started = time.monotonic()
    gc = _Gc(repo, progress or NullGcProgress(), wait, par2)
    with _gc_lock(gc.gcdir, repo.path, create=not dry_run):
        report = gc.run(threshold, dry_run)
    report.seconds = time.monotonic() - started
    gc.progress.finish()
    return report


class GcRun:
    """A gc as the Repository interface runs it (`repo.collect_garbage(job)`):
    locally here, or rebuilt from `options` by the server of a remote one."""

    def __init__(self, *, threshold: float = 10.0, dry_run: bool = False,
                 wait: float = DEFAULT_WAIT, progress: GcProgress | None = None,
                 par2: bool = False) -> None:
        self.options: dict[str, Any] = {"threshold": threshold, "dry_run": dry_run,
                                        "wait": wait, "par2": par2}
        self.progress = progress

    @classmethod
    def from_options(cls, options: dict[str, Any],
                     progress: GcProgress | None = None) -> GcRun:
        """The job a client sent (a server builds it from these)."""
        try:
            return cls(threshold=float(options.get("threshold", 10.0)),
                       dry_run=bool(options.get("dry_run", False)),
                       wait=float(options.get("wait", DEFAULT_WAIT)), progress=progress,
                       par2=bool(options.get("par2", False)))
        except (TypeError, ValueError):
            raise UsageError("bad gc options") from None

    def run(self, repo: LocalRepository) -> dict[str, Any]:
        report = collect(repo, threshold=self.options["threshold"],
                         dry_run=self.options["dry_run"], wait=self.options["wait"],
                         progress=self.progress, par2=self.options["par2"])
        return report.as_dict()
