/* bup 0.33's hashsplit driver (bup-format.md 1.2-1.5) compiled: chunk ends and levels.
 *
 * The numpy kernel (ketch.rollsum, driven by ketch.split) is the fallback
 * without a compiler and the tests' oracle.  This one runs with the GIL
 * released, so another thread can hash and compress meanwhile; with SSE2
 * (every x86-64) eight positions at a time, elsewhere a byte at a time.
 *
 * The rollsum is kept as the window sums W (plain) and X (weighted by age+1,
 * newest 1): s1 = 1984 + W and s2 = 124992 + X (mod 2**32), so only W and X
 * are carried, and the byte leaving the window is read back from the buffer.
 * A chunk starting at p gets a fresh (zero-filled) window, which the
 * continuous rollsum equals from p + 63 on: after a 32 KiB cut inside a run
 * with no boundary, only the new chunk's first 63 positions need a new scan,
 * the boundary the previous scan found further on still stands.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>
#if defined(__SSE2__) || defined(_M_X64)
#include <emmintrin.h>
#define HAVE_SSE2 1
#endif

#define WINDOW 64
#define EARLY (WINDOW - 1)
#define BLOB_BITS 13
#define BLOB_MAX 32768
#define SPLIT_MASK ((1u << BLOB_BITS) - 1)
#define S1_INIT (WINDOW * 31u)
#define S2_INIT (WINDOW * (WINDOW - 1) * 31u)
/* (s2 & mask) == mask, as a test on X. */
#define X_HIT ((SPLIT_MASK - S2_INIT) & SPLIT_MASK)

typedef struct {
    int64_t *v; /* (end, level) pairs */
    Py_ssize_t len, cap;
} Ends;

static int
ends_push(Ends *o, int64_t end, int64_t level)
{
    if (o->len + 2 > o->cap) {
        Py_ssize_t cap = o->cap ? 2 * o->cap : 256;
        int64_t *v = PyMem_RawRealloc(o->v, (size_t)cap * sizeof(int64_t));
        if (v == NULL)
            return -1;
        o->v = v;
        o->cap = cap;
    }
    o->v[o->len++] = end;
    o->v[o->len++] = level;
    return 0;
}

/* bup's "bits" (spec 1.4): 13 + the run of 1s in the digest from bit 14 up
 * (bit 13 is skipped: bup shifts before its first test).  Digest bits 14-15
 * are s2's, 16-31 s1's. */
static int
digest_bits(uint32_t w, uint32_t x)
{
    uint32_t r = (((S1_INIT + w) & 0xffffu) << 2) | (((S2_INIT + x) & 0xffffu) >> 14);
    int bits = BLOB_BITS;
    while (r & 1) {
        r >>= 1;
        bits++;
    }
    return bits;
}

#ifdef HAVE_SSE2
/* The last lane of v in every lane. */
static inline __m128i
last_lane(__m128i v)
{
    v = _mm_shufflehi_epi16(v, 0xff);
    return _mm_unpackhi_epi64(v, v);
}

/* Running sums of v's eight lanes. */
static inline __m128i
prefix_sum(__m128i v)
{
    v = _mm_add_epi16(v, _mm_slli_si128(v, 2));
    v = _mm_add_epi16(v, _mm_slli_si128(v, 4));
    return _mm_add_epi16(v, _mm_slli_si128(v, 8));
}

/* Eight positions at a time: W and X mod 2**16 (all the split test and the
 * bits read) in eight uint16 lanes, from the per-position changes
 * W(i) - W(i-1) = c - d and X(i) - X(i-1) = W(i) - 64*d.  Advances over
 * positions [*pos, lim) up to the first group of eight that holds a split,
 * which the caller's byte loop then finds; *w and *x follow.  Needs
 * *pos >= p + 64 (a full window since the chunk start p). */
