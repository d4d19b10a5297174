/*
 * Plan: the records of an IPFIX data set, in C. Its Python twin is the decoder that
 * flowscope.core.ipfix.codec generates for each template; both give the same records and raise on
 * the same input. Used when this module is built and FLOWSCOPE_PURE_PYTHON is unset.
 *
 * Plan(plan: tuple, min_length: int)(body: bytes) -> list[dict]
 * decode_data(domains: dict, data: bytes, session, now: float) -> (odid, sequence, records) | None
 *
 * plan is a tuple of (key: str, kind: int, length: int) built by flowscope.core.ipfix.codec; a Plan
 * is made once per template and called for each of its data sets. The result is exactly what the
 * generated Python decoder of the same template returns: records are read while at least
 * min_length bytes remain, variable-length fields use the 1-byte or 255+2-byte length form, and a
 * record whose lengths run past the set raises OverflowError. decode_data decodes a whole message
 * when it is the common case (see there), and otherwise leaves it to the Python decoder.
 *
 * Speed: each record is a copy of a prototype dict holding the keys in plan order, whose values are
 * then written in place (CPython 3.11's dict layout; other versions set them with PyDict_SetItem). On
 * 3.11 the copies share the prototype's keys table (split_prototype), so a record is its values only.
 * Values repeat from record to record: each field keeps the bytes and value it decoded last, and
 * text and byte values are shared through a cache of 16-byte slots keyed by a hash of their bytes
 * (and checked against them), so a pod name seen before is the same str object, not a new one
 * (values are immutable: sharing them changes nothing).
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define Py_BUILD_CORE
#include <internal/pycore_dict.h>
#undef Py_BUILD_CORE
#define IN_PLACE 1 /* the dict layout is known: values are written into the copy's entries */
#else
#define IN_PLACE 0
#endif
#if IN_PLACE && !defined(Py_DEBUG)
#define SPLIT_TABLES 1 /* records share their prototype's keys table (see split_prototype) */
#else
#define SPLIT_TABLES 0
#endif

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

enum {
    K_UINT = 0, K_INT = 1, K_FLOAT32 = 2, K_FLOAT64 = 3, K_BOOL = 4, K_IPV4 = 5, K_IPV6 = 6, K_MAC = 7,
    K_STRING = 8, K_OCTETS = 9, K_NTP_US = 10, K_NTP_NS = 11, K_UUID = 12,
};
#define VARIABLE 65535
enum { NOT_IN_PLACE = 0, COMBINED = 1, SPLIT = 2 };
#define NTP_EPOCH_OFFSET 2208988800LL
#define LAST_MAX 32 /* a field remembers its last bytes up to this length */
#define CACHE_SLOTS 16384 /* the shared cache of text and byte values (a power of 2) */
#define CACHE_MAX 48 /* ... of values decoded from at most this many bytes */

typedef struct {
    PyObject *key;
    int kind;
    Py_ssize_t length;
    int numeric; /* a number of at most 8 bytes: its last bytes are compared as one integer */
    Py_ssize_t last_length; /* the bytes of this field in the last record, and the value they gave */
    PyObject *last_value;
    uint64_t last_bits;
    unsigned char last[LAST_MAX];
} Field;

typedef struct {
    PyObject *value; /* NULL: empty */
    uint64_t hash; /* of the kind, the length and the bytes the value was decoded from */
} Slot; /* 16 bytes: the whole cache fits the processor's second-level cache */

static Slot cache[CACHE_SLOTS]; /* used under the GIL only */

