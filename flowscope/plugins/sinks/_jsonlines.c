/*
 * LineEncoder: the json sink's Antrea JSON lines, in C. Its Python twin is
 * flowscope.plugins.sinks.json.encode_line; both give the same bytes. Used when this module is built
 * and FLOWSCOPE_PURE_PYTHON is unset.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000
#define Py_BUILD_CORE
#include <internal/pycore_dict.h>
#undef Py_BUILD_CORE
#define DIRECT_ENTRIES 1 /* the dict layout is known: a plain dict's keys and values are read in place */
#else
#define DIRECT_ENTRIES 0
#endif

#include <stdlib.h>
#include <string.h>

/*
 * LineEncoder().fill(buffer, records, timestamp, fallback) -> int: the Antrea JSON lines of the
 * records, one after the other from the start of the bytearray buffer (grown, never shrunk), and
 * where they end. A line is exactly what flowscope.plugins.sinks.json.encode_line gives: sorted keys,
 * orjson's escapes, then Go's for <, > and &. Records that are not flat dicts with str keys and str,
 * int, bool or None values are encoded by fallback(record, timestamp). Each key order seen recently
 * is kept with its sorted order, so that records of the same template are not sorted again, and with
 * the last line written in it: records repeat values (the IPFIX decoder hands out the same str object
 * for the same text), and where a run of keys holds the very objects written last time (held, so no
 * other can take their addresses; immutable, so their JSON has not changed), that run of the last
 * line is copied at once instead of being encoded again.
 */
#define LAYOUTS 4
typedef struct {
    Py_ssize_t count;
    PyObject **keys; /* strong references: no other string can take their addresses */
    Py_ssize_t *order;
    char *text;           /* the keys in sorted order, each as `"key":` (after a comma but the first) */
    Py_ssize_t *starts;   /* where each of them begins in text, and where text ends */
    PyObject **last;      /* by sorted position: the value written last (a strong reference), or NULL */
    char *line;           /* the last line's key-value pairs, between its braces */
    Py_ssize_t *line_at;  /* where each position's pair begins in line, and where line ends */
    Py_ssize_t line_size; /* what line can hold */
} Layout;

typedef struct {
    PyObject_HEAD
    Layout layouts[LAYOUTS]; /* the most recently used first */
} LineEncoder;

typedef struct {
    PyObject *buffer;
    Py_ssize_t end;
} Writer;

static char *reserve(Writer *w, Py_ssize_t n) {
    Py_ssize_t size = PyByteArray_GET_SIZE(w->buffer);
    if (w->end + n > size) {
        Py_ssize_t grown = size * 2 > w->end + n ? size * 2 : w->end + n + 65536;
        if (PyByteArray_Resize(w->buffer, grown) < 0) return NULL;
    }
    return PyByteArray_AS_STRING(w->buffer) + w->end;
}

static int put(Writer *w, const char *data, Py_ssize_t n) {
    char *out = reserve(w, n);
    if (out == NULL) return -1;
    memcpy(out, data, n);
    w->end += n;
    return 0;
}

/* what a byte of a string becomes: 0 as it is, else the escape (orjson's, then Go's for <, > and &) */
static const char *ESCAPES[256] = {
    ['"'] = "\\\"", ['\\'] = "\\\\", ['\b'] = "\\b", ['\t'] = "\\t", ['\n'] = "\\n", ['\f'] = "\\f",
    ['\r'] = "\\r", ['<'] = "\\u003c", ['>'] = "\\u003e", ['&'] = "\\u0026", [0] = "\\u0000",
    [1] = "\\u0001", [2] = "\\u0002", [3] = "\\u0003", [4] = "\\u0004", [5] = "\\u0005", [6] = "\\u0006",
    [7] = "\\u0007", [11] = "\\u000b", [14] = "\\u000e", [15] = "\\u000f", [16] = "\\u0010", [17] = "\\u0011",
    [18] = "\\u0012", [19] = "\\u0013", [20] = "\\u0014", [21] = "\\u0015", [22] = "\\u0016", [23] = "\\u0017",
    [24] = "\\u0018", [25] = "\\u0019", [26] = "\\u001a", [27] = "\\u001b", [28] = "\\u001c", [29] = "\\u001d",
    [30] = "\\u001e", [31] = "\\u001f", [0xE2] = "", /* maybe U+2028 or U+2029, which Go escapes too */
};

