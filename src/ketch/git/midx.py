"""bup's multi-pack index (.midx, version 4): writer, mmap'd reader, auto-merge.

Layout (bup-format.md 4.4): ``MIDX``, u32 BE version 4, u32 BE ``bits``; a
cumulative fan-out of 2**bits u32 BE counts keyed by the top ``bits`` bits of
each id; the N merged ids (sorted, duplicates kept); N u32 BE indexes into the
name list ("which"); the basenames of the input idx files joined by NUL.

Lookups are batched and vectorised: a lower-bound binary search runs over all
query ids at once, comparing the first 8 bytes of each id read straight out of
the mmap through a strided big-endian view, so nothing the size of the table is
ever copied into memory.

The writer reproduces ``bup midx`` byte for byte, including which input each
duplicated id is credited to (see ``_TieOrder``).
"""

from __future__ import annotations

import glob
import hashlib
import math
import mmap
import os
import resource
import struct
from collections.abc import Sequence
from dataclasses import dataclass, field
from types import TracebackType

import numpy as np
import numpy.typing as npt

from ketch.errors import CorruptObject
from ketch.git.durable import AtomicFile
from ketch.git.idx import PackIndex, search_ids

MIDX_MAGIC = b"MIDX"
MIDX_VERSION = 4
_HEADER_LEN = 12
# bup sizes the fan-out so that one bucket holds about a page of ids.
_SHA_PER_PAGE = 4096 / 20.0
# Ids merged per chunk while writing: bounds the writer's working memory at a
# few tens of MB whatever the repository size.
_MERGE_CHUNK = 1 << 18
# Duplicate ids across inputs are rare; each costs a pass over all inputs to
# reproduce bup's tie order. Past this many we keep a plain stable order.
_MAX_EXACT_DUPLICATES = 100_000
# Query ids searched per numpy pass: about 100 bytes of temporaries per id.
_LOOKUP_BATCH = 1 << 16

IdArray = npt.NDArray[np.bytes_]
BoolArray = npt.NDArray[np.bool_]
IntArray = npt.NDArray[np.int64]


def coerce_ids(oids: npt.ArrayLike) -> IdArray:
    # astype pads shorter 'S' items with NULs, which is exactly what numpy
    # stripped when the ids were turned into bytes objects.
    arr = np.asarray(oids)
    if arr.dtype != np.dtype("S20"):
        arr = arr.astype("S20")
    return np.ascontiguousarray(arr)


def _strided(ids: IdArray, dtype: str, offset: int = 0) -> npt.NDArray[np.generic]:
    """A zero-copy view of one big-endian field at ``offset`` in every 20-byte id."""
    if len(ids) == 0:
        return np.zeros(0, dtype=dtype)
    return np.ndarray((len(ids),), dtype=dtype, buffer=ids, offset=offset, strides=(20,))


def top_bits(ids: IdArray, bits: int) -> npt.NDArray[np.intp]:
    """The top ``bits`` bits of each id, as bup's fan-out tables key them."""
    if bits == 0:
        return np.zeros(len(ids), dtype=np.intp)
    word = _strided(ids, ">u4").astype(np.uint64)
    return (word >> np.uint64(32 - bits)).astype(np.intp)