static uint64_t read_be(const unsigned char *p, Py_ssize_t n) {
    uint64_t v = 0;
    switch (n) { /* the usual sizes in one load each */
    case 2: {
        uint16_t x;
        memcpy(&x, p, 2);
        return __builtin_bswap16(x);
    }
    case 4: {
        uint32_t x;
        memcpy(&x, p, 4);
        return __builtin_bswap32(x);
    }
    case 8: {
        uint64_t x;
        memcpy(&x, p, 8);
        return __builtin_bswap64(x);
    }
    }
    for (Py_ssize_t i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

/* the text of an address or UUID value, in text (64 bytes); its length, or -1 if the kind has none */
static Py_ssize_t format_text(int kind, const unsigned char *p, Py_ssize_t n, char *text) {
    static const char hex[] = "0123456789abcdef";
    char *t = text;
    switch (kind) {
    case K_IPV4:
        for (int i = 0; i < 4; i++) {
            unsigned v = p[i];
            if (v >= 100) *t++ = (char)('0' + v / 100);
            if (v >= 10) *t++ = (char)('0' + v / 10 % 10);
            *t++ = (char)('0' + v % 10);
            *t++ = '.';
        }
        return t - text - 1;
    case K_IPV6:
        if (inet_ntop(AF_INET6, p, text, 64) == NULL) return -1;
        return (Py_ssize_t)strlen(text);
    case K_MAC:
        for (int i = 0; i < 6; i++) {
            if (i) *t++ = ':';
            *t++ = hex[p[i] >> 4];
            *t++ = hex[p[i] & 15];
        }
        return t - text;
    case K_UUID: { /* 16 bytes as UUID text, "" for the nil UUID and for no bytes */
        if (n != 16 && n != 0) return -1;
        int nil = 1;
        for (Py_ssize_t i = 0; i < n; i++) nil &= p[i] == 0;
        if (nil) return 0;
        for (int i = 0; i < 16; i++) {
            if (i == 4 || i == 6 || i == 8 || i == 10) *t++ = '-';
            *t++ = hex[p[i] >> 4];
            *t++ = hex[p[i] & 15];
        }
        return t - text;
    }
    }
    return -1;
}

static PyObject *convert(const Field *f, const unsigned char *p, Py_ssize_t n) {
    char text[64];
    Py_ssize_t length = format_text(f->kind, p, n, text);
    if (length >= 0) return PyUnicode_DecodeASCII(text, length, NULL);
    switch (f->kind) {
    case K_UINT:
        return PyLong_FromUnsignedLongLong(read_be(p, n));
    case K_INT: {
        uint64_t v = read_be(p, n);
        if (n > 0 && n < 8 && (v >> (8 * n - 1)) & 1) v |= ~(uint64_t)0 << (8 * n);
        return PyLong_FromLongLong((long long)v);
    }
    case K_FLOAT32: {
        uint32_t bits = (uint32_t)read_be(p, 4);
        float value;
        memcpy(&value, &bits, 4);
        return PyFloat_FromDouble((double)value);
    }
    case K_FLOAT64: {
        uint64_t bits = read_be(p, 8);
        double value;
        memcpy(&value, &bits, 8);
        return PyFloat_FromDouble(value);
    }
    case K_BOOL:
        return PyBool_FromLong(p[0] == 1);
    case K_IPV6: /* inet_ntop refused it */
        return PyErr_SetFromErrno(PyExc_OSError);
    case K_STRING:
        if (f->length != VARIABLE) while (n > 0 && p[n - 1] == 0) n--; /* fixed-length strings: strip NULs */
        return PyUnicode_DecodeUTF8((const char *)p, n, "replace");
    case K_NTP_US: {
        uint64_t v = read_be(p, 8);
        long long seconds = (long long)(v >> 32) - NTP_EPOCH_OFFSET;
        uint64_t frac = ((v & 0xFFFFFFFFULL) >> 11) * 1000000ULL + (1ULL << 20);
        return PyLong_FromLongLong(seconds * 1000000LL + (long long)(frac >> 21));
    }
    case K_NTP_NS: {
        uint64_t v = read_be(p, 8);
        long long seconds = (long long)(v >> 32) - NTP_EPOCH_OFFSET;
        uint64_t frac = (v & 0xFFFFFFFFULL) * 1000000000ULL + (1ULL << 31);
        return PyLong_FromLongLong(seconds * 1000000000LL + (long long)(frac >> 32));
    }
    case K_UUID: /* other lengths than 16 stay bytes */
        return PyBytes_FromStringAndSize((const char *)p, n);
    default: /* K_OCTETS */
        return PyBytes_FromStringAndSize((const char *)p, n);
    }
}

/* whether n bytes are equal: short runs, compared a word at a time without a call */
static inline int same_bytes(const unsigned char *a, const unsigned char *b, Py_ssize_t n) {
    for (; n >= 8; a += 8, b += 8, n -= 8) {
        uint64_t x, y;
        memcpy(&x, a, 8);
        memcpy(&y, b, 8);
        if (x != y) return 0;
    }
    for (; n > 0; n--)
        if (*a++ != *b++) return 0;
    return 1;
}

/* the cache slot of (tag, bytes): a word at a time */
static inline uint64_t hash_bytes(int tag, const unsigned char *p, Py_ssize_t n) {
    uint64_t h = 0x9E3779B97F4A7C15ULL * (uint64_t)(tag + 1) ^ (uint64_t)n;
    for (; n >= 8; p += 8, n -= 8) {
        uint64_t x;
        memcpy(&x, p, 8);
        h = (h ^ x) * 0x100000001B3ULL;
        h ^= h >> 29;
    }
    uint64_t tail = 0;
    for (Py_ssize_t i = 0; i < n; i++) tail |= (uint64_t)p[i] << (8 * i);
    h = (h ^ tail) * 0x9E3779B97F4A7C15ULL;
    return h ^ (h >> 32);
}

static int cacheable(int kind) {
    return kind == K_IPV4 || kind == K_IPV6 || kind == K_MAC || kind == K_STRING || kind == K_OCTETS ||
           kind == K_UUID;
}

/* whether value is what the bytes p[0..n) of the field's kind decode to (a cacheable kind): the cache
   keeps a hash of the bytes only, and what it holds under that hash is checked against them */
static int decodes_to(const Field *f, const unsigned char *p, Py_ssize_t n, PyObject *value) {
    char text[64];
    const char *data;
    Py_ssize_t length;
    if (f->kind == K_STRING) {
        if (!PyUnicode_CheckExact(value)) return 0;
        if (f->length != VARIABLE) while (n > 0 && p[n - 1] == 0) n--;
        if (PyUnicode_IS_ASCII(value)) { /* else its UTF-8, kept by the str once made: text decoded with */
            data = PyUnicode_DATA(value); /* replacements never equals the bytes it came from */
            length = PyUnicode_GET_LENGTH(value);
        } else if ((data = PyUnicode_AsUTF8AndSize(value, &length)) == NULL) {
            PyErr_Clear();
            return 0;
        }
        return length == n && memcmp(data, p, n) == 0;
    }
    if (f->kind != K_OCTETS && (length = format_text(f->kind, p, n, text)) >= 0) /* an address, or a UUID */
        return PyUnicode_CheckExact(value) && PyUnicode_IS_ASCII(value) && PyUnicode_GET_LENGTH(value) == length &&
               memcmp(PyUnicode_DATA(value), text, length) == 0;
    /* octets, or bytes that have no text (a UUID of another length than 16) */
    return PyBytes_CheckExact(value) && PyBytes_GET_SIZE(value) == n && memcmp(PyBytes_AS_STRING(value), p, n) == 0;
}

/* the value of a field's bytes, new reference; through the shared cache for text and bytes */
static PyObject *value_of(Field *f, const unsigned char *p, Py_ssize_t n) {
    PyObject *value;
    if (f->numeric) {
        uint64_t bits = read_be(p, n);
        if (f->last_value != NULL && bits == f->last_bits) return Py_NewRef(f->last_value);
        if ((value = convert(f, p, n)) == NULL) return NULL;
        Py_XSETREF(f->last_value, Py_NewRef(value));
        f->last_bits = bits;
        return value;
    }
    if (f->last_value != NULL && n == f->last_length && same_bytes(f->last, p, n)) return Py_NewRef(f->last_value);
    if (n <= CACHE_MAX && cacheable(f->kind)) {
        uint64_t hash = hash_bytes(f->kind * 2 + (f->length != VARIABLE), p, n);
        Slot *slot = &cache[hash & (CACHE_SLOTS - 1)];
        if (slot->value != NULL && slot->hash == hash && decodes_to(f, p, n, slot->value))
            value = Py_NewRef(slot->value);
        else {
            value = convert(f, p, n);
            if (value == NULL) return NULL;
            Py_XSETREF(slot->value, Py_NewRef(value));
            slot->hash = hash;
        }
    } else {
        value = convert(f, p, n);
        if (value == NULL) return NULL;
    }
    if (n <= LAST_MAX) {
        Py_XSETREF(f->last_value, Py_NewRef(value));
        memcpy(f->last, p, n);
        f->last_length = n;
    }
    return value;
}

typedef struct {
    PyObject_HEAD
    Py_ssize_t count, min_length;
    PyObject *prototype; /* the keys in plan order, every value None */
    int layout; /* how a copy's values are written in place: NOT_IN_PLACE, COMBINED or SPLIT */
    Field *fields;
} Plan;

#if SPLIT_TABLES
#define SPLIT_CAPACITY 56 /* keys a split record can hold: its values array fits a 512-byte pymalloc block */

/* a prototype whose copies share its keys table: a split table, as CPython gives instance dicts, so a
   copy is one small values array and not a keys table of its own (43 Antrea fields: 512 bytes, not
   1,520). Split tables this large are beyond what CPython makes itself, whose debug builds assert
   they hold at most 30 keys; release builds handle any size, and debug builds keep combined tables.
   NULL without an error if the keys do not fit; NULL with MemoryError. */
static PyObject *split_prototype(const Field *fields, Py_ssize_t count) {
    if (count == 0 || count > SPLIT_CAPACITY) return NULL;
    const uint8_t log2_size = 7; /* 128 slots, for at most 85 keys: one byte an index */
    const Py_ssize_t slots = (Py_ssize_t)1 << log2_size, usable = (slots << 1) / 3;
    size_t keys_size = sizeof(PyDictKeysObject) + slots + sizeof(PyDictUnicodeEntry) * usable;
    size_t prefix = (SPLIT_CAPACITY + 2 + sizeof(PyObject *) - 1) / sizeof(PyObject *) * sizeof(PyObject *);
    size_t values_size = prefix + SPLIT_CAPACITY * sizeof(PyObject *);
    PyDictKeysObject *keys = PyObject_Malloc(keys_size);
    uint8_t *memory = PyMem_Malloc(values_size);
    PyDictObject *dict = PyObject_GC_New(PyDictObject, &PyDict_Type);
    if (keys == NULL || memory == NULL || dict == NULL) goto no_memory;
    memset(keys, 0, keys_size);
    keys->dk_refcnt = 1;
    keys->dk_log2_size = keys->dk_log2_index_bytes = log2_size;
    keys->dk_kind = DICT_KEYS_SPLIT;
    memset(keys->dk_indices, 0xff, slots); /* DKIX_EMPTY */
    PyDictUnicodeEntry *entries = DK_UNICODE_ENTRIES(keys);
    for (Py_ssize_t i = 0; i < count; i++) { /* the hash table, probed as CPython probes it */
        PyObject *key = fields[i].key;
        if (!PyUnicode_CheckExact(key)) goto refuse; /* split tables hold str keys only */
        size_t mask = slots - 1, hash = (size_t)PyObject_Hash(key), perturb = hash, at = hash & mask;
        for (int8_t index; (index = (int8_t)keys->dk_indices[at]) >= 0; at = (at * 5 + perturb + 1) & mask) {
            if (PyUnicode_Compare(entries[index].me_key, key) == 0) goto refuse; /* a key twice: not in plan order */
            perturb >>= 5;
        }
        keys->dk_indices[at] = (char)i;
        entries[i].me_key = Py_NewRef(key);
        keys->dk_nentries = i + 1;
    }
    keys->dk_usable = SPLIT_CAPACITY - count;
    memset(memory, 0, values_size);
    memory[prefix - 1] = (uint8_t)prefix;
    PyDictValues *values = (PyDictValues *)(memory + prefix);
    ((uint8_t *)values)[-2] = (uint8_t)count; /* how many are set, and in which order: plan order */
    for (Py_ssize_t i = 0; i < count; i++) {
        ((uint8_t *)values)[-3 - i] = (uint8_t)i;
        values->values[i] = Py_NewRef(Py_None);
    }
    dict->ma_keys = keys;
    dict->ma_values = values;
    dict->ma_used = count;
    dict->ma_version_tag = 0; /* only globals' and builtins' versions are read (LOAD_GLOBAL) */
    return (PyObject *)dict;
no_memory: /* nothing is set up yet */
    PyErr_NoMemory();
    if (dict != NULL) PyObject_GC_Del(dict);
    PyObject_Free(keys);
    PyMem_Free(memory);
    return NULL;
refuse:
    PyObject_GC_Del(dict); /* never set up: freed as it is */
    for (Py_ssize_t i = 0; i < keys->dk_nentries; i++) Py_DECREF(DK_UNICODE_ENTRIES(keys)[i].me_key);
    PyObject_Free(keys);
    PyMem_Free(memory);
    return NULL;
}
#endif

static void plan_dealloc(Plan *self) {
    if (self->fields != NULL)
        for (Py_ssize_t i = 0; i < self->count; i++) {
            Py_XDECREF(self->fields[i].key);
            Py_XDECREF(self->fields[i].last_value);
        }
    PyMem_Free(self->fields);
    Py_XDECREF(self->prototype);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyObject *plan_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *plan;
    Py_ssize_t min_length;
    static char *names[] = {"plan", "min_length", NULL};
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O!n", names, &PyTuple_Type, &plan, &min_length)) return NULL;
    if (min_length <= 0) return PyErr_Format(PyExc_ValueError, "min_length must be positive");
    Plan *self = (Plan *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(plan);
    self->min_length = min_length;
    self->fields = PyMem_New(Field, count ? count : 1);
    if (self->fields == NULL) {
        PyErr_NoMemory();
        goto fail;
    }
    memset(self->fields, 0, sizeof(Field) * (count ? count : 1));
    self->count = count;
    if ((self->prototype = PyDict_New()) == NULL) goto fail;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(plan, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "plan items must be (key, kind, length)");
            goto fail;
        }
        Field *f = &self->fields[i];
        f->key = Py_NewRef(PyTuple_GET_ITEM(item, 0));
        f->kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        f->length = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2));
        f->numeric = f->length <= 8 && (f->kind == K_UINT || f->kind == K_INT || f->kind == K_FLOAT32 ||
                                        f->kind == K_FLOAT64 || f->kind == K_BOOL || f->kind == K_NTP_US ||
                                        f->kind == K_NTP_NS);
        if (PyErr_Occurred() || PyDict_SetItem(self->prototype, f->key, Py_None) < 0) goto fail;
    }