static void
scan_sse2(const uint8_t *b, Py_ssize_t *pos, Py_ssize_t lim, uint32_t *w, uint32_t *x)
{
    const __m128i zero = _mm_setzero_si128();
    const __m128i mask = _mm_set1_epi16((short)SPLIT_MASK);
    const __m128i want = _mm_set1_epi16((short)X_HIT);
    __m128i W = _mm_set1_epi16((short)*w), X = _mm_set1_epi16((short)*x);
    Py_ssize_t i = *pos;
    while (i + 16 <= lim) {
        __m128i c16 = _mm_loadu_si128((const __m128i *)(b + i));
        __m128i d16 = _mm_loadu_si128((const __m128i *)(b + i - WINDOW));
        __m128i c, d, Wl, Xl;
        if (_mm_movemask_epi8(_mm_cmpeq_epi8(c16, zero)) == 0xffff
            && _mm_movemask_epi8(_mm_cmpeq_epi16(W, zero)) == 0xffff) {
            /* W == 0: the window is all zeros (W < 2**16), the initial state,
             * which zeros keep and which never splits: disk images are full
             * of such runs. */
            i += 16;
            continue;
        }
        c = _mm_unpacklo_epi8(c16, zero);
        d = _mm_unpacklo_epi8(d16, zero);
        Wl = _mm_add_epi16(prefix_sum(_mm_sub_epi16(c, d)), W);
        Xl = _mm_add_epi16(prefix_sum(_mm_sub_epi16(Wl, _mm_slli_epi16(d, 6))), X);
        if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(Xl, mask), want)))
            break;
        W = last_lane(Wl);
        X = last_lane(Xl);
        i += 8;
        c = _mm_unpackhi_epi8(c16, zero);
        d = _mm_unpackhi_epi8(d16, zero);
        Wl = _mm_add_epi16(prefix_sum(_mm_sub_epi16(c, d)), W);
        Xl = _mm_add_epi16(prefix_sum(_mm_sub_epi16(Wl, _mm_slli_epi16(d, 6))), X);
        if (_mm_movemask_epi8(_mm_cmpeq_epi16(_mm_and_si128(Xl, mask), want)))
            break;
        W = last_lane(Wl);
        X = last_lane(Xl);
        i += 8;
    }
    *pos = i;
    *w = (uint32_t)_mm_cvtsi128_si32(W) & 0xffffu;
    *x = (uint32_t)_mm_cvtsi128_si32(X) & 0xffffu;
}
#endif

/* The scan of a rollsum started at p, from position i (>= p + 64: the
 * window is full) on to lim, with *w and *x its state at i - 1: the first
 * position that splits (state there in *w and *x) or -1.  Only the low 16
 * bits of w and x are kept exact: all the test and the bits read. */
static Py_ssize_t
scan_on(const uint8_t *b, Py_ssize_t i, Py_ssize_t lim, uint32_t *wp, uint32_t *xp)
{
    uint32_t w, x;
#ifdef HAVE_SSE2
    scan_sse2(b, &i, lim, wp, xp);
#endif
    w = *wp;
    x = *xp;
    for (; i < lim; i++) {
        uint32_t d = b[i - WINDOW];
        w += (uint32_t)b[i] - d;
        x += w - WINDOW * d;
        if ((x & SPLIT_MASK) == X_HIT)
            break;
    }
    *wp = w;
    *xp = x;
    return i < lim ? i : -1;
}

/* The bytes being chunked: byte i is block[i - r] from r on, and head[i]
 * below head_len.  A feed's remainder (r bytes) and its new read block are
 * chunked as one buffer without copying the block: head holds the remainder
 * and the block's first 64 bytes or more, so that a scan from a chunk start
 * in the remainder goes on into the block with a full window. */
typedef struct {
    const uint8_t *head;
    Py_ssize_t head_len;
    const uint8_t *block;
    Py_ssize_t r;
} Bytes;

/* First position i in [p, lim) after which a rollsum started fresh at p
 * splits, or -1; its bits go to *bits.  Reads nothing before p. */
