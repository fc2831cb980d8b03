"""`ketch mirror push`: upload what is new in local repositories to a store.

Per repository, in this order:

1. A consistent snapshot: refs, HEAD and config are read first, then the packs
   are listed. A save writes its packs (pack, then idx) before it moves a ref,
   so every object a ref read first points at is in a pack listed after.
2. Packs and idx files the store lacks (and the parity files of a pack that has
   a complete set: ketch.integrity.parity) are uploaded and verified (`stat` size,
   and the sha256 where the store reports one). They are immutable and named by
   the pack's SHA-1, so one already in the previous manifest, or left complete
   by an interrupted push, is never sent again; a big file cut off mid-upload
   resumes through the store's multipart resume.
3. The manifest is written last (and read back), so the mirror never names a
   ref whose objects are not all there.
4. Only then are packs the new manifest no longer names (gone after a gc on
   the server) deleted from the store.

Loose objects: ketch and bup never write them, but git does (and `git gc`
explodes unreachable objects into them). Rather than refuse, they are packed
into one extra pack in a temporary directory, sorted by id with a fixed zlib
level, so the same loose objects give the same pack name on every push and it
is uploaded once; `mirror pull` restores it as an ordinary pack.

Given the store's URL (`record_as`, as the command line does), each repository
then records its push, pushed or failed, on its own `refs/ketch/mirror`
(ketch.offsite.mirrorlog); the next push carries that record to the mirror.
Failing to record is a warning of that repository's push, not a failure.
"""

from __future__ import annotations

import os
import tempfile
import time
from dataclasses import asdict, dataclass, field
from typing import Any

from ketch.errors import (
    EXIT_FAILED,
    EXIT_OK,
    EXIT_WARNINGS,
    KetchError,
    UsageError,
)
from ketch.offsite import locator, mirrorlog
from ketch.offsite.manifest import (
    FileEntry,
    Manifest,
    PackEntry,
    encrypted_hint,
    manifest_key,
    now_iso,
    pack_key,
    pack_prefix,
    parity_order,
    read_manifest,
)
from ketch.offsite.pushlocal import LocalFile, Snapshot, is_repo, snapshot
from ketch.offsite.store import ObjectStore, StaleObject, StoreError
from ketch.progress import NullProgress, Progress


class UploadNotVerified(StoreError):
    """The store does not hold what was just uploaded."""


class ConcurrentPush(KetchError):
    """Another push changed the repository's manifest while this one ran."""


@dataclass
class RepoPushReport:
    name: str
    path: str
    uploaded_files: int = 0
    uploaded_bytes: int = 0
    skipped_files: int = 0
    skipped_bytes: int = 0
    deleted_files: int = 0
    deleted_bytes: int = 0
    locator_bytes: int = 0  # a new locator's (ketch.offsite.locator), not a repository file
    packs: int = 0
    refs: int = 0
    loose_objects: int = 0
    manifest_written: bool = False
    generation: int = 0
    seconds: float = 0.0
    error: str | None = None
    warnings: list[str] = field(default_factory=list)