#if IN_PLACE
    {
#if SPLIT_TABLES
        PyObject *split = split_prototype(self->fields, count);
        if (split == NULL && PyErr_Occurred()) goto fail;
#else
        PyObject *split = NULL;
#endif
        if (split != NULL) {
            Py_SETREF(self->prototype, split);
            self->layout = SPLIT;
        } else {
            /* in place only when a copy's entries are exactly the plan's keys, in its order */
            PyObject *probe = PyDict_Copy(self->prototype);
            if (probe == NULL) goto fail;
            PyDictObject *d = (PyDictObject *)probe;
            int ok = d->ma_values == NULL && DK_IS_UNICODE(d->ma_keys) && d->ma_keys->dk_nentries == count &&
                     d->ma_used == count;
            for (Py_ssize_t i = 0; ok && i < count; i++)
                ok = DK_UNICODE_ENTRIES(d->ma_keys)[i].me_key == self->fields[i].key;
            Py_DECREF(probe);
            self->layout = ok ? COMBINED : NOT_IN_PLACE;
        }
    }
#endif
    return (PyObject *)self;
fail:
    Py_DECREF(self);
    return NULL;
}

/* the records of a set's body, appended to out; each a copy of the prototype whose values are then set
   in plan order. -1 with an exception set (out then has the records made before) */