static Py_ssize_t
find_hit(const Bytes *v, Py_ssize_t p, Py_ssize_t lim, int *bits)
{
    uint32_t w = 0, x = 0;
    const uint8_t *b = v->block;
    Py_ssize_t off = v->r; /* byte i is b[i - off] */
    Py_ssize_t i, hit, end = lim, fresh;
    if (p < v->r) {
        b = v->head;
        off = 0;
        if (end > v->head_len)
            end = v->head_len; /* >= p + 64 */
    }
    fresh = end - p > WINDOW ? p + WINDOW : end;
    for (i = p; i < fresh; i++) {
        /* The byte leaving is the zero pre-fill. */
        w += b[i - off];
        x += w;
        if ((x & SPLIT_MASK) == X_HIT) {
            *bits = digest_bits(w, x);
            return i;
        }
    }
    hit = scan_on(b, i - off, end - off, &w, &x);
    if (hit >= 0)
        hit += off;
    else if (end < lim) {
        hit = scan_on(v->block, end - v->r, lim - v->r, &w, &x);
        if (hit >= 0)
            hit += v->r;
    }
    if (hit >= 0)
        *bits = digest_bits(w, x);
    return hit;
}

/* Chunk v[start:n] as bup does one buffer (spec 1.5, steps 3a-3c), appending
 * (end, level) pairs; with `final`, the remainder too (step 4).  Returns the
 * offset where the unconsumed rest starts, or -1 when out of memory. */
static Py_ssize_t
split_range(const Bytes *v, Py_ssize_t start, Py_ssize_t n, int fanbits, int final, Ends *o)
{
    Py_ssize_t p = start;
    Py_ssize_t known = -1; /* a boundary the last scan found beyond a 32 KiB cut */
    int known_bits = 0;
    while (p < n) {
        Py_ssize_t hit;
        int bits = 0;
        if (known >= p + EARLY) {
            hit = find_hit(v, p, p + EARLY, &bits);
            if (hit < 0) {
                hit = known;
                bits = known_bits;
            }
        }
        else {
            hit = find_hit(v, p, n, &bits);
            if (hit < 0)
                break;
        }
        if (hit + 1 - p > BLOB_MAX) {
            if (ends_push(o, p + BLOB_MAX, 0) < 0)
                return -1;
            p += BLOB_MAX;
            known = hit;
            known_bits = bits;
        }
        else {
            if (ends_push(o, hit + 1, fanbits ? (bits - BLOB_BITS) / fanbits : 0) < 0)
                return -1;
            p = hit + 1;
            known = -1;
        }
    }
    /* No boundary in the rest: 32 KiB pieces without rescanning. */
    while (n - p >= BLOB_MAX) {
        if (ends_push(o, p + BLOB_MAX, 0) < 0)
            return -1;
        p += BLOB_MAX;
    }
    if (final && p < n) {
        if (ends_push(o, n, 0) < 0)
            return -1;
        p = n;
    }
    return p;
}

static PyObject *
ends_result(Ends *o)
{
    PyObject *r = PyBytes_FromStringAndSize((const char *)o->v, o->len * (Py_ssize_t)sizeof(int64_t));
    PyMem_RawFree(o->v);
    return r;
}

static int
check_fanbits(int fanbits)
{
    if (fanbits < 0) {
        PyErr_SetString(PyExc_ValueError, "fanbits must not be negative");
        return -1;
    }
    return 0;
}

PyDoc_STRVAR(split_buffer_doc,
"split_buffer(buf, fanbits, rest=b'', /) -> bytes\n--\n\n"
"The chunks bup cuts from one buffer, rest + buf (spec 1.5, steps 3a-3c), as\n"
"native int64 (end, level) pairs, ends counted from the start of rest; the\n"
"unconsumed remainder starts at the last end (0 if none).  buf is not copied.");

/* The block's bytes copied after the remainder: at least a window, so that
 * scans go on into the block with full windows; more only costs copying. */
#define HEAD_EXTRA 256

