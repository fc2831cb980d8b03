"""A read-only Repository straight from a mirror in an object store.

`ketch ls/cat-file/restore -r s3://bucket/prefix/REPO` read the manifest (refs
and the list of packs), then fetch only the byte ranges they need:

Finding an object: the repository's locator, then the idx files of the
packs it does not cover, read piecemeal with ranged GETs and cached on disk
(ketch.offsite.s3find). A batch whose first and last objects the locator puts
close together in one pack (a file's chunks) is read as one range, every
object in it decoded and matched by its id.

Reading. `read_many` (a restore's batch of blobs) is planned per pack by
s3read: entries sorted by offset, merged into GETs of up to 8 MiB, 16 in
flight. A `read` fetches the hinted objects (`prefetch`) along with it, the
same way, and an unhinted object with the entries written just
before it (a directory's trees and metadata precede the tree or commit naming
them): what is decoded beside the object asked for is held for the next reads.
Where an entry ends the locator says, or the idx's offsets when at hand; else
a GET reads a little beyond (GUESS) and, rarely, a second one the rest. Deltas (git-repacked
repositories have them; ketch and bup write none) are resolved by fetching
their base too. Entries are decoded by ketch.git.entry, bounded like any
bytes from elsewhere; every object is checked against its id. Trees, commits
and the VFS's small metadata blobs are cached on disk: browsing again costs
no traffic.
"""

from __future__ import annotations

import hashlib
import os
import threading
from collections import deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from ketch.errors import CorruptObject, KetchError, ObjectNotFound
from ketch.git import objects as gobj
from ketch.git.delta import BadDelta, apply_delta
from ketch.git.entry import CorruptPack
from ketch.git.refs import check_ref_name
from ketch.offsite import s3read
from ketch.offsite.manifest import (
    no_such_repository,
    pack_key,
    parse_manifest,
    read_manifest_bytes,
)
from ketch.offsite.s3find import Finder, Found
from ketch.offsite.s3find import PackGone as _PackGone
from ketch.offsite.s3held import DISK_TYPES, Held
from ketch.offsite.s3index import WHOLE_IDX, RemoteIdx
from ketch.offsite.s3read import GUESS, Range, Window, read_entry
from ketch.offsite.store import NotFound, ObjectStore
from ketch.repo import FsckJob, Repository

_BATCH_OBJECTS = 256  # hinted objects fetched along with one read
_PARALLEL = 8  # GETs in flight for idx buckets
# An object asked for without a hint comes with the entries written just
# before it: a save writes a directory's trees and metadata after its files',
# its commit last, so a path's trees lie behind the commit that names them.
_BEHIND = 128 << 10
_MAX_CHAIN = 500  # deeper delta chains than this are a corrupt pack
# A lookup of more ids than this asks the locator for the first _PROBE and the
# last only; when they are in one pack (a file's chunks lie together), that
# pack's idx for the rest: one GET of it, not one locator window per chunk.
_MANY = 8
_BEHIND_LOADS = 1
_WHOLE_MAX_BEHIND = 16 << 20
_WALK = 64  # reads without a hint after which a reader is walking a tree
_DECODE_ALL = 256 << 10
_PROBE = 2


def default_cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ketch", "s3")


