"""Looking objects up in a mirror's idx files without downloading them.

An idx file is about 28 bytes per object, so downloading all of them costs
0.35% of the mirror (1.7 GB for 500 GB of 8 KB chunks) before the first byte
of a file. Instead each idx is read piecemeal with ranged GETs: its 1 KB
fan-out once, then only the "buckets" a lookup needs (the ids sharing a first
byte, and their offsets), adjacent buckets merged into one GET and several GETs
in flight. Small idx files (below `whole_idx_bytes`) are fetched whole, checked
against the manifest's sha256. Everything fetched is cached under
~/.cache/ketch/s3/<hash of store and repository>/idx/ (a sparse copy of each
idx and a bitmap of the buckets present): idx files never change.
"""

from __future__ import annotations

import bisect
import hashlib
import math
import os
import struct
import threading
from collections.abc import Callable, Iterable, Sequence

from ketch.errors import CorruptObject, KetchError
from ketch.git.idx import IDX_MAGIC, search_ids
from ketch.offsite.manifest import FileEntry, PackEntry

# Merge two wanted ranges of an idx into one GET when fewer bytes than this lie
# between them: a request costs more latency than a few KB of transfer.
_IDX_MERGE_GAP = 2 << 10
WHOLE_IDX = 128 << 10  # idx files up to this size are fetched whole
_FAN_END = 8 + 1024
_WHOLE_IN_MEMORY = 64 << 20  # an idx held whole is read into memory up to this size
# After this many rounds of GETs, an idx up to _ROUNDS_WHOLE times
# whole_idx_bytes is fetched whole.
_ROUNDS = 3
_ROUNDS_WHOLE = 8

# get_many([(key, start, end), ...]) -> the bytes of each range, in order.
GetMany = Callable[[list[tuple[str, int, int]]], list[bytes]]


def write_cache(path: str, data: bytes) -> None:
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


def window(fan: Sequence[int], oid: bytes) -> tuple[int, int, int, int] | None:
    """(lo, hi, a, z) in a table of sorted ids with the fan-out `fan`: the ids
    with oid's first byte are [lo, hi); look in [a, z), where uniform ids put
    it (interpolated from its next 8 bytes)."""
    lo, hi = (fan[oid[0] - 1] if oid[0] else 0), fan[oid[0]]
    if lo == hi:
        return None
    m = hi - lo
    guess = lo + (int.from_bytes(oid[1:9], "big") * m >> 64)
    half = int(1.5 * math.sqrt(m)) + 4  # three standard deviations, and some
    return lo, hi, max(lo, guess - half), min(hi, guess + half + 1)


