"""A repository straight in a bucket: `ketch init/save/... -r s3://BUCKET/PREFIX/NAME`.

The layout is the mirror's (ketch.offsite.manifest): packs and idx files
under `NAME/objects/pack/`, named by their own SHA-1 and never changed, and
`NAME/manifest.json`, which lists the packs and holds the refs. A manifest
marked `primary` takes saves; a mirror's does not (a push would replace it
whole and drop what was saved into it).

Writing. A write session builds packs in a local staging directory and
uploads each one (pack, then idx) as soon as it is finished, while the next
is being written. Deduplication is against the repository's idx files,
downloaded whole into the cache as the ssh client does. Uploaded packs
become visible when the manifest names them: `update_ref` (or the
repository's `maintain`/`close`) adds them to the manifest together with the
moved ref, so no ref ever names an object in a pack the manifest does not.

Many writers. The manifest is the only object that changes, and it changes
only by compare-and-swap: read it with its ETag, change it, write it back
with `If-Match: ETAG` (`If-None-Match: *` to create it). A writer that loses
the race reads the new manifest and applies its change again; a ref that
moved meanwhile raises RefConflict, and the save rebuilds its commit on the
new head (ketch.snapshot.advance_branch). `init` checks that the store
enforces both conditions and refuses a store that ignores them, since two
saves at once there could silently lose one's update.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import random
import shutil
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

import numpy as np

from ketch.errors import EXIT_FAILED, KetchError, ObjectNotFound, RefConflict
from ketch.git.objindex import ObjectIndex
from ketch.git.pack import DEFAULT_LEVEL, PackWriter
from ketch.git.refs import check_ref_name
from ketch.offsite import locator
from ketch.offsite.manifest import (
    FileEntry,
    Manifest,
    PackEntry,
    manifest_key,
    now_iso,
    pack_key,
    parse_manifest,
)
from ketch.offsite.s3repo import StoreRepository
from ketch.offsite.store import ObjectStore, PreconditionFailed
from ketch.repo import FsckJob, GcJob, ReadOnlyRepository, WritableRepository

# Smaller than a local repository's packs: each is uploaded while the next is
# written, so the last upload, the one a save waits for, is short.
BUCKET_PACK_SIZE = 32 << 20
_UPLOADS = 3  # packs uploading at once (each in parts of its own)
_CAS_ATTEMPTS = 60


def _entry_from_json(d: dict[str, Any]) -> PackEntry:
    def file(f: dict[str, Any]) -> FileEntry:
        return FileEntry(str(f["name"]), int(f["size"]), str(f["sha256"]))

    return PackEntry(file(d["pack"]), file(d["idx"]), int(d["mtime"]))


def _sha256_file(path: str) -> str:
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


class BucketRepository(StoreRepository, WritableRepository):
    """A repository in a bucket: read as a mirror is, and written when its
    manifest is primary (see the module doc)."""

    def __init__(self, store: ObjectStore, name: str, *, url: str | None = None,
                 cache_root: str | None = None, created: bool | None = None) -> None:
        super().__init__(store, name, url=url, cache_root=cache_root)
        self.created = created
        self._pending: list[PackEntry] = []  # uploaded, not yet in the manifest
        self._plock = threading.Lock()
        self._dedup: ObjectIndex | None = None
        self._uploads: ThreadPoolExecutor | None = None
        self._futures: list[Future[None]] = []
        self._staging: str | None = None
        self._synced: set[str] = set()  # the packs deduplicated against
        self._published = False  # packs of this process's are in the manifest
        self.bytes_sent = 0

    # A save's forked child (ketch.savefork) uploads its own packs, with its own
    # S3 client (`forked`), and the save adopts them (`adopt_packs`).
    writes_in_forked_processes = True

    def forked(self) -> None:
        super().forked()
        self._plock = threading.Lock()
        self._uploads = None  # the parent's threads did not come along
        self._futures = []
        self._pending = []

    def adopt_packs(self, idx_paths: list[str]) -> None:
        """The child's packs, uploaded: named by the manifest with this process's."""
        for name in idx_paths:
            with open(self._entry_path(os.path.basename(name)), encoding="utf-8") as f:
                entry = _entry_from_json(json.load(f))
            with self._plock:
                self._pending.append(entry)
                self._dedup_add(os.path.join(self._idx_dir(), entry.idx.name))

    def _entry_path(self, idx_name: str) -> str:
        return os.path.join(self._staging_dir(), idx_name + ".entry")

    def writable(self) -> WritableRepository:
        if not self.manifest.primary:
            raise ReadOnlyRepository(self.read_only)
        return self

    def traffic(self) -> tuple[int, int]:
        return self.bytes_sent, self.bytes_received

    def close(self) -> None:
        try:
            if self._pending and self.manifest.primary:
                self._publish()
            if self._published and self.manifest.primary:
                with contextlib.suppress(Exception):
                    # Only lookups are faster for it: whatever stops it must not
                    # fail a save that landed. The next save tries again.
                    locator.refresh(self)
        finally:
            if self._uploads is not None:
                self._uploads.shutdown(wait=True)
                self._uploads = None
            if self._dedup is not None:
                self._dedup.close()
                self._dedup = None
            if self._staging is not None:
                shutil.rmtree(self._staging, ignore_errors=True)
                self._staging = None
            super().close()

    # -- deduplication: the idx files, whole, in the cache -----------------------------

    def _idx_dir(self) -> str:
        return os.path.join(self.cache_dir, "dedup")

    def _dedup_index(self) -> ObjectIndex:
        if self._dedup is None:
            self._dedup = self._sync_idx()
        return self._dedup

    def _sync_idx(self) -> ObjectIndex:
        d = self._idx_dir()
        os.makedirs(d, exist_ok=True)
        # Not a retired pack's: gc deletes those once no save can still count on them.
        want = {p.idx.name: p for p in self.manifest.packs if not p.retired}
        self._synced = {p.pack.name for p in want.values()}
        have = {n for n in os.listdir(d) if n.endswith(".idx")}
        for stale in have - set(want):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(d, stale))
        missing = [want[n] for n in sorted(set(want) - have)]
        if missing:
            with ThreadPoolExecutor(8, thread_name_prefix="ketch-idx") as pool:
                list(pool.map(lambda e: self._fetch_idx(e, d), missing))
        index = ObjectIndex(d)
        index.maintain()
        return index

    def _fetch_idx(self, entry: PackEntry, into: str) -> None:
        data = self._get(pack_key(self.name, entry.idx.name), 0, entry.idx.size)
        if hashlib.sha256(data).hexdigest() != entry.idx.sha256:
            raise KetchError(f"{self.where}: {entry.idx.name} does not match the manifest's "
                             "sha256")
        path = os.path.join(into, entry.idx.name)
        tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)

    def read(self, oid: bytes) -> tuple[int, bytes]:
        try:
            return super().read(oid)
        except ObjectNotFound:
            # Written by this process and uploaded, but not yet in the manifest
            # that reads go by: name its packs now.
            if not (self._pending or self._futures):
                raise
            self._publish()
            return super().read(oid)

    def read_many(self, oids: Sequence[bytes]) -> Iterator[tuple[bytes, int, bytes]]:
        if self._pending or self._futures:
            self._publish()
        return super().read_many(oids)

    def has_many(self, oids: Sequence[bytes]) -> list[bool]:
        if not len(oids):
            return []
        found: list[bool] = self._dedup_index().contains_many(
            np.array(oids, dtype="S20")).tolist()
        return found

    def exists(self, oid: bytes) -> bool:
        return self._dedup_index().contains_one(oid)

    # -- writing --------------------------------------------------------------------------

    def writer(self, *, level: int = DEFAULT_LEVEL, max_pack_size: int | None = None,
               max_pack_objects: int | None = None) -> BucketWriter:
        self.writable()
        self._dedup_index()
        self._prepare_writes()
        return BucketWriter(self, self._staging_dir(), level=level,
                            max_pack_size=max_pack_size or BUCKET_PACK_SIZE,
                            max_pack_objects=max_pack_objects, exists=self.exists,
                            exists_many=self.has_many, on_pack=self._on_pack)

    def _prepare_writes(self) -> None:
        if self._staging is None:
            base = os.path.join(self.cache_dir, "staging")
            os.makedirs(base, exist_ok=True)
            self._staging = tempfile.mkdtemp(prefix=f"{os.getpid()}.", dir=base)
            os.makedirs(os.path.join(self._staging, "pack"))
        if self._uploads is None:
            self._uploads = ThreadPoolExecutor(_UPLOADS, thread_name_prefix="ketch-upload")

    def _staging_dir(self) -> str:
        assert self._staging is not None
        return self._staging

    def _on_pack(self, idx_path: str) -> None:
        assert self._uploads is not None
        self._futures.append(self._uploads.submit(self._upload, idx_path))

    def _upload(self, idx_path: str) -> None:
        """Pack, then idx (a reader takes an idx as the sign its pack is whole);
        then the idx joins the dedup cache and the pack waits for the manifest."""
        pack_path = idx_path[: -len(".idx")] + ".pack"
        files = []
        for path in (pack_path, idx_path):
            size = os.path.getsize(path)
            digest = _sha256_file(path)
            self.store.put_file_once(pack_key(self.name, os.path.basename(path)), path,
                                     sha256=digest)
            with self._lock:
                self.bytes_sent += size
            files.append(FileEntry(os.path.basename(path), size, digest))
        entry = PackEntry(files[0], files[1], time.time_ns())
        with open(self._entry_path(files[1].name), "w", encoding="utf-8") as f:
            json.dump({"pack": files[0].as_dict(), "idx": files[1].as_dict(),
                       "mtime": entry.mtime}, f)
        cached = os.path.join(self._idx_dir(), files[1].name)
        os.makedirs(self._idx_dir(), exist_ok=True)
        os.replace(idx_path, cached)
        os.unlink(pack_path)
        with self._plock:
            self._pending.append(entry)
            self._dedup_add(cached)

    def _dedup_add(self, cached: str) -> None:
        """Deduplicate against a pack just uploaded. Another save sharing the cache
        whose manifest does not name it yet may have swept its idx away as stale:
        then this save only misses its objects (uploads them again); the pack is
        uploaded and named by the manifest all the same."""
        if self._dedup is not None:
            with contextlib.suppress(FileNotFoundError):
                self._dedup.add_idx(cached)

    def wait_uploads(self) -> None:
        """Every pack closed so far is in the store (or its upload's error raised)."""
        futures, self._futures = self._futures, []
        errors = []
        for f in futures:
            e = f.exception()
            if e is not None:
                errors.append(e)
        if errors:
            raise errors[0]

    # -- the manifest, by compare-and-swap ------------------------------------------------

    def _change(self, edit: Callable[[Manifest], bool]) -> None:
        """Apply `edit` to the current manifest and write it back if it changed
        anything, again on the newer one whenever another writer came first."""
        key = manifest_key(self.name)
        for attempt in range(_CAS_ATTEMPTS):
            raw, tag = self.store.get_tagged(key)
            self._count(len(raw))
            m = parse_manifest(raw, self.name)
            if not m.primary:
                raise ReadOnlyRepository(self.read_only)
            try:
                changed = edit(m)
            except RefConflict:
                # The ref as it is now: the caller reads it to build on it.
                self._take_manifest(raw)
                raise
            if not changed:
                self._take_manifest(raw)
                return
            m.generation += 1
            m.time = now_iso()
            data = m.to_json()
            try:
                self.store.put_if(key, data, tag)
            except PreconditionFailed:
                # Writers that collided once collide again unless they spread out.
                time.sleep(random.uniform(0, min(1.0, 0.005 * 2 ** attempt)))
                continue
            with self._lock:
                self.bytes_sent += len(data)
            self._take_manifest(data)
            return
        raise KetchError(f"{self.where}: the manifest kept changing under this write; "
                         f"gave up after {_CAS_ATTEMPTS} attempts")

    def _check_not_collected(self, m: Manifest) -> None:
        """A save may have found objects in any pack it deduplicated against: if
        gc has deleted one since, the save must not name them (gc deletes only
        packs retired for longer than its --wait, so this is a save that ran
        that long)."""
        gone = self._synced - {p.pack.name for p in m.packs}
        if gone:
            self._withdraw()
            raise KetchError(f"{self.where}: a gc deleted {len(gone)} pack(s) this save "
                             "deduplicated against while it ran; nothing was lost, run the "
                             "save again")

    def _withdraw(self) -> None:
        """Delete this write's uploaded packs that no manifest names: they are
        no use to the save run again (it deduplicates against the manifest) and
        fsck would find them. A machine key that may not delete leaves them to gc."""
        with self._plock:
            pending, self._pending = self._pending, []
        for entry in pending:
            with contextlib.suppress(Exception):
                self.delete_pack(entry)

    def _add_pending(self, m: Manifest, pending: list[PackEntry]) -> bool:
        names = {p.pack.name for p in m.packs}
        new = [p for p in pending if p.pack.name not in names]
        m.packs.extend(new)
        return bool(new)

    def _publish(self) -> None:
        self.wait_uploads()
        with self._plock:
            pending = list(self._pending)
        if pending:
            def edit(m: Manifest) -> bool:
                self._check_not_collected(m)
                return self._add_pending(m, pending)

            self._change(edit)
            self._done(pending)

    def _done(self, published: list[PackEntry]) -> None:
        self._published = self._published or bool(published)
        with self._plock:
            self._pending = [p for p in self._pending if p not in published]

    def update_ref(self, name: bytes, new: bytes, old: bytes | None,
                   message: bytes = b"") -> None:
        check_ref_name(name)
        ref = name.decode("utf-8", "surrogateescape")
        self.wait_uploads()
        with self._plock:
            pending = list(self._pending)

        def edit(m: Manifest) -> bool:
            self._check_not_collected(m)
            now = m.refs.get(ref)
            if now == new.hex():
                # Already there: this write's own, landed before its answer was lost.
                return self._add_pending(m, pending)
            if now != (None if old is None else old.hex()):
                raise RefConflict(f"{ref}: moved by another writer")
            m.refs[ref] = new.hex()
            self._add_pending(m, pending)
            return True

        self._change(edit)
        self._done(pending)

    def maintain(self) -> None:
        if self._pending or self._futures:
            self._publish()

    def check_integrity(self, job: FsckJob) -> dict[str, Any]:
        """`mirror verify`'s check, and unless --quick a walk from every ref:
        each object it reaches is in a pack, each tree and commit parses."""
        report = super().check_integrity(job)
        if not self.manifest.primary:
            return report
        for p in report["problems"]:
            if p["what"] == "extra":
                p["message"] = (f"{p['file']}: no manifest names it (a save under way, or "
                                "one that was killed)")
        if job.options.get("quick"):
            return report
        from ketch.offsite.bucketgc import reachable

        report["refs"] = len(self.manifest.refs)
        report["objects_reachable"], problem = reachable(self)
        if problem is not None:
            report["problems"].append({"severity": "damaged", "what": "reachability",
                                       "message": problem})
            report["exit_code"], report["ok"] = EXIT_FAILED, False
        return report

    # -- what gc (ketch.offsite.bucketgc) does through the repository ---------------------

    def collect_garbage(self, job: GcJob) -> dict[str, Any]:
        from ketch.offsite.bucketgc import collect_bucket

        return collect_bucket(self.writable_bucket(), job.options, job.progress)

    def writable_bucket(self) -> BucketRepository:
        self.writable()
        return self

    def refresh_manifest(self) -> None:
        """Read the manifest as it is now."""
        self._change(lambda m: False)

    def change_manifest(self, edit: Callable[[Manifest], bool]) -> None:
        """`edit` the manifest by compare-and-swap (see _change)."""
        self._change(edit)

    def fetch_idx_files(self, entries: list[PackEntry], into: str) -> list[str]:
        """Whole idx files of `entries` in the directory `into` (kept there:
        idx files never change); their paths, in order."""
        os.makedirs(into, exist_ok=True)
        missing = [e for e in entries if not os.path.exists(os.path.join(into, e.idx.name))]
        if missing:
            with ThreadPoolExecutor(8, thread_name_prefix="ketch-idx") as pool:
                list(pool.map(lambda e: self._fetch_idx(e, into), missing))
        return [os.path.join(into, e.idx.name) for e in entries]

    def pack_range(self, entry: PackEntry, start: int, end: int) -> bytes:
        return self._get(pack_key(self.name, entry.pack.name), start, end)

    def copying_writer(self) -> BucketWriter:
        """A write session that deduplicates against nothing: gc copies objects
        out of packs it is about to retire, which still hold them."""
        self.writable()
        self._prepare_writes()
        return BucketWriter(self, self._staging_dir(), level=DEFAULT_LEVEL,
                            max_pack_size=BUCKET_PACK_SIZE, on_pack=self._on_pack)

    def uploaded_packs(self) -> list[PackEntry]:
        """Packs uploaded and not yet in the manifest: gc names them itself."""
        self.wait_uploads()
        with self._plock:
            return list(self._pending)

    def named(self, entries: list[PackEntry]) -> None:
        """`entries` are in the manifest now."""
        self._done(entries)

    def delete_file(self, f: FileEntry) -> None:
        """A file of the pack directory no manifest names any more (an old locator)."""
        self.store.delete(pack_key(self.name, f.name))

    def delete_pack(self, entry: PackEntry) -> None:
        """Pack first, then its idx: an idx without its pack would look whole."""
        for f in (entry.pack, *entry.parity, entry.idx):
            self.store.delete(pack_key(self.name, f.name))


class BucketWriter(PackWriter):
    """A write session into a bucket: packs written into the staging directory
    upload as they close (`on_pack`); `close` waits for the last upload."""

    def __init__(self, repo: BucketRepository, staging: str, **kwargs: Any) -> None:
        super().__init__(staging, **kwargs)
        self.repo = repo

    def close(self) -> list[str]:
        closed = super().close()
        self.repo.wait_uploads()
        return [os.path.basename(p) for p in closed]

    def abort(self) -> None:
        """Keep the complete packs: uploaded, they spare the next save the work."""
        super().abort()
        with contextlib.suppress(Exception):
            self.repo.wait_uploads()
