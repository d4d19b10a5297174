/*
 * drain: the ipfix source's UDP receive loop, in C. Its Python twin is the loop of
 * flowscope.plugins.sources.ipfix.IpfixSource._run_udp that reads datagrams with recvfrom and hands
 * each to _decode; both give the same records, counts and sequence checks. Used when this module is
 * built, FLOWSCOPE_PURE_PYTHON is unset and exporterFields is off.
 *
 * drain(fd, decode_data, domains, now, peers, expected, tally, records, limit) -> (status, detail)
 *
 * Reads the datagrams waiting on the non-blocking UDP socket fd, one by one, and decodes each with
 * decode_data(domains, data, session, now) (flowscope.core.ipfix's common case, see _codec.c). A
 * message it decodes is counted in tally[exporter] ([messages, records]), its records are appended to
 * records, and expected[(session, odid)] moves past them. It returns when
 *   DRAINED (0): no datagram is waiting;                                   detail None
 *   FULL (1): records holds at least limit records;                        detail None
 *   OTHER (2): a datagram is not the common case, and was not counted;     detail (data, session, exporter)
 *   SEQUENCE (3): a decoded message's sequence number is not the expected
 *      one; it is counted and its records appended, expected is unchanged; detail (session, odid, sequence,
 *                                                                                  count, exporter)
 * so that the caller deals with the last two in their turn and calls again. A session is ("udp", host,
 * port) as Python's recvfrom gives them, and the exporter its host; peers keeps both by the raw
 * address, so a sender's objects are made once. A receive error other than EAGAIN raises OSError.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>

#define MAX_DATAGRAM 65535
enum { DRAINED = 0, FULL = 1, OTHER = 2, SEQUENCE = 3 };

static PyObject *s_udp;

/* (session, exporter) of a sender: from peers, or made and kept there; NULL with an error set */
static PyObject *peer_of(PyObject *peers, const struct sockaddr_storage *address, socklen_t length) {
    PyObject *raw = PyBytes_FromStringAndSize((const char *)address, length);
    if (raw == NULL) return NULL;
    PyObject *peer = PyDict_GetItemWithError(peers, raw); /* borrowed */
    if (peer != NULL || PyErr_Occurred()) {
        Py_DECREF(raw);
        return Py_XNewRef(peer);
    }
    char host[NI_MAXHOST];
    int port;
    if (address->ss_family == AF_INET) {
        const struct sockaddr_in *v4 = (const struct sockaddr_in *)address;
        inet_ntop(AF_INET, &v4->sin_addr, host, sizeof host);
        port = ntohs(v4->sin_port);
    } else { /* as Python's socket module writes an IPv6 address: with its %scope if it has one */
        int failed = getnameinfo((const struct sockaddr *)address, length, host, sizeof host, NULL, 0, NI_NUMERICHOST);
        if (failed) {
            Py_DECREF(raw);
            return PyErr_Format(PyExc_OSError, "cannot read a sender's address: %s", gai_strerror(failed));
        }
        port = ntohs(((const struct sockaddr_in6 *)address)->sin6_port);
    }
    PyObject *exporter = PyUnicode_FromString(host), *session = NULL;
    if (exporter != NULL) session = Py_BuildValue("(OOi)", s_udp, exporter, port);
    if (session != NULL) peer = PyTuple_Pack(2, session, exporter);
    Py_XDECREF(session);
    Py_XDECREF(exporter);
    if (peer != NULL && PyDict_SetItem(peers, raw, peer) < 0) Py_CLEAR(peer);
    Py_DECREF(raw);
    return peer;
}

/* tally[exporter] = [messages + 1, records + count]; -1 with an error set */
static int count_message(PyObject *tally, PyObject *exporter, Py_ssize_t count) {
    PyObject *pair = PyDict_GetItemWithError(tally, exporter); /* borrowed */
    if (pair == NULL) {
        if (PyErr_Occurred()) return -1;
        pair = Py_BuildValue("[ii]", 0, 0);
        if (pair == NULL) return -1;
        int set = PyDict_SetItem(tally, exporter, pair);
        Py_DECREF(pair);
        if (set < 0) return -1;
    }
    if (!PyList_CheckExact(pair) || PyList_GET_SIZE(pair) != 2) {
        PyErr_SetString(PyExc_TypeError, "tally values must be [messages, records] lists");
        return -1;
    }
    for (int i = 0; i < 2; i++) {
        long long now = PyLong_AsLongLong(PyList_GET_ITEM(pair, i));
        if (now == -1 && PyErr_Occurred()) return -1;
        PyObject *number = PyLong_FromLongLong(now + (i ? count : 1));
        if (number == NULL) return -1;
        PyList_SetItem(pair, i, number); /* steals it, and drops the old one */
    }
    return 0;
}

