/* bpe_fast's compiled core: the per-piece work of encoding (tokenizer.py keeps the same logic
 * in Python as its fallback and as the test's second opinion).
 *
 * Encoder(ranks, cache_max):
 *   ranks      dict bytes -> int (non-negative, < 2**63): the mergeable tokens
 *   cache_max  how many merged pieces to keep (str -> tuple of ids)
 * encode(pieces, total) -> list[int] | None
 *   the ids of the pieces (str) in order: a piece whose UTF-8 is a token is that token, any
 *   other is merged (lowest rank first, leftmost on equal ranks) and cached; None when the
 *   pieces' lengths do not add up to `total` (the matches did not tile the text).
 * merge(piece: bytes) -> list[int]
 *   the merge alone, for tests.
 *
 * The merge is a binary heap of candidate pairs (rank, start, end) over a linked list of parts,
 * with lazy deletion: O(n log n) in the piece's length n, so a 100k-byte piece is fast too.
 * Token bytes live in one open-addressing hash table (FNV-1a, linear probing), each with its
 * id as a ready int object; single bytes and byte pairs also have direct tables.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <stdint.h>
#include <string.h>

typedef struct {
    int64_t rank;
    PyObject *id;   /* the rank as an int object */
    Py_ssize_t off; /* into blob */
    Py_ssize_t len;
} Slot;             /* a token */

typedef struct {
    uint32_t tag;   /* the hash's high half */
    uint32_t token; /* 1 + its index in slots; 0: empty */
} Entry;            /* the hash table: 8 bytes an entry, so that probes stay in cache */

typedef struct {
    PyObject_HEAD
    Slot *slots;
    Py_ssize_t count;
    Entry *table;
    size_t mask;
    char *blob;
    const Slot *byte[256];   /* the token of each single byte (check_args: all are tokens) */
    const Slot **pair;       /* [65536]: the token of each byte pair, or NULL */
    PyObject *cache;         /* dict str -> tuple of int */
    Py_ssize_t cache_max;
} Encoder;

static uint64_t fnv1a(const char *p, Py_ssize_t n) {
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < n; i++) {
        h ^= (unsigned char)p[i];
        h *= 1099511628211ULL;
    }
    return h;
}

/* the token of bytes p[0:n], or NULL when they are not a token */
static const Slot *lookup(const Encoder *e, const char *p, Py_ssize_t n) {
    if (n == 2)
        return e->pair[(unsigned char)p[0] << 8 | (unsigned char)p[1]];
    uint64_t h = fnv1a(p, n);
    uint32_t tag = (uint32_t)(h >> 32);
    for (size_t i = (size_t)h & e->mask;; i = (i + 1) & e->mask) {
        const Entry *t = &e->table[i];
        if (t->token == 0)
            return NULL;
        if (t->tag == tag) {
            const Slot *s = &e->slots[t->token - 1];
            if (s->len == n && memcmp(e->blob + s->off, p, (size_t)n) == 0)
                return s;
        }
    }
}

typedef struct {
    int64_t rank;
    Py_ssize_t start, end;
    const Slot *token;
} Cand;

static int cand_less(const Cand *a, const Cand *b) {
    return a->rank < b->rank || (a->rank == b->rank && a->start < b->start);
}

static void heap_push(Cand *heap, Py_ssize_t *size, Cand c) {
    Py_ssize_t i = (*size)++;
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (!cand_less(&c, &heap[parent]))
            break;
        heap[i] = heap[parent];
        i = parent;
    }
    heap[i] = c;
}

static Cand heap_pop(Cand *heap, Py_ssize_t *size) {
    Cand top = heap[0], last = heap[--(*size)];
    Py_ssize_t i = 0, n = *size;
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= n)
            break;
        if (child + 1 < n && cand_less(&heap[child + 1], &heap[child]))
            child++;
        if (!cand_less(&heap[child], &last))
            break;
        heap[i] = heap[child];
        i = child;
    }
    if (n > 0)
        heap[i] = last;
    return top;
}

#define SMALL 64 /* pieces up to this many bytes merge in stack buffers */

