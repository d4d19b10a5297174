/*
 * flowscope's hot loops in C; each has a Python twin that gives the same results, used when this
 * module is not built or FLOWSCOPE_PURE_PYTHON is set:
 *
 * - decode_set: the records of an IPFIX data set (flowscope.core.ipfix.codec);
 * - parse_conntrack: the entries of a ctnetlink dump (flowscope.plugins.sources.ctnetlink);
 * - AggregateCore: the aggregation policy's per-record work (flowscope.core.correlate.Core);
 * - LineEncoder: the json sink's Antrea JSON lines (flowscope.plugins.sinks.json.encode_line);
 * - Flow and FlowTable (_flowtable.c): the flow table (flowscope.core.flowtable).
 *
 * decode_set(body: bytes, plan: tuple, min_length: int) -> list[dict]
 *
 * plan is a tuple of (key: str, kind: int, length: int) built by flowscope.core.ipfix.codec; the
 * result is exactly what the generated Python decoder of the same template returns: records are
 * read while at least min_length bytes remain, variable-length fields use the 1-byte or 255+2-byte
 * length form, and a record whose lengths run past the set raises OverflowError.
 */
#include "_flowtable.h"

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

/*
 * AggregateCore(active, inactive, cluster_id, spec, fallback): the per-record work of the aggregation
 * policy, exactly as flowscope.core.correlate.Core does it in Python, on the same state tuples
 * (flowscope.core.aggregate). Values are handled with the generic object protocol, so any value
 * gives what Python gives; records that are not dicts, and states not in the expected form, are
 * handed to the Python core (fallback).
 *
 * spec: (CONTROL, FIGURES, OWN, DEFAULT_FIGURES, IPv4 template, IPv6 template, SHAPES, shape_for,
 *        CORRELATED, ZERO_IPS)
 */
enum { /* the names the core reads, interned once: the record's fields first (F_FIELDS of them) */
    F_flowStartSeconds, F_flowEndSeconds, F_flowEndReason, F_sourceTransportPort, F_destinationTransportPort,
    F_protocolIdentifier, F_packetTotalCount, F_octetTotalCount, F_reversePacketTotalCount,
    F_reverseOctetTotalCount, F_packetDeltaCount, F_octetDeltaCount, F_reversePacketDeltaCount,
    F_reverseOctetDeltaCount, F_sourceIPv4Address, F_sourceIPv6Address, F_destinationIPv4Address,
    F_destinationIPv6Address, F_sourcePodName, F_destinationPodName, F_flowType, F_tcpState, F_proxySnatIPv4,
    F_proxySnatIPv6, F_proxySnatPort, F_egressNetworkPolicyRuleAction, F_ingressNetworkPolicyRuleAction,
    F_clusterId,
    F_CORRELATED, /* then flowscope.core.correlate.CORRELATED, in its order */
    F_sourcePodNamespace = F_CORRELATED + 1, F_sourceNodeName, F_destinationPodNamespace = F_CORRELATED + 4,
    F_destinationNodeName, F_destinationClusterIPv4, F_destinationClusterIPv6, F_destinationServiceIPv4,
    F_destinationServiceIPv6, F_destinationServicePort, F_destinationServicePortName,
    F_ingressNetworkPolicyName, F_ingressNetworkPolicyNamespace, F_ingressNetworkPolicyRuleAction_,
    F_ingressNetworkPolicyType, F_ingressNetworkPolicyRuleName, F_egressNetworkPolicyName,
    F_egressNetworkPolicyNamespace, F_egressNetworkPolicyRuleAction_, F_egressNetworkPolicyType,
    F_egressNetworkPolicyRuleName,
    F_FIELDS, /* then attribute and method names */
    F_state = F_FIELDS, F_idle_deadline, F_active_deadline, F_key, F_start, F_merge, F_export, F_COUNT,
};
#define N_CORRELATED (F_FIELDS - F_CORRELATED)
static const char *FIELD_NAMES[F_COUNT] = {
    "flowStartSeconds", "flowEndSeconds", "flowEndReason", "sourceTransportPort", "destinationTransportPort",
    "protocolIdentifier", "packetTotalCount", "octetTotalCount", "reversePacketTotalCount",
    "reverseOctetTotalCount", "packetDeltaCount", "octetDeltaCount", "reversePacketDeltaCount",
    "reverseOctetDeltaCount", "sourceIPv4Address", "sourceIPv6Address", "destinationIPv4Address",
    "destinationIPv6Address", "sourcePodName", "destinationPodName", "flowType", "tcpState", "proxySnatIPv4",
    "proxySnatIPv6", "proxySnatPort", "egressNetworkPolicyRuleAction", "ingressNetworkPolicyRuleAction",
    "clusterId",
    "sourcePodName", "sourcePodNamespace", "sourceNodeName", "destinationPodName", "destinationPodNamespace",
    "destinationNodeName", "destinationClusterIPv4", "destinationClusterIPv6", "destinationServiceIPv4",
    "destinationServiceIPv6", "destinationServicePort", "destinationServicePortName", "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace", "ingressNetworkPolicyRuleAction", "ingressNetworkPolicyType",
    "ingressNetworkPolicyRuleName", "egressNetworkPolicyName", "egressNetworkPolicyNamespace",
    "egressNetworkPolicyRuleAction", "egressNetworkPolicyType", "egressNetworkPolicyRuleName",
    "state", "idle_deadline", "active_deadline", "key", "start", "merge", "export",
};
static PyObject *S[F_COUNT];
static PyObject *ZERO, *TWO, *THREE, *FOUR, *EIGHT, *EMPTY, *DROP_REJECT;

/* the figures, by position (flowscope.core.aggregate.FIGURES) */
enum {
    X_DELTAS = 0, X_THROUGHPUT = 12, X_REVERSE_THROUGHPUT = 13, X_RESET = 18, X_TOTALS = 18, X_END = 32,
    X_REASON = 33, X_TCP_STATE = 34, X_COUNT = 35,
};
static const char *FIGURE_NAMES[X_COUNT] = {
    "packetDeltaCount", "octetDeltaCount", "reversePacketDeltaCount", "reverseOctetDeltaCount",
    "packetDeltaCountFromSourceNode", "octetDeltaCountFromSourceNode", "reversePacketDeltaCountFromSourceNode",
    "reverseOctetDeltaCountFromSourceNode", "packetDeltaCountFromDestinationNode",
    "octetDeltaCountFromDestinationNode", "reversePacketDeltaCountFromDestinationNode",
    "reverseOctetDeltaCountFromDestinationNode", "throughput", "reverseThroughput", "throughputFromSourceNode",
    "reverseThroughputFromSourceNode", "throughputFromDestinationNode", "reverseThroughputFromDestinationNode",
    "packetTotalCount", "octetTotalCount", "reversePacketTotalCount", "reverseOctetTotalCount",
    "packetTotalCountFromSourceNode", "octetTotalCountFromSourceNode", "reversePacketTotalCountFromSourceNode",
    "reverseOctetTotalCountFromSourceNode", "packetTotalCountFromDestinationNode",
    "octetTotalCountFromDestinationNode", "reversePacketTotalCountFromDestinationNode",
    "reverseOctetTotalCountFromDestinationNode", "flowEndSecondsFromSourceNode",
    "flowEndSecondsFromDestinationNode", "flowEndSeconds", "flowEndReason", "tcpState",
};
typedef struct {
    int totals, deltas, end, throughput, reverse_throughput;
} Side;
static const Side SOURCE = {22, 4, 30, 14, 15}, DESTINATION = {26, 8, 31, 16, 17};

