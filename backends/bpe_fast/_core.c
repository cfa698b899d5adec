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

/* back to the state of a new object: what __init__ left half built, or dealloc */
static void Encoder_clear(Encoder *self) {
    for (Py_ssize_t i = 0; i < self->count; i++)
        Py_DECREF(self->slots[i].id);
    self->count = 0;
    PyMem_Free(self->slots);
    PyMem_Free(self->table);
    PyMem_Free(self->blob);
    PyMem_Free(self->pair);
    self->slots = NULL;
    self->table = NULL;
    self->blob = NULL;
    self->pair = NULL;
    memset(self->byte, 0, sizeof(self->byte));
    Py_CLEAR(self->cache);
}

static int Encoder_build(Encoder *self, PyObject *args, PyObject *kwds);

static int Encoder_init(Encoder *self, PyObject *args, PyObject *kwds) {
    if (self->slots) {
        PyErr_SetString(PyExc_RuntimeError, "Encoder: already initialized");
        return -1;
    }
    if (Encoder_build(self, args, kwds) < 0) {
        Encoder_clear(self);
        return -1;
    }
    return 0;
}

static int Encoder_build(Encoder *self, PyObject *args, PyObject *kwds) {
    static char *kwlist[] = {"ranks", "cache_max", NULL};
    PyObject *ranks;
    Py_ssize_t cache_max;
    if (!PyArg_ParseTupleAndKeywords(args, kwds, "O!n", kwlist, &PyDict_Type, &ranks,
                                     &cache_max))
        return -1;
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
    Encoder_clear(self);
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
    PyObject *piece = NULL; /* held while in use: code run by the GC could change the list */
    for (Py_ssize_t k = 0; k < PyList_GET_SIZE(pieces); k++) {
        Py_XSETREF(piece, Py_NewRef(PyList_GET_ITEM(pieces, k)));
        if (!PyUnicode_CheckExact(piece)) { /* a subclass's __hash__ or __eq__ could run code */
            PyErr_Format(PyExc_TypeError, "pieces: expected str (not a subclass), got %s at %zd",
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
    Py_XDECREF(piece);
    if (covered != total) {
        Py_DECREF(out);
        Py_RETURN_NONE;
    }
    return out;
fail:
    Py_XDECREF(piece);
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


/* ---- the preset patterns on ASCII text, as hand-written scanners ----
 * split(text, preset, pos, endpos, stop) -> list[str] is re.findall of the preset's pattern
 * over text[pos:endpos] (ASCII there; endpos is the end of the string for `$` and look-aheads),
 * for preset 0 gpt2, 1 cl100k_base, 2 o200k_base, up to the first piece that starts at stop
 * or later. Each scanner takes the pattern's branches in
 * order at a piece's start, as the regex engine does; spec/tokenizer.py has the patterns and
 * tests/backends/test_bpe_fast_pretokenize.py checks the scanners against the reference. */

enum { K_UPPER = 1, K_LOWER = 2, K_DIGIT = 4, K_SPACE = 8, K_OTHER = 16 };
#define K_LETTER (K_UPPER | K_LOWER)

static unsigned char kind_of[128];

static void init_kinds(void) {
    for (int c = 0; c < 128; c++)
        kind_of[c] = K_OTHER;
    for (int c = 'A'; c <= 'Z'; c++)
        kind_of[c] = K_UPPER;
    for (int c = 'a'; c <= 'z'; c++)
        kind_of[c] = K_LOWER;
    for (int c = '0'; c <= '9'; c++)
        kind_of[c] = K_DIGIT;
    const char *spaces = " \t\n\r\v\f"; /* \s on ASCII, for re and regex alike */
    for (const char *c = spaces; *c; c++)
        kind_of[(unsigned char)*c] = K_SPACE;
}

typedef struct {
    const Py_UCS1 *t; /* text, one byte per character over [pos, end) */
    Py_ssize_t end;
} Text;

static int kind(const Text *x, Py_ssize_t i) { return i < x->end ? kind_of[x->t[i]] : 0; }
static int at(const Text *x, Py_ssize_t i) { return i < x->end ? x->t[i] : -1; }
static int lower(int c) { return c >= 'A' && c <= 'Z' ? c + 32 : c; }
static int is_crlf(int c) { return c == '\r' || c == '\n'; }

static Py_ssize_t run(const Text *x, Py_ssize_t i, int kinds) {
    while (i < x->end && (kind_of[x->t[i]] & kinds))
        i++;
    return i;
}

/* '(?:[sdmt]|ll|ve|re) at i (case-folded when fold): its end, or 0 */
static Py_ssize_t contraction(const Text *x, Py_ssize_t i, int fold) {
    if (at(x, i) != '\'')
        return 0;
    int a = at(x, i + 1), b = at(x, i + 2);
    if (fold) {
        a = lower(a);
        b = lower(b);
    }
    if (a == 's' || a == 'd' || a == 'm' || a == 't')
        return i + 2;
    if ((a == 'l' && b == 'l') || (a == 'v' && b == 'e') || (a == 'r' && b == 'e'))
        return i + 3;
    return 0;
}

/* \p{N}{1,3}+ at a digit: its end */
static Py_ssize_t digits3(const Text *x, Py_ssize_t i) {
    Py_ssize_t e = run(x, i, K_DIGIT);
    return e - i > 3 ? i + 3 : e;
}

/* ' ?[^\s\p{L}\p{N}]++' then a run of \r and \n (and '/' where slash) at i: its end, or 0 */
static Py_ssize_t punctuation(const Text *x, Py_ssize_t i, int slash) {
    Py_ssize_t k = at(x, i) == ' ' && (kind(x, i + 1) & K_OTHER) ? i + 1 : i;
    if (!(kind(x, k) & K_OTHER))
        return 0;
    Py_ssize_t e = run(x, k, K_OTHER);
    while (is_crlf(at(x, e)) || (slash && at(x, e) == '/'))
        e++;
    return e;
}

/* [^\r\n\p{L}\p{N}]? before a letter at i: 1 when there is one, else 0 */
static int letter_prefix(const Text *x, Py_ssize_t i) {
    return (kind(x, i) & (K_SPACE | K_OTHER)) && !is_crlf(at(x, i)) &&
           (kind(x, i + 1) & K_LETTER);
}

/* gpt2: '(?:[sdmt]|ll|ve|re)| ?\p{L}++| ?\p{N}++| ?[^\s\p{L}\p{N}]++|\s++$|\s+(?!\S)|\s */
static Py_ssize_t gpt2_piece(const Text *x, Py_ssize_t i) {
    Py_ssize_t e = contraction(x, i, 0);
    if (e)
        return e;
    Py_ssize_t k = at(x, i) == ' ' && (kind(x, i + 1) & (K_LETTER | K_DIGIT | K_OTHER)) ? i + 1 : i;
    int kd = kind(x, k);
    if (kd & K_LETTER)
        return run(x, k, K_LETTER);
    if (kd & (K_DIGIT | K_OTHER))
        return run(x, k, kd);
    e = run(x, i, K_SPACE); /* the character at i is a space */
    if (e == x->end)
        return e;                   /* \s++$ */
    return e - i >= 2 ? e - 1 : e;  /* \s+(?!\S), else \s */
}

/* the end of the whitespace run [i, e) after its last \r or \n, or 0 when it has none */
static Py_ssize_t past_last_crlf(const Text *x, Py_ssize_t i, Py_ssize_t e) {
    for (Py_ssize_t j = e; j > i; j--)
        if (is_crlf(x->t[j - 1]))
            return j;
    return 0;
}

/* cl100k_base: '(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+
 *              | ?[^\s\p{L}\p{N}]++[\r\n]*+|\s++$|\s*[\r\n]|\s+(?!\S)|\s */
static Py_ssize_t cl100k_piece(const Text *x, Py_ssize_t i) {
    Py_ssize_t e = contraction(x, i, 1);
    if (e)
        return e;
    Py_ssize_t p = i + letter_prefix(x, i);
    if (kind(x, p) & K_LETTER)
        return run(x, p, K_LETTER);
    if (kind(x, i) & K_DIGIT)
        return digits3(x, i);
    if ((e = punctuation(x, i, 0)))
        return e;
    e = run(x, i, K_SPACE);
    if (e == x->end)
        return e; /* \s++$ */
    Py_ssize_t crlf = past_last_crlf(x, i, e);
    if (crlf)
        return crlf; /* \s*[\r\n] */
    return e - i >= 2 ? e - 1 : e;
}

/* (?i:'s|'t|'re|'ve|'m|'ll|'d)? at e: past it, or e */
static Py_ssize_t o200k_suffix(const Text *x, Py_ssize_t e) {
    Py_ssize_t c = contraction(x, e, 1);
    return c ? c : e;
}

/* o200k_base: [^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:..)?
 *  |[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:..)?
 *  |\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+
 * On ASCII the first two read: an optional prefix, then uppers and lowers; either way a letter
 * must follow the prefix, and the first branch fails only where no lower follows the uppers. */
static Py_ssize_t o200k_piece(const Text *x, Py_ssize_t i) {
    Py_ssize_t p = i + letter_prefix(x, i), e;
    if (kind(x, p) & K_LETTER) {
        Py_ssize_t u = run(x, p, K_UPPER), l = run(x, u, K_LOWER);
        return o200k_suffix(x, l);
    }
    if (kind(x, i) & K_DIGIT)
        return digits3(x, i);
    if ((e = punctuation(x, i, 1)))
        return e;
    e = run(x, i, K_SPACE);
    Py_ssize_t crlf = past_last_crlf(x, i, e);
    if (crlf)
        return crlf; /* \s*[\r\n]+ */
    if (e == x->end)
        return e;                   /* \s+(?!\S) at the end */
    return e - i >= 2 ? e - 1 : e;  /* \s+(?!\S), else \s+ */
}

typedef Py_ssize_t (*Scanner)(const Text *, Py_ssize_t);
static const Scanner scanners[] = {gpt2_piece, cl100k_piece, o200k_piece};
#define N_PRESETS ((int)(sizeof(scanners) / sizeof(scanners[0])))

static PyObject *core_split(PyObject *Py_UNUSED(module), PyObject *args) {
    PyObject *text;
    int preset;
    Py_ssize_t pos = 0, endpos = PY_SSIZE_T_MAX, stop = PY_SSIZE_T_MAX;
    if (!PyArg_ParseTuple(args, "Ui|nnn", &text, &preset, &pos, &endpos, &stop))
        return NULL;
    if (preset < 0 || preset >= N_PRESETS)
        return PyErr_Format(PyExc_ValueError, "preset: expected 0 to %d, got %d",
                            N_PRESETS - 1, preset);
    Py_ssize_t n = PyUnicode_GET_LENGTH(text);
    if (endpos < 0)
        return PyErr_Format(PyExc_ValueError, "endpos: expected >= 0, got %zd", endpos);
    if (endpos > n)
        endpos = n;
    if (pos < 0 || pos > endpos)
        return PyErr_Format(PyExc_ValueError, "pos: expected 0 to %zd, got %zd", endpos, pos);
    if (stop < pos)
        stop = pos; /* no piece starts before it */
    /* x indexes text[pos:endpos]: the str's own bytes, or an ASCII copy of a wider str */
    int kind = PyUnicode_KIND(text);
    const void *data = PyUnicode_DATA(text);
    Py_UCS1 *copy = NULL;
    Text x = {(const Py_UCS1 *)data + pos, endpos - pos};
    if (kind != PyUnicode_1BYTE_KIND) {
        copy = PyMem_Malloc((size_t)x.end + 1);
        if (!copy)
            return PyErr_NoMemory();
        x.t = copy;
    }
    for (Py_ssize_t i = 0; i < x.end; i++) {
        Py_UCS4 c = PyUnicode_READ(kind, data, pos + i);
        if (c >= 128) {
            PyMem_Free(copy);
            return PyErr_Format(PyExc_ValueError, "text: expected ASCII in [%zd, %zd), "
                                "found U+%04X at %zd", pos, endpos, (unsigned)c, pos + i);
        }
        if (copy)
            copy[i] = (Py_UCS1)c;
    }
    PyObject *out = PyList_New(0);
    Scanner next = scanners[preset];
    /* pieces that start before stop (the scan still sees up to endpos) */
    Py_ssize_t last = stop < endpos ? stop - pos : x.end;
    for (Py_ssize_t i = 0; out && i < last;) {
        Py_ssize_t e = next(&x, i);
        PyObject *piece = copy ? PyUnicode_FromKindAndData(PyUnicode_1BYTE_KIND, x.t + i, e - i)
                               : PyUnicode_Substring(text, pos + i, pos + e);
        if (!piece || PyList_Append(out, piece) < 0)
            Py_CLEAR(out);
        Py_XDECREF(piece);
        i = e;
    }
    PyMem_Free(copy);
    return out;
}

static PyMethodDef core_methods[] = {
    {"split", core_split, METH_VARARGS,
     "split(text, preset, pos=0, endpos=len(text), stop=endpos) -> list[str]: the pieces "
     "of the ASCII text[pos:endpos] under preset 0 gpt2, 1 cl100k_base, 2 o200k_base, "
     "those that start before stop"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef core_module = {
    PyModuleDef_HEAD_INIT, .m_name = "_core",
    .m_doc = "bpe_fast's compiled per-piece encoder and preset scanners", .m_size = -1,
    .m_methods = core_methods,
};

PyMODINIT_FUNC PyInit__core(void) {
    init_kinds();
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