class StoreRepository(Repository):
    """One repository of a mirror, read-only; `url` names the store (for messages
    and the cache directory)."""

    read_only = "an S3 mirror is read-only; push to it with ketch mirror push"
    # A restore's reader thread fetches one batch's blobs while its own thread
    # walks the next files' trees: both wait on round trips, not on each other.
    reads_concurrently = True
    # Not a restore's forked workers: each would fetch again the trees and the
    # stretches around them that another holds. Over a relay adding 30 ms a
    # request, the 1.5 GB corpus took 112 s in 8,198 GETs with 4 workers and
    # 61 s in 2,121 GETs without (on the loopback, 32 s against 42 s: S3 is
    # not the loopback). `forked` stays for a save's forked child.
    reads_in_forked_processes = False
    walks_ahead = True
    # Every object is checked against its id as it is decoded (s3read.decode,
    # deltas in _run, the disk cache in Held.get).
    reads_verified = True
    # A restore's batches of 32 MB fetched 882 MB for the 647 MB of pack it
    # needed (a VM image's repeated blocks point back into stretches earlier
    # batches had fetched: each batch fetched them again).
    wide_batches = True

    def __init__(self, store: ObjectStore, name: str, *, url: str | None = None,
                 cache_root: str | None = None, whole_idx_bytes: int = WHOLE_IDX) -> None:
        self.store = store
        self.name = name
        self.url = url or store.location()
        self.where = f"{self.url.rstrip('/')}/{name}"
        self.whole_idx_bytes = whole_idx_bytes
        self.bytes_received = 0
        self.requests = 0
        self._lock = threading.Lock()  # the counts
        # The rest of the state: read_many runs beside read (a restore's reader
        # thread and its tree walk), but only the GETs and decoding of a planned
        # read go on outside it.
        self._reading = threading.RLock()
        self._pool: ThreadPoolExecutor | None = None  # idx pieces
        self._range_pool: ThreadPoolExecutor | None = None  # read_many's ranges
        raw = read_manifest_bytes(store, name)
        if raw is None:
            raise no_such_repository(store, name, self.url)
        self._count(len(raw))
        digest = hashlib.sha256(f"{self.url}\0{name}".encode()).hexdigest()[:24]
        self.cache_dir = os.path.join(cache_root or default_cache_root(), digest)
        self._find = Finder(name, get_many=self._get_many, cache_dir=self.cache_dir,
                            where=self.where, whole_idx_bytes=whole_idx_bytes)
        self._behind_loads = 0  # idx files fetched for _behind
        self._unhinted = 0  # reads that came to _behind
        self._take_manifest(raw)
        self._ahead: deque[bytes] = deque()
        self._scanned: dict[str, list[tuple[int, int]]] = {}  # see _back
        self._whole_ahead: set[str] = set()  # packs read ahead whole (idx names)
        self._held = Held(self.cache_dir)

    def _take_manifest(self, raw: bytes) -> None:
        self.manifest = parse_manifest(raw, self.name)
        self._find.take(self.manifest)
        self._packs = self._find.packs

    def _reload(self) -> bool:
        """Take the store's current manifest; False when it has not changed."""
        raw = read_manifest_bytes(self.store, self.name)
        if raw is None:
            raise no_such_repository(self.store, self.name, self.url)
        self._count(len(raw))
        if parse_manifest(raw, self.name).generation == self.manifest.generation:
            return False
        self._take_manifest(raw)
        return True

    def _again(self, e: _PackGone) -> None:
        """A push after a gc deletes the packs its new manifest no longer names;
        the objects still reachable are in the packs it names instead."""
        if not self._reload():
            raise e

    def traffic(self) -> tuple[int, int]:
        """(bytes sent, bytes received) so far, as RemoteRepository counts them."""
        return 0, self.bytes_received

    def check_integrity(self, job: FsckJob) -> dict[str, Any]:
        """`mirror verify`'s check of this repository, as an fsck report."""
        from ketch.offsite.verify import fsck_report

        return fsck_report(self.store, self.name, job.options, where=self.where)

    def forked(self) -> None:
        self.store.forked()
        self._lock = threading.Lock()
        self._reading = threading.RLock()
        self._pool = self._range_pool = None  # the parent's threads did not come along

    def close(self) -> None:
        for pool in (self._pool, self._range_pool):
            if pool is not None:
                pool.shutdown(wait=True)
        self._pool = self._range_pool = None

    # -- store access -------------------------------------------------------------

    def _count(self, n: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_received += n

    def _get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            data = self.store.get(key, start, end)
        except NotFound:
            raise _PackGone(f"{self.where}: {key} is missing from the store (a newer push "
                            "removed it? run the command again)") from None
        self._count(len(data))
        if end is not None and len(data) != end - start:
            raise CorruptObject(f"{self.where}: {key} is shorter than its manifest says")
        return data

    def _get_many(self, ranges: list[tuple[str, int, int]]) -> list[bytes]:
        if len(ranges) == 1:
            return [self._get(*ranges[0])]
        if self._pool is None:
            self._pool = ThreadPoolExecutor(_PARALLEL, thread_name_prefix="ketch-get")
        return list(self._pool.map(lambda r: self._get(*r), ranges))

    # -- finding objects -------------------------------------------------------------

    def _index(self, idx_name: str) -> RemoteIdx:
        return self._find.index(idx_name)

    def _locate(self, oids: Iterable[bytes], *, use_locator: bool = True) -> Found:
        return self._find.locate(oids, use_locator=use_locator)

    def _locate_again(self, oids: Sequence[bytes]) -> Found:
        try:
            return self._locate(oids)
        except _PackGone as e:
            self._again(e)
            return self._locate(oids)

    def has_many(self, oids: Sequence[bytes]) -> list[bool]:
        with self._reading:
            found = self._locate_again(oids)
        return [o in found for o in oids]

    def exists(self, oid: bytes) -> bool:
        with self._reading:
            return self._held.has(oid) or self.has_many([oid])[0]

    def expand_hex(self, hexid: str) -> bytes | None:
        if len(hexid) == 40:
            return super().expand_hex(hexid)
        if len(hexid) < 2:
            return None
        with self._reading:
            matches = self._find.with_prefix(hexid)
        if len(matches) > 1:
            raise KetchError(f"ambiguous object id prefix: {hexid}")
        return matches.pop() if matches else None

    # -- objects ----------------------------------------------------------------------

    def prefetch(self, oids: Sequence[bytes]) -> None:
        # Readers walk depth first: the newest hints are wanted soonest.
        with self._reading:
            self._ahead.extendleft(reversed(oids))
            while len(self._ahead) > 1 << 16:
                self._ahead.pop()

    def read(self, oid: bytes) -> tuple[int, bytes]:
        with self._reading:
            got = self._held.get(oid)
            if got is not None:
                return got
            try:
                return self._read(oid)
            except _PackGone as e:
                self._again(e)
                self._ahead.clear()
                return self._read(oid)
            except CorruptObject:
                if self._find.locator is None:
                    raise
                self._drop_locator()  # damaged, maybe: the packs' idx files say
                return self._read(oid)

    def _drop_locator(self) -> None:
        self._find.drop_locator()
        self._ahead.clear()

    def read_many(self, oids: Sequence[bytes]) -> Iterator[tuple[bytes, int, bytes]]:
        return self._many(oids, ahead=False)

    def read_ahead(self, oids: Sequence[bytes]) -> Iterator[tuple[bytes, int, bytes]]:
        return self._many(oids, ahead=True)

    def _many(self, oids: Sequence[bytes], *, ahead: bool) -> Iterator[tuple[bytes, int, bytes]]:
        done = set()
        try:
            for o, t, data in self._read_many(oids, ahead):
                done.add(o)
                yield o, t, data
        except CorruptObject:
            if self._find.locator is None:
                raise
            with self._reading:
                self._drop_locator()
            for o in dict.fromkeys(oids):
                if o not in done:
                    t, data = self.read(o)
                    yield o, t, data

    def _read_many(self, oids: Sequence[bytes], ahead: bool) -> Iterator[tuple[bytes, int, bytes]]:
        # Planned reads (s3read): each wanted entry's range of its pack once,
        # in GETs of a few MB, many in flight. Read `ahead` (a walk's trees and
        # metadata), everything is kept for the reads to come, and only gaps of
        # s3read.AHEAD_GAP are read through: the trees of one level lie far apart,
        # between the files they name, which a restore reads later anyway.
        with self._reading:
            wanted = list(dict.fromkeys(oids))
            held = {o: got for o in wanted
                    if (got := self._held.take(o, ahead=ahead)) is not None}
            rest = [o for o in wanted if o not in held]
            run = None if ahead else self._find.run_of(rest)
        for o, (t, data) in held.items():
            yield o, t, data
        if run is not None:
            taken: set[bytes] = set()
            for o, t, data in self._run([run], keep=False):
                taken.add(o)
                yield o, t, data
            with self._reading:
                # The rest of the run was held (see _run): those asked for.
                beside = {o: item for o in rest if o not in taken
                          and (item := self._held.take(o))}
            for o, (t, data) in beside.items():
                yield o, t, data
            rest = [o for o in rest if o not in taken and o not in beside]
        with self._reading:
            where = self._locate_again(rest)
            ranges = self._plan(where, gap=s3read.AHEAD_GAP if ahead else s3read.GAP,
                                everything=ahead, whole=ahead)
        yield from self._run(ranges, keep=ahead, all_asked=ahead)
        for o in rest:
            if o not in where:
                t, data = self.read(o)  # after a newer push, or ObjectNotFound
                yield o, t, data

    def _plan(self, where: dict[bytes, tuple[str, int]], gap: int = s3read.GAP,
              everything: bool = False, whole: bool = False) -> list[Range]:
        """Ranges reading `where`'s objects; `whole`: a small pack of small
        entries is read whole, once (s3read.whole_pack)."""
        by_pack: dict[str, list[tuple[int, bytes]]] = {}
        for o, (name, off) in where.items():
            by_pack.setdefault(name, []).append((off, o))
        out = []
        for name, items in by_pack.items():
            key = pack_key(self.name, self._packs[name].pack.name)
            if whole and name not in self._whole_ahead and \
                    (r := s3read.whole_pack(self._packs[name], key, items)) is not None:
                self._whole_ahead.add(name)
                out.append(r)
                continue
            out += s3read.plan_pack(self._index(name), key, items, gap=gap,
                                    everything=everything,
                                    known=self._find.known_ends(name, items))
        return out

    def _read_range(self, r: Range) -> tuple[Range, s3read.Decoded]:
        return r, s3read.decode(self._get, r, self.where)

    def _read(self, oid: bytes) -> tuple[int, bytes]:
        got: tuple[int, bytes] | None = None
        batch = [oid]
        while self._ahead and len(batch) < _BATCH_OBJECTS:
            o = self._ahead.popleft()
            if o != oid and not self._held.has(o):
                batch.append(o)
        where = self._locate(batch)
        if oid not in where and self._find.locator is not None:
            where = self._locate(batch, use_locator=False)
            if oid in where:
                self._drop_locator()  # it lied: set it aside for the packs' idx files
        if oid not in where:
            raise ObjectNotFound(f"object {oid.hex()} not found in {self.where}")
        for o, t, data in self._fetch(where, oid):
            if o == oid:
                got = (t, data)
            else:
                self._held.hold(o, (t, data))
        assert got is not None
        return got

    def _fetch(self, where: dict[bytes, tuple[str, int]],
               asked: bytes) -> Iterator[tuple[bytes, int, bytes]]:
        """(oid, type, data) for located objects, nearby entries in one GET;
        `asked` is the one the caller is waiting for, the rest were hinted.
        (Chunk trees fetched with the whole stretch of blobs around them were
        tried: on the benchmark's 1.5 GB corpus a restore then downloaded 8.3x
        what it needed and held 1.3 GB, refetching stretches it had dropped.)"""
        rest = dict(where)
        behind = self._behind(asked, *rest[asked]) if asked in rest else None
        if behind is not None:
            del rest[asked]
        ranges = self._plan(rest, gap=s3read.GAP)
        for r in ranges:
            # What lies between a directory's tree and its metadata is mostly
            # its subdirectories' trees: decoded and held. (Not in the long
            # ranges of a file's blobs: inflating them all cost a restore a third
            # more time.)
            r.everything = r.end - r.start <= _DECODE_ALL
        return self._run(ranges + ([behind] if behind else []), keep=True, asked=asked)

    def _back(self, name: str, off: int) -> int:
        """Where a range for the entry at `off` starts to take in what lies
        _BEHIND it: an entry's offset, past the stretches fetched whole lately
        (the next small file's subtree would fetch the same 128 KB again)."""
        return s3read.back(self._index(name), self._scanned.get(name, []), off, _BEHIND)

    def _behind(self, oid: bytes, name: str, off: int) -> Range | None:
        """A range from the first entry within _BEHIND before `off` to the end of
        the entry there, when the idx's offsets tell where both are."""
        ix = self._index(name)
        self._unhinted += 1
        if not ix.loaded:
            first = self._find.firsts.get((name, off))
            if self._unhinted > _WALK and ix.file.size <= _WHOLE_MAX_BEHIND:
                # A walk of a tree (a restore, ls -R): the idx's offsets find the
                # whole stretch behind, as without a locator.
                ix.fetch_whole()
            elif first is not None and first < off:
                return self._find.range(name, first, self._find.ends[(name, off)], [(off, oid)])
            elif self._behind_loads < _BEHIND_LOADS and ix.file.size <= 2 * WHOLE_IDX:
                # Found by the locator, its idx not at hand. The first read (the
                # commit; its path's trees lie just behind it) pays for the idx,
                # one GET, when it is small.
                self._behind_loads += 1
                ix.fetch_whole()
            else:
                return None
        end = ix.entry_ends([off], fetch=False).get(off)
        first = self._back(name, off)
        if end is None or first >= off:
            return None
        entry = self._packs[name]
        return Range(name, pack_key(self.name, entry.pack.name), entry.pack.size - 20, first,
                     end, [(off, oid)], everything=True)

    def _run(self, ranges: list[Range], *, keep: bool, asked: bytes | None = None,
             all_asked: bool = False) -> Iterator[tuple[bytes, int, bytes]]:
        """The objects of planned ranges, fetched in parallel; `keep` remembers
        them all (see Held.keep), else only trees and commits."""
        if self._range_pool is None:
            self._range_pool = ThreadPoolExecutor(s3read.IN_FLIGHT,
                                                  thread_name_prefix="ketch-range")
        for r, (done, deltas, win, beside) in s3read.run(ranges, self._read_range,
                                                         self._range_pool):
            if r.everything:
                with self._reading:
                    spans = self._scanned.setdefault(r.idx_name, [])
                    spans.append((r.start, win.end))
                    del spans[:-64]
            if beside:
                with self._reading:
                    for oid, t, data in beside:
                        self._held.hold(oid, (t, data))
            for name, off, oid in deltas:
                with self._reading:
                    t, data = self._decode(name, off, win, 0)
                if gobj.object_id(t, data) != oid:
                    raise CorruptObject(f"{self.where}: object {oid.hex()} in {win.key} "
                                        "does not match its id")
                done.append((oid, t, data))
            for oid, t, data in done:
                if all_asked:
                    with self._reading:
                        self._held.hold_walked(oid, t, data)
                elif keep or t in DISK_TYPES:
                    with self._reading:
                        self._held.keep(oid, t, data, oid == asked)
                yield oid, t, data

    def _decode(self, idx_name: str, offset: int, win: Window, depth: int) -> tuple[int, bytes]:
        where = f"{self.where}: {self._packs[idx_name].pack.name} at {offset}"
        t, data, base = read_entry(win, offset, where)
        if base is None:
            return t, data
        if depth > _MAX_CHAIN:
            raise CorruptPack(f"{where}: delta chain does not end")
        if isinstance(base, int):
            if not 0 < base <= offset - 12:
                raise CorruptPack(f"{where}: bad delta base offset")
            base_t, base_data = self._base_at(idx_name, offset - base, win, depth + 1)
        else:
            base_t, base_data = self.read(base)
        try:
            return base_t, apply_delta(base_data, data)
        except BadDelta as e:
            raise BadDelta(f"{where}: {e}") from None

    def _base_at(self, idx_name: str, offset: int, win: Window, depth: int) -> tuple[int, bytes]:
        """A delta's base: the entry at `offset` (from the window when it is there)."""
        got = self._held.remembered((idx_name, offset))
        if got is None:
            if offset < win.start:
                entry = self._packs[idx_name]
                win = Window(self._get, pack_key(self.name, entry.pack.name), offset,
                              offset + GUESS, entry.pack.size - 20)
            got = self._decode(idx_name, offset, win, depth)
            self._held.remember((idx_name, offset), got)
        return got

    def read_ref(self, name: bytes) -> bytes | None:
        # Refs come from the manifest; names are checked as the local and ssh backends do.
        check_ref_name(name, allow_pseudo=True)
        return self.manifest.ref(name)

    def iter_refs(self, prefix: bytes = b"refs/") -> Iterator[tuple[bytes, bytes]]:
        return iter(self.manifest.ref_items(prefix))

    def pack_sizes(self) -> list[tuple[int, float]]:
        return [(p.pack.size, p.mtime / 1e9) for p in self.manifest.packs if not p.retired]