/* the record's own figures, in the order of the bits of a state's `shown` (flowscope.core.aggregate.OWN) */
#define N_OWN 13
static const int OWN[N_OWN] = {0, 1, 2, 3, 12, 13, 18, 19, 20, 21, 32, 33, 34};
#define LATEST_SHOWS 0x3FF /* deltas, throughputs and totals */
#define RESET_SHOWN 0x3F   /* deltas and throughputs */
#define SHOWS_END (1 << 10)
#define SHOWS_REASON (1 << 11)
#define SHOWS_TCP_STATE (1 << 12)
static PyObject *MASKS[1 << N_OWN]; /* one object for each value of `shown`, made when first needed */

/* a flow's state: (shape, values, ready, from_source, updated, first_seen, shown, *figures) */
enum { S_SHAPE, S_VALUES, S_READY, S_FROM_SOURCE, S_UPDATED, S_FIRST_SEEN, S_SHOWN, S_FIGURES };
#define S_COUNT (S_FIGURES + X_COUNT)

#define CORRELATIONS 8
typedef struct {
    PyObject *from, *to; /* strong: no other shape can take their addresses */
    uint32_t mask;       /* the fields of CORRELATED updated */
    short at[N_CORRELATED]; /* where each updated field is in the new values */
} Correlation;

typedef struct {
    PyObject_HEAD
    PyObject *active, *inactive, *cluster_id, *control, *figure_names, *defaults, *templates[2], *shapes;
    PyObject *shape_for, *zero_ips, *fallback;
    PyObject *last_names, *last_shape; /* the previous first record's non-empty names and their shape */
    Correlation correlations[CORRELATIONS]; /* recent correlations' shapes (remember_correlation) */
    int next_correlation;
} Core;

/* a tuple that cannot be part of a cycle, untracked now as the collector would untrack it at its
   next pass: then no pass has to go through it (the core makes several tuples per record) */
static PyObject *settled(PyObject *tuple) {
    if (tuple == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(tuple); i++) {
        PyObject *item = PyTuple_GET_ITEM(tuple, i);
        if (PyLong_CheckExact(item) || PyUnicode_CheckExact(item)) continue; /* most are */
        if (PyObject_IS_GC(item) && (!PyTuple_CheckExact(item) || PyObject_GC_IsTracked(item))) return tuple;
    }
    if (PyObject_GC_IsTracked(tuple)) PyObject_GC_UnTrack(tuple);
    return tuple;
}

/* the Python core's method, for what this one does not handle */
static PyObject *fallback(Core *self, int method, PyObject *const *args, Py_ssize_t nargs) {
    PyObject *call[5] = {self->fallback};
    for (Py_ssize_t i = 0; i < nargs && i < 4; i++) call[i + 1] = args[i];
    return PyObject_VectorcallMethod(S[method], call, nargs + 1, NULL);
}

/* a new state; the figures are borrowed, or with `steal` taken over (also when it fails): the
   figures are mostly the same few objects, whose counts every thread changes all the time */
static PyObject *make_state(PyObject *shape, PyObject *values, PyObject *ready, PyObject *from_source,
                            PyObject *updated, PyObject *first_seen, long shown, PyObject **figures, int steal) {
    PyObject *state = NULL;
    if (MASKS[shown] == NULL && (MASKS[shown] = PyLong_FromLong(shown)) == NULL) goto fail;
    if ((state = PyTuple_New(S_COUNT)) == NULL) goto fail;
    PyObject *head[S_FIGURES] = {shape, values, ready, from_source, updated, first_seen, MASKS[shown]};
    for (int i = 0; i < S_FIGURES; i++) PyTuple_SET_ITEM(state, i, Py_NewRef(head[i]));
    for (int i = 0; i < X_COUNT; i++) {
        PyTuple_SET_ITEM(state, S_FIGURES + i, steal ? figures[i] : Py_NewRef(figures[i]));
        if (steal) figures[i] = NULL;
    }
    return settled(state);
fail:
    if (steal)
        for (int i = 0; i < X_COUNT; i++) Py_CLEAR(figures[i]);
    return NULL;
}

/*
 * The view: where each field the core reads is in the record being worked on. A record from the
 * decoder has its template's keys in its template's order, so once that order (a layout) is known,
 * one pass over the record gives every field, instead of a dict lookup for each. The view is
 * process-wide, as the GIL allows, and holds its record; get() uses it only for that record and
 * while the dict is unchanged (its version tag), else it looks the field up, as always.
 */
#define VIEW_MAX 256
#define LAYOUTS_KEPT 4
#if PY_VERSION_HEX < 0x030C0000 /* ma_version_tag: deprecated in 3.12 */
#define VIEWS 1
#else
#define VIEWS 0
#endif

typedef struct {
    Py_ssize_t count;
    PyObject **keys; /* strong references: no other string can take their addresses */
    short pos[F_FIELDS]; /* where each field is, -1 if absent */
} RecordLayout;

static struct {
    PyObject *record; /* strong */
    uint64_t version;
    Py_ssize_t count;
    const RecordLayout *layout; /* NULL: look fields up */
    PyObject *keys[VIEW_MAX], *values[VIEW_MAX]; /* borrowed from the record */
} VIEW;
static RecordLayout *RECORD_LAYOUTS[LAYOUTS_KEPT]; /* the most recently used first */
static PyObject *FIELD_IDS; /* each field's name -> the bits of its ids (a name may have two) */

static void drop_layout(RecordLayout *layout) {
    if (layout == NULL) return;
    for (Py_ssize_t i = 0; i < layout->count; i++) Py_DECREF(layout->keys[i]);
    PyMem_Free(layout->keys);
    PyMem_Free(layout);
}

/* the layout of VIEW's keys, NULL if they are not all str (or without memory) */
static const RecordLayout *layout_of_view(void) {
    Py_ssize_t count = VIEW.count;
    for (int i = 0; i < LAYOUTS_KEPT && RECORD_LAYOUTS[i] != NULL; i++) {
        RecordLayout *layout = RECORD_LAYOUTS[i];
        if (layout->count == count && memcmp(layout->keys, VIEW.keys, count * sizeof(PyObject *)) == 0) {
            memmove(RECORD_LAYOUTS + 1, RECORD_LAYOUTS, i * sizeof *RECORD_LAYOUTS);
            RECORD_LAYOUTS[0] = layout;
            return layout;
        }
    }
    RecordLayout *layout = PyMem_Calloc(1, sizeof *layout);
    if (layout == NULL || (layout->keys = PyMem_New(PyObject *, count ? count : 1)) == NULL) {
        PyMem_Free(layout);
        return NULL;
    }
    for (int f = 0; f < F_FIELDS; f++) layout->pos[f] = -1;
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *key = VIEW.keys[i];
        if (!PyUnicode_CheckExact(key)) {
            layout->count = i;
            drop_layout(layout);
            return NULL;
        }
        PyObject *ids = PyDict_GetItem(FIELD_IDS, key); /* a str: the lookup cannot fail */
        layout->keys[i] = Py_NewRef(key);
        layout->count = i + 1;
        for (unsigned long long bits = ids == NULL ? 0 : PyLong_AsUnsignedLongLong(ids); bits; bits &= bits - 1)
            layout->pos[__builtin_ctzll(bits)] = (short)i;
    }
    drop_layout(RECORD_LAYOUTS[LAYOUTS_KEPT - 1]);
    memmove(RECORD_LAYOUTS + 1, RECORD_LAYOUTS, (LAYOUTS_KEPT - 1) * sizeof *RECORD_LAYOUTS);
    RECORD_LAYOUTS[0] = layout;
    return layout;
}

/* VIEW at this record (an exact dict); never fails: without a layout, fields are looked up */
static void view_open(PyObject *record) {
#if VIEWS
    uint64_t version = ((PyDictObject *)record)->ma_version_tag;
    if (VIEW.record == record && VIEW.version == version) return;
    Py_XSETREF(VIEW.record, Py_NewRef(record));
    VIEW.version = version;
    VIEW.layout = NULL;
    Py_ssize_t pos = 0, count = 0;
    PyObject *key, *value;
    if (PyDict_GET_SIZE(record) > VIEW_MAX) return;
    while (PyDict_Next(record, &pos, &key, &value)) {
        VIEW.keys[count] = key;
        VIEW.values[count++] = value;
    }
    VIEW.count = count;
    VIEW.layout = layout_of_view();
#else
    (void)record;
#endif
}