class IdTable:
    """Batched exact lookups in a sorted 'S20' table with a cumulative fan-out.

    Works on any zero-copy view (an idx's or a midx's id table); ``fanout[p]``
    counts the ids whose top ``bits`` bits are <= p.
    """

    def __init__(self, ids: IdArray, fanout: npt.NDArray[np.generic], bits: int) -> None:
        # The strided key view needs 20-byte rows; mmap views already are, so
        # this copies only when a caller hands in something else.
        ids = np.ascontiguousarray(ids, dtype="S20")
        self.ids = ids
        self.bits = bits
        self.count = len(ids)
        self._bounds: IntArray = np.zeros(len(fanout) + 1, dtype=np.int64)
        self._bounds[1:] = fanout
        self._key = _strided(ids, ">u8")
        widest = int(np.diff(self._bounds).max()) if self.count else 0
        self._steps = widest.bit_length()
        # For one-at-a-time lookups numpy's per-call overhead dominates; these
        # let `position_one` do a plain binary search on the raw bytes.
        self._bounds_list: list[int] = self._bounds.tolist()
        self._raw = ids.view(np.uint8).data if self.count else memoryview(b"")

    def position_one(self, oid: bytes) -> int:
        """Index of one id in the table, or -1 (pure Python: ~µs per call)."""
        if self.count == 0:
            return -1
        bucket = (int.from_bytes(oid[:4], "big") >> (32 - self.bits)) if self.bits else 0
        lo = self._bounds_list[bucket]
        hi = self._bounds_list[bucket + 1]
        return search_ids(self._raw, oid, lo, hi)

    def positions(self, oids: npt.ArrayLike) -> IntArray:
        """Index of each query id in the table, or -1."""
        q = coerce_ids(oids)
        out: IntArray = np.full(len(q), -1, dtype=np.int64)
        if self.count == 0:
            return out
        for start in range(0, len(q), _LOOKUP_BATCH):
            out[start : start + _LOOKUP_BATCH] = self._positions(q[start : start + _LOOKUP_BATCH])
        return out

    def _positions(self, q: IdArray) -> IntArray:
        out: IntArray = np.full(len(q), -1, dtype=np.int64)
        bucket = top_bits(q, self.bits)
        lo = self._bounds[bucket]
        end = self._bounds[bucket + 1]
        qkey = _strided(q, ">u8").astype(np.uint64)
        pos = self._lower_bound(lo, end.copy(), qkey)
        cand = np.flatnonzero(pos < end)
        if cand.size == 0:
            return out
        at = pos[cand]
        hit = self.ids[at] == q[cand]
        out[cand[hit]] = at[hit]
        # Distinct ids sharing their first 8 bytes sit side by side after the
        # lower bound; walking that run is rare enough to do one by one.
        miss = ~hit
        shared = miss & (self._key[at] == qkey[cand])
        for j in np.flatnonzero(shared):
            i = int(cand[j])
            p, stop = int(at[j]) + 1, int(end[i])
            while p < stop and int(self._key[p]) == int(qkey[i]):
                if self.ids[p] == q[i]:
                    out[i] = p
                    break
                p += 1
        return out

    def _lower_bound(self, lo: IntArray, hi: IntArray, qkey: npt.NDArray[np.uint64]) -> IntArray:
        last = self.count - 1
        for _ in range(self._steps):
            active = lo < hi
            if not active.any():
                break
            mid = (lo + hi) >> 1
            below = self._key[np.minimum(mid, last)] < qkey
            lo = np.where(active & below, mid + 1, lo)
            hi = np.where(active & ~below, mid, hi)
        return lo

    def contains_many(self, oids: npt.ArrayLike) -> BoolArray:
        found: BoolArray = self.positions(oids) >= 0
        return found


def midx_bits(total: int) -> int:
    """bup's fan-out width for ``total`` ids.

    Computed with the same float expression as bup so that the rare case where
    log() of a power of two rounds up (2**29, 2**31) gives the same table.
    """
    pages = int(total / _SHA_PER_PAGE) or 1
    return int(math.ceil(math.log(pages, 2)))