/* the ids of piece p[0:n] after merging, as a new tuple; NULL with an exception set */
static PyObject *merge_piece(const Encoder *e, const char *p, Py_ssize_t n) {
    if (n == 0)
        return PyTuple_New(0);
    /* nxt[i]: the end of the part starting at i; prv[i]: the start of the part before it
     * (-1: none; -2: i no longer starts a part); part[i]: the part's token.
     * The heap holds the n - 1 first candidates, then at most two per merge, and there are at
     * most n - 1 merges: under 3n in all. */
    Py_ssize_t nxt_s[SMALL], prv_s[SMALL];
    const Slot *part_s[SMALL];
    Cand heap_s[3 * SMALL];
    Py_ssize_t *nxt = nxt_s, *prv = prv_s;
    const Slot **part = part_s;
    Cand *heap = heap_s;
    PyObject *out = NULL;
    if (n > SMALL) {
        nxt = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n);
        prv = PyMem_Malloc(sizeof(Py_ssize_t) * (size_t)n);
        part = PyMem_Malloc(sizeof(const Slot *) * (size_t)n);
        heap = PyMem_Malloc(sizeof(Cand) * (size_t)(3 * n));
        if (!nxt || !prv || !part || !heap) {
            PyErr_NoMemory();
            goto done;
        }
    }
    Py_ssize_t size = 0;
    for (Py_ssize_t i = 0; i < n; i++) {
        nxt[i] = i + 1;
        prv[i] = i - 1;
        part[i] = e->byte[(unsigned char)p[i]];
        if (i + 1 < n) {
            const Slot *t = lookup(e, p + i, 2);
            if (t)
                heap_push(heap, &size, (Cand){t->rank, i, i + 2, t});
        }
    }
    Py_ssize_t parts = n;
    while (size > 0) {
        Cand c = heap_pop(heap, &size);
        Py_ssize_t i = c.start, j = nxt[i];
        if (prv[i] == -2 || j >= n || nxt[j] != c.end || prv[j] != i)
            continue; /* stale: i or j was merged away since */
        nxt[i] = c.end;
        part[i] = c.token;
        prv[j] = -2;
        parts--;
        if (c.end < n) {
            prv[c.end] = i;
            const Slot *t = lookup(e, p + i, nxt[c.end] - i);
            if (t)
                heap_push(heap, &size, (Cand){t->rank, i, nxt[c.end], t});
        }
        Py_ssize_t before = prv[i];
        if (before >= 0) {
            const Slot *t = lookup(e, p + before, c.end - before);
            if (t)
                heap_push(heap, &size, (Cand){t->rank, before, c.end, t});
        }
    }
    out = PyTuple_New(parts);
    if (!out)
        goto done;
    Py_ssize_t k = 0;
    for (Py_ssize_t i = 0; i < n; i = nxt[i]) {
        Py_INCREF(part[i]->id);
        PyTuple_SET_ITEM(out, k++, part[i]->id);
    }
done:
    if (n > SMALL) {
        PyMem_Free(nxt);
        PyMem_Free(prv);
        PyMem_Free(part);
        PyMem_Free(heap);
    }
    return out;
}

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ranks", "cache_max", NULL};
    PyObject *ranks;
    Py_ssize_t cache_max;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!n", kwlist, &PyDict_Type, &ranks,
                                     &cache_max))
        return -1;
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder: already initialized");
        return -1;
    }
    Py_ssize_t count = PyDict_GET_SIZE(ranks), total = 0, pos = 0;
    PyObject *key, *value;
    while (PyDict_Next(ranks, &pos, &key, &value)) {
        if (!PyBytes_Check(key) || PyBytes_GET_SIZE(key) == 0 || !PyLong_Check(value)) {
            PyErr_SetString(PyExc_ValueError,
                            "ranks: expected non-empty bytes keys and int ranks");
            return -1;
        }
        total += PyBytes_GET_SIZE(key);
    }
    if (count > (Py_ssize_t)(UINT32_MAX / 4)) {
        PyErr_SetString(PyExc_OverflowError, "ranks: too many tokens for the compiled core");
        return -1; /* the caller falls back to Python */
    }
    size_t cap = 16;
    while (cap < 2 * (size_t)count)
        cap <<= 1;
    self->slots = PyMem_Calloc((size_t)count + 1, sizeof(Slot));
    self->table = PyMem_Calloc(cap, sizeof(Entry));
    self->blob = PyMem_Malloc((size_t)total + 1);
    self->pair = PyMem_Calloc(65536, sizeof(const Slot *));
    if (!self->slots || !self->table || !self->blob || !self->pair) {
        PyErr_NoMemory();
        return -1;
    }
    self->mask = cap - 1;
    Py_ssize_t off = 0;
    pos = 0;
    while (PyDict_Next(ranks, &pos, &key, &value)) {
        long long r = PyLong_AsLongLong(value);
        if (r == -1 && PyErr_Occurred())
            return -1; /* OverflowError: the caller falls back to Python */
        if (r < 0) {
            PyErr_SetString(PyExc_ValueError, "ranks: expected non-negative int ranks");
            return -1;
        }
        Py_ssize_t n = PyBytes_GET_SIZE(key);
        const unsigned char *b = (const unsigned char *)PyBytes_AS_STRING(key);
        memcpy(self->blob + off, b, (size_t)n);
        uint64_t h = fnv1a(self->blob + off, n);
        size_t i = (size_t)h & self->mask;
        while (self->table[i].token != 0) /* keys are distinct: no equal entry to find */
            i = (i + 1) & self->mask;
        Slot *token = &self->slots[self->count++];
        Py_INCREF(value);
        *token = (Slot){r, value, off, n};
        self->table[i] = (Entry){(uint32_t)(h >> 32), (uint32_t)self->count};
        if (n == 1)
            self->byte[b[0]] = token;
        else if (n == 2)
            self->pair[b[0] << 8 | b[1]] = token;
        off += n;
    }
    for (int b = 0; b < 256; b++)
        if (!self->byte[b]) {
            PyErr_Format(PyExc_ValueError, "ranks: every single byte must be a token; "
                         "missing %d", b);
            return -1;
        }
    self->cache = PyDict_New();
    if (!self->cache)
        return -1;
    self->cache_max = cache_max;
    return 0;
}