class SparseFile:
    """An immutable file of the store read in pieces: a sparse copy of it in the
    cache (``NAME.part``) with the list of byte ranges it holds beside it
    (``NAME.known``), fetched in as few GETs as sensible, and checked against
    its sha256 once held whole."""

    def __init__(self, file: FileEntry, key: str, *, get_many: GetMany, cache_dir: str,
                 where: str, whole_bytes: int = WHOLE_IDX) -> None:
        """`key` names the file in the store, `where` the repository in messages;
        `get_many` fetches ranges of it; files up to `whole_bytes` are fetched whole."""
        self.file = file
        self.key = key
        self.get_many = get_many
        self.cache_dir = cache_dir
        self.where = where
        self.whole_bytes = whole_bytes
        base = os.path.join(cache_dir, "idx", file.name)
        self.part_path, self.known_path = base + ".part", base + ".known"
        self._known: list[tuple[int, int]] = []  # byte ranges held: sorted, disjoint
        self._whole: bytes | None = None  # all of it, once held (see _read)
        self.fetched = 0  # bytes of it fetched by this process
        self.rounds = 0  # and how many times it went fetching
        self.checked = False

    @property
    def held_whole(self) -> bool:
        return self._known == [(0, self.file.size)]

    def fetch_whole(self) -> None:
        """All of it, in one GET (what is not held yet)."""
        self._load_known()
        self._fetch([(0, self.file.size)])

    def _load_known(self) -> None:
        """Add what the cache says it holds (another process, a restore's
        worker, may have fetched it) to what this one knows it holds."""
        try:
            with open(self.known_path, "rb") as f:
                raw = f.read()
            vals = struct.unpack(f">{len(raw) // 8}Q", raw[: len(raw) // 16 * 16])
            known = [(vals[i], vals[i + 1]) for i in range(0, len(vals), 2)]
            if known and os.path.getsize(self.part_path) < known[-1][1]:
                known = []  # the copy lost data the list claims
        except (OSError, struct.error):
            known = []
        for a, z in known:
            if a < z:
                self._add_known(a, z)

    def _fetch_head(self, head: int) -> None:
        """Its first `head` bytes held: all of it, when it is small."""
        if self._gaps(0, head) and self.file.size <= self.whole_bytes:
            self._fetch([(0, self.file.size)])  # small: all of it, checked
        else:
            self._fetch([(0, head)])

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
        """Make sure these byte ranges of the file are held, in as few GETs as sensible."""
        ranges = list(ranges)
        gaps = sorted(g for a, z in ranges for g in self._gaps(a, z))
        if gaps and self.rounds:
            self._load_known()
            gaps = sorted(g for a, z in ranges for g in self._gaps(a, z))
        if not gaps:
            return
        size = self.file.size
        self.rounds += 1
        if self.fetched + sum(z - a for a, z in gaps) > size // 4 or (
                self.rounds > _ROUNDS and size <= _ROUNDS_WHOLE * self.whole_bytes):
            # Reading most of it (a big restore), or browsing it one round trip
            # after another (a path's trees, each on its own): the rest in one go.
            gaps = self._gaps(0, size)
            merged = [(gaps[0][0], gaps[-1][1], [0])]
        else:
            merged = _merge([(a, z, 0) for a, z in gaps], _IDX_MERGE_GAP)
        got = self.get_many([(self.key, a, z) for a, z, _ in merged])
        self.fetched += sum(len(d) for d in got)
        self._write([(a, d) for (a, _, _), d in zip(merged, got, strict=True)])
        if self._known == [(0, size)] and not self.checked:
            self._check_whole()

    def _check_whole(self) -> None:
        """All of it is here now: it must be what the manifest says."""
        with open(self.part_path, "rb") as f:
            digest = hashlib.file_digest(f, "sha256").hexdigest()
        if digest != self.file.sha256:
            os.unlink(self.known_path)
            raise CorruptObject(f"{self.where}: {self.file.name} does not match its "
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
        write_cache(self.known_path, struct.pack(f">{2 * len(self._known)}Q",
                                                  *(x for r in self._known for x in r)))

    def _read(self, a: int, z: int) -> bytes:
        if self._whole is None and self._known == [(0, self.file.size)] \
                and self.file.size <= _WHOLE_IN_MEMORY:
            # Held whole (a restore's lookups): one read, not an open and a
            # pread for each of thousands of ids.
            with open(self.part_path, "rb") as f:
                whole = f.read(self.file.size)
            if len(whole) == self.file.size:
                self._whole = whole
        if self._whole is not None:
            return self._whole[a:z]
        fd = os.open(self.part_path, os.O_RDONLY)
        try:
            data = os.pread(fd, z - a, a)
        finally:
            os.close(fd)
        if len(data) != z - a:
            raise CorruptObject(f"{self.part_path}: cached idx piece is short; remove "
                                f"{self.cache_dir} and try again")
        return data


class RemoteIdx(SparseFile):
    """One pack's idx in the store, read in small pieces; see the module doc.

    SHA-1 ids are uniform, so where an id sits among the ids sharing its first
    byte is predictable: interpolation from its next bytes is off by about
    sqrt(n)/2 places at most. A lookup fetches a window of ids around the
    prediction (wider only in the rare case the id lies beyond it), then the
    4-byte offset of a hit."""

    def __init__(self, entry: PackEntry, key: str, *, get_many: GetMany, cache_dir: str,
                 where: str, whole_idx_bytes: int = WHOLE_IDX) -> None:
        super().__init__(entry.idx, key, get_many=get_many, cache_dir=cache_dir, where=where,
                         whole_bytes=whole_idx_bytes)
        self.entry = entry
        self._fan: list[int] = []
        self._big: dict[int, int] = {}
        self._nbig = 0
        self._starts: list[int] | None = None  # every entry's offset, sorted; entry_ends
        self.count = 0

    @property
    def loaded(self) -> bool:
        """Its fan-out is at hand: asking it costs no GET for that."""
        return bool(self._fan)

    def _load(self) -> None:
        if self._fan:
            return
        self._load_known()
        self._fetch_head(_FAN_END)
        head = self._read(0, _FAN_END)
        if head[:8] != IDX_MAGIC + struct.pack(">I", 2):
            raise CorruptObject(f"{self.where}: {self.file.name} is not a v2 idx")
        self._fan = list(struct.unpack(">256I", head[8:_FAN_END]))
        self.count = n = self._fan[255]
        nbig, rest = divmod(self.file.size - (_FAN_END + 28 * n + 40), 8)
        if nbig < 0 or rest:
            raise CorruptObject(f"{self.where}: {self.file.name}: its size does not "
                                f"fit {n} objects")
        self._nbig = nbig

    # -- lookups ------------------------------------------------------------------------

    def _span(self, b: int) -> tuple[int, int]:
        return (self._fan[b - 1] if b else 0), self._fan[b]

    def _window(self, oid: bytes) -> tuple[int, int, int, int] | None:
        return window(self._fan, oid)

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

    def entry_ends(self, offsets: Iterable[int], *, fetch: bool) -> dict[int, int]:
        """Where the entries at `offsets` end: the next entry's offset, the pack's
        trailer for the last. Known once the idx's offsets are held, all of them
        (4 bytes an object, 8 more for each beyond 2 GiB): `fetch` fetches them
        when they are not; without it, an empty answer."""
        self._load()
        if self._starts is None:
            n = self.count
            a, z = _FAN_END + 24 * n, _FAN_END + 28 * n + 8 * self._nbig
            if self._gaps(a, z):
                if not fetch:
                    return {}
                self._fetch([(a, z)])
            raw = self._read(a, z)
            small = struct.unpack(f">{n}I", raw[: 4 * n])
            big = struct.unpack(f">{self._nbig}Q", raw[4 * n :])
            limit = self.entry.pack.size - 20
            starts = sorted({(big[o & 0x7FFFFFFF] if o & 0x80000000 and (o & 0x7FFFFFFF)
                              < len(big) else o) for o in small})
            # A bogus offset only costs its reader a failed decode, not a bad end.
            self._starts = [s for s in starts if s < limit] + [limit]
        starts = self._starts
        out = {}
        for o in offsets:
            i = bisect.bisect_left(starts, o)
            if i + 1 < len(starts) and starts[i] == o:
                out[o] = starts[i + 1]
        return out

    def start_after(self, pos: int) -> int | None:
        """The first entry's offset at or after `pos`, when the idx's offsets
        are at hand already (see entry_ends); else None."""
        if self._starts is None:
            self.entry_ends((), fetch=False)
        if self._starts is None:
            return None
        i = bisect.bisect_left(self._starts, pos)
        return self._starts[i] if i < len(self._starts) else None

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