class MidxReader:
    """A read-only, mmap'd bup .midx (version 4)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = os.fspath(path)
        self.name = os.path.basename(self.path)
        with open(self.path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            if size < _HEADER_LEN + 4:
                raise CorruptObject(f"{self.path}: midx file too short")
            self._map = mmap.mmap(f.fileno(), 0, access=mmap.ACCESS_READ)
        try:
            self._parse(size)
        except BaseException:
            self.close()
            raise

    def _parse(self, size: int) -> None:
        magic, version, bits = struct.unpack_from(">4sII", self._map, 0)
        if magic != MIDX_MAGIC:
            raise CorruptObject(f"{self.path}: not a midx file")
        if version != MIDX_VERSION:
            raise CorruptObject(f"{self.path}: midx version {version}, expected {MIDX_VERSION}")
        # A 2**bits fan-out must fit in the file; this also rejects absurd bits.
        if bits > 32 or _HEADER_LEN + 4 * (1 << bits) > size:
            raise CorruptObject(f"{self.path}: bad midx fan-out width {bits}")
        self.bits = bits
        self.fanout: npt.NDArray[np.uint32] = np.frombuffer(
            self._map, dtype=">u4", count=1 << bits, offset=_HEADER_LEN
        )
        n = int(self.fanout[-1])
        self.count = n
        self._ids_off = _HEADER_LEN + 4 * (1 << bits)
        self._which_off = self._ids_off + 20 * n
        names_off = self._which_off + 4 * n
        if names_off > size:
            raise CorruptObject(f"{self.path}: midx file truncated")
        if bool((np.diff(self.fanout.astype(np.int64)) < 0).any()):
            raise CorruptObject(f"{self.path}: midx fan-out not monotonic")
        self.ids: IdArray = np.frombuffer(self._map, dtype="S20", count=n, offset=self._ids_off)
        self.which_table: npt.NDArray[np.uint32] = np.frombuffer(
            self._map, dtype=">u4", count=n, offset=self._which_off
        )
        raw = self._map[names_off:]
        self.idx_names: list[str] = [os.fsdecode(x) for x in raw.split(b"\0")] if raw else []
        if n and not self.idx_names:
            raise CorruptObject(f"{self.path}: midx names no idx files")
        self._table = IdTable(self.ids, self.fanout, bits)

    def __len__(self) -> int:
        return self.count

    def __enter__(self) -> MidxReader:
        return self

    def __exit__(
        self, t: type[BaseException] | None, v: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        if getattr(self, "_map", None) is None:
            return
        # numpy views pin the buffer; drop them before closing the map.
        for attr in ("ids", "which_table", "fanout", "_table"):
            self.__dict__.pop(attr, None)
        try:
            self._map.close()
        except BufferError:
            pass  # a caller still holds a view; the map closes when it is collected

    def is_sound(self) -> bool:
        """Whether the tables agree with each other: ids sorted, the fan-out
        counting them, every which entry naming a listed idx. Reads the whole
        file, so only housekeeping asks (a damaged table the header cannot
        show would otherwise stay in use for good)."""
        counts = np.zeros(1 << self.bits, dtype=np.int64)
        names = len(self.idx_names)
        # In chunks, so that checking a big midx costs little memory.
        for a in range(0, self.count, _MERGE_CHUNK):
            ids = self.ids[max(0, a - 1) : a + _MERGE_CHUNK]
            if bool((ids[1:] < ids[:-1]).any()):
                return False
            counts += np.bincount(top_bits(self.ids[a : a + _MERGE_CHUNK], self.bits),
                                  minlength=1 << self.bits)
            if int(self.which_table[a : a + _MERGE_CHUNK].max()) >= names:
                return False
        return np.array_equal(np.cumsum(counts), self.fanout.astype(np.int64))

    def missing_idx(self) -> list[str]:
        """Names of the idx files this midx covers that are absent beside it."""
        d = os.path.dirname(self.path)
        return [n for n in self.idx_names if not os.path.exists(os.path.join(d, n))]

    def position_one(self, oid: bytes) -> int:
        return self._table.position_one(oid)

    def positions(self, oids: npt.ArrayLike) -> IntArray:
        return self._table.positions(oids)

    def contains_many(self, oids: npt.ArrayLike) -> BoolArray:
        return self._table.contains_many(oids)

    def which_many(self, oids: npt.ArrayLike) -> IntArray:
        """Index into ``idx_names`` of the idx holding each id, or -1."""
        pos = self.positions(oids)
        out: IntArray = np.full(len(pos), -1, dtype=np.int64)
        hit = pos >= 0
        out[hit] = self.which_table[pos[hit]]
        if hit.any() and int(out[hit].max()) >= len(self.idx_names):
            raise CorruptObject(f"{self.path}: midx names an idx beyond its name list")
        return out

    def which(self, oid: bytes) -> str | None:
        """Basename of the idx file holding ``oid``, or None."""
        w = int(self.which_many(np.array([oid], dtype="S20"))[0])
        return None if w < 0 else self.idx_names[w]

    def __contains__(self, oid: object) -> bool:
        if not isinstance(oid, bytes) or len(oid) != 20:
            return False
        return bool(self.contains_many(np.array([oid], dtype="S20"))[0])


# --------------------------------------------------------------------------
# Writer


@dataclass
class _Input:
    ids: IdArray
    which: npt.NDArray[np.uint32] | None  # a midx input's own which table
    base: int  # where this input's names start in the output name list

    def which_slice(self, a: int, b: int) -> npt.NDArray[np.uint32]:
        if self.which is None:
            return np.full(b - a, self.base, dtype=np.uint32)
        return (self.which[a:b].astype(np.int64) + self.base).astype(np.uint32)


@dataclass
class _DupGroup:
    pos: int  # where the run of equal ids starts in the output
    oid: bytes
    members: list[tuple[int, int]]  # (input number, index within that input), stable order


@dataclass
class MidxAutoResult:
    """What ``auto_midx`` did: midx files written and files deleted."""

    created: list[str] = field(default_factory=list)
    removed: list[str] = field(default_factory=list)


def _open_midx_input(path: str, rm_broken: bool, removed: list[str] | None) -> MidxReader | None:
    """Open a midx to merge, or None (as bup skips) if it is unusable.

    With ``rm_broken`` a midx naming missing idx files, or one that cannot be
    read, is deleted, as bup's auto and force modes do.
    """
    try:
        m = MidxReader(path)
    except FileNotFoundError:
        return None  # removed by a concurrent cleanup
    except CorruptObject:
        m = None
    if m is not None and rm_broken and not m.is_sound():
        m.close()
        m = None
    if m is None:
        # Damaged: only ever a cache of the idx files (written by rename, so
        # never one in flight), it is regenerated rather than kept.
        if rm_broken:
            _unlink(path, removed)
        return None
    if m.missing_idx():
        m.close()
        if rm_broken:
            _unlink(path, removed)
        return None
    return m


def _unlink(path: str, removed: list[str] | None) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        return
    if removed is not None:
        removed.append(path)


def _do_midx(
    outdir: str,
    out_path: str | None,
    in_paths: Sequence[str],
    *,
    auto: bool = False,
    force: bool = False,
    removed: list[str] | None = None,
) -> tuple[int, str] | None:
    """bup's ``_do_midx``: merge ``in_paths`` (idx or midx) into one midx."""
    if not out_path:
        # The name hashes every input path as given, even ones skipped below.
        digest = hashlib.sha1(b"\0".join(os.fsencode(p) for p in in_paths)).hexdigest()
        out_path = f"{outdir}/midx-{digest}.midx"
    opened: list[PackIndex | MidxReader] = []
    inputs: list[_Input] = []
    names: list[str] = []
    total = 0
    try:
        for p in in_paths:
            ix: PackIndex | MidxReader | None
            if p.endswith(".idx"):
                ix = PackIndex(p)
                sub = [p]
                which = None
            else:
                ix = _open_midx_input(p, auto or force, removed)
                if ix is None:
                    continue
                sub = ix.idx_names
                which = ix.which_table
            opened.append(ix)
            inputs.append(_Input(ix.ids, which, len(names)))
            names.extend(os.path.basename(n) for n in sub)
            total += len(ix.ids)
        if (
            (auto and total < 1024 and len(in_paths) < 3)
            or ((auto or force) and len(in_paths) < 2)
            or (force and not total)
        ):
            return None
        _write_midx_file(out_path, total, inputs, names)
    finally:
        for ix in opened:
            ix.close()
    return total, out_path


