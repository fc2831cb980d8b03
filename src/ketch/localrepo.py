"""The local repository: a bare git repository on this machine's filesystem,
read through mapped packs and written by `PackWriter` under the gc lease.
Also what creates one (`init_repository`) and where one is by default."""

from __future__ import annotations

import contextlib
import os
import threading
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import numpy as np

from ketch.errors import KetchError, NotARepository, ObjectNotFound
from ketch.git.config import GitConfig
from ketch.git.loose import iter_loose_ids, loose_exists, read_loose
from ketch.git.objindex import ObjectIndex
from ketch.git.pack import DEFAULT_LEVEL, DEFAULT_MAX_PACK_SIZE, PackWriter
from ketch.git.packread import PackFile
from ketch.git.packrun import read_entries
from ketch.git.refs import Refs
from ketch.lease import Lease
from ketch.repo import RETIRING_DIR, FsckJob, GcJob, WritableRepository


def _is_repo(path: str) -> bool:
    return os.path.isdir(os.path.join(path, "objects")) and os.path.isdir(
        os.path.join(path, "refs")
    )


def init_repository(path: str) -> bool:
    """Create a bare repository that git and bup accept; False if one is already there."""
    if _is_repo(path):
        return False
    if os.path.exists(path) and not os.path.isdir(path):
        raise KetchError(f"{path}: exists and is not a directory")
    for sub in ("objects/pack", "objects/info", "refs/heads", "refs/tags", "info"):
        os.makedirs(os.path.join(path, sub), exist_ok=True)
    files = {
        "HEAD": "ref: refs/heads/master\n",
        "config": (
            "[core]\n\trepositoryformatversion = 0\n\tfilemode = true\n\tbare = true\n"
            "\tlogAllRefUpdates = true\n[pack]\n\tindexVersion = 2\n"
        ),
        "description": "ketch backup repository\n",
    }
    for name, text in files.items():
        p = os.path.join(path, name)
        if not os.path.exists(p):
            with open(p, "w") as f:
                f.write(text)
    return True