/* a str as JSON; 0 if it cannot be written here (not valid UTF-8) */
static int put_string(Writer *w, PyObject *text) {
    Py_ssize_t n;
    const char *data = PyUnicode_IS_ASCII(text) ? (const char *)PyUnicode_DATA(text) : NULL;
    if (data != NULL) n = PyUnicode_GET_LENGTH(text);
    else if ((data = PyUnicode_AsUTF8AndSize(text, &n)) == NULL) {
        PyErr_Clear(); /* lone surrogates: orjson refuses them, as the fallback will say */
        return 0;
    }
    char *out = reserve(w, 6 * n + 2), *p = out;
    if (out == NULL) return -1;
    *p++ = '"';
    Py_ssize_t run = 0; /* bytes copied as they are, not yet written */
    for (Py_ssize_t i = 0; i < n; i++) {
        const char *escape = ESCAPES[(unsigned char)data[i]];
        if (escape == NULL) continue;
        if (*escape == 0) { /* 0xE2 */
            if (!(i + 2 < n && (unsigned char)data[i + 1] == 0x80 &&
                  ((unsigned char)data[i + 2] == 0xA8 || (unsigned char)data[i + 2] == 0xA9)))
                continue;
            escape = (unsigned char)data[i + 2] == 0xA8 ? "\\u2028" : "\\u2029";
        }
        memcpy(p, data + run, i - run);
        p += i - run;
        size_t length = strlen(escape);
        memcpy(p, escape, length);
        p += length;
        if (*escape == '\\' && escape[1] == 'u' && escape[2] == '2') i += 2;
        run = i + 1;
    }
    memcpy(p, data + run, n - run);
    p += n - run;
    *p++ = '"';
    w->end += p - out;
    return 1;
}

/* a value as JSON; 0 if it cannot be written here */
static int put_value(Writer *w, PyObject *value) {
    char text[32];
    int n;
    if (PyUnicode_CheckExact(value)) return put_string(w, value);
    if (value == Py_None) return put(w, "null", 4) < 0 ? -1 : 1;
    if (value == Py_True) return put(w, "true", 4) < 0 ? -1 : 1;
    if (value == Py_False) return put(w, "false", 5) < 0 ? -1 : 1;
    if (!PyLong_CheckExact(value)) return 0;
    int overflow, negative = 0;
    unsigned long long magnitude;
    long long number = PyLong_AsLongLongAndOverflow(value, &overflow);
    if (overflow == 0) {
        negative = number < 0;
        magnitude = negative ? 0ULL - (unsigned long long)number : (unsigned long long)number;
    } else if (overflow > 0) {
        magnitude = PyLong_AsUnsignedLongLong(value);
        if (magnitude == (unsigned long long)-1 && PyErr_Occurred()) {
            PyErr_Clear(); /* beyond 64 bits: orjson refuses it, as the fallback will say */
            return 0;
        }
    } else return 0;
    char *p = text + sizeof text;
    do *--p = (char)('0' + magnitude % 10);
    while ((magnitude /= 10) != 0);
    if (negative) *--p = '-';
    n = (int)(text + sizeof text - p);
    return put(w, p, n) < 0 ? -1 : 1;
}

static void layout_clear(Layout *layout) {
    for (Py_ssize_t i = 0; layout->keys != NULL && i < layout->count; i++) Py_DECREF(layout->keys[i]);
    PyMem_Free(layout->keys);
    PyMem_Free(layout->order);
    PyMem_Free(layout->text);
    PyMem_Free(layout->starts);
    for (Py_ssize_t i = 0; layout->last != NULL && i < layout->count; i++) Py_XDECREF(layout->last[i]);
    PyMem_Free(layout->last);
    PyMem_Free(layout->line);
    PyMem_Free(layout->line_at);
    memset(layout, 0, sizeof *layout);
}