static int plan_decode(Plan *self, const unsigned char *data, Py_ssize_t size, PyObject *out) {
    Py_ssize_t count = self->count, min_length = self->min_length, off = 0;
    while (size - off >= min_length) {
        PyObject *record = PyDict_Copy(self->prototype);
        if (record == NULL) return -1;
        int appended = PyList_Append(out, record);
        Py_DECREF(record); /* the list holds it */
        if (appended < 0) return -1;
#if IN_PLACE
        PyObject **values = NULL; /* the values in plan order, each stride pointers after the last */
        Py_ssize_t stride = 1;
        if (self->layout == SPLIT) values = ((PyDictObject *)record)->ma_values->values;
        else if (self->layout == COMBINED) {
            values = &DK_UNICODE_ENTRIES(((PyDictObject *)record)->ma_keys)[0].me_value;
            stride = sizeof(PyDictUnicodeEntry) / sizeof(PyObject *);
        }
#endif
        for (Py_ssize_t i = 0; i < count; i++) {
            Field *f = &self->fields[i];
            Py_ssize_t n = f->length;
            if (n == VARIABLE) {
                if (off >= size) goto overrun;
                n = data[off++];
                if (n == 255) {
                    if (off + 2 > size) goto overrun;
                    n = ((Py_ssize_t)data[off] << 8) | data[off + 1];
                    off += 2;
                }
            }
            if (off + n > size) goto overrun;
            PyObject *value = value_of(f, data + off, n);
            off += n;
            if (value == NULL) return -1;
#if IN_PLACE
            if (values != NULL) {
                Py_SETREF(*values, value); /* the prototype's None, replaced */
                values += stride;
                continue;
            }
#endif
            int set = PyDict_SetItem(record, f->key, value);
            Py_DECREF(value);
            if (set < 0) return -1;
        }
    }
    return 0;
overrun:
    PyErr_SetString(PyExc_OverflowError, "a record runs past the end of its set");
    return -1;
}

