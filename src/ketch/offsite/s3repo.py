"""A read-only Repository straight from a mirror in an object store.

`ketch ls/cat-file/restore -r s3://bucket/prefix/REPO` read the manifest (refs
and the list of packs), then fetch only the byte ranges they need:

Finding an object. An idx file is about 28 bytes per object, so downloading
all of them costs 0.35% of the mirror (1.7 GB for 500 GB of 8 KB chunks)
before the first byte of a file. Instead each idx is read piecemeal with
ranged GETs: its 1 KB fan-out once, then only the "buckets" a lookup needs
(the ids sharing a first byte, and their offsets), adjacent buckets merged
into one GET and several GETs in flight. Packs are searched most recently hit
first (newest first to begin with), since a file's chunks and trees were
mostly written together. Small idx files (below `whole_idx_bytes`) are fetched
whole, checked against the manifest's sha256. Everything fetched is cached
under ~/.cache/ketch/s3/<hash of store and repository>/idx/ (a sparse copy of
each idx and a bitmap of the buckets present): idx files never change.

Reading an object is then one ranged GET of its pack entry. Where an entry
ends is not recorded anywhere but in its zlib stream, so a GET reads a little
beyond (_GUESS) and, rarely, a second GET fetches the rest of a big entry.
`prefetch` hints (restore announces a directory's files and a file's chunks
before reading them) are fetched with the next read, grouped by pack, with
nearby entries merged into one GET. Deltas (git-repacked repositories have
them; ketch and bup write none) are resolved by fetching their base too.
Every object is checked against its id. Trees, commits and the VFS's small
metadata blobs are cached on disk, so browsing again costs no traffic.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import struct
import threading
import zlib
from collections import OrderedDict, deque
from collections.abc import Iterable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

from ketch.errors import CorruptObject, KetchError, ObjectNotFound
from ketch.git import objects as gobj
from ketch.git.idx import IDX_MAGIC, search_ids
from ketch.git.packread import OFS_DELTA, REF_DELTA, apply_delta
from ketch.offsite.manifest import (
    PackEntry,
    no_such_repository,
    pack_key,
    parse_manifest,
    read_manifest_bytes,
)
from ketch.offsite.store import NotFound, ObjectStore
from ketch.repo import Repository

_FULL = frozenset((gobj.COMMIT, gobj.TREE, gobj.BLOB, gobj.TAG))
_DISK_TYPES = frozenset((gobj.COMMIT, gobj.TREE, gobj.TAG))
_GUESS = 8 << 10  # read this far past the last wanted entry's start
# Merge two wanted ranges into one GET when fewer bytes than this lie between
# them: a request costs more latency than a few KB of transfer.
_MERGE_GAP = 32 << 10
_IDX_MERGE_GAP = 2 << 10  # the same for idx buckets, which are small
_MAX_SPAN = 16 << 20  # one GET at most (unless one entry is bigger)
_BATCH_OBJECTS = 256  # hinted objects fetched along with one read
_PARALLEL = 8  # GETs in flight for idx buckets
_WHOLE_IDX = 128 << 10  # idx files up to this size are fetched whole
_MEM_BYTES = 32 << 20  # memory LRU of decoded small objects and delta bases
_MEM_MAX_ITEM = 1 << 20
_DISK_BLOB_MAX = 64 << 10  # small unhinted blobs kept on disk (see _keep)
_MAX_CHAIN = 500  # deeper delta chains than this are a corrupt pack
_FAN_END = 8 + 1024


class MirrorReadOnly(KetchError):
    """Writing to an S3 mirror was attempted."""


def default_cache_root() -> str:
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return os.path.join(base, "ketch", "s3")


class _LRU:
    """Decoded objects by key, bounded by their total size."""

    def __init__(self, max_bytes: int) -> None:
        self.max_bytes = max_bytes
        self._items: OrderedDict[object, tuple[int, bytes]] = OrderedDict()
        self._bytes = 0

    def get(self, key: object) -> tuple[int, bytes] | None:
        item = self._items.get(key)
        if item is not None:
            self._items.move_to_end(key)
        return item

    def put(self, key: object, item: tuple[int, bytes]) -> None:
        if len(item[1]) > _MEM_MAX_ITEM or key in self._items:
            return
        self._items[key] = item
        self._bytes += len(item[1])
        while self._bytes > self.max_bytes:
            _, (_, old) = self._items.popitem(last=False)
            self._bytes -= len(old)


def _write_cache(path: str, data: bytes) -> None:
    """Replace a cache file whole. No fsync: after a crash a cache entry is lost
    or fails its check, and is fetched again."""
    tmp = f"{path}.{os.getpid()}.{threading.get_ident()}.tmp"
    try:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except OSError:
        pass  # a cache that cannot be written only costs traffic


def _merge(ranges: list[tuple[int, int, int]], gap: int) -> list[tuple[int, int, list[int]]]:
    """(start, end, tag) ranges, sorted by start -> merged (start, end, tags)."""
    out: list[tuple[int, int, list[int]]] = []
    for start, end, tag in ranges:
        if out and start - out[-1][1] <= gap:
            s, e, tags = out[-1]
            out[-1] = (s, max(e, end), [*tags, tag])
        else:
            out.append((start, end, [tag]))
    return out


class _RemoteIdx:
    """One pack's idx in the store, read in small pieces; see the module doc.

    SHA-1 ids are uniform, so where an id sits among the ids sharing its first
    byte is predictable: interpolation from its next bytes is off by about
    sqrt(n)/2 places at most. A lookup fetches a window of ids around the
    prediction (wider only in the rare case the id lies beyond it), then the
    4-byte offset of a hit. The pieces land in a sparse copy of the idx in the
    cache, with the list of byte ranges it holds beside it."""

    def __init__(self, repo: StoreRepository, entry: PackEntry) -> None:
        self.repo = repo
        self.entry = entry
        self.key = pack_key(repo.name, entry.idx.name)
        base = os.path.join(repo.cache_dir, "idx", entry.idx.name)
        self.part_path, self.known_path = base + ".part", base + ".known"
        self._known: list[tuple[int, int]] = []  # byte ranges held: sorted, disjoint
        self._fan: list[int] = []
        self._big: dict[int, int] = {}
        self.count = 0
        self.fetched = 0  # bytes of it fetched by this process
        self.checked = False

    # -- the sparse cached copy ------------------------------------------------------

    def _gaps(self, a: int, z: int) -> list[tuple[int, int]]:
        """The parts of [a, z) not held yet."""
        out = []
        pos = a
        i = max(bisect.bisect_right(self._known, (a, a)) - 1, 0)
        for s, e in self._known[i:]:
            if s >= z:
                break
            if e <= pos:
                continue
            if s > pos:
                out.append((pos, s))
            pos = e
            if pos >= z:
                break
        if pos < z:
            out.append((pos, z))
        return out

    def _add_known(self, a: int, z: int) -> None:
        known = self._known
        i = bisect.bisect_left(known, (a, a))
        if i and known[i - 1][1] >= a:  # touches the range before it
            i -= 1
            a = known[i][0]
        j = i
        while j < len(known) and known[j][0] <= z:  # and swallows those it reaches
            z = max(z, known[j][1])
            j += 1
        known[i:j] = [(a, z)]

    def _fetch(self, ranges: Iterable[tuple[int, int]]) -> None:
        """Make sure these byte ranges of the idx are held, in as few GETs as sensible."""
        gaps = sorted(g for a, z in ranges for g in self._gaps(a, z))
        if not gaps:
            return
        size = self.entry.idx.size
        if self.fetched + sum(z - a for a, z in gaps) > size // 4:
            # Reading most of it (a big restore): the rest in one go costs less.
            gaps = self._gaps(0, size)
            merged = [(gaps[0][0], gaps[-1][1], [0])]
        else:
            merged = _merge([(a, z, 0) for a, z in gaps], _IDX_MERGE_GAP)
        got = self.repo._get_many([(self.key, a, z) for a, z, _ in merged])
        self.fetched += sum(len(d) for d in got)
        self._write([(a, d) for (a, _, _), d in zip(merged, got, strict=True)])
        if self._known == [(0, size)] and not self.checked:
            self._check_whole()

    def _check_whole(self) -> None:
        """All of it is here now: it must be what the manifest says."""
        with open(self.part_path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != self.entry.idx.sha256:
            os.unlink(self.known_path)
            raise CorruptObject(f"{self.repo.where}: {self.entry.idx.name} does not match its "
                                "manifest (sha256); run 'ketch mirror verify'")
        self.checked = True

    def _write(self, pieces: list[tuple[int, bytes]]) -> None:
        try:
            os.makedirs(os.path.dirname(self.part_path), exist_ok=True)
            fd = os.open(self.part_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                for pos, data in pieces:
                    os.pwrite(fd, data, pos)
            finally:
                os.close(fd)
        except OSError as e:
            raise KetchError(f"{self.part_path}: cannot write the cache: {e.strerror}") from None
        for pos, data in pieces:
            self._add_known(pos, pos + len(data))
        _write_cache(self.known_path, struct.pack(f">{2 * len(self._known)}Q",
                                                  *(x for r in self._known for x in r)))

    def _read(self, a: int, z: int) -> bytes:
        fd = os.open(self.part_path, os.O_RDONLY)
        try:
            data = os.pread(fd, z - a, a)
        finally:
            os.close(fd)
        if len(data) != z - a:
            raise CorruptObject(f"{self.part_path}: cached idx piece is short; remove "
                                f"{self.repo.cache_dir} and try again")
        return data

    def _load(self) -> None:
        if self._fan:
            return
        try:
            with open(self.known_path, "rb") as f:
                raw = f.read()
            vals = struct.unpack(f">{len(raw) // 8}Q", raw[: len(raw) // 16 * 16])
            self._known = [(vals[i], vals[i + 1]) for i in range(0, len(vals), 2)]
            if self._known and os.path.getsize(self.part_path) < self._known[-1][1]:
                self._known = []  # the copy lost data the list claims
        except (OSError, struct.error):
            self._known = []
        if self._gaps(0, _FAN_END) and self.entry.idx.size <= self.repo.whole_idx_bytes:
            self._fetch([(0, self.entry.idx.size)])  # small: all of it, checked
        else:
            self._fetch([(0, _FAN_END)])
        head = self._read(0, _FAN_END)
        if head[:8] != IDX_MAGIC + struct.pack(">I", 2):
            raise CorruptObject(f"{self.repo.where}: {self.entry.idx.name} is not a v2 idx")
        self._fan = list(struct.unpack(">256I", head[8:_FAN_END]))
        self.count = n = self._fan[255]
        nbig, rest = divmod(self.entry.idx.size - (_FAN_END + 28 * n + 40), 8)
        if nbig < 0 or rest:
            raise CorruptObject(f"{self.repo.where}: {self.entry.idx.name}: its size does not "
                                f"fit {n} objects")

    # -- lookups ------------------------------------------------------------------------

    def _span(self, b: int) -> tuple[int, int]:
        return (self._fan[b - 1] if b else 0), self._fan[b]

    def _window(self, oid: bytes) -> tuple[int, int, int, int] | None:
        """(lo, hi, a, z): the ids with oid's first byte are [lo, hi); look in [a, z)."""
        lo, hi = self._span(oid[0])
        if lo == hi:
            return None
        m = hi - lo
        guess = lo + (int.from_bytes(oid[1:9], "big") * m >> 64)
        half = int(1.5 * math.sqrt(m)) + 4  # three standard deviations, and some
        return lo, hi, max(lo, guess - half), min(hi, guess + half + 1)

    def locate(self, oids: Iterable[bytes]) -> dict[bytes, int]:
        """The pack offsets of those of `oids` this pack holds."""
        self._load()
        ids_at = _FAN_END
        ofs_at = _FAN_END + 24 * self.count
        pending = {o: w for o in oids if (w := self._window(o)) is not None}
        positions: dict[bytes, int] = {}
        first = True
        while pending:
            wanted = [(ids_at + 20 * a, ids_at + 20 * z) for _, _, a, z in pending.values()]
            if first:
                # The offsets of the same window come along (a fifth of its size):
                # a hit then needs no second round trip for its 4 bytes.
                wanted += [(ofs_at + 4 * a, ofs_at + 4 * z) for _, _, a, z in pending.values()]
                first = False
            self._fetch(wanted)
            wider = {}
            for o, (lo, hi, a, z) in pending.items():
                ids = self._read(ids_at + 20 * a, ids_at + 20 * z)
                if o < ids[:20] and a > lo:
                    wider[o] = (lo, hi, max(lo, a - 2 * (z - a)), z)
                elif o > ids[-20:] and z < hi:
                    wider[o] = (lo, hi, a, min(hi, z + 2 * (z - a)))
                else:
                    i = _search(ids, o)
                    if i >= 0:
                        positions[o] = a + i
            pending = wider
        self._fetch((ofs_at + 4 * p, ofs_at + 4 * p + 4) for p in positions.values())
        out = {}
        for o, p in positions.items():
            (off,) = struct.unpack(">I", self._read(ofs_at + 4 * p, ofs_at + 4 * p + 4))
            out[o] = self._large(off & 0x7FFFFFFF) if off & 0x80000000 else off
        return out

    def _large(self, j: int) -> int:
        """Offsets beyond 2 GiB live in a table of 64-bit ones after the others."""
        if j not in self._big:
            at = _FAN_END + 28 * self.count + 8 * j
            self._fetch([(at, at + 8)])
            (self._big[j],) = struct.unpack(">Q", self._read(at, at + 8))
        return self._big[j]

    def with_prefix(self, hexprefix: str) -> list[bytes]:
        self._load()
        lo, hi = self._span(int(hexprefix[:2], 16))
        a, z = _FAN_END + 20 * lo, _FAN_END + 20 * hi
        self._fetch([(a, z)])
        ids = self._read(a, z) if lo < hi else b""
        return [ids[i : i + 20] for i in range(0, len(ids), 20)
                if ids[i : i + 20].hex().startswith(hexprefix)]