static PyObject *drain(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 9)
        return PyErr_Format(PyExc_TypeError,
                            "drain(fd, decode_data, domains, now, peers, expected, tally, records, limit)");
    int fd = (int)PyLong_AsLong(args[0]);
    PyObject *decode_data = args[1], *domains = args[2], *now = args[3], *peers = args[4], *expected = args[5],
             *tally = args[6], *records = args[7];
    Py_ssize_t limit = PyLong_AsSsize_t(args[8]);
    if (PyErr_Occurred()) return NULL;
    if (!PyDict_CheckExact(peers) || !PyDict_CheckExact(expected) || !PyDict_CheckExact(tally) ||
        !PyList_CheckExact(records))
        return PyErr_Format(PyExc_TypeError, "peers, expected and tally must be dicts, records a list");
    char buffer[MAX_DATAGRAM];
    struct sockaddr_storage address;
    while (PyList_GET_SIZE(records) < limit) {
        socklen_t length = sizeof address;
        ssize_t size = recvfrom(fd, buffer, sizeof buffer, MSG_DONTWAIT, (struct sockaddr *)&address, &length);
        if (size < 0) {
            if (errno == EAGAIN || errno == EWOULDBLOCK) return Py_BuildValue("(iO)", DRAINED, Py_None);
            if (errno == EINTR) {
                if (PyErr_CheckSignals() < 0) return NULL;
                continue;
            }
            return PyErr_SetFromErrno(PyExc_OSError);
        }
        PyObject *peer = peer_of(peers, &address, length);
        if (peer == NULL) return NULL;
        PyObject *session = PyTuple_GET_ITEM(peer, 0), *exporter = PyTuple_GET_ITEM(peer, 1);
        PyObject *data = PyBytes_FromStringAndSize(buffer, size), *decoded = NULL, *key = NULL, *result = NULL;
        if (data == NULL) goto done;
        PyObject *call[4] = {domains, data, session, now};
        if ((decoded = PyObject_Vectorcall(decode_data, call, 4, NULL)) == NULL) goto done;
        if (decoded == Py_None) { /* the full decoder's turn */
            result = Py_BuildValue("(i(OOO))", OTHER, data, session, exporter);
            goto done;
        }
        if (!PyTuple_CheckExact(decoded) || PyTuple_GET_SIZE(decoded) != 3 ||
            !PyList_CheckExact(PyTuple_GET_ITEM(decoded, 2))) {
            PyErr_SetString(PyExc_TypeError, "decode_data must return (odid, sequence, records) or None");
            goto done;
        }
        PyObject *odid = PyTuple_GET_ITEM(decoded, 0), *sequence = PyTuple_GET_ITEM(decoded, 1),
                 *decoded_records = PyTuple_GET_ITEM(decoded, 2);
        Py_ssize_t count = PyList_GET_SIZE(decoded_records), end = PyList_GET_SIZE(records);
        if (count_message(tally, exporter, count) < 0 ||
            PyList_SetSlice(records, end, end, decoded_records) < 0 || (key = PyTuple_Pack(2, session, odid)) == NULL)
            goto done;
        unsigned long number = PyLong_AsUnsignedLong(sequence);
        if (number == (unsigned long)-1 && PyErr_Occurred()) goto done;
        PyObject *wanted = PyDict_GetItemWithError(expected, key); /* borrowed */
        if (wanted == NULL && PyErr_Occurred()) goto done;
        int in_order = wanted != NULL ? PyObject_RichCompareBool(wanted, sequence, Py_EQ) : 0;
        if (in_order < 0) goto done;
        if (!in_order) { /* the caller checks it: a gap, a late message, a restart or a new exporter */
            result = Py_BuildValue("(i(OOOnO))", SEQUENCE, session, odid, sequence, count, exporter);
            goto done;
        }
        PyObject *next = PyLong_FromUnsignedLong((number + (unsigned long)count) & 0xFFFFFFFFUL);
        if (next == NULL) goto done;
        int set = PyDict_SetItem(expected, key, next);
        Py_DECREF(next);
        if (set < 0) goto done;
        Py_DECREF(key);
        Py_DECREF(decoded);
        Py_DECREF(data);
        Py_DECREF(peer);
        continue;
    done:
        Py_XDECREF(key);
        Py_XDECREF(decoded);
        Py_XDECREF(data);
        Py_DECREF(peer);
        return result; /* NULL with the error set */
    }
    return Py_BuildValue("(iO)", FULL, Py_None);
}

static PyMethodDef methods[] = {
    {"drain", (PyCFunction)(void (*)(void))drain, METH_FASTCALL,
     "drain(fd, decode_data, domains, now, peers, expected, tally, records, limit) -> (status, detail)"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ipfixudp", "The ipfix source's UDP receive loop, in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ipfixudp(void) {
    if ((s_udp = PyUnicode_InternFromString("udp")) == NULL) return NULL;
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (PyModule_AddIntConstant(m, "DRAINED", DRAINED) < 0 || PyModule_AddIntConstant(m, "FULL", FULL) < 0 ||
                      PyModule_AddIntConstant(m, "OTHER", OTHER) < 0 ||
                      PyModule_AddIntConstant(m, "SEQUENCE", SEQUENCE) < 0))
        Py_CLEAR(m);
    return m;
}