static PyObject *plan_call(Plan *self, PyObject *args, PyObject *kwargs) {
    Py_buffer body;
    if (kwargs != NULL && PyDict_GET_SIZE(kwargs)) return PyErr_Format(PyExc_TypeError, "a plan takes no keywords");
    if (!PyArg_ParseTuple(args, "y*", &body)) return NULL;
    PyObject *out = PyList_New(0);
    if (out != NULL && plan_decode(self, body.buf, body.len, out) < 0) Py_CLEAR(out);
    PyBuffer_Release(&body);
    return out;
}

static PyTypeObject PlanType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowscope.core.ipfix._codec.Plan",
    .tp_basicsize = sizeof(Plan),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Plan(plan, min_length): called with a data set's body, returns its records.",
    .tp_new = plan_new,
    .tp_dealloc = (destructor)plan_dealloc,
    .tp_call = (ternaryfunc)plan_call,
};

static PyObject *s_decode, *s_expires, *s_scope_count, *s_unknown; /* attribute names of a Template */

/* the value of an int attribute; -1 with an exception set */
static long long int_attribute(PyObject *object, PyObject *name) {
    PyObject *value = PyObject_GetAttr(object, name);
    if (value == NULL) return -1;
    long long result = PyLong_AsLongLong(value);
    Py_DECREF(value);
    return result;
}

