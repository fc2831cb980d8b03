"""bup 0.33-compatible hashsplitting: chunk boundaries, levels and the chunk tree.

The chunker must reproduce bup bit for bit (spec: bup-format.md section 1):

    for each read block (8 MiB, the last one of a file may be short):
        buf += block
        repeat: scan buf from its start with a fresh rollsum
            boundary at n <= 32768 -> emit n bytes, level from the digest
            boundary at n >  32768 -> emit 32768 bytes, level 0
            no boundary            -> emit 32768-byte pieces without rescanning,
                                      keep the rest (< 32768) for the next block
    at EOF emit what is left, level 0

The compiled kernel (ketch._rollsum, built by `pip install` where there is a
C compiler) does a whole buffer's chunking with the GIL released.  Without it,
or with KETCH_ROLLSUM=numpy in the environment, the rollsum vectorised with
numpy (ketch.rollsum) is driven from here; `KERNEL` says which one runs.  The
numpy path is also the tests' oracle for the compiled one.  numpy is imported
only when its path runs: it costs start-up time.
"""

from __future__ import annotations

import math
import os
from array import array
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from itertools import accumulate
from types import ModuleType
from typing import TYPE_CHECKING, BinaryIO, Literal, Protocol

from ketch.errors import UsageError
from ketch.git.objects import BLOB, MODE_FILE, MODE_TREE, TREE

if TYPE_CHECKING:
    from ketch.rollsum import Kernel

KERNEL_ABI = 2


def kernel_matches(module: ModuleType) -> bool:
    """A build of an older _rollsum.c (left in place by a checkout) would fail
    every save with a TypeError: such a kernel is not used."""
    return getattr(module, "ABI", None) == KERNEL_ABI


try:
    from ketch import _rollsum

    if not kernel_matches(_rollsum):
        _rollsum = None  # type: ignore[assignment]
except ImportError:  # built without a C compiler: the numpy kernel does the work
    _rollsum = None  # type: ignore[assignment]

KERNEL: Literal["c", "numpy"] = (
    "c" if _rollsum is not None and os.environ.get("KETCH_ROLLSUM") != "numpy" else "numpy"
)

BLOB_MAX = 32768
READ_SIZE = 8 * 1024 * 1024
MAX_PER_TREE = 256
DEFAULT_FANOUT = 16

Chunk = tuple[memoryview, int]
Entry = tuple[int, bytes, int]

def fanbits_for(fanout: int) -> int:
    """Bits per tree level for `fanout`; 0 means "every chunk is level 0".

    bup computes int(math.log(fanout, 2)); the same expression is used so that
    odd fanouts round exactly as in bup (3 acts as 2).  bup divides by this
    value and so crashes for fanout 1; here that is rejected up front.  Note
    that `bup split --fanout 0` means the default 16: mapping that is the
    caller's job.
    """
    if fanout == 0:
        return 0
    if fanout < 2:
        raise UsageError(f"fanout must be 0 or at least 2, not {fanout}")
    return int(math.log(fanout, 2))


def read_blocks(f: BinaryIO, size: int = READ_SIZE) -> Iterator[bytes]:
    """Yield `size`-byte blocks of `f`; only the last one may be shorter.

    Block boundaries change the chunking (spec 1.5), and bup's buffered reads
    always return full blocks before EOF, so short reads from pipes are joined.
    """
    while True:
        block = f.read(size)
        if not block:
            return
        if len(block) < size:
            parts = [block]
            have = len(block)
            while have < size:
                more = f.read(size - have)
                if not more:
                    break
                parts.append(more)
                have += len(more)
            block = b"".join(parts)
            if have < size:
                yield block
                return
        yield block


