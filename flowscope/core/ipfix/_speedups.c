/*
 * flowscope IPFIX data-set decoder, in C.
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
    K_STRING = 8, K_OCTETS = 9, K_NTP_US = 10, K_NTP_NS = 11,
};
#define VARIABLE 65535
#define NTP_EPOCH_OFFSET 2208988800LL

typedef struct {
    PyObject *key; /* borrowed from the plan tuple */
    int kind;
    Py_ssize_t length;
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
    case K_IPV4:
        snprintf(text, sizeof text, "%u.%u.%u.%u", p[0], p[1], p[2], p[3]);
        return PyUnicode_FromString(text);
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
    default: /* K_OCTETS */
        return PyBytes_FromStringAndSize((const char *)p, n);
    }
}

static PyObject *decode_set(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer body;
    PyObject *plan;
    Py_ssize_t min_length;
    if (!PyArg_ParseTuple(args, "y*O!n", &body, &PyTuple_Type, &plan, &min_length)) return NULL;
    PyObject *out = NULL;
    Py_ssize_t count = PyTuple_GET_SIZE(plan);
    Field *fields = PyMem_New(Field, count ? count : 1);
    if (fields == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *item = PyTuple_GET_ITEM(plan, i);
        if (!PyTuple_Check(item) || PyTuple_GET_SIZE(item) != 3) {
            PyErr_SetString(PyExc_TypeError, "plan items must be (key, kind, length)");
            goto done;
        }
        fields[i].key = PyTuple_GET_ITEM(item, 0);
        fields[i].kind = (int)PyLong_AsLong(PyTuple_GET_ITEM(item, 1));
        fields[i].length = PyLong_AsSsize_t(PyTuple_GET_ITEM(item, 2));
        if (PyErr_Occurred()) goto done;
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
        PyObject *record = PyDict_New();
        if (record == NULL) goto fail;
        for (Py_ssize_t i = 0; i < count; i++) {
            const Field *f = &fields[i];
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
            PyObject *value = convert(f, data + off, n);
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
    PyMem_Free(fields);
    PyBuffer_Release(&body);
    return out;
}

/*
 * parse_conntrack(data: bytes) -> (entries: list[tuple], done: bool, error: int)
 *
 * Walks the netlink messages of one recv() of a ctnetlink dump. Each entry is the tuple
 * (proto, src, dst, sport, dport, reply_src, reply_dst, reply_sport, reply_dport, packets, octets,
 *  reverse_packets, reverse_octets, start_ns, stop_ns, status, mark, zone, tcp_state, labels)
 * with addresses as text and tcp_state as the kernel's number (-1 when absent). done is true at
 * NLMSG_DONE; error is the errno of an NLMSG_ERROR (0 if none).
 */
typedef struct {
    const unsigned char *start[32];
    uint16_t length[32];
} Nest;

static void nest_read(const unsigned char *p, Py_ssize_t len, Nest *nest) {
    memset(nest, 0, sizeof *nest);
    while (len >= 4) {
        uint16_t alen, type;
        memcpy(&alen, p, 2);
        memcpy(&type, p + 2, 2);
        if (alen < 4 || alen > len) break;
        type &= 0x3FFF;
        if (type < 32) {
            nest->start[type] = p + 4;
            nest->length[type] = alen - 4;
        }
        Py_ssize_t step = (alen + 3) & ~3;
        if (step > len) break;
        p += step;
        len -= step;
    }
}

static uint64_t be(const unsigned char *p, uint16_t have, int want) {
    return (p != NULL && have >= want) ? read_be(p, want) : 0;
}

static PyObject *address(const unsigned char *p, uint16_t len) {
    char text[64];
    if (p == NULL) return PyUnicode_FromString("");
    if (len == 4) snprintf(text, sizeof text, "%u.%u.%u.%u", p[0], p[1], p[2], p[3]);
    else if (len == 16) inet_ntop(AF_INET6, p, text, sizeof text);
    else text[0] = 0;
    return PyUnicode_FromString(text);
}

/* (src, dst, proto, sport, dport) of a CTA_TUPLE_* nest; src and dst are new references */
static int ct_tuple(const unsigned char *p, uint16_t len, PyObject **src, PyObject **dst, long *proto, long *sport,
                    long *dport) {
    Nest tuple, ip, l4;
    nest_read(p, len, &tuple);
    nest_read(tuple.start[1], tuple.start[1] ? tuple.length[1] : 0, &ip);
    nest_read(tuple.start[2], tuple.start[2] ? tuple.length[2] : 0, &l4);
    int v6 = ip.start[3] != NULL;
    *src = address(v6 ? ip.start[3] : ip.start[1], v6 ? ip.length[3] : ip.length[1]);
    *dst = address(v6 ? ip.start[4] : ip.start[2], v6 ? ip.length[4] : ip.length[2]);
    *proto = (long)be(l4.start[1], l4.length[1], 1);
    *sport = (long)be(l4.start[2], l4.length[2], 2);
    *dport = (long)be(l4.start[3], l4.length[3], 2);
    return (*src != NULL && *dst != NULL) ? 0 : -1;
}

static PyObject *ct_entry(const unsigned char *p, Py_ssize_t len) {
    Nest top, counters, reverse, stamps, protoinfo, tcp;
    nest_read(p, len, &top);
    if (top.start[1] == NULL || top.start[2] == NULL) Py_RETURN_NONE;
    PyObject *src, *dst, *rsrc, *rdst;
    long proto, sport, dport, rproto, rsport, rdport;
    if (ct_tuple(top.start[1], top.length[1], &src, &dst, &proto, &sport, &dport) < 0) return NULL;
    if (ct_tuple(top.start[2], top.length[2], &rsrc, &rdst, &rproto, &rsport, &rdport) < 0) {
        Py_DECREF(src);
        Py_DECREF(dst);
        return NULL;
    }
    nest_read(top.start[9], top.start[9] ? top.length[9] : 0, &counters);
    nest_read(top.start[10], top.start[10] ? top.length[10] : 0, &reverse);
    nest_read(top.start[20], top.start[20] ? top.length[20] : 0, &stamps);
    long state = -1;
    if (top.start[4] != NULL) {
        nest_read(top.start[4], top.length[4], &protoinfo);
        if (protoinfo.start[1] != NULL) {
            nest_read(protoinfo.start[1], protoinfo.length[1], &tcp);
            if (tcp.start[1] != NULL && tcp.length[1] >= 1) state = tcp.start[1][0];
        }
    }
    PyObject *labels = top.start[22] ? PyBytes_FromStringAndSize((const char *)top.start[22], top.length[22])
                                     : PyBytes_FromStringAndSize("", 0);
    PyObject *entry = Py_BuildValue(
        "(lNNllNNllKKKKKKkkllN)", proto, src, dst, sport, dport, rsrc, rdst, rsport, rdport,
        (unsigned long long)be(counters.start[1], counters.length[1], 8),
        (unsigned long long)be(counters.start[2], counters.length[2], 8),
        (unsigned long long)be(reverse.start[1], reverse.length[1], 8),
        (unsigned long long)be(reverse.start[2], reverse.length[2], 8),
        (unsigned long long)be(stamps.start[1], stamps.length[1], 8),
        (unsigned long long)be(stamps.start[2], stamps.length[2], 8),
        (unsigned long)be(top.start[3], top.length[3], 4), (unsigned long)be(top.start[8], top.length[8], 4),
        (long)be(top.start[18], top.length[18], 2), state, labels);
    return entry;
}

static PyObject *parse_conntrack(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    PyObject *entries = PyList_New(0);
    int done = 0, error = 0;
    const unsigned char *p = data.buf;
    Py_ssize_t left = data.len;
    while (entries != NULL && left >= 16 && !done) {
        uint32_t length;
        uint16_t type;
        memcpy(&length, p, 4);
        memcpy(&type, p + 4, 2);
        if (length < 16 || length > left) break;
        if (type == 3) done = 1; /* NLMSG_DONE */
        else if (type == 2) {    /* NLMSG_ERROR */
            int32_t code = 0;
            if (length >= 20) memcpy(&code, p + 16, 4);
            error = -code;
            if (error) done = 1;
        } else if (length >= 20) {
            PyObject *entry = ct_entry(p + 20, (Py_ssize_t)length - 20);
            if (entry == NULL || (entry != Py_None && PyList_Append(entries, entry) < 0)) Py_CLEAR(entries);
            Py_XDECREF(entry);
        }
        Py_ssize_t step = (length + 3) & ~3;
        if (step > left) break;
        p += step;
        left -= step;
    }
    PyBuffer_Release(&data);
    if (entries == NULL) return NULL;
    return Py_BuildValue("(Nii)", entries, done, error);
}

static PyMethodDef methods[] = {
    {"decode_set", decode_set, METH_VARARGS, "Decode the records of one IPFIX data set following a plan."},
    {"parse_conntrack", parse_conntrack, METH_VARARGS, "Parse the messages of one recv() of a ctnetlink dump."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", "IPFIX decoding and conntrack dump parsing in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void) { return PyModule_Create(&module); }
