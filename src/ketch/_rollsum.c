/* bup 0.33's hashsplit driver (bup-format.md 1.2-1.5) compiled: chunk ends and levels.
 *
 * The numpy kernel (ketch.rollsum_np) is the fallback and the tests' oracle;
 * this one scans a byte at a time at a few cycles a byte, with the GIL
 * released, so a second thread can hash and compress meanwhile.
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

/* First position i in [p, lim) after which a rollsum started fresh at p
 * splits, or -1; its bits go to *bits.  Reads nothing before p. */
static Py_ssize_t
find_hit(const uint8_t *b, Py_ssize_t p, Py_ssize_t lim, int *bits)
{
    uint32_t w = 0, x = 0;
    Py_ssize_t i = p;
    Py_ssize_t head = lim - p > WINDOW ? p + WINDOW : lim;
    for (; i < head; i++) {
        /* The byte leaving is the zero pre-fill. */
        w += b[i];
        x += w;
        if ((x & SPLIT_MASK) == X_HIT)
            goto hit;
    }
    for (; i < lim; i++) {
        uint32_t d = b[i - WINDOW];
        w += (uint32_t)b[i] - d;
        x += w - WINDOW * d;
        if ((x & SPLIT_MASK) == X_HIT)
            goto hit;
    }
    return -1;
hit:
    *bits = digest_bits(w, x);
    return i;
}

/* Chunk b[start:n] as bup does one buffer (spec 1.5, steps 3a-3c), appending
 * (end, level) pairs; with `final`, the remainder too (step 4).  Returns the
 * offset where the unconsumed rest starts, or -1 when out of memory. */
static Py_ssize_t
split_range(const uint8_t *b, Py_ssize_t start, Py_ssize_t n, int fanbits, int final, Ends *o)
{
    Py_ssize_t p = start;
    Py_ssize_t known = -1; /* a boundary the last scan found beyond a 32 KiB cut */
    int known_bits = 0;
    while (p < n) {
        Py_ssize_t hit;
        int bits = 0;
        if (known >= p + EARLY) {
            hit = find_hit(b, p, p + EARLY, &bits);
            if (hit < 0) {
                hit = known;
                bits = known_bits;
            }
        }
        else {
            hit = find_hit(b, p, n, &bits);
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
"split_buffer(buf, fanbits, /) -> bytes\n--\n\n"
"The chunks bup cuts from one buffer (spec 1.5, steps 3a-3c), as native int64\n"
"(end, level) pairs; the unconsumed rest starts at the last end (0 if none).");

static PyObject *
split_buffer(PyObject *self, PyObject *args)
{
    Py_buffer view;
    int fanbits;
    Ends o = {NULL, 0, 0};
    Py_ssize_t rest;
    if (!PyArg_ParseTuple(args, "y*i:split_buffer", &view, &fanbits))
        return NULL;
    if (check_fanbits(fanbits) < 0) {
        PyBuffer_Release(&view);
        return NULL;
    }
    Py_BEGIN_ALLOW_THREADS
    rest = split_range((const uint8_t *)view.buf, 0, view.len, fanbits, 0, &o);
    Py_END_ALLOW_THREADS
    PyBuffer_Release(&view);
    if (rest < 0) {
        PyMem_RawFree(o.v);
        return PyErr_NoMemory();
    }
    return ends_result(&o);
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
    Py_BEGIN_ALLOW_THREADS
    for (k = 0; k < count && !failed; k++) {
        Py_ssize_t s = k ? (Py_ssize_t)ends[k - 1] : 0;
        if (split_range((const uint8_t *)view.buf, s, (Py_ssize_t)ends[k], fanbits, 1, &o) < 0)
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

PyMODINIT_FUNC
PyInit__rollsum(void)
{
    return PyModule_Create(&module);
}