/* VIEW, if it may be used for this record now */
static inline int viewing(PyObject *record) {
#if VIEWS
    return VIEW.record == record && VIEW.layout != NULL && VIEW.version == ((PyDictObject *)record)->ma_version_tag;
#else
    (void)record;
    return 0;
#endif
}

/* record.get(name, default), as a new reference (NULL on error) */
static PyObject *get(PyObject *record, int name, PyObject *default_) {
    if (name < F_FIELDS && viewing(record)) {
        int at = VIEW.layout->pos[name];
        return Py_NewRef(at < 0 ? default_ : VIEW.values[at]);
    }
    PyObject *value = PyDict_GetItemWithError(record, S[name]);
    if (value == NULL) {
        if (PyErr_Occurred()) return NULL;
        value = default_;
    }
    Py_INCREF(value);
    return value;
}

/* name in record (-1 on error) */
static int has(PyObject *record, int name) {
    if (viewing(record)) return VIEW.layout->pos[name] >= 0;
    return PyDict_Contains(record, S[name]);
}

/* the truth of record.get(name) (-1 on error) */
static int truth_of(PyObject *record, int name) {
    PyObject *value = get(record, name, Py_None);
    if (value == NULL) return -1;
    int result = PyObject_IsTrue(value);
    Py_DECREF(value);
    return result;
}

/* the truth of `a <op> b` (-1 on error), as an if statement sees it */
static int compare(PyObject *a, PyObject *b, int op) {
    PyObject *result = PyObject_RichCompare(a, b, op);
    if (result == NULL) return -1;
    int truth = PyObject_IsTrue(result);
    Py_DECREF(result);
    return truth;
}

/* the truth of `record.get(name) <op> b` */
static int field_compare(PyObject *record, int name, PyObject *b, int op) {
    PyObject *value = get(record, name, Py_None);
    if (value == NULL) return -1;
    int result = compare(value, b, op);
    Py_DECREF(value);
    return result;
}

static void set(PyObject **slot, PyObject *value) { /* steals value */
    Py_XSETREF(*slot, value);
}

static void set_borrowed(PyObject **slot, PyObject *value) {
    Py_INCREF(value);
    Py_XSETREF(*slot, value);
}

static int source_from_external(Core *self, PyObject *record) {
    int result = field_compare(record, F_flowType, FOUR, Py_EQ);
    if (result <= 0) return result;
    result = truth_of(record, F_destinationPodName);
    if (result != 0) return result < 0 ? -1 : 0;
    PyObject *snat = get(record, F_proxySnatIPv4, Py_None);
    if (snat == NULL) return -1;
    for (int i = 0; i < 2; i++) { /* proxySnatIPv4 or proxySnatIPv6 or "" */
        int truth = PyObject_IsTrue(snat);
        if (truth != 0) {
            if (truth < 0) goto fail;
            break;
        }
        set(&snat, i == 0 ? get(record, F_proxySnatIPv6, Py_None) : Py_NewRef(EMPTY));
        if (snat == NULL) return -1;
    }
    result = PySequence_Contains(self->zero_ips, snat);
    Py_DECREF(snat);
    return result < 0 ? -1 : !result;
fail:
    Py_DECREF(snat);
    return -1;
}

static int from_source(Core *self, PyObject *record) {
    int result = truth_of(record, F_sourcePodName);
    if (result < 0) return -1;
    if (result) {
        result = truth_of(record, F_destinationPodName);
        if (result <= 0) return result < 0 ? -1 : 1;
    }
    return source_from_external(self, record);
}

static int correlation_required(Core *self, PyObject *record) {
    PyObject *type = get(record, F_flowType, Py_None);
    if (type == NULL) return -1;
    int result = compare(type, TWO, Py_EQ);
    if (result == 0) {
        result = compare(type, FOUR, Py_EQ);
        if (result > 0) result = source_from_external(self, record);
    }
    Py_DECREF(type);
    if (result <= 0) return result;
    PyObject *action = get(record, F_egressNetworkPolicyRuleAction, Py_None);
    if (action == NULL) return -1;
    result = PySequence_Contains(DROP_REJECT, action);
    Py_DECREF(action);
    if (result != 0) return result < 0 ? -1 : 0;
    result = field_compare(record, F_ingressNetworkPolicyRuleAction, THREE, Py_EQ);
    return result < 0 ? -1 : !result;
}

static PyObject *core_key(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1) return PyErr_Format(PyExc_TypeError, "key() takes one record");
    PyObject *record = args[0];
    if (!PyDict_CheckExact(record)) return fallback(self, F_key, args, nargs);
    view_open(record);
    int stamped = truth_of(record, F_flowStartSeconds);
    if (stamped == 0) stamped = truth_of(record, F_flowEndSeconds);
    if (stamped < 0) return NULL;
    if (!stamped) return Py_NewRef(self->control);
    int v4 = has(record, F_sourceIPv4Address);
    if (v4 < 0) return NULL;
    PyObject *src = NULL, *dst = NULL, *sport = NULL, *proto = NULL, *dport = NULL, *key = NULL;
    if ((src = get(record, v4 ? F_sourceIPv4Address : F_sourceIPv6Address, Py_None)) == NULL) goto done;
    if ((dst = get(record, v4 ? F_destinationIPv4Address : F_destinationIPv6Address, Py_None)) == NULL) goto done;
    if (src == Py_None || dst == Py_None) {
        key = Py_NewRef(self->control);
        goto done;
    }
    if ((sport = get(record, F_sourceTransportPort, ZERO)) == NULL) goto done;
    int external = field_compare(record, F_flowType, FOUR, Py_EQ);
    if (external > 0) external = source_from_external(self, record);
    if (external < 0) goto done;
    if (external) {
        set(&src, get(record, v4 ? F_proxySnatIPv4 : F_proxySnatIPv6, Py_None));
        if (src == NULL) goto done;
        set(&sport, get(record, F_proxySnatPort, ZERO));
        if (sport == NULL) goto done;
    }
    if ((proto = get(record, F_protocolIdentifier, ZERO)) == NULL) goto done;
    if ((dport = get(record, F_destinationTransportPort, ZERO)) == NULL) goto done;
    key = settled(PyTuple_Pack(5, src, dst, proto, sport, dport));
done:
    Py_XDECREF(src);
    Py_XDECREF(dst);
    Py_XDECREF(sport);
    Py_XDECREF(proto);
    Py_XDECREF(dport);
    return key;
}

/* the shared shape of these names (flowscope.core.aggregate.shape_for), a new reference */
static PyObject *shape_of(Core *self, PyObject *names) {
    PyObject *shape = PyDict_GetItemWithError(self->shapes, names);
    if (shape != NULL) return Py_NewRef(shape);
    return PyErr_Occurred() ? NULL : PyObject_CallOneArg(self->shape_for, names);
}

/* the truth of a value of a type whose truth runs no Python code (0 or 1), else -1: ask */
static inline int plain_truth(PyObject *value) {
    if (value == Py_None || value == Py_False) return 0;
    if (value == Py_True) return 1;
    if (PyUnicode_CheckExact(value)) return PyUnicode_GET_LENGTH(value) != 0;
#if PY_VERSION_HEX < 0x030C0000
    if (PyLong_CheckExact(value)) return Py_SIZE(value) != 0;
#endif
    return -1;
}