static PyObject **sort_keys; /* for compare_keys: set only while sorting, under the GIL */

static int compare_keys(const void *a, const void *b) {
    /* code point order, as orjson sorts (UTF-8 bytes sort the same way) */
    PyObject *x = sort_keys[*(const Py_ssize_t *)a], *y = sort_keys[*(const Py_ssize_t *)b];
    int kx = PyUnicode_KIND(x), ky = PyUnicode_KIND(y);
    Py_ssize_t nx = PyUnicode_GET_LENGTH(x), ny = PyUnicode_GET_LENGTH(y), n = nx < ny ? nx : ny;
    const void *dx = PyUnicode_DATA(x), *dy = PyUnicode_DATA(y);
    for (Py_ssize_t i = 0; i < n; i++) {
        Py_UCS4 cx = PyUnicode_READ(kx, dx, i), cy = PyUnicode_READ(ky, dy, i);
        if (cx != cy) return cx < cy ? -1 : 1;
    }
    return nx < ny ? -1 : nx > ny;
}

/* the layout of these keys: one kept, or made and kept; NULL with an error set, or without one if a
   key cannot be written here */
static Layout *find_layout(LineEncoder *self, PyObject **keys, Py_ssize_t count) {
    for (int i = 0; i < LAYOUTS; i++) {
        Layout *layout = &self->layouts[i];
        if (layout->keys == NULL || layout->count != count ||
            (count && memcmp(layout->keys, keys, count * sizeof *keys) != 0))
            continue; /* unused, or another order of keys */
        if (i > 0) { /* the most recently used first */
            Layout found = *layout;
            memmove(&self->layouts[1], &self->layouts[0], i * sizeof found);
            self->layouts[0] = found;
        }
        return &self->layouts[0];
    }
    Layout made = {count, PyMem_New(PyObject *, count ? count : 1), PyMem_New(Py_ssize_t, count ? count : 1), NULL,
                   PyMem_New(Py_ssize_t, count + 1), PyMem_Calloc(count ? count : 1, sizeof(PyObject *)), NULL,
                   PyMem_New(Py_ssize_t, count + 1), 0};
    Writer text = {PyByteArray_FromStringAndSize(NULL, 0), 0};
    if (made.keys == NULL || made.order == NULL || made.starts == NULL || made.last == NULL || made.line_at == NULL ||
        text.buffer == NULL)
        goto fail;
    for (Py_ssize_t i = 0; i < count; i++) {
        made.keys[i] = Py_NewRef(keys[i]);
        made.order[i] = i;
    }
    sort_keys = made.keys;
    qsort(made.order, count, sizeof *made.order, compare_keys);
    sort_keys = NULL;
    for (Py_ssize_t k = 0; k < count; k++) {
        made.starts[k] = text.end;
        if (k && put(&text, ",", 1) < 0) goto fail;
        int written = put_string(&text, made.keys[made.order[k]]);
        if (written <= 0 || put(&text, ":", 1) < 0) {
            if (written == 0) { /* not written here: this order is not kept */
                Py_DECREF(text.buffer);
                layout_clear(&made);
                return NULL;
            }
            goto fail;
        }
    }
    made.starts[count] = text.end;
    if ((made.text = PyMem_Malloc(text.end ? text.end : 1)) == NULL) goto fail;
    memcpy(made.text, PyByteArray_AS_STRING(text.buffer), text.end);
    Py_DECREF(text.buffer);
    layout_clear(&self->layouts[LAYOUTS - 1]);
    memmove(&self->layouts[1], &self->layouts[0], (LAYOUTS - 1) * sizeof made);
    self->layouts[0] = made;
    return &self->layouts[0];
fail:
    Py_XDECREF(text.buffer);
    layout_clear(&made);
    if (!PyErr_Occurred()) PyErr_NoMemory();
    return NULL;
}