@dataclass
class PushReport:
    repos: list[RepoPushReport] = field(default_factory=list)
    dry_run: bool = False
    seconds: float = 0.0

    def total(self, attr: str) -> int:
        return sum(int(getattr(r, attr)) for r in self.repos)

    @property
    def failed(self) -> list[RepoPushReport]:
        return [r for r in self.repos if r.error is not None]

    @property
    def exit_code(self) -> int:
        if self.failed:
            return EXIT_FAILED
        return EXIT_WARNINGS if any(r.warnings for r in self.repos) else EXIT_OK

    def text(self) -> str:
        verb = "would upload" if self.dry_run else "uploaded"
        gone = "would delete" if self.dry_run else "deleted"
        lines = []
        for r in self.repos:
            if r.error is not None:
                lines.append(f"{r.name}: FAILED: {r.error}")
                lines.extend(f"  warning: {w}" for w in r.warnings)
                continue
            loose = f", {r.loose_objects} loose objects packed" if r.loose_objects else ""
            state = (f"manifest generation {r.generation}" if r.manifest_written
                     else "manifest unchanged")
            lines.append(f"{r.name}: {verb} {r.uploaded_files} files ({_mb(r.uploaded_bytes)}), "
                         f"{r.skipped_files} already there ({_mb(r.skipped_bytes)}), {gone} "
                         f"{r.deleted_files} ({_mb(r.deleted_bytes)}){loose}; "
                         f"{'' if self.dry_run else state}".rstrip("; "))
            lines.extend(f"  warning: {w}" for w in r.warnings)
        lines.append(f"{len(self.repos) - len(self.failed)} of {len(self.repos)} repositories "
                     f"pushed, {verb} {_mb(self.total('uploaded_bytes'))} "
                     f"in {self.seconds:.1f}s")
        return "\n".join(lines)

    def as_dict(self) -> dict[str, Any]:
        totals = {k: self.total(k) for k in (
            "uploaded_files", "uploaded_bytes", "skipped_files", "skipped_bytes",
            "deleted_files", "deleted_bytes")}
        return {"dry_run": self.dry_run, "seconds": round(self.seconds, 3), **totals,
                "failed": len(self.failed), "repositories": [asdict(r) for r in self.repos]}


def _mb(n: int) -> str:
    return f"{n / 1e6:,.1f} MB"


def find_repositories(parent: str) -> list[str]:
    """Every repository directly under `parent` (for `--all DIR`), by name."""
    try:
        names = sorted(os.listdir(parent))
    except OSError as e:
        raise UsageError(f"{parent}: {e.strerror}") from None
    return [os.path.join(parent, n) for n in names if is_repo(os.path.join(parent, n))]


# -- planning and uploading -----------------------------------------------------------


@dataclass
class _Plan:
    snap: Snapshot
    report: RepoPushReport
    old: Manifest | None
    existing: dict[str, int]  # key -> size, listed before uploading
    upload: list[str] = field(default_factory=list)  # file names
    known: dict[str, FileEntry] = field(default_factory=dict)  # verified already in store


def _last_manifest(store: ObjectStore, name: str) -> Manifest | None:
    """The manifest a push builds on. One the store does not vouch for (an older
    copy put back, or the last push cut off before its index) is not trusted:
    the push checks what is stored itself and publishes over it."""
    try:
        return read_manifest(store, name)
    except StaleObject:
        return None


def _plan(snap: Snapshot, store: ObjectStore, report: RepoPushReport) -> _Plan:
    old = _last_manifest(store, snap.name)
    if old is not None and old.primary:
        # A push replaces the manifest whole and deletes the packs it does not
        # name: everything saved into the repository would go.
        raise KetchError(f"{manifest_key(snap.name)}: a repository saved into directly "
                         "(ketch init -r s3://...), not a mirror; push to another name")
    existing = dict(store.list(pack_prefix(snap.name)))
    plan = _Plan(snap, report, old, existing)
    previous = {f.name: f for p in (old.packs if old else []) for f in p.files()}
    for fn, lf in snap.files.items():
        key = pack_key(snap.name, fn)
        prev = previous.get(fn)
        if existing.get(key) == lf.size and prev is not None and prev.size == lf.size:
            # Named by the last manifest, so uploaded and verified then; immutable since.
            plan.known[fn] = prev
        elif existing.get(key) == lf.size and _stored_matches(store, key, lf):
            plan.known[fn] = FileEntry(fn, lf.size, lf.digest())  # an interrupted push's
        else:
            plan.upload.append(fn)
    for fn in plan.known:
        report.skipped_files += 1
        report.skipped_bytes += snap.files[fn].size
    return plan


def _stored_matches(store: ObjectStore, key: str, lf: LocalFile) -> bool:
    st = store.stat(key)
    if st is None or st.size != lf.size:
        return False
    return st.checksum is None or st.checksum == lf.digest()