/* a record's shape, values and figures (flowscope.core.aggregate.split); figures get new references */
static int split(Core *self, PyObject *record, PyObject **shape_out, PyObject **values_out, PyObject **figures) {
    Py_ssize_t size = PyDict_GET_SIZE(record), count = 0, pos = 0;
    PyObject *key, *value, *names = NULL, *shape = NULL, *values = NULL;
    PyObject **keys = PyMem_New(PyObject *, size ? 2 * size : 1), **present = keys + size;
    int ok = 0;
    if (keys == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    int viewed = viewing(record);
    while (viewed ? pos < VIEW.count : PyDict_Next(record, &pos, &key, &value)) {
        if (viewed) {
            if (!viewing(record)) { /* a value's __bool__ changed the record */
                PyErr_SetString(PyExc_RuntimeError, "dictionary changed during iteration");
                goto done;
            }
            key = VIEW.keys[pos];
            value = VIEW.values[pos++];
        }
        int truth = plain_truth(value);
        if (truth == 0) continue; /* most are: neither counted nor kept */
        Py_INCREF(key);
        Py_INCREF(value);
        if (truth < 0) truth = PyObject_IsTrue(value);
        if (truth <= 0 || count >= size) {
            Py_DECREF(key);
            Py_DECREF(value);
            if (truth < 0) goto done;
            if (truth > 0) {
                PyErr_SetString(PyExc_RuntimeError, "dictionary changed size during iteration");
                goto done;
            }
            continue;
        }
        keys[count] = key;
        present[count++] = value;
    }
    PyObject *last = self->last_names;
    if (last != NULL && PyTuple_GET_SIZE(last) == count && /* the same names as the previous first record */
        memcmp(keys, &PyTuple_GET_ITEM(last, 0), count * sizeof(PyObject *)) == 0)
        shape = Py_NewRef(self->last_shape);
    else {
        if ((names = PyTuple_New(count)) == NULL) goto done;
        for (Py_ssize_t i = 0; i < count; i++) PyTuple_SET_ITEM(names, i, Py_NewRef(keys[i]));
        settled(names);
        if ((shape = shape_of(self, names)) == NULL) goto done;
        if (!PyTuple_CheckExact(shape) || PyTuple_GET_SIZE(shape) != 4 ||
            !PyTuple_CheckExact(PyTuple_GET_ITEM(shape, 2))) {
            PyErr_SetString(PyExc_TypeError, "a shape is (names, keep, figures, v6)");
            goto done;
        }
        Py_XSETREF(self->last_names, Py_NewRef(names));
        Py_XSETREF(self->last_shape, Py_NewRef(shape));
    }
    for (int i = 0; i < X_COUNT; i++) figures[i] = Py_NewRef(PyTuple_GET_ITEM(self->defaults, i));
    PyObject *positions = PyTuple_GET_ITEM(shape, 2), *keep = PyTuple_GET_ITEM(shape, 1);
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(positions); i++) {
        PyObject *pair = PyTuple_GET_ITEM(positions, i);
        Py_ssize_t index = -1, position = -1;
        if (PyTuple_CheckExact(pair) && PyTuple_GET_SIZE(pair) == 2) {
            index = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 0));
            position = PyLong_AsSsize_t(PyTuple_GET_ITEM(pair, 1));
        }
        if (index < 0 || index >= X_COUNT || position < 0 || position >= count) {
            if (!PyErr_Occurred()) PyErr_SetString(PyExc_IndexError, "a shape's figure is out of range");
            goto done;
        }
        set_borrowed(&figures[index], present[position]);
    }
    if (keep == Py_None) {
        if ((values = PyTuple_New(count)) == NULL) goto done;
        for (Py_ssize_t i = 0; i < count; i++) PyTuple_SET_ITEM(values, i, Py_NewRef(present[i]));
        settled(values);
    } else {
        if (!PyTuple_CheckExact(keep) || PyTuple_GET_SIZE(keep) != count) {
            PyErr_SetString(PyExc_TypeError, "a shape keeps one flag per name");
            goto done;
        }
        Py_ssize_t kept = 0;
        for (Py_ssize_t i = 0; i < count; i++) kept += PyTuple_GET_ITEM(keep, i) == Py_True;
        if ((values = PyTuple_New(kept)) == NULL) goto done;
        for (Py_ssize_t i = 0, j = 0; i < count; i++)
            if (PyTuple_GET_ITEM(keep, i) == Py_True) PyTuple_SET_ITEM(values, j++, Py_NewRef(present[i]));
        settled(values);
    }
    ok = 1;
done:
    for (Py_ssize_t i = 0; i < count; i++) {
        Py_DECREF(keys[i]);
        Py_DECREF(present[i]);
    }
    PyMem_Free(keys);
    Py_XDECREF(names);
    if (!ok) {
        Py_XDECREF(shape);
        Py_XDECREF(values);
        if (figures[0] != NULL)
            for (int i = 0; i < X_COUNT; i++) Py_CLEAR(figures[i]);
        return -1;
    }
    *shape_out = shape;
    *values_out = values;
    return 0;
}

/* throughput = octets * 8 // duration if duration > 0 else 0, then `or 0` */
static PyObject *throughput(PyObject *record, int name, PyObject *duration, int positive) {
    PyObject *result;
    if (positive) {
        PyObject *octets = get(record, name, ZERO), *bits;
        if (octets == NULL) return NULL;
        bits = PyNumber_Multiply(octets, EIGHT);
        Py_DECREF(octets);
        if (bits == NULL) return NULL;
        result = PyNumber_FloorDivide(bits, duration);
        Py_DECREF(bits);
        if (result == NULL) return NULL;
    } else result = Py_NewRef(ZERO);
    return result;
}

static PyObject *or_zero(PyObject *value) { /* steals value */
    int truth = PyObject_IsTrue(value);
    if (truth < 0) {
        Py_DECREF(value);
        return NULL;
    }
    if (truth) return value;
    Py_DECREF(value);
    return Py_NewRef(ZERO);
}

static int set_deadlines(Core *self, PyObject *flow, PyObject *now, PyObject *state, int active_too, int at_now) {
    if (Flow_CheckExact(flow)) { /* the C flow table's: set directly */
        FlowObject *f = (FlowObject *)flow;
        double at = PyFloat_AsDouble(now), idle = PyFloat_AsDouble(self->inactive);
        double active = active_too && !at_now ? PyFloat_AsDouble(self->active) : 0;
        if (PyErr_Occurred()) return -1;
        if (state != NULL) Py_SETREF(f->state, Py_NewRef(state));
        f->idle_deadline = at + idle;
        if (active_too) f->active_deadline = at_now ? at : at + active;
        return 0;
    }
    if (state != NULL && PyObject_SetAttr(flow, S[F_state], state) < 0) return -1;
    PyObject *deadline = PyNumber_Add(now, self->inactive);
    if (deadline == NULL || PyObject_SetAttr(flow, S[F_idle_deadline], deadline) < 0) {
        Py_XDECREF(deadline);
        return -1;
    }
    Py_DECREF(deadline);
    if (!active_too) return 0;
    deadline = at_now ? Py_NewRef(now) : PyNumber_Add(now, self->active);
    if (deadline == NULL || PyObject_SetAttr(flow, S[F_active_deadline], deadline) < 0) {
        Py_XDECREF(deadline);
        return -1;
    }
    Py_DECREF(deadline);
    return 0;
}