/* the record's keys and values, in its order, into keys and values: 1, or 0 if a key is not a str */
static int items_of(PyObject *record, Py_ssize_t count, PyObject **keys, PyObject **values) {
    Py_ssize_t i = 0, pos = 0;
    PyObject *key, *value;
#if DIRECT_ENTRIES
    PyDictObject *dict = (PyDictObject *)record;
    PyDictKeysObject *dk = dict->ma_keys;
    if (dict->ma_values != NULL) { /* a split table (the IPFIX decoder's records): in insertion order */
        PyDictUnicodeEntry *entries = DK_UNICODE_ENTRIES(dk);
        const int8_t *order = (const int8_t *)dict->ma_values;
        for (; i < count; i++) {
            int8_t index = order[-3 - i]; /* CPython's layout: [-2] how many, then the order backwards */
            keys[i] = entries[index].me_key;
            values[i] = dict->ma_values->values[index];
        }
        return 1; /* split tables have str keys only */
    }
    if (DK_IS_UNICODE(dk) && dk->dk_nentries == count) { /* combined, nothing deleted: entries in order */
        PyDictUnicodeEntry *entries = DK_UNICODE_ENTRIES(dk);
        for (; i < count; i++) {
            keys[i] = entries[i].me_key;
            values[i] = entries[i].me_value;
        }
        return 1; /* unicode tables have str keys only */
    }
#endif
    while (i < count && PyDict_Next(record, &pos, &key, &value)) {
        if (!PyUnicode_CheckExact(key)) return 0;
        keys[i] = key;
        values[i++] = value;
    }
    return i == count;
}