class Splitter:
    """bup's chunking driver (spec 1.5): feed it read blocks, then call finish().

    The read blocks must be exactly what bup would read (see `read_blocks`):
    their boundaries change the result.  Chunks are memoryviews into the
    buffers handed to `feed` (or a concatenation with the previous remainder),
    so each keeps its whole buffer alive; copy what has to outlive the next
    feed.  Levels use `fanbits` bits per tree level; 0 makes every level 0.
    """

    def __init__(self, fanbits: int = 4) -> None:
        self._fanbits = fanbits
        self._rest = b""
        self._compiled = KERNEL == "c"
        self._kernel: Kernel | None = None

    def feed(self, block: bytes) -> Iterator[Chunk]:
        """The chunks completed by appending `block` (computed eagerly)."""
        if not block:
            # bup never appends an empty read, so it would not rescan here.
            return iter(())
        if not isinstance(block, bytes):
            block = bytes(block)
        if self._compiled:
            chunks, self._rest = self._split_after(self._rest, block)
        else:
            chunks, self._rest = self._split_buffer(self._rest + block if self._rest else block)
        return iter(chunks)

    def finish(self) -> Iterator[Chunk]:
        """The final remainder chunk (level 0), if any."""
        rest, self._rest = self._rest, b""
        if rest:
            yield memoryview(rest), 0

    def _split_buffer(self, buf: bytes) -> tuple[list[Chunk], bytes]:
        """(chunks, remainder) of one buffer scanned from its start (spec 1.5 step 3)."""
        if self._compiled:
            return self._split_after(b"", buf)
        return self._split_buffer_numpy(buf)

    def _split_after(self, rest: bytes, block: bytes) -> tuple[list[Chunk], bytes]:
        """`_split_buffer(rest + block)` without that copy of the whole block (as
        long as the scan): only chunks that straddle the two are joined."""
        r = len(rest)
        ends, levels = _pairs(_rollsum.split_buffer(block, self._fanbits, rest))
        if not ends:
            return [], rest + block
        out: list[Chunk] = []
        s = k = 0
        while k < len(ends) and s < r:
            e = ends[k]
            part = memoryview(rest)[s:e] if e <= r else memoryview(rest[s:] + block[: e - r])
            out.append((part, levels[k]))
            s = e
            k += 1
        if k < len(ends):
            mv = memoryview(block)
            tail = [e - r for e in ends[k:]] if r else ends
            starts = [s - r, *tail[:-1]]
            out += [(mv[a:b], lv) for a, b, lv in zip(starts, tail, levels[k:], strict=True)]
        last = ends[-1]
        return out, block[last - r :] if last >= r else rest[last:] + block

    def _split_buffer_numpy(self, buf: bytes) -> tuple[list[Chunk], bytes]:
        import numpy as np

        from ketch.rollsum import BLOB_BITS, EARLY, SMALL, Kernel, early_one, scan_small

        fanbits = self._fanbits

        def level(bits: int) -> int:
            return (bits - BLOB_BITS) // fanbits if fanbits else 0

        n = len(buf)
        if n <= SMALL:
            small, rest = scan_small(buf)
            return [(c, level(bits)) for c, bits in small], rest
        if self._kernel is None:
            self._kernel = Kernel()
        a = np.frombuffer(buf, np.uint8)
        cand_arr, cand_bits_arr = self._kernel.candidates(a)
        cand: list[int] = cand_arr.tolist()
        cand_bits: list[int] = cand_bits_arr.tolist()
        # Speculate that chunks start right after candidates, as nearly all do.
        after_off, after_bits = self._kernel.early(a, buf, cand_arr + 1)
        mv = memoryview(buf)
        out: list[Chunk] = []
        p = 0
        j = 0
        from_cand = -1  # candidate index the current chunk start follows, if any
        while p < n:
            if p == 0:
                # The buffer's own zero pre-fill makes the continuous state fresh here.
                off, bits, min_pos = -1, 0, 0
            else:
                if from_cand >= 0:
                    off, bits = after_off[from_cand], after_bits[from_cand]
                else:
                    off, bits = early_one(buf, p)
                min_pos = p + EARLY
            from_cand = -1
            if off >= 0:
                end = p + off + 1
            else:
                j = bisect_left(cand, min_pos, j)
                if j == len(cand):
                    break
                end, bits = cand[j] + 1, cand_bits[j]
                from_cand = j
            if end - p > BLOB_MAX:
                out.append((mv[p : p + BLOB_MAX], 0))
                p += BLOB_MAX
                from_cand = -1
            else:
                out.append((mv[p:end], level(bits)))
                p = end
        # No boundary in the rest: cut it in 32 KiB pieces without rescanning.
        while n - p >= BLOB_MAX:
            out.append((mv[p : p + BLOB_MAX], 0))
            p += BLOB_MAX
        return out, buf[p:]


def _pairs(packed: bytes) -> tuple[list[int], list[int]]:
    """The compiled kernel's (end, level) int64 pairs as two lists."""
    flat = memoryview(packed).cast("q").tolist()
    return flat[0::2], flat[1::2]


