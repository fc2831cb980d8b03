"""bup's rollsum, vectorised: where chunk boundaries fall in a buffer, and their bits.

A per-byte Python loop would be ~100x too slow, so each buffer is scanned with
numpy.  Up to a constant, s1 is W(i), the sum of the 64-byte window ending at
i, and s2 is X(i), the sum of (age+1)*byte over it (newest age 0), so the split
test is X(i) == 6079 (mod 8192).  `Kernel` evaluates X mod 256 at every
position with uint8 window doubling, then checks the 1/256 survivors exactly:
that gives the candidates of the rollsum run continuously from the buffer
start.  A chunk started at p has a fresh rollsum, which only differs from the
continuous one at p..p+62, so ketch.split's `Splitter._split_buffer_numpy`
walks the candidates and checks those 63 positions separately for each chunk
start (speculatively in bulk for starts right after a candidate, which is
nearly all of them).

This is the fallback where the compiled kernel (ketch._rollsum) was not built,
and the tests' oracle for it; ketch.split imports it only then.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BLOB_BITS = 13
WINDOW = 64

# (a chunk's bytes, its bits): what scan_small finds.
BitsChunk = tuple[memoryview, int]
U8 = npt.NDArray[np.uint8]
I64 = npt.NDArray[np.int64]

_CHAR_OFFSET = 31
_S1_INIT = WINDOW * _CHAR_OFFSET  # 1984
_S2_INIT = WINDOW * (WINDOW - 1) * _CHAR_OFFSET  # 124992
_SPLIT_MASK = (1 << BLOB_BITS) - 1
# s2 = _S2_INIT + X (mod 2**32), so the split test (s2 & mask) == mask is X == _X_HIT (mod 8192).
_X_HIT = (_SPLIT_MASK - _S2_INIT) & _SPLIT_MASK  # 6079
# Positions p..p+62 after a chunk start see the fresh (zero-filled) window.
EARLY = WINDOW - 1
# Big enough to amortise numpy's per-call overhead, small enough that the
# four uint8 scratch arrays stay in L2.
_BLOCK = 128 * 1024
# Bounds the (rows x 64) temporaries when a pathological input makes
# nearly every position a candidate.
_BATCH = 16384
# Below these sizes plain Python beats numpy's per-call overhead.
_FEW_STARTS = 4
_FEW_BITS = 32
SMALL = 384


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


def early_one(buf: bytes, p: int) -> tuple[int, int]:
    """Like `Kernel.early` for a single start; cheaper than numpy for one row."""
    w = x = 0
    # Nothing has left the fresh window yet, so X grows by the running byte sum.
    for t, c in enumerate(buf[p : p + EARLY]):
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


def scan_small(buf: bytes) -> tuple[list[BitsChunk], bytes]:
    """Like `Splitter._split_buffer`, for buffers too short for numpy to pay off.

    Returns (chunk, bits) pairs and the remainder; no 32 KiB cap can apply.
    """
    mv = memoryview(buf)
    out: list[BitsChunk] = []
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


class Kernel:
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
            lo = max(0, s - EARLY)
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
        n_head = int(np.searchsorted(pos, EARLY))
        if n_head:
            # Only the buffer's first 63 positions reach into the zero pre-fill.
            padded = np.zeros(EARLY + WINDOW, np.uint8)
            head_bytes = a[:WINDOW]
            padded[EARLY : EARLY + len(head_bytes)] = head_bytes
            head = _gather(padded, pos[:n_head], WINDOW)
            if n_head == len(pos):
                return head
            return np.concatenate([head, _gather(a, pos[n_head:] - EARLY, WINDOW)])
        return _gather(a, pos - EARLY, WINDOW)

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
                o1, b1 = early_one(buf, p)
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
        base = max(0, n - EARLY)
        tail = np.zeros(2 * EARLY, np.uint8)
        tail[: n - base] = a[base:]
        k = int(np.searchsorted(starts, base))
        g = _gather(tail, starts[k:] - base, EARLY)
        if k:
            g = np.concatenate([_gather(a, starts[:k], EARLY), g])
        # Fresh window: nothing has left yet, so X is the cumsum of the cumsum.
        w = np.cumsum(g, axis=1, dtype=np.uint16)  # exact: at most 63*255
        x = np.cumsum(w, axis=1, dtype=np.uint16)  # exact mod 2**16, all we need
        hit = (x & _SPLIT_MASK) == _X_HIT
        hit &= (starts[:, None] + np.arange(EARLY)[None, :]) < n
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


def early_bounded(buf: bytes, p: int, end: int) -> tuple[int, int]:
    """`early_one` that stops at `end` (the end of the file being split)."""
    w = x = 0
    for t, c in enumerate(buf[p : min(p + EARLY, end)]):
        w += c
        x += w
        if (x & _SPLIT_MASK) == _X_HIT:
            return t, _bits_one(w, x)
    return -1, 0