/* decode_data(domains, data, session, now) -> (odid, sequence, records) or None
 *
 * The common case of a message, at C speed: a valid header and only data sets, each of a template of
 * domains[(session, odid)] that has not expired at now, is no options template, knows all its elements
 * and has a Plan; each set holds at least one record and no record runs past its set. Anything else
 * returns None, and flowscope.core.ipfix.messages.Decoder.decode gives the full result. */
static PyObject *decode_data(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyDict_CheckExact(args[0]) || !PyBytes_CheckExact(args[1]))
        return PyErr_Format(PyExc_TypeError, "decode_data(domains: dict, data: bytes, session, now: float)");
    const unsigned char *data = (const unsigned char *)PyBytes_AS_STRING(args[1]);
    Py_ssize_t size = PyBytes_GET_SIZE(args[1]);
    double now = PyFloat_AsDouble(args[3]);
    if (now == -1.0 && PyErr_Occurred()) return NULL;
    if (size < 16 || ((data[0] << 8) | data[1]) != 10) Py_RETURN_NONE;
    Py_ssize_t end = (data[2] << 8) | data[3];
    if (end < 16 || end > size) Py_RETURN_NONE;
    uint32_t sequence = (uint32_t)read_be(data + 8, 4), odid = (uint32_t)read_be(data + 12, 4);
    PyObject *records = NULL, *domain, *key = NULL, *id = NULL, *template = NULL, *decode = NULL;
    PyObject *odid_object = PyLong_FromUnsignedLong(odid);
    if (odid_object == NULL) return NULL;
    key = PyTuple_Pack(2, args[2], odid_object);
    Py_DECREF(odid_object);
    if (key == NULL) return NULL;
    domain = PyDict_GetItemWithError(args[0], key); /* borrowed */
    Py_DECREF(key);
    if (domain == NULL) {
        if (PyErr_Occurred()) return NULL;
        Py_RETURN_NONE;
    }
    if (!PyDict_CheckExact(domain)) Py_RETURN_NONE;
    if ((records = PyList_New(0)) == NULL) return NULL;
    Py_INCREF(domain);
    Py_ssize_t position = 16;
    if (position >= end) goto slow_domain;
    while (position < end) {
        if (end - position < 4) goto slow_domain;
        unsigned set_id = (data[position] << 8) | data[position + 1];
        Py_ssize_t set_length = (data[position + 2] << 8) | data[position + 3];
        if (set_id < 256 || set_length < 4 || position + set_length > end) goto slow_domain;
        if ((id = PyLong_FromUnsignedLong(set_id)) == NULL) goto error;
        template = PyDict_GetItemWithError(domain, id);
        Py_CLEAR(id);
        if (template == NULL) {
            if (PyErr_Occurred()) goto error;
            goto slow_domain;
        }
        Py_INCREF(template);
        PyObject *expires_object = PyObject_GetAttr(template, s_expires);
        if (expires_object == NULL) goto error;
        double expires = PyFloat_AsDouble(expires_object);
        Py_DECREF(expires_object);
        if (expires == -1.0 && PyErr_Occurred()) goto error;
        if (expires < now) goto slow_template;
        long long scope = int_attribute(template, s_scope_count), unknown;
        if (scope == -1 && PyErr_Occurred()) goto error;
        unknown = int_attribute(template, s_unknown);
        if (unknown == -1 && PyErr_Occurred()) goto error;
        if (scope != 0 || unknown != 0) goto slow_template;
        if ((decode = PyObject_GetAttr(template, s_decode)) == NULL) goto error;
        Py_CLEAR(template);
        if (!PyObject_TypeCheck(decode, &PlanType)) goto slow_domain;
        Py_ssize_t before = PyList_GET_SIZE(records);
        if (plan_decode((Plan *)decode, data + position + 4, set_length - 4, records) < 0) {
            if (!PyErr_ExceptionMatches(PyExc_OverflowError)) goto error;
            PyErr_Clear(); /* a record_overrun: the full decoder reports it */
            goto slow_domain;
        }
        Py_CLEAR(decode);
        if (PyList_GET_SIZE(records) == before) goto slow_domain; /* a short_set */
        position += set_length;
    }
    Py_DECREF(domain);
    PyObject *result = PyTuple_New(3);
    if (result == NULL) {
        Py_DECREF(records);
        return NULL;
    }
    PyTuple_SET_ITEM(result, 2, records);
    PyObject *number = PyLong_FromUnsignedLong(odid);
    if (number == NULL) goto result_failed;
    PyTuple_SET_ITEM(result, 0, number);
    if ((number = PyLong_FromUnsignedLong(sequence)) == NULL) goto result_failed;
    PyTuple_SET_ITEM(result, 1, number);
    return result;