def _upload(plan: _Plan, store: ObjectStore, storage_class: str | None,
            progress: Progress) -> dict[str, FileEntry]:
    snap, rep = plan.snap, plan.report
    done = dict(plan.known)
    # Packs before their idx: a reader of the bare bucket (no manifest) that finds
    # an idx can count on its pack. Parity is read as rarely as a pack's bytes.
    for fn in sorted(plan.upload, key=lambda n: (n.split(".", 1)[0], n.endswith(".idx"))):
        lf = snap.files[fn]
        key = pack_key(snap.name, fn)
        cls = storage_class if fn.endswith((".pack", ".par2")) else None
        try:
            sha = lf.digest()
            store.put_file(key, lf.path, sha256=sha, storage_class=cls,
                           advance=lambda n: progress.advance(n))
        except (FileNotFoundError, StoreError):
            if os.path.exists(lf.path):
                raise
            raise KetchError(f"{snap.path}: {fn} disappeared during the push (a gc?); "
                             "run the push again") from None
        st = store.stat(key)
        if st is None or st.size != lf.size or (st.checksum is not None and st.checksum != sha):
            got = "nothing" if st is None else f"{st.size} bytes, sha256 {st.checksum}"
            raise UploadNotVerified(f"{key}: uploaded {lf.size} bytes with sha256 {sha} "
                                    f"but the store has {got}")
        progress.advance(0, 1)
        rep.uploaded_files += 1
        rep.uploaded_bytes += lf.size
        done[fn] = FileEntry(fn, lf.size, sha)
    return done


def _new_manifest(plan: _Plan, done: dict[str, FileEntry]) -> Manifest:
    snap = plan.snap
    parities: dict[str, list[FileEntry]] = {}
    for fn in done:
        if fn.endswith(".par2"):
            parities.setdefault(fn.split(".", 1)[0], []).append(done[fn])
    packs = [PackEntry(done[fn], done[fn[:-5] + ".idx"], snap.files[fn].mtime,
                       parity_order(parities.get(fn[:-5], [])))
             for fn in sorted(done) if fn.endswith(".pack")]
    gen = plan.old.generation if plan.old else 0
    return Manifest(repository=snap.name, generation=gen + 1, time=now_iso(), head=snap.head,
                    refs=snap.refs, config=snap.config, packs=packs)


def _with_locator(plan: _Plan, store: ObjectStore, new: Manifest) -> None:
    """Name a locator (ketch.offsite.locator) in `new`: the last push's while
    its packs are all still there and it covers enough of them; else a new one."""
    if len(new.packs) < 2:
        return
    old = plan.old
    total = sum(locator.objects_in(p.idx.size) for p in new.packs)
    if old is not None and old.locator is not None \
            and pack_key(plan.snap.name, old.locator.name) in plan.existing \
            and {p.pack.name for p in old.packs} <= {p.pack.name for p in new.packs} \
            and total - old.locator_objects <= locator.STALE_SHARE * old.locator_objects:
        new.locator, new.locator_objects = old.locator, old.locator_objects
        return
    with tempfile.TemporaryDirectory(prefix="ketch-locator-") as tmp:
        path = os.path.join(tmp, "locator")
        n = locator.build([(p.pack.name, plan.snap.files[p.idx.name].path, p.pack.size)
                           for p in new.packs], path)
        name, digest = locator.locator_name(path)
        store.put_file(pack_key(plan.snap.name, name), path, sha256=digest)
        new.locator = FileEntry(name, os.path.getsize(path), digest)
        new.locator_objects = n
        plan.report.locator_bytes = new.locator.size


def _publish(plan: _Plan, store: ObjectStore, new: Manifest) -> None:
    key = manifest_key(plan.snap.name)
    current = _last_manifest(store, plan.snap.name)
    was = plan.old.generation if plan.old else None
    now = current.generation if current else None
    if was != now:
        raise ConcurrentPush(f"{key}: another push changed it meanwhile (generation {was} -> "
                             f"{now}); run the push again")
    store.flush()  # what a store batches (an encrypted store's name index) goes out now
    data = new.to_json()
    store.put(key, data)
    store.flush()  # the index that vouches for the new manifest, at once
    if store.get(key) != data:
        raise UploadNotVerified(f"{key}: the manifest read back differs from what was written")


def _delete_unnamed(plan: _Plan, store: ObjectStore, keep: set[str], dry_run: bool) -> None:
    prefix = pack_prefix(plan.snap.name)
    for key, size in sorted(plan.existing.items()):
        if key[len(prefix):] not in keep:
            if not dry_run:
                store.delete(key)
            plan.report.deleted_files += 1
            plan.report.deleted_bytes += size


