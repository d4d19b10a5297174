/*
 * decode_set: the records of an IPFIX data set, in C. Its Python twin is the decoder that
 * flowscope.core.ipfix.codec generates for each template; both give the same records and raise on
 * the same input. Used when this module is built and FLOWSCOPE_PURE_PYTHON is unset.
 *
 * decode_set(body: bytes, plan: tuple, min_length: int) -> list[dict]
 *
 * plan is a tuple of (key: str, kind: int, length: int) built by flowscope.core.ipfix.codec; the
 * result is exactly what the generated Python decoder of the same template returns: records are
 * read while at least min_length bytes remain, variable-length fields use the 1-byte or 255+2-byte
 * length form, and a record whose lengths run past the set raises OverflowError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

enum {
    K_UINT = 0, K_INT = 1, K_FLOAT32 = 2, K_FLOAT64 = 3, K_BOOL = 4, K_IPV4 = 5, K_IPV6 = 6, K_MAC = 7,
    K_STRING = 8, K_OCTETS = 9, K_NTP_US = 10, K_NTP_NS = 11, K_UUID = 12,
};
#define VARIABLE 65535
#define NTP_EPOCH_OFFSET 2208988800LL

typedef struct {
    PyObject *key; /* borrowed from the plan tuple */
    int kind;
    Py_ssize_t length;
    const unsigned char *last; /* the bytes of this field in the previous record, and the value they gave */
    Py_ssize_t last_length;
    PyObject *last_value;
} Field;

static uint64_t read_be(const unsigned char *p, Py_ssize_t n) {
    uint64_t v = 0;
    for (Py_ssize_t i = 0; i < n; i++) v = (v << 8) | p[i];
    return v;
}

static PyObject *convert(const Field *f, const unsigned char *p, Py_ssize_t n) {
    char text[64];
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
    case K_IPV4: {
        char *t = text;
        for (int i = 0; i < 4; i++) {
            unsigned v = p[i];
            if (v >= 100) *t++ = (char)('0' + v / 100);
            if (v >= 10) *t++ = (char)('0' + v / 10 % 10);
            *t++ = (char)('0' + v % 10);
            *t++ = '.';
        }
        return PyUnicode_DecodeASCII(text, t - text - 1, NULL);
    }
    case K_IPV6:
        if (inet_ntop(AF_INET6, p, text, sizeof text) == NULL) return PyErr_SetFromErrno(PyExc_OSError);
        return PyUnicode_FromString(text);
    case K_MAC:
        snprintf(text, sizeof text, "%02x:%02x:%02x:%02x:%02x:%02x", p[0], p[1], p[2], p[3], p[4], p[5]);
        return PyUnicode_FromString(text);
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
    case K_UUID: { /* 16 bytes as UUID text, "" for the nil UUID and for no bytes; other lengths stay bytes */
        if (n == 0) return PyUnicode_FromStringAndSize("", 0);
        if (n != 16) return PyBytes_FromStringAndSize((const char *)p, n);
        int nil = 1;
        for (int i = 0; i < 16; i++) nil &= p[i] == 0;
        if (nil) return PyUnicode_FromStringAndSize("", 0);
        static const char hex[] = "0123456789abcdef";
        char *t = text;
        for (int i = 0; i < 16; i++) {
            if (i == 4 || i == 6 || i == 8 || i == 10) *t++ = '-';
            *t++ = hex[p[i] >> 4];
            *t++ = hex[p[i] & 15];
        }
        return PyUnicode_DecodeASCII(text, t - text, NULL);
    }
    default: /* K_OCTETS */
        return PyBytes_FromStringAndSize((const char *)p, n);
    }
}

static PyObject *decode_set(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer body;
    PyObject *plan;
    Py_ssize_t min_length;
    if (!PyArg_ParseTuple(args, "y*O!n", &body, &PyTuple_Type, &plan, &min_length)) return NULL;
    PyObject *out = NULL, *prototype = NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(plan);
    Field *fields = PyMem_New(Field, count ? count : 1);
    if (fields == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(fields, 0, sizeof(Field) * (count ? count : 1));
    if ((prototype = PyDict_New()) == NULL) goto done;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(plan, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "plan items must be (key, kind, length)");
            goto done;
        }
        fields[i].key = PyTuple_GET_ITEM(item, 0);
        fields[i].kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        fields[i].length = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2));
        if (PyErr_Occurred() || PyDict_SetItem(prototype, fields[i].key, Py_None) < 0) goto done;
    }
    if (min_length <= 0) {
        PyErr_SetString(PyExc_ValueError, "min_length must be positive");
        goto done;
    }
    out = PyList_New(0);
    if (out == NULL) goto done;
    const unsigned char *data = body.buf;
    Py_ssize_t size = body.len, off = 0;
    while (size - off >= min_length) {
        /* a copy of the prototype has the keys in place (and its table sized as if they had been
           inserted one by one): setting the values does not resize it */
        PyObject *record = PyDict_Copy(prototype);
        if (record == NULL) goto fail;
        for (Py_ssize_t i = 0; i < count; i++) {
            Field *f = &fields[i];
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
            PyObject *value;
            if (f->last_value != NULL && n == f->last_length && memcmp(f->last, data + off, n) == 0)
                value = Py_NewRef(f->last_value); /* records of a set repeat many values */
            else {
                value = convert(f, data + off, n);
                if (value != NULL) {
                    Py_XSETREF(f->last_value, Py_NewRef(value));
                    f->last = data + off;
                    f->last_length = n;
                }
            }
            off += n;
            if (value == NULL || PyDict_SetItem(record, f->key, value) < 0) {
                Py_XDECREF(value);
                Py_DECREF(record);
                goto fail;
            }
            Py_DECREF(value);
        }
        if (PyList_Append(out, record) < 0) {
            Py_DECREF(record);
            goto fail;
        }
        Py_DECREF(record);
        continue;
    overrun:
        Py_DECREF(record);
        PyErr_SetString(PyExc_OverflowError, "a record runs past the end of its set");
        goto fail;
    }
    goto done;
fail:
    Py_CLEAR(out);
done:
    if (fields != NULL)
        for (Py_ssize_t i = 0; i < count; i++) Py_XDECREF(fields[i].last_value);
    Py_XDECREF(prototype);
    PyMem_Free(fields);
    PyBuffer_Release(&body);
    return out;
}

static PyMethodDef methods[] = {
    {"decode_set", decode_set, METH_VARARGS, "Decode the records of one IPFIX data set following a plan."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_codec", "The IPFIX decoder of flowscope.core.ipfix.codec, in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__codec(void) {
    return PyModule_Create(&module);
}