static void Encoder_dealloc(Encoder *self) {
    for (Py_ssize_t i = 0; i < self->count; i++)
        Py_DECREF(self->slots[i].id);
    PyMem_Free(self->slots);
    PyMem_Free(self->table);
    PyMem_Free(self->blob);
    PyMem_Free(self->pair);
    Py_XDECREF(self->cache);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static int check_ready(const Encoder *self) {
    if (!self->slots || !self->cache) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder: not initialized");
        return -1;
    }
    return 0;
}

static int extend(PyObject *out, PyObject *ids) {
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(ids); k++)
        if (PyList_Append(out, PyTuple_GET_ITEM(ids, k)) < 0)
            return -1;
    return 0;
}

static PyObject *Encoder_encode(Encoder *self, PyObject *args) {
    PyObject *pieces;
    Py_ssize_t total;
    if (!PyArg_ParseTuple(args, "O!n", &PyList_Type, &pieces, &total) || check_ready(self) < 0)
        return NULL;
    PyObject *out = PyList_New(0);
    if (!out)
        return NULL;
    Py_ssize_t covered = 0;
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(pieces); k++) {
        PyObject *piece = PyList_GET_ITEM(pieces, k);
        if (!PyUnicode_Check(piece)) {
            PyErr_Format(PyExc_TypeError, "pieces: expected str, got %s at %zd",
                         Py_TYPE(piece)->tp_name, k);
            goto fail;
        }
        covered += PyUnicode_GET_LENGTH(piece);
        Py_ssize_t n;
        const char *utf8 = PyUnicode_AsUTF8AndSize(piece, &n); /* ASCII: the str's own data */
        if (!utf8)
            goto fail;
        const Slot *token = n > 0 ? lookup(self, utf8, n) : NULL;
        if (token) {
            if (PyList_Append(out, token->id) < 0)
                goto fail;
            continue;
        }
        PyObject *ids = PyDict_GetItemWithError(self->cache, piece); /* borrowed */
        if (ids) {
            if (extend(out, ids) < 0)
                goto fail;
            continue;
        }
        if (PyErr_Occurred())
            goto fail;
        ids = merge_piece(self, utf8, n); /* new reference */
        if (!ids)
            goto fail;
        if (PyDict_GET_SIZE(self->cache) < self->cache_max &&
            PyDict_SetItem(self->cache, piece, ids) < 0) {
            Py_DECREF(ids);
            goto fail;
        }
        int err = extend(out, ids);
        Py_DECREF(ids);
        if (err < 0)
            goto fail;
    }
    if (covered != total) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
fail:
    Py_DECREF(out);
    return NULL;
}

static PyObject *Encoder_merge(Encoder *self, PyObject *arg) {
    if (check_ready(self) < 0)
        return NULL;
    if (!PyBytes_Check(arg))
        return PyErr_Format(PyExc_TypeError, "piece: expected bytes, got %s",
                            Py_TYPE(arg)->tp_name);
    PyObject *ids = merge_piece(self, PyBytes_AS_STRING(arg), PyBytes_GET_SIZE(arg));
    if (!ids)
        return NULL;
    PyObject *out = PySequence_List(ids);
    Py_DECREF(ids);
    return out;
}

static PyMethodDef Encoder_methods[] = {
    {"encode", (PyCFunction)Encoder_encode, METH_VARARGS,
     "encode(pieces, total) -> list[int] | None: the ids of the pieces (None: they do not "
     "add up to total characters)"},
    {"merge", (PyCFunction)Encoder_merge, METH_O,
     "merge(piece: bytes) -> list[int]: the piece's ids after merging"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject EncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0)
    .tp_name = "lmspec.backends.bpe_fast._core.Encoder",
    .tp_basicsize = sizeof(Encoder),
    .tp_dealloc = (destructor)Encoder_dealloc,
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "bpe_fast's compiled per-piece encoder (see the module source)",
    .tp_methods = Encoder_methods,
    .tp_init = (initproc)Encoder_init,
    .tp_new = PyType_GenericNew,
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, .m_name = "_core",
    .m_doc = "bpe_fast's compiled per-piece encoder", .m_size = -1,
};

PyMODINIT_FUNC PyInit__core(void) {
    if (PyType_Ready(&EncoderType) < 0)
        return NULL;
    PyObject *m = PyModule_Create(&core_module);
    if (!m)
        return NULL;
    Py_INCREF(&EncoderType);
    if (PyModule_AddObject(m, "Encoder", (PyObject *)&EncoderType) < 0) {
        Py_DECREF(&EncoderType);
        Py_DECREF(m);
        return NULL;
    }
    return m;
}