static PyObject *
split_buffer(PyObject *self, PyObject *args)
{
    Py_buffer view, rest = {NULL, NULL};
    int fanbits;
    Ends o = {NULL, 0, 0};
    Bytes v = {NULL, 0, NULL, 0};
    uint8_t *head = NULL;
    Py_ssize_t done;
    if (!PyArg_ParseTuple(args, "y*i|y*:split_buffer", &view, &fanbits, &rest))
        return NULL;
    if (check_fanbits(fanbits) < 0)
        goto fail;
    v.block = (const uint8_t *)view.buf;
    if (rest.obj != NULL && rest.len > 0) {
        Py_ssize_t extra = view.len < HEAD_EXTRA ? view.len : HEAD_EXTRA;
        head = PyMem_Malloc((size_t)(rest.len + extra));
        if (head == NULL) {
            PyErr_NoMemory();
            goto fail;
        }
        memcpy(head, rest.buf, (size_t)rest.len);
        memcpy(head + rest.len, view.buf, (size_t)extra);
        v.head = head;
        v.head_len = rest.len + extra;
        v.r = rest.len;
    }
    Py_BEGIN_ALLOW_THREADS
    done = split_range(&v, 0, v.r + view.len, fanbits, 0, &o);
    Py_END_ALLOW_THREADS
    PyMem_Free(head);
    PyBuffer_Release(&view);
    if (rest.obj != NULL)
        PyBuffer_Release(&rest);
    if (done < 0) {
        PyMem_RawFree(o.v);
        return PyErr_NoMemory();
    }
    return ends_result(&o);
fail:
    PyBuffer_Release(&view);
    if (rest.obj != NULL)
        PyBuffer_Release(&rest);
    return NULL;
}

PyDoc_STRVAR(split_files_doc,
"split_files(buf, ends, fanbits, /) -> bytes\n--\n\n"
"Chunk each whole file of `buf` (file k is buf[ends[k-1]:ends[k]], `ends` a\n"
"buffer of native int64, ascending) as one buffer plus its remainder (spec 1.5\n"
"steps 3-4), as int64 (end, level) pairs; a file's last chunk ends at its end.");

static PyObject *
split_files(PyObject *self, PyObject *args)
{
    Py_buffer view, ends_view;
    int fanbits;
    Ends o = {NULL, 0, 0};
    Py_ssize_t k, count, failed = 0;
    const int64_t *ends;
    Bytes v = {NULL, 0, NULL, 0};
    if (!PyArg_ParseTuple(args, "y*y*i:split_files", &view, &ends_view, &fanbits))
        return NULL;
    if (check_fanbits(fanbits) < 0)
        goto fail;
    if (ends_view.len % (Py_ssize_t)sizeof(int64_t)) {
        PyErr_SetString(PyExc_ValueError, "ends must hold int64 values");
        goto fail;
    }
    count = ends_view.len / (Py_ssize_t)sizeof(int64_t);
    ends = (const int64_t *)ends_view.buf;
    for (k = 0; k < count; k++) {
        if (ends[k] < (k ? ends[k - 1] : 0) || ends[k] > view.len) {
            PyErr_SetString(PyExc_ValueError, "ends must ascend within the buffer");
            goto fail;
        }
    }
    v.block = (const uint8_t *)view.buf;
    Py_BEGIN_ALLOW_THREADS
    for (k = 0; k < count && !failed; k++) {
        Py_ssize_t s = k ? (Py_ssize_t)ends[k - 1] : 0;
        if (split_range(&v, s, (Py_ssize_t)ends[k], fanbits, 1, &o) < 0)
            failed = 1;
    }
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    PyBuffer_Release(&ends_view);
    if (failed) {
        PyMem_RawFree(o.v);
        return PyErr_NoMemory();
    }
    return ends_result(&o);
fail:
    PyBuffer_Release(&view);
    PyBuffer_Release(&ends_view);
    return NULL;
}

static PyMethodDef methods[] = {
    {"split_buffer", split_buffer, METH_VARARGS, split_buffer_doc},
    {"split_files", split_files, METH_VARARGS, split_files_doc},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {
    PyModuleDef_HEAD_INIT, "ketch._rollsum",
    "bup's hashsplit driver, compiled: see ketch.split.", -1, methods,
};

/* The version of this module's interface: ketch.split refuses a build whose
   ABI differs from its KERNEL_ABI (a stale in-place build), and splits with
   numpy instead.  Raise both together when an argument or result changes. */
#define KETCH_ROLLSUM_ABI 2

PyMODINIT_FUNC
PyInit__rollsum(void)
{
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && PyModule_AddIntConstant(m, "ABI", KETCH_ROLLSUM_ABI) < 0) {
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