result_failed:
    Py_DECREF(result); /* with the records, and whatever was set */
    return NULL;
slow_template:
    Py_CLEAR(template);
slow_domain:
    Py_XDECREF(decode);
    Py_DECREF(domain);
    Py_DECREF(records);
    Py_RETURN_NONE;
error:
    Py_XDECREF(template);
    Py_XDECREF(decode);
    Py_DECREF(domain);
    Py_XDECREF(records);
    return NULL;
}

static PyMethodDef methods[] = {
    {"decode_data", (PyCFunction)(void (*)(void))decode_data, METH_FASTCALL,
     "decode_data(domains, data, session, now) -> (odid, sequence, records), or None off the common case"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_codec", "The IPFIX decoder of flowscope.core.ipfix.codec, in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__codec(void) {
    s_decode = PyUnicode_InternFromString("decode");
    s_expires = PyUnicode_InternFromString("expires");
    s_scope_count = PyUnicode_InternFromString("scope_count");
    s_unknown = PyUnicode_InternFromString("unknown");
    if (s_decode == NULL || s_expires == NULL || s_scope_count == NULL || s_unknown == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyType_Ready(&PlanType) < 0 || PyModule_AddObject(m, "Plan", Py_NewRef(&PlanType)) < 0))
        Py_CLEAR(m);
    return m;
}