def write_midx(
    pack_dir: str | os.PathLike[str],
    idx_paths: Sequence[str | os.PathLike[str]],
    out_path: str | os.PathLike[str] | None = None,
) -> str:
    """Merge ``idx_paths`` (idx files, or midx files which are expanded) into a midx.

    Without ``out_path`` the file is ``<pack_dir>/midx-<sha1>.midx`` where the
    sha1 is over the input paths joined by NUL, exactly as given: pass the same
    strings bup would (full paths) to get the same name. Returns the path.
    """
    paths = [os.fspath(p) for p in idx_paths]
    rv = _do_midx(os.fspath(pack_dir), os.fspath(out_path) if out_path else None, paths)
    assert rv is not None  # explicit merges always write, as in bup
    return rv[1]


def _write_midx_file(path: str, total: int, inputs: list[_Input], names: list[str]) -> None:
    bits = midx_bits(total)
    ids_off = _HEADER_LEN + 4 * (1 << bits)
    which_off = ids_off + 20 * total
    with AtomicFile(path) as out:
        fd = out.file.fileno()
        os.pwrite(fd, MIDX_MAGIC + struct.pack(">II", MIDX_VERSION, bits), 0)
        counts, dups = _merge(fd, bits, inputs, ids_off, which_off)
        fanout = np.cumsum(counts).astype(">u4")
        os.pwrite(fd, fanout.tobytes(), _HEADER_LEN)
        if dups:
            _reorder_duplicates(fd, which_off, inputs, dups)
        out.file.seek(which_off + 4 * total)
        out.file.write(b"\0".join(os.fsencode(n) for n in names))