static PyObject *core_start(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) return PyErr_Format(PyExc_TypeError, "start() takes flow, record, now, out");
    PyObject *flow = args[0], *record = args[1], *now = args[2];
    if (!PyDict_CheckExact(record)) return fallback(self, F_start, args, nargs);
    view_open(record);
    PyObject *end = NULL, *begin = NULL, *duration = NULL, *forward = NULL, *reverse = NULL, *shape = NULL;
    PyObject *values = NULL, *state = NULL, *figures[X_COUNT] = {NULL}, *result = NULL;
    int required = correlation_required(self, record), source = 0;
    if (required < 0) return NULL;
    if (required && (source = from_source(self, record)) < 0) return NULL;
    if ((end = get(record, F_flowEndSeconds, ZERO)) == NULL) goto done;
    if ((begin = get(record, F_flowStartSeconds, ZERO)) == NULL) goto done;
    if ((duration = PyNumber_Subtract(end, begin)) == NULL) goto done;
    int positive = compare(duration, ZERO, Py_GT);
    if (positive < 0) goto done;
    if ((forward = throughput(record, F_octetTotalCount, duration, positive)) == NULL) goto done;
    if ((reverse = throughput(record, F_reverseOctetTotalCount, duration, positive)) == NULL) goto done;
    if (split(self, record, &shape, &values, figures) < 0) goto done;
    if ((forward = or_zero(forward)) == NULL || (reverse = or_zero(reverse)) == NULL) goto done;
    const Side *sides[2] = {&SOURCE, &DESTINATION};
    for (int s = 0; s < 2; s++) {
        if (required && (s == 0) != source) continue;
        const Side *side = sides[s];
        for (int i = 0; i < 4; i++) {
            set_borrowed(&figures[side->totals + i], figures[X_TOTALS + i]);
            set_borrowed(&figures[side->deltas + i], figures[X_DELTAS + i]);
        }
        set_borrowed(&figures[side->end], figures[X_END]);
        set_borrowed(&figures[side->throughput], forward);
        set_borrowed(&figures[side->reverse_throughput], reverse);
    }
    set_borrowed(&figures[X_THROUGHPUT], forward);
    set_borrowed(&figures[X_REVERSE_THROUGHPUT], reverse);
    long shown = 0;
    for (int j = 0; j < N_OWN; j++) {
        int truth = PyObject_IsTrue(figures[OWN[j]]);
        if (truth < 0) goto done;
        if (truth) shown |= 1L << j;
    }
    state = make_state(shape, values, required ? Py_False : Py_True, source ? Py_True : Py_False, Py_True, now,
                       shown, figures, 1);
    if (state == NULL || set_deadlines(self, flow, now, state, 1, !required) < 0) goto done;
    /* the flow holds its key, its state, deadlines and a token: nothing that can lead back to it, so
       the collector need not go through it again and again while the table holds it */
    if (PyObject_IS_GC(flow) && PyObject_GC_IsTracked(flow)) PyObject_GC_UnTrack(flow);
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < X_COUNT; i++) Py_XDECREF(figures[i]);
    Py_XDECREF(end);
    Py_XDECREF(begin);
    Py_XDECREF(duration);
    Py_XDECREF(forward);
    Py_XDECREF(reverse);
    Py_XDECREF(shape);
    Py_XDECREF(values);
    Py_XDECREF(state);
    return result;
}

/* Where correlateRecords put the updated fields, for a flow's shape and which fields were updated:
   the new shape's names are the old ones, then the updated ones that were not among them. */
static void remember_correlation(Core *self, PyObject *from, PyObject *to, uint32_t mask) {
    PyObject *names = PyTuple_CheckExact(to) && PyTuple_GET_SIZE(to) == 4 ? PyTuple_GET_ITEM(to, 0) : NULL;
    if (names == NULL || !PyTuple_CheckExact(names)) return;
    Correlation found = {.mask = mask};
    for (int i = 0; i < N_CORRELATED; i++) {
        if (!(mask & (1u << i))) continue;
        found.at[i] = -1;
        for (Py_ssize_t j = 0; j < PyTuple_GET_SIZE(names) && found.at[i] < 0; j++) {
            PyObject *name = PyTuple_GET_ITEM(names, j);
            if (name == S[F_CORRELATED + i] || (PyUnicode_CheckExact(name) && PyUnicode_Compare(name, S[F_CORRELATED + i]) == 0))
                found.at[i] = (short)j;
        }
        if (found.at[i] < 0) return; /* cannot be: a shape without a name it was given */
    }
    Correlation *slot = &self->correlations[self->next_correlation];
    self->next_correlation = (self->next_correlation + 1) % CORRELATIONS;
    Py_XDECREF(slot->from);
    Py_XDECREF(slot->to);
    *slot = found;
    slot->from = Py_NewRef(from);
    slot->to = Py_NewRef(to);
}

/* correlateRecords: new references to the shape and values after it (flowscope.core.correlate._correlate) */
static int correlate(Core *self, PyObject *incoming, PyObject **shape, PyObject **values) {
    PyObject *base = NULL, *names = NULL;
    int updated = 0, result = -1;
    Py_ssize_t count = N_CORRELATED;
    PyObject **updates = PyMem_New(PyObject *, count ? count : 1);
    if (updates == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (Py_ssize_t i = 0; i < count; i++) {
        PyObject *value = get(incoming, F_CORRELATED + (int)i, Py_None);
        updates[i] = NULL;
        if (value == NULL) goto done;
        int worth = PyObject_IsTrue(value);
        if (worth > 0) worth = PySequence_Contains(self->zero_ips, value) == 0 ? 1 : (PyErr_Occurred() ? -1 : 0);
        if (worth <= 0) {
            Py_DECREF(value);
            if (worth < 0) goto done;
            continue;
        }
        updates[i] = value;
        updated = 1;
    }
    int external = source_from_external(self, incoming);
    if (external < 0) goto done;
    if (!updated && !external) {
        *shape = Py_NewRef(*shape);
        *values = Py_NewRef(*values);
        result = 0;
        goto done;
    }
    PyObject *old_names = PyTuple_GET_ITEM(*shape, 0);
    if (!PyTuple_CheckExact(old_names) || PyTuple_GET_SIZE(old_names) != PyTuple_GET_SIZE(*values)) {
        PyErr_SetString(PyExc_ValueError, "a flow's names and values differ in length");
        goto done;
    }
    uint32_t mask = 0;
    for (Py_ssize_t i = 0; i < count; i++)
        if (updates[i] != NULL) mask |= 1u << i;
    Correlation *known = NULL;
    for (int k = 0; !external && k < CORRELATIONS; k++)
        if (self->correlations[k].from == *shape && self->correlations[k].mask == mask)
            known = &self->correlations[k];
    if (known != NULL) { /* the old values with the updates in their known places */
        Py_ssize_t before = PyTuple_GET_SIZE(*values);
        PyObject *after = PyTuple_New(PyTuple_GET_SIZE(PyTuple_GET_ITEM(known->to, 0)));
        if (after == NULL) goto done;
        for (Py_ssize_t i = 0; i < before; i++) PyTuple_SET_ITEM(after, i, Py_NewRef(PyTuple_GET_ITEM(*values, i)));
        for (Py_ssize_t i = 0; i < count; i++) {
            if (updates[i] == NULL) continue;
            if (known->at[i] < before) Py_DECREF(PyTuple_GET_ITEM(after, known->at[i]));
            PyTuple_SET_ITEM(after, known->at[i], updates[i]);
            updates[i] = NULL;
        }
        *values = settled(after);
        *shape = Py_NewRef(known->to);
        result = 0;
        goto done;
    }
    if ((base = PyDict_New()) == NULL) goto done;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(old_names); i++)
        if (PyDict_SetItem(base, PyTuple_GET_ITEM(old_names, i), PyTuple_GET_ITEM(*values, i)) < 0) goto done;
    for (Py_ssize_t i = 0; i < count; i++)
        if (updates[i] != NULL && PyDict_SetItem(base, S[F_CORRELATED + i], updates[i]) < 0)
            goto done;
    if (external) {
        int v4 = has(incoming, F_sourceIPv4Address);
        if (v4 < 0) goto done;
        int copied[4] = {v4 ? F_sourceIPv4Address : F_sourceIPv6Address, F_sourceTransportPort,
                         v4 ? F_proxySnatIPv4 : F_proxySnatIPv6, F_proxySnatPort};
        for (int i = 0; i < 4; i++) {
            int present = has(incoming, copied[i]);
            if (present < 0) goto done;
            if (!present) continue;
            PyObject *value = get(incoming, copied[i], Py_None);
            int failed = value == NULL || PyDict_SetItem(base, S[copied[i]], value) < 0;
            Py_XDECREF(value);
            if (failed) goto done;
        }
        if (PyDict_SetItem(base, S[F_flowType], FOUR) < 0) goto done;
    }
    PyObject *list = PyDict_Keys(base);
    if (list == NULL) goto done;
    names = settled(PyList_AsTuple(list));
    Py_DECREF(list);
    if (names == NULL) goto done;
    PyObject *new_shape = shape_of(self, names);
    if (new_shape == NULL) goto done;
    if ((list = PyDict_Values(base)) == NULL) {
        Py_DECREF(new_shape);
        goto done;
    }
    PyObject *new_values = settled(PyList_AsTuple(list));
    Py_DECREF(list);
    if (new_values == NULL) {
        Py_DECREF(new_shape);
        goto done;
    }
    if (!external) remember_correlation(self, *shape, new_shape, mask);
    *shape = new_shape;
    *values = new_values;
    result = 0;
done:
    for (Py_ssize_t i = 0; i < count; i++) Py_XDECREF(updates[i]);
    PyMem_Free(updates);
    Py_XDECREF(base);
    Py_XDECREF(names);
    return result;
}