def split_files(datas: list[bytes], fanbits: int = 4) -> list[list[Chunk]]:
    """Chunk many whole files (each shorter than one read block) in one pass.

    Each file is chunked exactly as `Splitter` would on its own (fresh rollsum at
    the file's start, bup's 32 KiB rules, the remainder as the final chunk), but
    the rollsum kernel runs once over all of them: for small files numpy's
    per-call overhead, not the arithmetic, is the cost.  Positions within 63
    bytes of a chunk start are checked with the fresh state, so the continuous
    state's reach into the previous file never matters.
    """
    if any(len(d) >= READ_SIZE for d in datas):
        raise ValueError("split_files takes files smaller than one read block")
    if not datas:
        return []
    buf = b"".join(datas)
    if KERNEL != "c":
        return _split_files_numpy(datas, buf, fanbits)
    mv = memoryview(buf)
    file_ends = array("q", accumulate(map(len, datas)))
    ends, levels = _pairs(_rollsum.split_files(buf, file_ends, fanbits))
    out: list[list[Chunk]] = []
    k = p = 0
    for e in file_ends:
        chunks: list[Chunk] = []
        # A non-empty file's last chunk ends at its end.
        while p < e:
            chunks.append((mv[p : ends[k]], levels[k]))
            p = ends[k]
            k += 1
        out.append(chunks)
    return out


def _split_files_numpy(datas: list[bytes], buf: bytes, fanbits: int) -> list[list[Chunk]]:
    import numpy as np

    from ketch.rollsum import BLOB_BITS, EARLY, SMALL, Kernel, early_bounded

    if len(buf) <= SMALL:
        # Too short for numpy to pay off, and without its candidates the walk
        # below would miss boundaries 63 bytes or more into a chunk.
        out_small: list[list[Chunk]] = []
        for d in datas:
            sp = Splitter(fanbits)
            out_small.append([*sp.feed(d), *sp.finish()])
        return out_small
    mv = memoryview(buf)
    starts = np.cumsum([0] + [len(d) for d in datas[:-1]], dtype=np.int64)
    # Fresh-state checks for the two kinds of chunk start that nearly all chunks
    # have (a file's start, right after a candidate), in bulk; the rare others
    # (after a 32 KiB cut or an early boundary) are scanned one by one.  A hit
    # found past the end of its file is ignored where it is used.
    kernel = Kernel()
    a = np.frombuffer(buf, np.uint8)
    cand_arr, bits_arr = kernel.candidates(a)
    cand: list[int] = cand_arr.tolist()
    cand_bits: list[int] = bits_arr.tolist()
    bulk = np.unique(np.concatenate([starts, cand_arr + 1]))
    bulk = bulk[bulk < len(buf)]
    offs, ebits = kernel.early(a, buf, bulk)
    early_at = dict(zip(bulk.tolist(), zip(offs, ebits, strict=True), strict=True))

    def level(bits: int) -> int:
        return (bits - BLOB_BITS) // fanbits if fanbits else 0

    out: list[list[Chunk]] = []
    j = 0
    for d, s in zip(datas, starts.tolist(), strict=True):
        e = s + len(d)
        chunks: list[Chunk] = []
        p = s
        while p < e:
            got = early_at.get(p)
            off, bits = early_bounded(buf, p, e) if got is None else got
            if off >= 0 and p + off < e:
                end = p + off + 1
            else:
                j = bisect_left(cand, p + EARLY, j)
                if j == len(cand) or cand[j] >= e:
                    break
                end, bits = cand[j] + 1, cand_bits[j]
            if end - p > BLOB_MAX:
                chunks.append((mv[p : p + BLOB_MAX], 0))
                p += BLOB_MAX
            else:
                chunks.append((mv[p:end], level(bits)))
                p = end
        while e - p >= BLOB_MAX:
            chunks.append((mv[p : p + BLOB_MAX], 0))
            p += BLOB_MAX
        if p < e:
            chunks.append((mv[p:e], 0))
        out.append(chunks)
    return out


def split_chunks(blocks: Iterable[bytes], fanbits: int = 4) -> Iterator[Chunk]:
    """(chunk, level) for a stream given as read blocks."""
    splitter = Splitter(fanbits)
    for block in blocks:
        yield from splitter.feed(block)
    yield from splitter.finish()


