"""Reading many pack entries from an object store: a restore's planned reads.

A restore asks for thousands of objects at once (`Repository.read_many`).
Read one by one, or in small groups, each costs a round trip; here they are
planned per pack instead: the wanted entries sorted by offset, entries that lie
close together (a gap of up to `GAP` unneeded bytes: another request costs
more than fetching them) merged into ranged GETs of a few MB, and up to
`IN_FLIGHT` of those fetched at once. Each range is inflated and checked on
the thread that fetched it (zlib and SHA-1 leave the GIL), and its objects are
handed over as soon as it arrives, in whatever order the ranges complete.

Where an entry ends is recorded nowhere but in its zlib stream; the idx's
offsets tell it (the next entry's offset in the same pack), when they are at
hand (RemoteIdx.entry_ends). Otherwise a range reads `guess` bytes past the
entry's start, and `_Window` fetches the rest of a bigger entry.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import TypeVar

from ketch.errors import CorruptObject
from ketch.git import entry as codec
from ketch.git import objects as gobj
from ketch.git.entry import FULL_TYPES, OFS_DELTA, REF_DELTA, CorruptPack
from ketch.offsite.manifest import PackEntry
from ketch.offsite.s3index import RemoteIdx

GUESS = 8 << 10  # read this far past an entry's start when its end is unknown
# Merge two wanted ranges when fewer bytes than this lie between them: over a
# link of 50 MB/s and 30 ms a request, 256 KiB cost a sixth of a round trip.
GAP = 256 << 10
SPAN = 8 << 20  # one GET at most (unless one entry is bigger)
MIN_SPAN = 8 << 20  # ranges are not cut smaller than this for parallelism
IN_FLIGHT = 16  # GETs at once
# read_ahead's ranges merge across this much, every object in them decoded:
# trees and .bupm of the next levels come along and are held. The corpus's
# 1,667 directories took 1,611 GETs (25 MB) with 16 KB and no decoding, 588
# (38 MB) with this, before the metadata packs; 485 (52 MB) with 256 KB.
AHEAD_GAP = 128 << 10
# A pack read ahead is fetched whole, once, when it is this small and its
# entries are small on average: a metadata pack (trees and .bupm, apart from
# the data since packenc's lanes; the corpus's are 1-3 MB of ~6,700 entries),
# or a small save's one pack. The corpus's read-ahead took 56 GETs, level by
# level, for its 6 MB of metadata; a data pack's entries average 2-8 KB.
AHEAD_WHOLE = 8 << 20
AHEAD_WHOLE_AVG = 1024
# Bytes of ranges fetched and not yet handed over: each holds its decoded
# objects too (2-3x). The corpus's restore at 64 MB peaked at 450 MB of RSS;
# at 32 MB at 340 MB and 5-10% faster (16 MB: 300 MB, 15% slower at 30 ms).
IN_FLIGHT_BYTES = 32 << 20

# get(key, start, end) -> exactly those bytes of the object `key`.
Get = Callable[[str, int, int], bytes]
Obj = tuple[bytes, int, bytes]  # (id, type, content)
# What decode makes of a range: its whole objects asked for, checked; its
# deltas asked for ((idx name, offset, id): their bases need the reader's
# caches); the window; the objects it holds beside them (Range.everything).
Decoded = tuple[list[Obj], list[tuple[str, int, bytes]], "Window", list[Obj]]
T = TypeVar("T")


class Window:
    """Bytes of one pack from `start` on, fetched as decoding needs them."""

    def __init__(self, get: Get, key: str, start: int, end: int, limit: int) -> None:
        self.get, self.key, self.start, self.limit = get, key, start, limit
        self.data = get(key, start, min(end, limit)) if start < limit else b""

    @property
    def end(self) -> int:
        return self.start + len(self.data)

    def ensure(self, end: int) -> None:
        """Make [start, end) available (as far as the pack's entries go)."""
        if end > self.end and self.end < self.limit:
            stop = min(max(end, self.end + GUESS), self.limit)
            # Rebinding (not extending) keeps memoryviews of the old bytes valid.
            self.data = self.data + self.get(self.key, self.end, stop)

    def read(self, pos: int, n: int) -> memoryview:
        """Up to `n` bytes at pack offset `pos` (the codec's Reader): what the
        window holds, fetching more only when it holds nothing there."""
        if pos >= self.end:
            self.ensure(pos + n)
        i = pos - self.start
        if not 0 <= i < len(self.data):
            return memoryview(b"")
        return memoryview(self.data)[i : i + n]

    def head(self, offset: int) -> tuple[bytes, int]:
        """(the window's bytes, index of `offset` in them), with room after it
        for any entry header, OFS distance or REF id."""
        self.ensure(offset + 64)
        return self.data, offset - self.start


def read_entry(win: Window, offset: int, where: str) -> tuple[int, bytes, int | bytes | None]:
    """(type, inflated data, base) of the pack entry at `offset`: the base is
    None for a whole object, the distance back for an OFS_DELTA, the base's id
    for a REF_DELTA."""
    try:
        raw, i = win.head(offset)
        t, size, i = codec.read_header(raw, i, len(raw))
        base: int | bytes | None = None
        if t == OFS_DELTA:
            base, i = codec.read_ofs_distance(raw, i, len(raw))
        elif t == REF_DELTA:
            base = codec.read_ref_base(raw, i, len(raw))
            i += 20
        elif t not in FULL_TYPES:
            raise CorruptPack(f"invalid entry type {t}")
        return t, codec.inflate(win.read, win.start + i, size)[0], base
    except CorruptPack as e:
        raise CorruptPack(f"{where}: {e}") from None


def scan(win: Window, pos: int) -> Iterator[tuple[int, int, bytes]]:
    """(offset, type, data) of each whole object from `pos` on, as far as `win`
    holds entries whole (it fetches nothing more): what a restore will want
    next lies beside what it asks for, since a save writes a file's blobs and
    chunk trees together. Deltas are stepped over; a stretch that does not
    decode ends the scan (the entries asked for are then read one by one)."""
    data, base = win.data, win.start
    view = memoryview(data)

    def read(p: int, n: int) -> memoryview:
        i = p - base
        return view[i : i + n] if 0 <= i < len(view) else view[0:0]

    while pos < win.end:
        try:
            t, size, i = codec.read_header(data, pos - base, len(data))
            if t == OFS_DELTA:
                i = codec.read_ofs_distance(data, i, len(data))[1]
            elif t == REF_DELTA:
                i += 20
            elif t not in FULL_TYPES:
                return
            out, end = codec.inflate(read, base + i, size)
        except CorruptPack:
            return
        if t in FULL_TYPES:
            yield pos, t, out
        pos = end


@dataclass
class Range:
    """One GET of a pack: [start, end) holding `entries` ((offset, oid), by offset)."""

    idx_name: str
    key: str
    limit: int  # where the pack's entries end (its trailer starts)
    start: int
    end: int
    entries: list[tuple[int, bytes]] = field(default_factory=list)
    # Decode every whole object in it, wanted or not (see scan).
    everything: bool = False


def plan(idx_name: str, key: str, limit: int, wanted: list[tuple[int, int | None, bytes]],
         *, guess: int, span: int, gap: int = GAP, everything: bool = False) -> list[Range]:
    """The GETs that read `wanted` ((offset, end or None when unknown, oid)) of
    one pack whose entries end at `limit`."""
    out: list[Range] = []
    for off, end, oid in sorted(wanted):
        # An entry at or past `limit` gets an empty range, and fails its decoding.
        stop = max(off, min(limit, off + guess if end is None or end <= off else end))
        cur = out[-1] if out else None
        if cur is not None and off - cur.end <= gap and max(stop, cur.end) - cur.start <= span:
            cur.end = max(cur.end, stop)
            cur.entries.append((off, oid))
        else:
            out.append(Range(idx_name, key, limit, off, stop, [(off, oid)], everything))
    return out


def plan_pack(ix: RemoteIdx, key: str, items: list[tuple[int, bytes]], *, gap: int,
              everything: bool = False, known: dict[int, int] | None = None) -> list[Range]:
    """plan() for `items` ((offset, oid)) of the pack `key` whose idx is `ix`;
    `known` has where entries end, when something said (the locator)."""
    size = ix.entry.pack.size
    ends = dict(known or {})
    unknown = [off for off, _ in items if off not in ends]
    avg = GUESS // 2
    if unknown:
        ix.entry_ends((), fetch=False)  # its fan-out: how many entries it has
        avg = size // max(ix.count, 1)
        # The idx's offsets say where each entry ends (4 bytes an entry): worth
        # fetching when they cost under an eighth of what is read.
        ends.update(ix.entry_ends(unknown, fetch=32 * ix.count <= len(unknown) * avg))
    total = sum(ends.get(off, off + avg) - off for off, _ in items)
    return plan(ix.entry.idx.name, key, size - 20, [(off, ends.get(off), o) for off, o in items],
                guess=max(GUESS, 2 * avg), gap=gap, everything=everything,
                span=span_for(total))


def whole_pack(entry: PackEntry, key: str, items: list[tuple[int, bytes]]) -> Range | None:
    """One range of the whole pack `key` holding `items` ((offset, oid)), every
    object decoded, when it is small and of small entries (AHEAD_WHOLE)."""
    # An idx v2 holds 28 bytes an entry past its 1,072 of fan-out and sums.
    count = max(1, (entry.idx.size - 1072) // 28)
    size = entry.pack.size
    if not 12 < size <= AHEAD_WHOLE or size > count * AHEAD_WHOLE_AVG:
        return None
    return Range(entry.idx.name, key, size - 20, 12, size - 20, sorted(items), everything=True)


def back(ix: RemoteIdx, spans: list[tuple[int, int]], off: int, behind: int) -> int:
    """The first entry's offset within `behind` bytes before `off`, past any of
    `spans` (stretches fetched whole lately); `off` when there is none, or
    when the idx's offsets are not at hand."""
    first = ix.start_after(max(off - behind, 0))
    while first is not None and first < off:
        b = next((b for a, b in spans if a <= first < b), None)
        if b is None:
            return first
        first = ix.start_after(b)
    return off


def span_for(total: int) -> int:
    """A range's size: enough ranges for every GET in flight, none tiny."""
    return max(MIN_SPAN, min(SPAN, total // IN_FLIGHT))


def run(ranges: list[Range], work: Callable[[Range], T], pool: ThreadPoolExecutor) -> Iterator[T]:
    """work(range) for each range on `pool`, at most IN_FLIGHT at once and
    IN_FLIGHT_BYTES of ranges not yet handed over; results as they complete.
    Closing the iterator early cancels what has not started."""
    todo = iter(ranges)
    pending: dict[Future[T], int] = {}
    held = 0
    try:
        nxt = next(todo, None)
        while nxt is not None or pending:
            while nxt is not None and len(pending) < IN_FLIGHT and (
                    not pending or held + (nxt.end - nxt.start) <= IN_FLIGHT_BYTES):
                size = nxt.end - nxt.start
                pending[pool.submit(work, nxt)] = size
                held += size
                nxt = next(todo, None)
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for f in done:
                held -= pending.pop(f)
                yield f.result()
    finally:
        for f in pending:
            f.cancel()


def decode(get: Get, r: Range, where: str) -> Decoded:
    """On a pool thread: fetch a planned range, decode and check its objects."""
    win = Window(get, r.key, r.start, r.end, r.limit)
    done: list[Obj] = []
    deltas, beside = [], []
    entries = r.entries
    if r.everything:
        wanted = dict(entries)
        for off, t, data in scan(win, r.start):
            oid = wanted.pop(off, None)
            if oid is None:
                beside.append((gobj.object_id(t, data), t, data))
            elif gobj.object_id(t, data) != oid:
                raise CorruptObject(f"{where}: object {oid.hex()} in {r.key} "
                                    "does not match its id")
            else:
                done.append((oid, t, data))
        entries = sorted(wanted.items())
    for off, oid in entries:
        t, data, base = read_entry(win, off, f"{where}: {r.key} at {off}")
        if base is not None:
            deltas.append((r.idx_name, off, oid))
        elif gobj.object_id(t, data) != oid:
            raise CorruptObject(f"{where}: object {oid.hex()} in {r.key} does not match its id")
        else:
            done.append((oid, t, data))
    return done, deltas, win, beside