/* aggregateRecords on the figures f (new references, replaced in place); sets in *shows the bits of the
   record's own figures it set (flowscope.core.correlate._aggregate) */
static int aggregate(PyObject *incoming, PyObject **f, const Side **sides, int count, long *shows) {
    PyObject *end = NULL, *diffs[2] = {NULL, NULL}, *totals[4] = {NULL}, *deltas[4] = {NULL};
    int result = -1;
    static const int TOTAL_NAMES[4] = {F_packetTotalCount, F_octetTotalCount, F_reversePacketTotalCount,
                                       F_reverseOctetTotalCount};
    static const int DELTA_NAMES[4] = {F_packetDeltaCount, F_octetDeltaCount, F_reversePacketDeltaCount,
                                       F_reverseOctetDeltaCount};
    *shows = 0;
    if ((end = get(incoming, F_flowEndSeconds, ZERO)) == NULL) goto done;
    int latest = compare(end, f[X_END], Py_GE);
    if (latest < 0) goto done;
    if (latest) {
        set_borrowed(&f[X_END], end);
        *shows |= SHOWS_END;
    }
    for (int s = 0; s < count; s++) {
        const Side *side = sides[s];
        PyObject *previous;
        int truth = PyObject_IsTrue(f[side->end]);
        if (truth < 0) goto done;
        previous = truth ? Py_NewRef(f[side->end]) : get(incoming, F_flowStartSeconds, ZERO);
        if (previous == NULL) goto done;
        set_borrowed(&f[side->end], end);
        int passed = compare(end, previous, Py_LE);
        if (passed != 0) {
            Py_DECREF(previous);
            if (passed > 0) result = 0; /* no time has passed: ignored for the statistics */
            goto done;
        }
        diffs[s] = PyNumber_Subtract(end, previous);
        Py_DECREF(previous);
        if (diffs[s] == NULL) goto done;
    }
    int sticky = compare(f[X_REASON], THREE, Py_NE);
    if (sticky < 0) goto done;
    if (sticky) {
        set(&f[X_REASON], get(incoming, F_flowEndReason, f[X_REASON]));
        if (f[X_REASON] == NULL) goto done;
        *shows |= SHOWS_REASON;
    }
    if (latest) {
        set(&f[X_TCP_STATE], get(incoming, F_tcpState, f[X_TCP_STATE]));
        if (f[X_TCP_STATE] == NULL) goto done;
        *shows |= SHOWS_TCP_STATE;
    }
    for (int i = 0; i < 4; i++)
        if ((totals[i] = get(incoming, TOTAL_NAMES[i], ZERO)) == NULL) goto done;
    for (int i = 0; i < 4; i++)
        if ((deltas[i] = get(incoming, DELTA_NAMES[i], ZERO)) == NULL) goto done;
    for (int s = 0; s < count; s++) {
        const Side *side = sides[s];
        PyObject *grown[2] = {NULL, NULL}; /* max(0, total - side total), forward and reverse */
        for (int k = 0; k < 2; k++) {
            PyObject *diff = PyNumber_Subtract(totals[2 * k + 1], f[side->totals + 2 * k + 1]);
            int more = diff == NULL ? -1 : PyObject_RichCompareBool(diff, ZERO, Py_GT);
            if (more <= 0) {
                Py_XDECREF(diff);
                diff = more < 0 ? NULL : Py_NewRef(ZERO);
            }
            if (diff == NULL) goto fail_grown;
            grown[k] = diff;
        }
        for (int i = 0; i < 4; i++) set_borrowed(&f[side->totals + i], totals[i]);
        for (int i = 0; i < 4; i++) {
            set(&f[side->deltas + i], PyNumber_Add(f[side->deltas + i], deltas[i]));
            if (f[side->deltas + i] == NULL) goto fail_grown;
        }
        if (latest) {
            for (int i = 0; i < 4; i++) {
                int more = PyObject_RichCompareBool(f[side->totals + i], f[X_TOTALS + i], Py_GT);
                if (more < 0) goto fail_grown;
                if (more) set_borrowed(&f[X_TOTALS + i], f[side->totals + i]);
            }
            for (int i = 0; i < 4; i++) set_borrowed(&f[X_DELTAS + i], f[side->deltas + i]);
        }
        int slots[2] = {side->throughput, side->reverse_throughput};
        for (int k = 0; k < 2; k++) {
            PyObject *bits = PyNumber_Multiply(grown[k], EIGHT);
            set(&f[slots[k]], bits == NULL ? NULL : PyNumber_FloorDivide(bits, diffs[s]));
            Py_XDECREF(bits);
            if (f[slots[k]] == NULL) goto fail_grown;
        }
        Py_DECREF(grown[0]);
        Py_DECREF(grown[1]);
        if (latest) {
            set_borrowed(&f[X_THROUGHPUT], f[side->throughput]);
            set_borrowed(&f[X_REVERSE_THROUGHPUT], f[side->reverse_throughput]);
            *shows |= LATEST_SHOWS;
        }
        continue;
    fail_grown:
        Py_XDECREF(grown[0]);
        Py_XDECREF(grown[1]);
        goto done;
    }
    result = 0;
done:
    Py_XDECREF(end);
    Py_XDECREF(diffs[0]);
    Py_XDECREF(diffs[1]);
    for (int i = 0; i < 4; i++) {
        Py_XDECREF(totals[i]);
        Py_XDECREF(deltas[i]);
    }
    return result;
}

/* a state as the core makes them; anything else goes to the Python core */
static int is_state(PyObject *state) {
    if (!PyTuple_CheckExact(state) || PyTuple_GET_SIZE(state) != S_COUNT) return 0;
    PyObject *shape = PyTuple_GET_ITEM(state, S_SHAPE), *values = PyTuple_GET_ITEM(state, S_VALUES);
    PyObject *shown = PyTuple_GET_ITEM(state, S_SHOWN);
    if (!PyTuple_CheckExact(shape) || PyTuple_GET_SIZE(shape) != 4 || !PyTuple_CheckExact(values) ||
        !PyTuple_CheckExact(PyTuple_GET_ITEM(shape, 0)) || !PyBool_Check(PyTuple_GET_ITEM(shape, 3)) ||
        PyTuple_GET_SIZE(PyTuple_GET_ITEM(shape, 0)) != PyTuple_GET_SIZE(values) || !PyLong_CheckExact(shown))
        return 0;
    long bits = PyLong_AsLong(shown);
    if (bits == -1 && PyErr_Occurred()) PyErr_Clear();
    return bits >= 0 && bits < (1L << N_OWN);
}