/* one record's line; 0 if it cannot be written here (the writer is then where it was) */
static int put_record(LineEncoder *self, Writer *w, PyObject *record, const char *prefix, Py_ssize_t prefix_length) {
    if (!PyDict_CheckExact(record)) return 0;
    Py_ssize_t count = PyDict_GET_SIZE(record), start = w->end;
    PyObject *stack[2 * 96], **keys = stack;
    Py_ssize_t at_stack[96], *at = at_stack; /* where each pair begins in this line's body */
    if (count > 96) {
        keys = PyMem_New(PyObject *, 2 * count);
        at = PyMem_New(Py_ssize_t, count);
        if (keys == NULL || at == NULL) {
            PyMem_Free(keys);
            PyMem_Free(at);
            PyErr_NoMemory();
            return -1;
        }
    }
    PyObject **values = keys + count;
    int result = 0;
    if (!items_of(record, count, keys, values)) goto done;
    Layout *layout = find_layout(self, keys, count);
    if (layout == NULL) {
        result = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    if (put(w, prefix, prefix_length) < 0 || put(w, "{", 1) < 0) {
        result = -1;
        goto done;
    }
    Py_ssize_t body = w->end, run = -1; /* run: where the pairs the last line also had began */
    for (Py_ssize_t k = 0; k <= count; k++) {
        if (k < count && layout->line != NULL && values[layout->order[k]] == layout->last[k]) {
            if (run < 0) run = k;
            continue;
        }
        if (run >= 0) { /* the same pairs as the last line's: copied at once */
            Py_ssize_t from = layout->line_at[run], shift = w->end - body - from;
            if (put(w, layout->line + from, layout->line_at[k] - from) < 0) {
                result = -1;
                goto done;
            }
            for (Py_ssize_t j = run; j < k; j++) at[j] = layout->line_at[j] + shift;
            run = -1;
        }
        if (k == count) break;
        at[k] = w->end - body;
        if (put(w, layout->text + layout->starts[k], layout->starts[k + 1] - layout->starts[k]) < 0) {
            result = -1;
            goto done;
        }
        int written = put_value(w, values[layout->order[k]]);
        if (written <= 0) {
            result = written;
            goto done;
        }
    }
    Py_ssize_t length = w->end - body; /* the pairs: kept as the last line */
    if (length > layout->line_size) {
        char *grown = PyMem_Realloc(layout->line, length * 2);
        if (grown == NULL) {
            PyErr_NoMemory();
            result = -1;
            goto done;
        }
        layout->line = grown;
        layout->line_size = length * 2;
    }
    memcpy(layout->line, PyByteArray_AS_STRING(w->buffer) + body, length);
    memcpy(layout->line_at, at, count * sizeof *at);
    layout->line_at[count] = length;
    for (Py_ssize_t k = 0; k < count; k++) {
        PyObject *value = values[layout->order[k]];
        if (value != layout->last[k]) Py_XSETREF(layout->last[k], Py_NewRef(value));
    }
    result = put(w, "}}\n", 3) < 0 ? -1 : 1;
done:
    if (result <= 0) w->end = start;
    if (keys != stack) {
        PyMem_Free(keys);
        PyMem_Free(at);
    }
    return result;
}

static PyObject *encoder_fill(LineEncoder *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4 || !PyByteArray_CheckExact(args[0]) || !PyList_CheckExact(args[1]) || !PyUnicode_CheckExact(args[2]))
        return PyErr_Format(PyExc_TypeError, "fill() takes a bytearray, a list of records, a timestamp and a fallback");
    PyObject *records = args[1], *timestamp = args[2], *fallback = args[3];
    Writer w = {args[0], 0};
    /* {"@timestamp":"<timestamp>","ipfix": */
    if (put(&w, "{\"@timestamp\":", 14) < 0) return NULL;
    int plain = put_string(&w, timestamp);
    if (plain < 0 || put(&w, ",\"ipfix\":", 9) < 0) return NULL;
    Py_ssize_t prefix_length = w.end;
    char *prefix = PyMem_Malloc(prefix_length ? prefix_length : 1);
    if (prefix == NULL) return PyErr_NoMemory();
    memcpy(prefix, PyByteArray_AS_STRING(w.buffer), prefix_length);
    w.end = 0;
    PyObject *result = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        int written = plain ? put_record(self, &w, record, prefix, prefix_length) : 0;
        if (written < 0) goto done;
        if (written) continue;
        Py_INCREF(record);
        PyObject *line = PyObject_CallFunctionObjArgs(fallback, record, timestamp, NULL);
        Py_DECREF(record);
        if (line == NULL) goto done;
        if (!PyBytes_Check(line)) {
            Py_DECREF(line);
            PyErr_SetString(PyExc_TypeError, "fallback must return bytes");
            goto done;
        }
        written = put(&w, PyBytes_AS_STRING(line), PyBytes_GET_SIZE(line));
        Py_DECREF(line);
        if (written < 0) goto done;
    }
    result = PyLong_FromSsize_t(w.end);
done:
    PyMem_Free(prefix);
    return result;
}

static PyObject *encoder_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    if (PyTuple_GET_SIZE(args) || (kwargs && PyDict_GET_SIZE(kwargs)))
        return PyErr_Format(PyExc_TypeError, "LineEncoder() takes no arguments");
    return type->tp_alloc(type, 0); /* zeroed: no layouts yet */
}

static void encoder_dealloc(LineEncoder *self) {
    for (int i = 0; i < LAYOUTS; i++) layout_clear(&self->layouts[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef encoder_methods[] = {
    {"fill", (PyCFunction)(void (*)(void))encoder_fill, METH_FASTCALL,
     "fill(buffer, records, timestamp, fallback) -> where the lines end in buffer"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject LineEncoderType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowscope.plugins.sinks._jsonlines.LineEncoder",
    .tp_basicsize = sizeof(LineEncoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Antrea JSON lines of flat records, as the json sink writes them.",
    .tp_new = encoder_new,
    .tp_dealloc = (destructor)encoder_dealloc,
    .tp_methods = encoder_methods,
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_jsonlines", "The Antrea JSON line encoder of flowscope.plugins.sinks.json, in C.", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__jsonlines(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyType_Ready(&LineEncoderType) < 0 ||
                      PyModule_AddObject(m, "LineEncoder", Py_NewRef(&LineEncoderType)) < 0))
        Py_CLEAR(m);
    return m;
}