def _merge(
    fd: int, bits: int, inputs: list[_Input], ids_off: int, which_off: int
) -> tuple[npt.NDArray[np.int64], list[_DupGroup]]:
    """Write the merged ids and which table chunk by chunk; return fan-out counts.

    The key space is cut into ranges of roughly ``_MERGE_CHUNK`` ids (SHA-1s
    are uniform, so equal ranges hold similar counts); each range is gathered
    from every input, stably sorted and written at its final offset.
    """
    total = sum(len(i.ids) for i in inputs)
    counts = np.zeros(1 << bits, dtype=np.int64)
    dups: list[_DupGroup] = []
    nchunks = max(1, total // _MERGE_CHUNK)
    keys = np.array(
        [((j << 32) // nchunks).to_bytes(4, "big") + bytes(16) for j in range(1, nchunks)],
        dtype="S20",
    )
    cuts = [
        np.concatenate(([0], np.searchsorted(i.ids, keys, side="left"), [len(i.ids)]))
        for i in inputs
    ]
    pos = 0
    for j in range(nchunks):
        spans = [(int(c[j]), int(c[j + 1])) for c in cuts]
        lens = [b - a for a, b in spans]
        n = sum(lens)
        if n == 0:
            continue
        chunk = np.concatenate([inp.ids[a:b] for inp, (a, b) in zip(inputs, spans, strict=True)])
        which = np.concatenate(
            [inp.which_slice(a, b) for inp, (a, b) in zip(inputs, spans, strict=True)]
        )
        # Stable: equal ids keep input order, the starting point for bup's tie order.
        order = np.argsort(chunk, kind="stable")
        chunk = chunk[order]
        which = which[order]
        os.pwrite(fd, chunk.tobytes(), ids_off + 20 * pos)
        os.pwrite(fd, which.astype(">u4").tobytes(), which_off + 4 * pos)
        counts += np.bincount(top_bits(chunk, bits), minlength=1 << bits)
        same = np.flatnonzero(chunk[1:] == chunk[:-1])
        if same.size:
            starts = np.concatenate(([0], np.cumsum(lens)))
            dups.extend(_dup_groups(chunk, order, same, starts, spans, pos))
        pos += n
    return counts, dups


def _dup_groups(
    chunk: IdArray,
    order: IntArray,
    same: IntArray,
    starts: IntArray,
    spans: list[tuple[int, int]],
    pos: int,
) -> list[_DupGroup]:
    groups: list[_DupGroup] = []
    prev = -2
    for s in same.tolist():
        if s != prev + 1:
            groups.append(_DupGroup(pos + s, chunk[s : s + 1].tobytes(), []))
            groups[-1].members.append(_origin(int(order[s]), starts, spans))
        groups[-1].members.append(_origin(int(order[s + 1]), starts, spans))
        prev = s
    return groups


def _origin(k: int, starts: IntArray, spans: list[tuple[int, int]]) -> tuple[int, int]:
    i = int(np.searchsorted(starts, k, side="right")) - 1
    return i, spans[i][0] + k - int(starts[i])


def _reorder_duplicates(
    fd: int, which_off: int, inputs: list[_Input], dups: list[_DupGroup]
) -> None:
    if sum(len(g.members) for g in dups) > _MAX_EXACT_DUPLICATES:
        return
    ties = _TieOrder(inputs)
    for g in dups:
        order = ties.emission_order(g)
        which = np.array([inputs[i].which_slice(li, li + 1)[0] for i, li in order], dtype=">u4")
        os.pwrite(fd, which.tobytes(), which_off + 4 * g.pos)


class _TieOrder:
    """Which input bup's merge emits first when several hold the same id.

    bup's C merge keeps its inputs in an array sorted by current head (largest
    first), emits from the end, and re-inserts the input it just advanced with
    a binary search that stops at the first equal head it probes. The sorted
    order of distinct ids is fixed, so only the order inside a block of equal
    heads varies, and the search's landing point depends only on how many
    live inputs have a greater head, how many an equal one, and how many are
    live. Those counts are taken at each arrival into a block: before the
    block is emitted (an input's predecessor was just emitted), or while it is
    (a midx input holding the id twice re-enters its own block).
    """

    def __init__(self, inputs: list[_Input]) -> None:
        self.inputs = inputs
        self.live = [i for i, inp in enumerate(inputs) if len(inp.ids)]
        # dup id -> emission rank of each (input, index) holding it
        self.ranks: dict[bytes, dict[tuple[int, int], int]] = {}

    def _id(self, i: int, li: int) -> bytes:
        return self.inputs[i].ids[li : li + 1].tobytes()

    def emission_order(self, g: _DupGroup) -> list[tuple[int, int]]:
        held: dict[int, list[int]] = {}
        for i, li in g.members:
            held.setdefault(i, []).append(li)
        for lis in held.values():
            lis.sort()
        block = sorted(i for i, lis in held.items() if lis[0] == 0)  # array order
        arrivals = []
        for i, lis in held.items():
            if lis[0]:
                prev = self._id(i, lis[0] - 1)
                arrivals.append((prev, self.ranks.get(prev, {}).get((i, lis[0] - 1), 0), i))
        arrivals.sort()
        for prev, rank, q in arrivals:
            greater, live = self._census(q, prev, rank, g.oid)
            _arrive(block, q, greater, live)
        emitted: list[tuple[int, int]] = []
        taken = dict.fromkeys(held, 0)
        while block:
            q = block.pop()
            emitted.append((q, held[q][taken[q]]))
            taken[q] += 1
            if taken[q] < len(held[q]):
                greater = live = 0
                for f in self.live:
                    if f == q or f in block:
                        continue
                    ids = self.inputs[f].ids
                    if int(np.searchsorted(ids, g.oid, side="right")) < len(ids):
                        greater += 1
                _arrive(block, q, greater, greater + len(block))
        self.ranks[g.oid] = {m: r for r, m in enumerate(emitted)}
        return emitted

    def _census(self, q: int, prev: bytes, rank: int, oid: bytes) -> tuple[int, int]:
        """Live inputs other than ``q`` with a head above ``oid``, and in all,
        just after ``q`` emitted ``prev`` as the ``rank``-th emitter of it."""
        greater = live = 0
        key = np.array([prev], dtype="S20")
        before = [m for m, r in self.ranks.get(prev, {}).items() if r < rank]
        for f in self.live:
            if f == q:
                continue
            ids = self.inputs[f].ids
            h = int(np.searchsorted(ids, key, side="left")[0])
            h += sum(1 for i, _ in before if i == f)
            if h >= len(ids):
                continue
            live += 1
            if self._id(f, h) > oid:
                greater += 1
        return greater, live


def _arrive(block: list[int], q: int, greater: int, live: int) -> None:
    """Insert ``q`` into the equal-head ``block`` where bup's search puts it."""
    if block:
        block.insert(_landing(greater, len(block), live) - greater, q)
    else:
        block.append(q)


def _landing(greater: int, equal: int, last: int) -> int:
    """Where bup's insertion search places an input whose head equals ``equal``
    others, given ``greater`` larger heads and ``last`` other live inputs."""
    low, high, mid, c = last - 1, 0, last, 0
    while low >= high:
        mid = (low + high) // 2
        c = -1 if mid < greater else (0 if mid < greater + equal else 1)
        if c < 0:
            high = mid + 1
        elif c > 0:
            low = mid - 1
        else:
            break
    return mid + 1 if c < 0 else mid


# --------------------------------------------------------------------------
# Auto mode


def _max_files() -> int:
    lim = min(resource.getrlimit(resource.RLIMIT_NOFILE))
    return lim - 20 if lim > 32 else lim - 6


def auto_midx(
    pack_dir: str | os.PathLike[str], *, force: bool = False, max_files: int | None = None
) -> MidxAutoResult:
    """What ``bup midx --auto`` (or, with ``force``, ``bup midx -f``) does in ``pack_dir``.

    Auto: drop midx files naming missing idx files and midx files made
    redundant by bigger ones; then, while more than 5 idx/midx files remain,
    merge all but the biggest (nothing is merged while the set is under 1024
    objects in fewer than 3 files). Force: merge every idx into one midx,
    ignoring existing midx files.
    """
    path = os.fspath(pack_dir)
    pattern = glob.escape(path)
    res = MidxAutoResult()
    already: set[str] = set()
    sizes: dict[str, int] = {}
    midxs: list[str] = []
    if not force:
        contents: dict[str, list[str]] = {}
        mtimes: dict[str, float] = {}
        for mname in glob.glob(f"{pattern}/*.midx"):
            m = _open_midx_input(mname, True, res.removed)
            if m is None:
                continue
            with m:
                try:
                    mtimes[mname] = os.stat(mname).st_mtime
                except FileNotFoundError:
                    continue
                midxs.append(mname)
                contents[mname] = [f"{path}/{n}" for n in m.idx_names]
                sizes[mname] = len(m)
        # Biggest and newest first, so smaller or older redundant ones fall out.
        midxs.sort(key=lambda m: (-sizes[m], -mtimes[m]))
        for mname in midxs:
            fresh = [n for n in contents[mname] if n not in already]
            already.update(fresh)
            if not fresh:
                _unlink(mname, res.removed)
                already.add(mname)
    midxs = [m for m in midxs if m not in already]
    idxs = [p for p in glob.glob(f"{pattern}/*.idx") if p not in already]
    for p in idxs:
        ix = PackIndex(p)
        sizes[p] = ix.count
        ix.close()
    pool = [(sizes[n], n) for n in midxs + idxs]
    hwm = 1 if force else 5
    lwm = 1 if force else 2
    group = max_files if max_files is not None else _max_files()
    while len(pool) > hwm:
        pool.sort()
        part1 = [n for _, n in pool[: len(pool) - lwm + 1]]
        part2 = pool[len(pool) - lwm + 1 :]
        made = []
        for g in range(0, len(part1), group):
            rv = _do_midx(
                path, None, part1[g : g + group], auto=not force, force=force, removed=res.removed
            )
            if rv is not None:
                made.append(rv)
                res.created.append(rv[1])
        pool = made + part2
    return res