static PyObject *core_merge(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 4) return PyErr_Format(PyExc_TypeError, "merge() takes flow, record, now, out");
    PyObject *flow = args[0], *record = args[1], *now = args[2];
    PyObject *state = !PyDict_CheckExact(record) ? NULL
                      : Flow_CheckExact(flow)   ? Py_NewRef(((FlowObject *)flow)->state)
                                                : PyObject_GetAttr(flow, S[F_state]);
    if (state == NULL || !is_state(state)) {
        Py_XDECREF(state);
        return PyErr_Occurred() ? NULL : fallback(self, F_merge, args, nargs);
    }
    view_open(record);
    PyObject *shape = Py_NewRef(PyTuple_GET_ITEM(state, S_SHAPE)), *values = Py_NewRef(PyTuple_GET_ITEM(state, S_VALUES));
    PyObject *ready = Py_NewRef(PyTuple_GET_ITEM(state, S_READY)), *f[X_COUNT], *new_state = NULL, *result = NULL;
    const Side *both[2] = {&SOURCE, &DESTINATION}, *one[1];
    long shown = PyLong_AsLong(PyTuple_GET_ITEM(state, S_SHOWN)), shows = 0;
    for (int i = 0; i < X_COUNT; i++) f[i] = Py_NewRef(PyTuple_GET_ITEM(state, S_FIGURES + i));
    int required = correlation_required(self, record), failed;
    if (required < 0) goto done;
    if (required) {
        int incoming = from_source(self, record);
        if (incoming < 0) goto done;
        int is_ready = PyObject_IsTrue(ready);
        if (is_ready < 0) goto done;
        if (!is_ready) {
            int first = PyObject_IsTrue(PyTuple_GET_ITEM(state, S_FROM_SOURCE));
            if (first < 0) goto done;
            if (incoming != first) {
                PyObject *old_shape = shape, *old_values = values;
                failed = correlate(self, record, &shape, &values);
                Py_DECREF(old_shape);
                Py_DECREF(old_values);
                if (failed) {
                    shape = values = NULL;
                    goto done;
                }
                set_borrowed(&ready, Py_True);
                if (Flow_CheckExact(flow)) {
                    double at = PyFloat_AsDouble(now);
                    if (at == -1.0 && PyErr_Occurred()) goto done;
                    ((FlowObject *)flow)->active_deadline = at;
                } else if (PyObject_SetAttr(flow, S[F_active_deadline], now) < 0) goto done;
            }
        }
        one[0] = incoming ? &SOURCE : &DESTINATION;
        failed = aggregate(record, f, one, 1, &shows);
    } else failed = aggregate(record, f, both, 2, &shows);
    if (failed) goto done;
    new_state = make_state(shape, values, ready, PyTuple_GET_ITEM(state, S_FROM_SOURCE), Py_True,
                           PyTuple_GET_ITEM(state, S_FIRST_SEEN), shown | shows, f, 1);
    if (new_state == NULL || set_deadlines(self, flow, now, new_state, 0, 0) < 0) goto done;
    result = Py_NewRef(Py_None);
done:
    for (int i = 0; i < X_COUNT; i++) Py_XDECREF(f[i]); /* a failed step leaves NULL in its place */
    Py_DECREF(state);
    Py_XDECREF(shape);
    Py_XDECREF(values);
    Py_XDECREF(ready);
    Py_XDECREF(new_state);
    return result;
}

/* export(state) -> (record or None, state after): flowscope.core.aggregate.export */
static PyObject *core_export(Core *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 1) return PyErr_Format(PyExc_TypeError, "export() takes a state");
    PyObject *state = args[0];
    if (!is_state(state)) return fallback(self, F_export, args, nargs);
    PyObject *shape = PyTuple_GET_ITEM(state, S_SHAPE), *values = PyTuple_GET_ITEM(state, S_VALUES), *f[X_COUNT];
    PyObject *record = Py_None, *after = NULL, *result = NULL;
    long shown = PyLong_AsLong(PyTuple_GET_ITEM(state, S_SHOWN));
    int updated = PyObject_IsTrue(PyTuple_GET_ITEM(state, S_UPDATED));
    if (updated < 0) return NULL;
    for (int i = 0; i < X_COUNT; i++) f[i] = PyTuple_GET_ITEM(state, S_FIGURES + i);
    Py_INCREF(record);
    if (updated) {
        PyObject *names = PyTuple_GET_ITEM(shape, 0);
        Py_SETREF(record, PyDict_Copy(self->templates[PyTuple_GET_ITEM(shape, 3) == Py_True]));
        if (record == NULL) return NULL;
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++)
            if (PyDict_SetItem(record, PyTuple_GET_ITEM(names, i), PyTuple_GET_ITEM(values, i)) < 0) goto done;
        for (int i = 0; i < X_COUNT; i++)
            if (PyDict_SetItem(record, PyTuple_GET_ITEM(self->figure_names, i), f[i]) < 0) goto done;
        int truth = PyObject_IsTrue(self->cluster_id);
        if (truth < 0 || (truth && PyDict_SetItem(record, S[F_clusterId], self->cluster_id) < 0)) goto done;
        for (int i = 0; i < X_RESET; i++) f[i] = ZERO;
        shown &= ~RESET_SHOWN;
    }
    after = make_state(shape, values, Py_True, PyTuple_GET_ITEM(state, S_FROM_SOURCE), Py_False,
                       PyTuple_GET_ITEM(state, S_FIRST_SEEN), shown, f, 0);
    if (after != NULL) result = PyTuple_Pack(2, record, after);
done:
    Py_DECREF(record);
    Py_XDECREF(after);
    return result;
}

/* the core's references given at its creation, in the order core_new takes them */
#define CORE_SLOTS(self)                                                                                      \
    {&(self)->active, &(self)->inactive, &(self)->cluster_id, &(self)->fallback, &(self)->control,            \
     &(self)->figure_names, &(self)->defaults, &(self)->templates[0], &(self)->templates[1], &(self)->shapes, \
     &(self)->shape_for, &(self)->zero_ips}

static PyObject *core_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    PyObject *active, *inactive, *cluster_id, *spec, *fallback;
    if (!PyArg_ParseTuple(args, "OOOO!O", &active, &inactive, &cluster_id, &PyTuple_Type, &spec, &fallback)) return NULL;
    if (PyTuple_GET_SIZE(spec) != 10) return PyErr_Format(PyExc_ValueError, "spec has 10 items");
    PyObject *figure_names = PyTuple_GET_ITEM(spec, 1), *own = PyTuple_GET_ITEM(spec, 2);
    PyObject *defaults = PyTuple_GET_ITEM(spec, 3), *correlated = PyTuple_GET_ITEM(spec, 8);
    PyObject *zero_ips = PyTuple_GET_ITEM(spec, 9);
    int valid = PyTuple_CheckExact(figure_names) && PyTuple_GET_SIZE(figure_names) == X_COUNT &&
                PyTuple_CheckExact(own) && PyTuple_GET_SIZE(own) == N_OWN && PyTuple_CheckExact(defaults) &&
                PyTuple_GET_SIZE(defaults) == X_COUNT && PyDict_CheckExact(PyTuple_GET_ITEM(spec, 4)) &&
                PyDict_CheckExact(PyTuple_GET_ITEM(spec, 5)) && PyDict_CheckExact(PyTuple_GET_ITEM(spec, 6)) &&
                PyTuple_CheckExact(correlated) && PyTuple_CheckExact(zero_ips);
    for (int i = 0; valid && i < X_COUNT; i++) {
        PyObject *name = PyTuple_GET_ITEM(figure_names, i);
        valid = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, FIGURE_NAMES[i]) == 0;
    }
    for (int i = 0; valid && i < N_OWN; i++) {
        PyObject *name = PyTuple_GET_ITEM(own, i);
        valid = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, FIGURE_NAMES[OWN[i]]) == 0;
    }
    valid = valid && PyTuple_GET_SIZE(correlated) == N_CORRELATED;
    for (int i = 0; valid && i < N_CORRELATED; i++) {
        PyObject *name = PyTuple_GET_ITEM(correlated, i);
        valid = PyUnicode_Check(name) && PyUnicode_CompareWithASCIIString(name, FIELD_NAMES[F_CORRELATED + i]) == 0;
    }
    if (!valid) return PyErr_Format(PyExc_ValueError, "spec does not match the state this core was built for");
    Core *self = (Core *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    PyObject **slots[] = CORE_SLOTS(self);
    PyObject *given[] = {active, inactive, cluster_id, fallback, PyTuple_GET_ITEM(spec, 0), figure_names, defaults,
                         PyTuple_GET_ITEM(spec, 4), PyTuple_GET_ITEM(spec, 5), PyTuple_GET_ITEM(spec, 6),
                         PyTuple_GET_ITEM(spec, 7), zero_ips};
    for (size_t i = 0; i < sizeof given / sizeof *given; i++) *slots[i] = Py_NewRef(given[i]);
    return (PyObject *)self;
}