def _search(ids: bytes, oid: bytes) -> int:
    """Index of `oid` among the sorted 20-byte ids, or -1."""
    return search_ids(ids, oid, 0, len(ids) // 20)


class _Window:
    """Bytes of one pack from `start` on, fetched as decoding needs them."""

    def __init__(self, repo: StoreRepository, key: str, start: int, end: int,
                 limit: int) -> None:
        self.repo, self.key, self.start, self.limit = repo, key, start, limit
        self.data = repo._get(key, start, min(end, limit)) if start < limit else b""

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def ensure(self, end: int) -> None:
        """Make [start, end) available (as far as the pack's entries go)."""
        if end > self.end and self.end < self.limit:
            stop = min(max(end, self.end + _GUESS), self.limit)
            # Rebinding (not extending) keeps memoryviews of the old bytes valid.
            self.data = self.data + self.repo._get(self.key, self.end, stop)


def _entry_header(win: _Window, offset: int, where: str) -> tuple[int, int, int]:
    """(type, inflated size, pack offset past the type/size header)."""
    win.ensure(offset + 64)  # any header, OFS distance or REF id fits
    raw, pos = win.data, offset - win.start
    try:
        c = raw[pos]
        type_num, size, shift = (c >> 4) & 7, c & 0x0F, 4
        pos += 1
        while c & 0x80:
            c = raw[pos]
            pos += 1
            size |= (c & 0x7F) << shift
            shift += 7
    except IndexError:
        raise CorruptObject(f"{where}: truncated pack entry header") from None
    return type_num, size, win.start + pos


def _ofs_distance(win: _Window, pos: int, where: str) -> tuple[int, int]:
    raw, i = win.data, pos - win.start
    try:
        c = raw[i]
        i += 1
        dist = c & 0x7F
        while c & 0x80:
            c = raw[i]
            i += 1
            dist = ((dist + 1) << 7) | (c & 0x7F)
    except IndexError:
        raise CorruptObject(f"{where}: truncated delta offset") from None
    return dist, win.start + i


def _inflate(win: _Window, pos: int, size: int, where: str) -> bytes:
    """The zlib stream at pack offset `pos`; it alone says where the entry ends."""
    d = zlib.decompressobj()
    parts: list[bytes] = []
    got = 0
    while True:
        if pos >= win.end:
            left = size - got
            win.ensure(pos + left + (left >> 9) + 64)  # deflate's worst case, and then some
            if pos >= win.end:
                raise CorruptObject(f"{where}: truncated zlib data")
        chunk = memoryview(win.data)[pos - win.start :]
        try:
            out = d.decompress(chunk, size - got + 1)
        except zlib.error as e:
            raise CorruptObject(f"{where}: zlib error: {e}") from None
        parts.append(out)
        got += len(out)
        if d.eof or got > size or d.unconsumed_tail:
            break
        pos += len(chunk)
    if got != size or not d.eof:
        raise CorruptObject(f"{where}: entry inflates to {got} bytes, header says {size}")
    return parts[0] if len(parts) == 1 else b"".join(parts)


class StoreRepository(Repository):
    """One repository of a mirror, read-only; `url` names the store (for messages
    and the cache directory)."""

    read_only = "an S3 mirror is read-only; push to it with ketch mirror push"

    def __init__(self, store: ObjectStore, name: str, *, url: str | None = None,
                 cache_root: str | None = None, whole_idx_bytes: int = _WHOLE_IDX) -> None:
        self.store = store
        self.name = name
        self.url = url or f"{getattr(store, 'root', type(store).__name__)}"
        self.where = f"{self.url.rstrip('/')}/{name}"
        self.whole_idx_bytes = whole_idx_bytes
        self.bytes_received = 0
        self.requests = 0
        self._lock = threading.Lock()
        self._pool: ThreadPoolExecutor | None = None
        raw = read_manifest_bytes(store, name)
        if raw is None:
            raise no_such_repository(store, name, self.url)
        self._count(len(raw))
        self.manifest = parse_manifest(raw, name)
        digest = hashlib.sha256(f"{self.url}\0{name}".encode()).hexdigest()[:24]
        self.cache_dir = os.path.join(cache_root or default_cache_root(), digest)
        self._packs = self.manifest.pack_by_idx()
        self._idx: dict[str, _RemoteIdx] = {}
        self._by_time = [p.idx.name for p in sorted(self.manifest.packs,
                                                    key=lambda p: (-p.mtime, p.pack.name))]
        self._order = self._by_time[:]  # search order; see _hit
        self._ahead: deque[bytes] = deque()
        self._fetched: dict[bytes, tuple[int, bytes]] = {}  # hinted, not read yet
        self._fetched_bytes = 0
        self._mem = _LRU(_MEM_BYTES)

    def traffic(self) -> tuple[int, int]:
        """(bytes sent, bytes received) so far, as RemoteRepository counts them."""
        return 0, self.bytes_received

    def close(self) -> None:
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None

    # -- store access -------------------------------------------------------------

    def _count(self, n: int) -> None:
        with self._lock:
            self.requests += 1
            self.bytes_received += n

    def _get(self, key: str, start: int = 0, end: int | None = None) -> bytes:
        try:
            data = self.store.get(key, start, end)
        except NotFound:
            raise KetchError(f"{self.where}: {key} is missing from the store (a newer push "
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

    def _index(self, idx_name: str) -> _RemoteIdx:
        ix = self._idx.get(idx_name)
        if ix is None:
            ix = self._idx[idx_name] = _RemoteIdx(self, self._packs[idx_name])
        return ix

    def _locate(self, oids: Iterable[bytes]) -> dict[bytes, tuple[str, int]]:
        """(idx name, offset) of each of `oids` the mirror holds."""
        found: dict[bytes, tuple[str, int]] = {}
        todo = list(dict.fromkeys(oids))
        for name in list(self._order):
            if not todo:
                break
            hits = self._index(name).locate(todo)
            rest = []
            for o in todo:
                off = hits.get(o)
                if off is None:
                    rest.append(o)
                else:
                    found[o] = (name, off)
            if len(rest) < len(todo):
                self._hit(name)
            todo = rest
        return found

    def _hit(self, name: str) -> None:
        """Search `name` first from now on, then the packs written just before it,
        then those after: a save writes a file's chunks, then its trees, then the
        commit, and splits them over packs in that order."""
        i = self._by_time.index(name)  # newest first
        self._order = [name, *self._by_time[i + 1 :], *reversed(self._by_time[:i])]

    def has_many(self, oids: Sequence[bytes]) -> list[bool]:
        found = self._locate(oids)
        return [o in found for o in oids]

    def exists(self, oid: bytes) -> bool:
        return self._mem.get(oid) is not None or oid in self._locate([oid])

    def expand_hex(self, hexid: str) -> bytes | None:
        if len(hexid) == 40:
            return super().expand_hex(hexid)
        if len(hexid) < 2:
            return None
        matches = {o for name in self._order for o in self._index(name).with_prefix(hexid)}
        if len(matches) > 1:
            raise KetchError(f"ambiguous object id prefix: {hexid}")
        return matches.pop() if matches else None

    # -- objects ----------------------------------------------------------------------

    def prefetch(self, oids: Sequence[bytes]) -> None:
        # Readers walk depth first: the newest hints are wanted soonest.
        self._ahead.extendleft(reversed(oids))
        while len(self._ahead) > 1 << 16:
            self._ahead.pop()

    def _disk_path(self, oid: bytes) -> str:
        h = oid.hex()
        return os.path.join(self.cache_dir, "objects", h[:2], h[2:])

    def _cached(self, oid: bytes) -> tuple[int, bytes] | None:
        got = self._fetched.pop(oid, None)
        if got is not None:
            self._fetched_bytes -= len(got[1])
            return got
        got = self._mem.get(oid)
        if got is not None:
            return got
        try:
            with open(self._disk_path(oid), "rb") as f:
                raw = f.read()
            t, data = raw[0], zlib.decompress(raw[1:])
        except (OSError, IndexError, zlib.error):
            return None
        if gobj.object_id(t, data) != oid:
            return None  # a damaged cache file: fetch the object again
        self._mem.put(oid, (t, data))
        return t, data

    def _keep(self, oid: bytes, t: int, data: bytes, asked: bool) -> None:
        """Remember a fetched object. On disk go trees and commits, and small blobs
        read without a prefetch hint: those are the VFS's metadata (.bupm), read
        again by every `ls`; file contents come through hints (restore announces
        them), and copying them into the cache would only fill the disk."""
        self._mem.put(oid, (t, data))
        if t in _DISK_TYPES or (asked and len(data) <= _DISK_BLOB_MAX):
            _write_cache(self._disk_path(oid), bytes([t]) + zlib.compress(data, 1))

    def read(self, oid: bytes) -> tuple[int, bytes]:
        got = self._cached(oid)
        if got is not None:
            return got
        batch = [oid]
        while self._ahead and len(batch) < _BATCH_OBJECTS:
            o = self._ahead.popleft()
            if o != oid and o not in self._fetched and self._mem.get(o) is None:
                batch.append(o)
        where = self._locate(batch)
        if oid not in where:
            raise ObjectNotFound(f"object {oid.hex()} not found in {self.where}")
        if len(self._fetched) > 4 * _BATCH_OBJECTS or self._fetched_bytes > _MEM_BYTES:
            # Hints nobody read after all: drop them rather than grow without bound.
            self._fetched.clear()
            self._fetched_bytes = 0
        for o, t, data in self._fetch(where, oid):
            if o == oid:
                got = (t, data)
            else:
                self._fetched[o] = (t, data)
                self._fetched_bytes += len(data)
        assert got is not None
        return got

    def _fetch(self, where: dict[bytes, tuple[str, int]],
               asked: bytes) -> Iterator[tuple[bytes, int, bytes]]:
        """(oid, type, data) for located objects, nearby entries in one GET;
        `asked` is the one the caller is waiting for, the rest were hinted."""
        by_pack: dict[str, list[tuple[int, int, int]]] = {}
        oids = list(where)
        for i, o in enumerate(oids):
            name, off = where[o]
            by_pack.setdefault(name, []).append((off, off, i))
        for name, items in by_pack.items():
            entry = self._packs[name]
            key = pack_key(self.name, entry.pack.name)
            items.sort()
            groups: list[tuple[int, int, list[int]]] = []
            for start, _, i in items:
                if groups and (start - groups[-1][1] > _MERGE_GAP
                               or start - groups[-1][0] > _MAX_SPAN):
                    groups.append((start, start, [i]))
                elif groups:
                    groups[-1] = (groups[-1][0], start, [*groups[-1][2], i])
                else:
                    groups.append((start, start, [i]))
            for first, last, members in groups:
                win = _Window(self, key, first, last + _GUESS, entry.pack.size - 20)
                for i in members:
                    oid = oids[i]
                    t, obj = self._decode(name, where[oid][1], win, 0)
                    if gobj.object_id(t, obj) != oid:
                        raise CorruptObject(f"{self.where}: object {oid.hex()} in "
                                            f"{entry.pack.name} does not match its id")
                    self._keep(oid, t, obj, oid == asked)
                    yield oid, t, obj

    def _decode(self, idx_name: str, offset: int, win: _Window, depth: int) -> tuple[int, bytes]:
        where = f"{self.where}: {self._packs[idx_name].pack.name} at {offset}"
        t, size, pos = _entry_header(win, offset, where)
        if t in _FULL:
            return t, _inflate(win, pos, size, where)
        if depth > _MAX_CHAIN:
            raise CorruptObject(f"{where}: delta chain does not end")
        if t == OFS_DELTA:
            dist, pos = _ofs_distance(win, pos, where)
            if not 0 < dist <= offset - 12:
                raise CorruptObject(f"{where}: bad delta base offset")
            base_t, base = self._base_at(idx_name, offset - dist, win, depth + 1)
        elif t == REF_DELTA:
            base_oid = bytes(win.data[pos - win.start : pos - win.start + 20])
            pos += 20
            base_t, base = self.read(base_oid)
        else:
            raise CorruptObject(f"{where}: invalid entry type {t}")
        return base_t, apply_delta(base, _inflate(win, pos, size, where))

    def _base_at(self, idx_name: str, offset: int, win: _Window, depth: int) -> tuple[int, bytes]:
        """A delta's base: the entry at `offset` (from the window when it is there)."""
        got = self._mem.get((idx_name, offset))
        if got is None:
            if offset < win.start:
                entry = self._packs[idx_name]
                win = _Window(self, pack_key(self.name, entry.pack.name), offset,
                              offset + _GUESS, entry.pack.size - 20)
            got = self._decode(idx_name, offset, win, depth)
            self._mem.put((idx_name, offset), got)
        return got

    # -- refs, from the manifest ------------------------------------------------------------

    def read_ref(self, name: bytes) -> bytes | None:
        if name == b"HEAD":
            head = self.manifest.head
            if not head.startswith("ref: "):
                return bytes.fromhex(head)
            name = head[5:].strip().encode()
        value = self.manifest.refs.get(name.decode("utf-8", "surrogateescape"))
        return bytes.fromhex(value) if value else None

    def iter_refs(self, prefix: bytes = b"refs/") -> Iterator[tuple[bytes, bytes]]:
        refs = sorted((n.encode("utf-8", "surrogateescape"), bytes.fromhex(v))
                      for n, v in self.manifest.refs.items())
        return iter([(n, v) for n, v in refs if n.startswith(prefix)])