class ObjectSink(Protocol):
    def write(self, type_num: int, data: bytes | memoryview) -> bytes:
        """Store an object; return its raw 20-byte id."""
        ...


def make_shalist_tree(sink: ObjectSink, entries: list[Entry]) -> bytes:
    """Write a chunk tree: entries named by hex offset, padded to the total's width.

    Encoded here rather than by encode_tree (one per ~256 chunks saved, the save's
    commonest object): the names are equal-width hex of strictly growing offsets,
    so their order is already git's, whatever the entry's mode."""
    total = sum(size for _, _, size in entries)
    width = len(b"%x" % total)
    parts = []
    ofs = 0
    for mode, oid, size in entries:
        parts.append(b"%o %0*x\0%s" % (mode, width, ofs, oid))
        ofs += size
    return sink.write(TREE, b"".join(parts))


class ChunkTree:
    """bup's level stacks (spec 1.6): chunks go in with a level, a top list comes out."""

    def __init__(self, sink: ObjectSink) -> None:
        self._sink = sink
        self._stacks: list[list[Entry]] = [[]]

    def add(self, mode: int, oid: bytes, size: int, level: int) -> None:
        self._stacks[0].append((mode, oid, size))
        self._squish(level)

    def add_many(self, mode: int, oids: Iterable[bytes], sizes: Iterable[int],
                 levels: Iterable[int]) -> None:
        """`add` for each (oid, size, level), in order."""
        stacks = self._stacks
        for oid, size, level in zip(oids, sizes, levels, strict=True):
            first = stacks[0]
            first.append((mode, oid, size))
            if level or len(first) >= MAX_PER_TREE:
                self._squish(level)

    def top(self) -> list[Entry]:
        self._squish(len(self._stacks) - 1)
        return list(self._stacks[-1])

    def _squish(self, n: int) -> None:
        stacks = self._stacks
        i = 0
        while i < n or len(stacks[i]) >= MAX_PER_TREE:
            if len(stacks) <= i + 1:
                stacks.append([])
            if len(stacks[i]) == 1:
                # A lone entry moves up unchanged: bup never writes one-entry chunk trees.
                stacks[i + 1] += stacks[i]
            elif stacks[i]:
                size = sum(s for _, _, s in stacks[i])
                stacks[i + 1].append((MODE_TREE, make_shalist_tree(self._sink, stacks[i]), size))
            stacks[i] = []
            i += 1


def _chunk_tree(sink: ObjectSink, blocks: Iterable[bytes], fanbits: int) -> list[Entry]:
    tree = ChunkTree(sink)
    for data, level in split_chunks(blocks, fanbits):
        tree.add(MODE_FILE, sink.write(BLOB, data), len(data), level)
    return tree.top()


def split_to_blob_or_tree(
    sink: ObjectSink, blocks: Iterable[bytes], fanbits: int = 4
) -> tuple[int, bytes, int]:
    """What `bup save` stores for a file: (mode, oid, size); one chunk is a plain blob."""
    top = _chunk_tree(sink, blocks, fanbits)
    return (*top_object(sink, top), sum(size for _, _, size in top))


def top_object(sink: ObjectSink, top: list[tuple[int, bytes, int]]) -> tuple[int, bytes]:
    """A file's (mode, oid) from its chunk tree's top list: nothing -> the empty
    blob, one entry -> that entry (a blob or a subtree), else a tree of them."""
    if not top:
        return MODE_FILE, sink.write(BLOB, b"")
    if len(top) == 1:
        return top[0][0], top[0][1]
    return MODE_TREE, make_shalist_tree(sink, top)


def split_to_tree(sink: ObjectSink, blocks: Iterable[bytes], fanbits: int = 4) -> tuple[bytes, int]:
    """What `bup split -t` prints: always a tree (one chunk -> one entry "00"...)."""
    top = _chunk_tree(sink, blocks, fanbits)
    return make_shalist_tree(sink, top), sum(size for _, _, size in top)


def split_to_blobs(sink: ObjectSink, blocks: Iterable[bytes]) -> Iterator[tuple[bytes, int]]:
    """What `bup split -b` prints: one (blob id, size) per chunk."""
    for data, _ in split_chunks(blocks, 0):
        yield sink.write(BLOB, data), len(data)