def push(repos: list[str], store: ObjectStore, *, dry_run: bool = False,
         storage_class: str | None = None, progress: Progress | None = None,
         record_as: str | None = None) -> PushReport:
    """Mirror each repository (a path; its basename names it in the store).

    A repository that fails is reported (`error`) and the others still go.
    With `record_as` (the store's URL, as users know it), each repository keeps
    a record of its push on refs/ketch/mirror (not on a dry run)."""
    progress = progress or NullProgress()
    report = PushReport(dry_run=dry_run)
    t0 = time.monotonic()
    names = [os.path.basename(os.path.normpath(os.path.abspath(r))) for r in repos]
    dupes = sorted({n for n in names if names.count(n) > 1})
    if dupes:
        raise UsageError(f"two repositories would share the name {dupes[0]!r} in the mirror")
    # Without the key, a push into an encrypted mirror would upload the
    # repositories in the clear beside it, where readers with the key never look
    # (and with a key into a plain one, the reverse).
    hint = encrypted_hint(store, "the mirror")
    if hint is not None:
        raise UsageError(f"{hint}; else the push would put the repositories beside the "
                         "mirror, where its readers do not look")
    plans: list[_Plan] = []
    with tempfile.TemporaryDirectory(prefix="ketch-mirror-") as tmp:
        for i, path in enumerate(repos):
            rep = RepoPushReport(name=names[i], path=os.path.abspath(path))
            report.repos.append(rep)
            t = time.monotonic()
            try:
                sub = os.path.join(tmp, str(i))  # each repository's loose-object pack
                os.mkdir(sub)
                snap = snapshot(path, sub)
                rep.packs = sum(fn.endswith(".pack") for fn in snap.files)
                rep.refs, rep.loose_objects = len(snap.refs), snap.loose
                plans.append(_plan(snap, store, rep))
            except (KetchError, OSError) as e:
                rep.error = _message(e)
            rep.seconds = time.monotonic() - t
            if rep.error is not None and record_as is not None and not dry_run:
                mirrorlog.record_push(rep, record_as)
        progress.start(sum(p.snap.files[fn].size for p in plans for fn in p.upload),
                       sum(len(p.upload) for p in plans))
        for plan in plans:
            t = time.monotonic()
            try:
                _push_one(plan, store, dry_run, storage_class, progress)
            except (KetchError, OSError) as e:
                plan.report.error = _message(e)
            plan.report.seconds += time.monotonic() - t
            if record_as is not None and not dry_run:
                mirrorlog.record_push(plan.report, record_as)
    store.flush()  # what a store batches (an encrypted store's name index) goes out now
    progress.finish()
    report.seconds = time.monotonic() - t0
    return report


def _message(e: BaseException) -> str:
    if isinstance(e, OSError) and not isinstance(e, KetchError):
        where = f"{e.filename}: " if e.filename else ""
        return f"{where}{e.strerror or e}"
    return str(e)


def _push_one(plan: _Plan, store: ObjectStore, dry_run: bool, storage_class: str | None,
              progress: Progress) -> None:
    rep = plan.report
    if dry_run:
        rep.uploaded_files = len(plan.upload)
        rep.uploaded_bytes = sum(plan.snap.files[fn].size for fn in plan.upload)
        kept = {plan.old.locator.name} if plan.old and plan.old.locator else set()
        _delete_unnamed(plan, store, set(plan.snap.files) | kept, dry_run=True)
        rep.generation = plan.old.generation if plan.old else 0
        return
    done = _upload(plan, store, storage_class, progress)
    new = _new_manifest(plan, done)
    _with_locator(plan, store, new)
    if new.same_content(plan.old):
        assert plan.old is not None
        rep.generation = plan.old.generation
    else:
        _publish(plan, store, new)
        rep.manifest_written = True
        rep.generation = new.generation
    # Only now that the manifest no longer names them may unneeded packs go.
    _delete_unnamed(plan, store, new.file_names(), dry_run=False)