class LocalRepository(WritableRepository):
    """A bare git repository on a local filesystem."""

    reads_concurrently = True
    reads_in_forked_processes = True
    reads_are_local = True
    writes_in_forked_processes = True

    def __init__(self, path: str) -> None:
        self.path = os.path.abspath(path)
        if not _is_repo(self.path):
            raise NotARepository(f"{path}: not a repository (run 'ketch init -d {path}')")
        self.cache_dir = self.path
        self.objects_dir = os.path.join(self.path, "objects")
        self.pack_dir = os.path.join(self.objects_dir, "pack")
        self.config = GitConfig(os.path.join(self.path, "config"))
        self.refs = Refs(self.path)
        self.index = ObjectIndex(self.pack_dir)
        self._packs: dict[str, PackFile] = {}
        self._mapped = 0
        self._has_loose = self._any_loose()
        self._lease: Lease | None = None
        self._retiring: ObjectIndex | None = None
        self._parity: Callable[[str], None] | None = None
        self._unprotected: list[str] = []  # packs written since, awaiting parity
        # read_many runs beside reads on another thread (restore): the pack
        # cache below is closed and reopened as a side effect of reading.
        self._read_lock = threading.RLock()

    def _any_loose(self) -> bool:
        try:
            names = os.listdir(self.objects_dir)
        except OSError:
            return False
        return any(len(n) == 2 and os.listdir(os.path.join(self.objects_dir, n)) for n in names)

    def close(self) -> None:
        for p in self._packs.values():
            p.close()
        self._packs.clear()
        self.index.close()
        if self._retiring is not None:
            self._retiring.close()
            self._retiring = None

    # -- objects ----------------------------------------------------------------

    def _pack(self, idx_name: str) -> PackFile:
        p = self._packs.get(idx_name)
        if p is None:
            base = os.path.join(self.pack_dir, idx_name[: -len(".idx")])
            p = PackFile(base + ".pack", base + ".idx")
            self._packs[idx_name] = p
        return p

    # Pages of mapped packs count towards RSS once read; closing the packs after
    # this much has been read keeps a long restore's peak bounded (the kernel's
    # page cache keeps the data either way).
    _REMAP_BYTES = 32 << 20
    _FAULT_WINDOW = 128 << 10

    def _read_packed(self, oid: bytes) -> tuple[int, bytes] | None:
        for attempt in (0, 1):
            # A miss asks the idx files themselves: a damaged midx or bloom
            # must not hide what is stored.
            hit = self.index.find(oid) or self.index.find_direct(oid)
            if hit is not None:
                name, offset = hit
                try:
                    pack = self._pack(name)
                except FileNotFoundError:
                    # gc moved the pack away after our index listed it: its live
                    # objects are in new packs by then.
                    if attempt or not self.index.refresh():
                        raise
                    continue
                got = pack.read_at(offset, resolve_base=self._read_base)
                # A read maps more than its object: the pages the kernel reads
                # ahead and faults in around it (64-128 KiB on Linux).
                self._mapped += max(len(got[1]), self._FAULT_WINDOW)
                if self._mapped >= self._REMAP_BYTES:
                    self._mapped = 0
                    for p in self._packs.values():
                        p.close()
                    self._packs.clear()
                return got
            if attempt == 0 and not self.index.refresh():
                break
        return None

    def _read_base(self, oid: bytes) -> tuple[int, bytes]:
        return self.read(oid)

    def read(self, oid: bytes) -> tuple[int, bytes]:
        with self._read_lock:
            got = self._read_packed(oid)
            if got is None and self._has_loose:
                got = read_loose(self.objects_dir, oid)
            if got is None:
                got = self._read_retiring(oid)
        if got is None:
            raise ObjectNotFound(f"object {oid.hex()} not found in {self.path}")
        return got

    def read_many(self, oids: Sequence[bytes]) -> Iterator[tuple[bytes, int, bytes]]:
        """Pack order, each pack's wanted entries read in large runs (see
        ketch.git.packrun) from a descriptor of its own, so that this may run
        on one thread while `read` runs on another. Deltas, loose objects and
        anything the idx files do not place go through `read`, last."""
        with self._read_lock:
            hits = self.index.find_many(oids)
        by_pack: dict[str, list[tuple[int, bytes]]] = {}
        rest: list[bytes] = []
        for oid, hit in zip(oids, hits, strict=True):
            if hit is None:
                rest.append(oid)
            else:
                by_pack.setdefault(hit[0], []).append((hit[1], oid))
        for name, entries in by_pack.items():
            entries.sort()
            try:
                fd = os.open(os.path.join(self.pack_dir, name[: -len(".idx")] + ".pack"),
                             os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                rest.extend(oid for _, oid in entries)  # gc moved it: read finds it anew
                continue
            try:
                end = os.fstat(fd).st_size - 20
                got = read_entries(fd, [off for off, _ in entries], end)
                for (_, oid), (t, data) in zip(entries, got, strict=True):
                    if data is None:
                        t, data = self.read(oid)
                    yield oid, t, data
            finally:
                os.close(fd)
        for oid in rest:
            t, data = self.read(oid)
            yield oid, t, data

    def _retiring_index(self) -> ObjectIndex | None:
        d = os.path.join(self.path, RETIRING_DIR)
        if self._retiring is None:
            if not os.path.isdir(d):
                return None
            self._retiring = ObjectIndex(d)
        else:
            self._retiring.refresh()
        return self._retiring

    def _read_retiring(self, oid: bytes) -> tuple[int, bytes] | None:
        """An object only a pack that gc is retiring holds (a save that raced gc
        may need it until gc has copied it back; see RETIRING_DIR)."""
        ix = self._retiring_index()
        hit = ix.find(oid) if ix is not None else None
        if ix is None or hit is None:
            return None
        base = os.path.join(ix.pack_dir, hit[0][: -len(".idx")])
        try:
            with PackFile(base + ".pack", base + ".idx") as p:
                return p.read_at(hit[1], resolve_base=self._read_base)
        except FileNotFoundError:
            return None  # deleted since: gc has finished with it

    def stored_many(self, oids: Sequence[bytes]) -> list[bool]:
        """Like has_many, counting what retiring packs hold too: for checking a
        commit a save has made (gc keeps those objects), never for deduplicating
        against (gc deletes them once the saves it waits for are done)."""
        found = self.has_many(oids)
        if all(found):
            return found
        ix = self._retiring_index()
        if ix is None:
            return found
        also = ix.contains_many(np.array(oids, dtype="S20")).tolist()
        return [a or b for a, b in zip(found, also, strict=True)]

    def has_many(self, oids: Sequence[bytes]) -> list[bool]:
        found: list[bool] = self.index.contains_many(np.array(oids, dtype="S20")).tolist()
        if self._has_loose and not all(found):
            for i, oid in enumerate(oids):
                if not found[i]:
                    found[i] = loose_exists(self.objects_dir, oid)
        return found

    def exists(self, oid: bytes) -> bool:
        if self.index.contains_one(oid):
            return True
        return self._has_loose and loose_exists(self.objects_dir, oid)

    def expand_hex(self, hexid: str) -> bytes | None:
        if len(hexid) == 40:
            return super().expand_hex(hexid)
        matches = set(self.index.find_prefix(hexid))
        if self._has_loose:
            matches.update(o for o in iter_loose_ids(self.objects_dir) if o.hex().startswith(hexid))
        if len(matches) > 1:
            raise KetchError(f"ambiguous object id prefix: {hexid}")
        return matches.pop() if matches else None

    def writer(
        self,
        *,
        level: int = DEFAULT_LEVEL,
        max_pack_size: int | None = None,
        max_pack_objects: int | None = None,
    ) -> PackWriter:
        limit = max_pack_size or self.config.get_int("pack", "packSizeLimit") or DEFAULT_MAX_PACK_SIZE
        return PackWriter(
            self.objects_dir,
            level=level,
            max_pack_size=limit,
            max_pack_objects=max_pack_objects,
            exists=self.exists,
            exists_many=self.has_many,
            on_pack=self._on_pack,
        )

    def _on_pack(self, idx_path: str) -> None:
        self.index.add_idx(idx_path)
        if self._parity is not None:
            self._unprotected.append(idx_path[: -len(".idx")] + ".pack")

    def adopt_packs(self, idx_paths: list[str]) -> None:
        for idx in idx_paths:
            self._on_pack(idx)

    def maintain(self) -> None:
        """bup's after-save housekeeping: merge small idx files, refresh the bloom;
        and parity for the new packs, when asked (par2 takes a while: not while a
        pack is being closed, when a stop signal waits)."""
        self.index.maintain()
        while self._unprotected and self._parity is not None:
            self._parity(self._unprotected.pop(0))

    def make_parity(self, generate: Callable[[str], None]) -> None:
        self._parity = generate

    @contextlib.contextmanager
    def writing(self) -> Iterator[object]:
        if self._lease is not None:  # a save's snapshot, inside the save's own lease
            yield self._lease
            return
        with Lease(self.path) as lease:
            self._lease = lease
            try:
                # Packs gc hid before the lease was taken must not answer "stored".
                self.index.refresh()
                yield lease
            finally:
                self._lease = None

    def collect_garbage(self, job: GcJob) -> dict[str, Any]:
        return job.run(self)

    def check_integrity(self, job: FsckJob) -> dict[str, Any]:
        return job.run(self)

    # -- refs ---------------------------------------------------------------------

    def pack_sizes(self) -> list[tuple[int, float]]:
        out = []
        try:
            with os.scandir(self.pack_dir) as it:
                for e in it:
                    if e.name.endswith(".pack"):
                        try:
                            st = e.stat()
                        except FileNotFoundError:  # a gc took it away meanwhile
                            continue
                        out.append((st.st_size, st.st_mtime))
        except FileNotFoundError:
            pass
        return out

    def read_ref(self, name: bytes) -> bytes | None:
        return self.refs.read(name)

    def iter_refs(self, prefix: bytes = b"refs/") -> Iterator[tuple[bytes, bytes]]:
        return self.refs.iter_refs(prefix)

    def update_ref(
        self, name: bytes, new: bytes, old: bytes | None, message: bytes = b""
    ) -> None:
        self.refs.update(name, new, old, message=message)


def default_repo_path(explicit: str | None) -> str:
    if explicit:
        return explicit
    env = os.environ.get("KETCH_DIR")
    if env:
        return env
    return os.path.join(os.path.expanduser("~"), ".ketch")
