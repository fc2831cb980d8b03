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

A per-byte Python loop would be ~100x too slow, so each buffer is scanned with
numpy.  Up to a constant, s1 is W(i), the sum of the 64-byte window ending at
i, and s2 is X(i), the sum of (age+1)*byte over it (newest age 0), so the split
test is X(i) == 6079 (mod 8192).  `_Kernel` evaluates X mod 256 at every
position with uint8 window doubling, then checks the 1/256 survivors exactly:
that gives the candidates of the rollsum run continuously from the buffer
start.  A chunk started at p has a fresh rollsum, which only differs from the
continuous one at p..p+62, so `Splitter._split_buffer` walks the candidates
and checks those 63 positions separately for each chunk start (speculatively
in bulk for starts right after a candidate, which is nearly all of them).
"""

from __future__ import annotations

import math
from bisect import bisect_left
from collections.abc import Iterable, Iterator
from typing import BinaryIO, Protocol

import numpy as np
import numpy.typing as npt

from ketch.errors import UsageError
from ketch.git.objects import BLOB, MODE_FILE, MODE_TREE, TREE, TreeEntry, encode_tree

BLOB_BITS = 13
BLOB_MAX = 32768
READ_SIZE = 8 * 1024 * 1024
WINDOW = 64
MAX_PER_TREE = 256
DEFAULT_FANOUT = 16

Chunk = tuple[memoryview, int]
Entry = tuple[int, bytes, int]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

_CHAR_OFFSET = 31
_S1_INIT = WINDOW * _CHAR_OFFSET  # 1984
_S2_INIT = WINDOW * (WINDOW - 1) * _CHAR_OFFSET  # 124992
_SPLIT_MASK = (1 << BLOB_BITS) - 1
# s2 = _S2_INIT + X (mod 2**32), so the split test (s2 & mask) == mask is X == _X_HIT (mod 8192).
_X_HIT = (_SPLIT_MASK - _S2_INIT) & _SPLIT_MASK  # 6079
# Positions p..p+62 after a chunk start see the fresh (zero-filled) window.
_EARLY = WINDOW - 1
# Big enough to amortise numpy's per-call overhead, small enough that the
# four uint8 scratch arrays stay in L2.
_BLOCK = 128 * 1024
# Bounds the (rows x 64) temporaries when a pathological input makes
# nearly every position a candidate.
_BATCH = 16384
# Below these sizes plain Python beats numpy's per-call overhead.
_FEW_STARTS = 4
_FEW_BITS = 32
_SMALL = 384


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


def rollsum_state(data: bytes) -> tuple[int, int]:
    """(s1, s2) of a fresh bup rollsum after feeding `data`, byte by byte.

    The slow, literal form of spec 1.2; tests use it as the reference.
    """
    s1, s2 = _S1_INIT, _S2_INIT
    window = [0] * WINDOW
    w = 0
    for c in data:
        d = window[w]
        s1 = (s1 + c - d) & 0xFFFFFFFF
        s2 = (s2 + s1 - WINDOW * (d + _CHAR_OFFSET)) & 0xFFFFFFFF
        window[w] = c
        w = (w + 1) % WINDOW
    return s1, s2


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


def _bits(s1: npt.NDArray[np.int64], s2: npt.NDArray[np.int64]) -> I64:
    """bup's "bits" for boundary states: 13 + the run of 1s from digest bit 14.

    Digest bit 13 is skipped (spec 1.4 quirk); digest bits 14-15 are s2's and
    16-31 are s1's.
    """
    r = ((s1 & 0xFFFF) << 2) | ((s2 & 0xFFFF) >> 14)
    lowest_zero = ~r & (r + 1)
    # frexp gives exponent e with lowest_zero == 2**(e-1).
    return np.frexp(lowest_zero.astype(np.float64))[1].astype(np.int64) - 1 + BLOB_BITS


def _bits_one(w: int, x: int) -> int:
    """`_bits` for one state given as its window sums W and X."""
    r = (((_S1_INIT + w) & 0xFFFF) << 2) | (((_S2_INIT + x) & 0xFFFF) >> 14)
    return (~r & (r + 1)).bit_length() - 1 + BLOB_BITS


def _early_one(buf: bytes, p: int) -> tuple[int, int]:
    """Like `_Kernel.early` for a single start; cheaper than numpy for one row."""
    w = x = 0
    # Nothing has left the fresh window yet, so X grows by the running byte sum.
    for t, c in enumerate(buf[p : p + _EARLY]):
        w += c
        x += w
        if (x & _SPLIT_MASK) == _X_HIT:
            return t, _bits_one(w, x)
    return -1, 0


def _gather(a: U8, starts: I64, width: int) -> U8:
    """Rows a[s : s + width] for each s in `starts` (all in range), as one 2-D array.

    Viewing `a` as overlapping width-byte records (a void dtype with a 1-byte
    stride) makes this one record copy per row: several times faster than
    fancy indexing a sliding_window_view, and with less per-call overhead.
    """
    records: npt.NDArray[np.void] = np.ndarray(
        (len(a) - width + 1,), dtype=np.dtype((np.void, width)), buffer=a, strides=(1,)
    )
    return records[starts].view(np.uint8).reshape(-1, width)


def _scan_small(buf: bytes) -> tuple[list[Chunk], bytes]:
    """Like `Splitter._split_buffer`, for buffers too short for numpy to pay off.

    Returns (chunk, bits) pairs and the remainder; no 32 KiB cap can apply.
    """
    mv = memoryview(buf)
    out: list[Chunk] = []
    p = 0
    w = x = 0
    for i, c in enumerate(buf):
        d = buf[i - WINDOW] if i - WINDOW >= p else 0
        w += c - d
        x += w - WINDOW * d
        if (x & _SPLIT_MASK) == _X_HIT:
            out.append((mv[p : i + 1], _bits_one(w, x)))
            p = i + 1
            w = x = 0
    return out, buf[p:]


class _Kernel:
    """Vectorised rollsum evaluation over one buffer; holds scratch space only."""

    def __init__(self) -> None:
        # Sized on first use: many files are far smaller than a block.
        self._scratch: list[U8] = []
        # Oldest byte of the window first: weights 64..1.
        self._weights = np.arange(WINDOW, 0, -1, dtype=np.uint16)

    def _x8(self, c: U8) -> U8:
        """X mod 256 at every position of `c`, with zeros before c[0].

        Window doubling: with W_k/X_k the plain/weighted sums of the last k
        bytes, X_2k(i) = X_k(i) + X_k(i-k) + k*W_k(i-k) and
        W_2k(i) = W_k(i) + W_k(i-k).  uint8 ops are the cheapest numpy has,
        so only the low 8 bits are kept here and `_verify` does the rest.
        """
        m = len(c)
        if not self._scratch or len(self._scratch[0]) < m:
            self._scratch = [np.empty(m, np.uint8) for _ in range(4)]
        w, w2, x, t = (a[:m] for a in self._scratch)
        w[:1] = c[:1]
        x[:1] = c[:1]
        np.add(c[1:], c[:-1], out=w[1:])
        np.add(w[1:], c[:-1], out=x[1:])
        k = 2
        while k < WINDOW and k < m:
            np.multiply(w[: m - k], k, out=t[k:])
            np.add(t[k:], x[: m - k], out=t[k:])
            np.add(x[k:], t[k:], out=x[k:])
            if k < WINDOW // 2:
                np.add(w[k:], w[: m - k], out=w2[k:])
                w2[:k] = w[:k]
                w, w2 = w2, w
            k *= 2
        return x

    def candidates(self, a: U8) -> tuple[I64, I64]:
        """Positions i where the continuous rollsum splits after a[i], and their bits."""
        n = len(a)
        found: list[I64] = []
        for s in range(0, n, _BLOCK):
            e = min(n, s + _BLOCK)
            lo = max(0, s - _EARLY)
            if not a[lo:e].any():
                # An all-zero window is the initial state, which never splits;
                # disk images are full of such runs.
                continue
            x = self._x8(a[lo:e])
            # Per block rather than one buffer-wide mask: 8 MiB less memory for
            # ~64 cheap calls per read.
            found.append(np.flatnonzero(x[s - lo :] == (_X_HIT & 0xFF)) + s)
        maybe = np.concatenate(found) if found else np.empty(0, np.int64)
        pos: list[I64] = []
        bits: list[I64] = []
        for i in range(0, len(maybe), _BATCH):
            p, b = self._verify(a, maybe[i : i + _BATCH])
            pos.append(p)
            bits.append(b)
        if not pos:
            return np.empty(0, np.int64), np.empty(0, np.int64)
        return np.concatenate(pos), np.concatenate(bits)

    def _windows(self, a: U8, pos: I64) -> U8:
        """The 64 bytes ending at each of `pos` (sorted), zero-filled before a[0]."""
        n_head = int(np.searchsorted(pos, _EARLY))
        if n_head:
            # Only the buffer's first 63 positions reach into the zero pre-fill.
            padded = np.zeros(_EARLY + WINDOW, np.uint8)
            head_bytes = a[:WINDOW]
            padded[_EARLY : _EARLY + len(head_bytes)] = head_bytes
            head = _gather(padded, pos[:n_head], WINDOW)
            if n_head == len(pos):
                return head
            return np.concatenate([head, _gather(a, pos[n_head:] - _EARLY, WINDOW)])
        return _gather(a, pos - _EARLY, WINDOW)

    def _verify(self, a: U8, pos: I64) -> tuple[I64, I64]:
        """Keep the positions whose exact X passes the 13-bit test; compute their bits."""
        windows = self._windows(a, pos)
        x = np.einsum("ij,j->i", windows, self._weights)  # uint16: exact mod 2**16
        ok = (x & _SPLIT_MASK) == _X_HIT
        w = windows[ok].sum(axis=1, dtype=np.int64)
        x_ok = x[ok].astype(np.int64)
        if len(w) <= _FEW_BITS:
            bits = np.array(
                [_bits_one(*wx) for wx in zip(w.tolist(), x_ok.tolist(), strict=True)], np.int64
            )
            return pos[ok], bits
        return pos[ok], _bits(w + _S1_INIT, x_ok + _S2_INIT)

    def early(self, a: U8, buf: bytes, starts: I64) -> tuple[list[int], list[int]]:
        """For chunks starting at each of `starts` (sorted): the offset of a boundary
        that the fresh rollsum finds within the first 63 bytes, or -1; and its bits."""
        offsets: list[int] = []
        bits: list[int] = []
        if len(starts) <= _FEW_STARTS:
            for p in starts.tolist():
                o1, b1 = _early_one(buf, p)
                offsets.append(o1)
                bits.append(b1)
            return offsets, bits
        for i in range(0, len(starts), _BATCH):
            o, b = self._early_batch(a, starts[i : i + _BATCH])
            offsets += o
            bits += b
        return offsets, bits

    def _early_batch(self, a: U8, starts: I64) -> tuple[list[int], list[int]]:
        n = len(a)
        # Windows of starts >= base run past the end: read them from a
        # zero-padded copy of the tail, and mask the padding out below.
        base = max(0, n - _EARLY)
        tail = np.zeros(2 * _EARLY, np.uint8)
        tail[: n - base] = a[base:]
        k = int(np.searchsorted(starts, base))
        g = _gather(tail, starts[k:] - base, _EARLY)
        if k:
            g = np.concatenate([_gather(a, starts[:k], _EARLY), g])
        # Fresh window: nothing has left yet, so X is the cumsum of the cumsum.
        w = np.cumsum(g, axis=1, dtype=np.uint16)  # exact: at most 63*255
        x = np.cumsum(w, axis=1, dtype=np.uint16)  # exact mod 2**16, all we need
        hit = (x & _SPLIT_MASK) == _X_HIT
        hit &= (starts[:, None] + np.arange(_EARLY)[None, :]) < n
        rows = np.flatnonzero(hit.any(axis=1))
        offsets = np.full(len(starts), -1, np.int64)
        bits = np.zeros(len(starts), np.int64)
        if rows.size:
            first = hit[rows].argmax(axis=1)
            offsets[rows] = first
            bits[rows] = _bits(
                w[rows, first].astype(np.int64) + _S1_INIT,
                x[rows, first].astype(np.int64) + _S2_INIT,
            )
        return offsets.tolist(), bits.tolist()


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
        self._kernel = _Kernel()

    def feed(self, block: bytes) -> Iterator[Chunk]:
        """The chunks completed by appending `block` (computed eagerly)."""
        if not block:
            # bup never appends an empty read, so it would not rescan here.
            return iter(())
        buf = self._rest + bytes(block) if self._rest else block
        if not isinstance(buf, bytes):
            buf = bytes(buf)
        chunks, self._rest = self._split_buffer(buf)
        return iter(chunks)

    def finish(self) -> Iterator[Chunk]:
        """The final remainder chunk (level 0), if any."""
        rest, self._rest = self._rest, b""
        if rest:
            yield memoryview(rest), 0

    def _level(self, bits: int) -> int:
        return (bits - BLOB_BITS) // self._fanbits if self._fanbits else 0

    def _split_buffer(self, buf: bytes) -> tuple[list[Chunk], bytes]:
        n = len(buf)
        if n <= _SMALL:
            small, rest = _scan_small(buf)
            return [(c, self._level(bits)) for c, bits in small], rest
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
                    off, bits = _early_one(buf, p)
                min_pos = p + _EARLY
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
                out.append((mv[p:end], self._level(bits)))
                p = end
        # No boundary in the rest: cut it in 32 KiB pieces without rescanning.
        while n - p >= BLOB_MAX:
            out.append((mv[p : p + BLOB_MAX], 0))
            p += BLOB_MAX
        return out, buf[p:]


def _early_bounded(buf: bytes, p: int, end: int) -> tuple[int, int]:
    """`_early_one` that stops at `end` (the end of the file being split)."""
    w = x = 0
    for t, c in enumerate(buf[p : min(p + _EARLY, end)]):
        w += c
        x += w
        if (x & _SPLIT_MASK) == _X_HIT:
            return t, _bits_one(w, x)
    return -1, 0


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
    mv = memoryview(buf)
    starts = np.cumsum([0] + [len(d) for d in datas[:-1]], dtype=np.int64)
    # Fresh-state checks for the two kinds of chunk start that nearly all chunks
    # have (a file's start, right after a candidate), in bulk; the rare others
    # (after a 32 KiB cut or an early boundary) are scanned one by one.  A hit
    # found past the end of its file is ignored where it is used.
    early_at: dict[int, tuple[int, int]] = {}
    cand: list[int] = []
    cand_bits: list[int] = []
    if len(buf) > _SMALL:
        kernel = _Kernel()
        a = np.frombuffer(buf, np.uint8)
        cand_arr, bits_arr = kernel.candidates(a)
        cand = cand_arr.tolist()
        cand_bits = bits_arr.tolist()
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
            off, bits = _early_bounded(buf, p, e) if got is None else got
            if off >= 0 and p + off < e:
                end = p + off + 1
            else:
                j = bisect_left(cand, p + _EARLY, j)
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
    """Write a chunk tree: entries named by hex offset, padded to the total's width."""
    total = sum(size for _, _, size in entries)
    width = len(b"%x" % total)
    tree_entries = []
    ofs = 0
    for mode, oid, size in entries:
        tree_entries.append(TreeEntry(mode, b"%0*x" % (width, ofs), oid))
        ofs += size
    return sink.write(TREE, encode_tree(tree_entries))


class ChunkTree:
    """bup's level stacks (spec 1.6): chunks go in with a level, a top list comes out."""

    def __init__(self, sink: ObjectSink) -> None:
        self._sink = sink
        self._stacks: list[list[Entry]] = [[]]

    def add(self, mode: int, oid: bytes, size: int, level: int) -> None:
        self._stacks[0].append((mode, oid, size))
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