static void core_dealloc(Core *self) {
    Py_CLEAR(self->last_names);
    Py_CLEAR(self->last_shape);
    for (int k = 0; k < CORRELATIONS; k++) {
        Py_CLEAR(self->correlations[k].from);
        Py_CLEAR(self->correlations[k].to);
    }
    PyObject **slots[] = CORE_SLOTS(self);
    for (size_t i = 0; i < sizeof slots / sizeof *slots; i++) Py_CLEAR(*slots[i]);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static PyMethodDef core_methods[] = {
    {"key", (PyCFunction)(void (*)(void))core_key, METH_FASTCALL, "The flow key of a record, or CONTROL."},
    {"start", (PyCFunction)(void (*)(void))core_start, METH_FASTCALL, "start(flow, record, now, out)"},
    {"merge", (PyCFunction)(void (*)(void))core_merge, METH_FASTCALL, "merge(flow, record, now, out)"},
    {"export", (PyCFunction)(void (*)(void))core_export, METH_FASTCALL, "export(state) -> (record or None, state)"},
    {NULL, NULL, 0, NULL},
};

static PyTypeObject CoreType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowscope.core.ipfix._speedups.AggregateCore",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The per-record work of the aggregation policy (flowscope.core.correlate.Core), in C.",
    .tp_new = core_new,
    .tp_dealloc = (destructor)core_dealloc,
    .tp_methods = core_methods,
};

static int init_core(PyObject *module) {
    for (int i = 0; i < F_COUNT; i++)
        if ((S[i] = PyUnicode_InternFromString(FIELD_NAMES[i])) == NULL) return -1;
    Py_BUILD_ASSERT(F_FIELDS <= 64);
    if ((FIELD_IDS = PyDict_New()) == NULL) return -1;
    for (int f = 0; f < F_FIELDS; f++) {
        PyObject *found = PyDict_GetItem(FIELD_IDS, S[f]);
        PyObject *bits = PyLong_FromUnsignedLongLong((found ? PyLong_AsUnsignedLongLong(found) : 0) | 1ULL << f);
        int failed = bits == NULL || PyDict_SetItem(FIELD_IDS, S[f], bits) < 0;
        Py_XDECREF(bits);
        if (failed) return -1;
    }
    ZERO = PyLong_FromLong(0);
    TWO = PyLong_FromLong(2);
    THREE = PyLong_FromLong(3);
    FOUR = PyLong_FromLong(4);
    EIGHT = PyLong_FromLong(8);
    EMPTY = PyUnicode_FromString("");
    DROP_REJECT = PyTuple_Pack(2, TWO, THREE);
    if (DROP_REJECT == NULL || EMPTY == NULL || PyType_Ready(&CoreType) < 0) return -1;
    Py_INCREF(&CoreType);
    return PyModule_AddObject(module, "AggregateCore", (PyObject *)&CoreType);
}


/*
 * LineEncoder().fill(buffer, records, timestamp, fallback) -> int: the Antrea JSON lines of the
 * records, one after the other from the start of the bytearray buffer (grown, never shrunk), and
 * where they end. A line is exactly what flowscope.plugins.sinks.json.encode_line gives: sorted keys,
 * orjson's escapes, then Go's for <, > and &. Records that are not flat dicts with str keys and str,
 * int, bool or None values are encoded by fallback(record, timestamp). Each key order seen recently
 * is kept with its sorted order, so that records of the same template are not sorted again.
 */
#define LAYOUTS 4
typedef struct {
    Py_ssize_t count;
    PyObject **keys; /* strong references: no other string can take their addresses */
    Py_ssize_t *order;
    char *text;           /* the keys in sorted order, each as `"key":` (after a comma but the first) */
    Py_ssize_t *starts;   /* where each of them begins in text, and where text ends */
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
static const Layout *find_layout(LineEncoder *self, PyObject **keys, Py_ssize_t count) {
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
                   PyMem_New(Py_ssize_t, count + 1)};
    Writer text = {PyByteArray_FromStringAndSize(NULL, 0), 0};
    if (made.keys == NULL || made.order == NULL || made.starts == NULL || text.buffer == NULL) goto fail;
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

/* one record's line; 0 if it cannot be written here (the writer is then where it was) */
static int put_record(LineEncoder *self, Writer *w, PyObject *record, const char *prefix, Py_ssize_t prefix_length) {
    if (!PyDict_CheckExact(record)) return 0;
    Py_ssize_t count = PyDict_GET_SIZE(record), pos = 0, i = 0, start = w->end;
    PyObject *stack[2 * 96], **keys = stack, *key, *value;
    if (count > 96 && (keys = PyMem_New(PyObject *, 2 * count)) == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyObject **values = keys + count;
    int result = 0;
    while (PyDict_Next(record, &pos, &key, &value) && i < count) {
        if (!PyUnicode_CheckExact(key)) goto done;
        keys[i] = key;
        values[i++] = value;
    }
    if (i != count) goto done;
    const Layout *layout = find_layout(self, keys, count);
    if (layout == NULL) {
        result = PyErr_Occurred() ? -1 : 0;
        goto done;
    }
    if (put(w, prefix, prefix_length) < 0 || put(w, "{", 1) < 0) {
        result = -1;
        goto done;
    }
    for (Py_ssize_t k = 0; k < count; k++) {
        int written = put(w, layout->text + layout->starts[k], layout->starts[k + 1] - layout->starts[k]) < 0
                          ? -1
                          : put_value(w, values[layout->order[k]]);
        if (written <= 0) {
            result = written;
            goto done;
        }
    }
    result = put(w, "}}\n", 3) < 0 ? -1 : 1;
done:
    if (result <= 0) w->end = start;
    if (keys != stack) PyMem_Free(keys);
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
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowscope.core.ipfix._speedups.LineEncoder",
    .tp_basicsize = sizeof(LineEncoder),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "Antrea JSON lines of flat records, as the json sink writes them.",
    .tp_new = encoder_new,
    .tp_dealloc = (destructor)encoder_dealloc,
    .tp_methods = encoder_methods,
};

static PyMethodDef methods[] = {
    {"decode_set", decode_set, METH_VARARGS, "Decode the records of one IPFIX data set following a plan."},
    {"parse_conntrack", parse_conntrack, METH_VARARGS, "Parse the messages of one recv() of a ctnetlink dump."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_speedups", "IPFIX decoding, conntrack dump parsing, the aggregation core and JSON lines in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__speedups(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (init_core(m) < 0 || init_flowtable(m) < 0 || PyType_Ready(&LineEncoderType) < 0 ||
                      PyModule_AddObject(m, "LineEncoder", Py_NewRef(&LineEncoderType)) < 0))
        Py_CLEAR(m);
    return m;
}
