/*
 * parse_conntrack: the entries of a ctnetlink dump, in C. Its Python twin is the parser of
 * flowscope.plugins.sources.ctnetlink (_parse_python); both give the same entries. Used when this
 * module is built and FLOWSCOPE_PURE_PYTHON is unset.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

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

/* a big-endian number of `want` bytes, or 0 when the attribute is missing or shorter */
static uint64_t be(const unsigned char *p, uint16_t have, int want) {
    if (p == NULL || have < want) return 0;
    uint64_t v = 0;
    for (int i = 0; i < want; i++) v = (v << 8) | p[i];
    return v;
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
    {"parse_conntrack", parse_conntrack, METH_VARARGS, "Parse the messages of one recv() of a ctnetlink dump."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctnetlink", "The ctnetlink dump parser of flowscope.plugins.sources.ctnetlink, in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ctnetlink(void) {
    return PyModule_Create(&module);
}
