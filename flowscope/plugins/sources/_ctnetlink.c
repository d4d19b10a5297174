/*
 * The ctnetlink dump parser of flowscope.plugins.sources.ctnetlink, in C. parse_conntrack gives the
 * entries (the twin of _parse_python); parse_records and end_records give the conntrack source's
 * records straight from the messages (the twin of poll_records' Python path: the entries through
 * Filter.wants and to_record). Each gives what its twin gives. Used when this module is built and
 * FLOWSCOPE_PURE_PYTHON is unset.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

#include <arpa/inet.h>
#include <stdint.h>
#include <string.h>

/* the attributes of a nest by type, for types below `types` (the rest are never read) */
typedef struct {
    const unsigned char *start[32];
    uint16_t length[32];
} Nest;

static void nest_read(const unsigned char *p, Py_ssize_t len, Nest *nest, int types) {
    memset(nest->start, 0, types * sizeof nest->start[0]);
    memset(nest->length, 0, types * sizeof nest->length[0]);
    while (len >= 4) {
        uint16_t alen, type;
        memcpy(&alen, p, 2);
        memcpy(&type, p + 2, 2);
        if (alen < 4 || alen > len) break;
        type &= 0x3FFF;
        if (type < types) {
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
    if (len == 4) { /* dotted quad, as inet_ntoa: snprintf takes longer than the rest of the entry */
        char *at = text;
        for (int i = 0; i < 4; i++) {
            unsigned octet = p[i];
            if (octet >= 100) *at++ = (char)('0' + octet / 100);
            if (octet >= 10) *at++ = (char)('0' + octet / 10 % 10);
            *at++ = (char)('0' + octet % 10);
            *at++ = '.';
        }
        at[-1] = 0;
    }
    else if (len == 16) inet_ntop(AF_INET6, p, text, sizeof text);
    else text[0] = 0;
    return PyUnicode_FromString(text);
}

/* one entry's fields, pointing into the message; addresses are raw (4 or 16 bytes, else shown as "") */
typedef struct {
    const unsigned char *address[4]; /* src, dst, reply_src, reply_dst */
    uint16_t address_length[4];
    long proto, port[4]; /* sport, dport, reply_sport, reply_dport */
    uint64_t counter[4], start_ns, stop_ns; /* packets, octets, reverse_packets, reverse_octets */
    unsigned long status, mark;
    long zone, state; /* state: the kernel's TCP state number, -1 when absent */
    const unsigned char *labels;
    uint16_t labels_length;
} Entry;

/* the addresses, protocol and ports of a CTA_TUPLE_* nest, into entry slots `at` and `at + 1` */
static void ct_tuple(const unsigned char *p, uint16_t len, Entry *e, int at, long *proto) {
    Nest tuple, ip, l4;
    nest_read(p, len, &tuple, 3);
    nest_read(tuple.start[1], tuple.start[1] ? tuple.length[1] : 0, &ip, 5);
    nest_read(tuple.start[2], tuple.start[2] ? tuple.length[2] : 0, &l4, 4);
    int v6 = ip.start[3] != NULL;
    e->address[at] = v6 ? ip.start[3] : ip.start[1];
    e->address_length[at] = v6 ? ip.length[3] : ip.length[1];
    e->address[at + 1] = v6 ? ip.start[4] : ip.start[2];
    e->address_length[at + 1] = v6 ? ip.length[4] : ip.length[2];
    *proto = (long)be(l4.start[1], l4.length[1], 1);
    e->port[at] = (long)be(l4.start[2], l4.length[2], 2);
    e->port[at + 1] = (long)be(l4.start[3], l4.length[3], 2);
}

/* read one IPCTNL_MSG_CT_NEW body; 0 when it has no tuples */
static int ct_entry(const unsigned char *p, Py_ssize_t len, Entry *e) {
    Nest top, counters, reverse, stamps, protoinfo, tcp;
    nest_read(p, len, &top, 23);
    if (top.start[1] == NULL || top.start[2] == NULL) return 0;
    long reply_proto;
    ct_tuple(top.start[1], top.length[1], e, 0, &e->proto);
    ct_tuple(top.start[2], top.length[2], e, 2, &reply_proto);
    nest_read(top.start[9], top.start[9] ? top.length[9] : 0, &counters, 3);
    nest_read(top.start[10], top.start[10] ? top.length[10] : 0, &reverse, 3);
    nest_read(top.start[20], top.start[20] ? top.length[20] : 0, &stamps, 3);
    e->counter[0] = be(counters.start[1], counters.length[1], 8);
    e->counter[1] = be(counters.start[2], counters.length[2], 8);
    e->counter[2] = be(reverse.start[1], reverse.length[1], 8);
    e->counter[3] = be(reverse.start[2], reverse.length[2], 8);
    e->start_ns = be(stamps.start[1], stamps.length[1], 8);
    e->stop_ns = be(stamps.start[2], stamps.length[2], 8);
    e->status = (unsigned long)be(top.start[3], top.length[3], 4);
    e->mark = (unsigned long)be(top.start[8], top.length[8], 4);
    e->zone = (long)be(top.start[18], top.length[18], 2);
    e->state = -1;
    if (top.start[4] != NULL) {
        nest_read(top.start[4], top.length[4], &protoinfo, 2);
        if (protoinfo.start[1] != NULL) {
            nest_read(protoinfo.start[1], protoinfo.length[1], &tcp, 2);
            if (tcp.start[1] != NULL && tcp.length[1] >= 1) e->state = tcp.start[1][0];
        }
    }
    e->labels = top.start[22];
    e->labels_length = top.start[22] ? top.length[22] : 0;
    return 1;
}

static PyObject *entry_tuple(const Entry *e) {
    PyObject *a[4];
    for (int i = 0; i < 4; i++) a[i] = address(e->address[i], e->address_length[i]);
    PyObject *labels = PyBytes_FromStringAndSize(e->labels ? (const char *)e->labels : "", e->labels_length);
    if (a[0] == NULL || a[1] == NULL || a[2] == NULL || a[3] == NULL || labels == NULL) {
        for (int i = 0; i < 4; i++) Py_XDECREF(a[i]);
        Py_XDECREF(labels);
        return NULL;
    }
    return Py_BuildValue("(lNNllNNllKKKKKKkkllN)", e->proto, a[0], a[1], e->port[0], e->port[1], a[2], a[3],
                         e->port[2], e->port[3], (unsigned long long)e->counter[0],
                         (unsigned long long)e->counter[1], (unsigned long long)e->counter[2],
                         (unsigned long long)e->counter[3], (unsigned long long)e->start_ns,
                         (unsigned long long)e->stop_ns, e->status, e->mark, e->zone, e->state, labels);
}

/* Walks the netlink messages of one recv(); calls take(entry, context) for each entry with tuples
 * (a negative return is an exception). *done is set at NLMSG_DONE or an error, *error to its errno. */
static int walk(const unsigned char *p, Py_ssize_t left, int (*take)(const Entry *, void *), void *context,
                int *done, int *error) {
    *done = *error = 0;
    while (left >= 16 && !*done) {
        uint32_t length;
        uint16_t type;
        memcpy(&length, p, 4);
        memcpy(&type, p + 4, 2);
        if (length < 16 || length > left) break;
        if (type == 3) *done = 1; /* NLMSG_DONE */
        else if (type == 2) {     /* NLMSG_ERROR */
            int32_t code = 0;
            if (length >= 20) memcpy(&code, p + 16, 4);
            *error = -code;
            if (*error) *done = 1;
        } else if (length >= 20) {
            Entry entry;
            if (ct_entry(p + 20, (Py_ssize_t)length - 20, &entry) && take(&entry, context) < 0) return -1;
        }
        Py_ssize_t step = (length + 3) & ~3;
        if (step > left) break;
        p += step;
        left -= step;
    }
    return 0;
}

static int append_tuple(const Entry *e, void *entries) {
    PyObject *entry = entry_tuple(e);
    int failed = entry == NULL || PyList_Append((PyObject *)entries, entry) < 0;
    Py_XDECREF(entry);
    return failed ? -1 : 0;
}

/*
 * parse_conntrack(data: bytes) -> (entries: list[tuple], done: bool, error: int)
 *
 * The entries of one recv() of a ctnetlink dump, each the tuple
 * (proto, src, dst, sport, dport, reply_src, reply_dst, reply_sport, reply_dport, packets, octets,
 *  reverse_packets, reverse_octets, start_ns, stop_ns, status, mark, zone, tcp_state, labels)
 * with addresses as text and tcp_state as the kernel's number (-1 when absent). done is true at
 * NLMSG_DONE; error is the errno of an NLMSG_ERROR (0 if none).
 */
static PyObject *parse_conntrack(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data;
    if (!PyArg_ParseTuple(args, "y*", &data)) return NULL;
    PyObject *entries = PyList_New(0);
    int done = 0, error = 0;
    if (entries != NULL && walk(data.buf, data.len, append_tuple, entries, &done, &error) < 0) Py_CLEAR(entries);
    PyBuffer_Release(&data);
    if (entries == NULL) return NULL;
    return Py_BuildValue("(Nii)", entries, done, error);
}

/* ---- records ------------------------------------------------------------------------------- */

enum {
    K_poll, K_ctStatus, K_protocolIdentifier, K_sourceIPv4Address, K_sourceIPv6Address, K_destinationIPv4Address,
    K_destinationIPv6Address, K_sourceTransportPort, K_destinationTransportPort, K_packetTotalCount,
    K_octetTotalCount, K_reversePacketTotalCount, K_reverseOctetTotalCount, K_flowStartSeconds, K_flowEndSeconds,
    K_tcpState, K_destinationServiceIPv4, K_destinationServiceIPv6, K_destinationClusterIPv4,
    K_destinationClusterIPv6, K_destinationServicePort, K_proxySnatIPv4, K_proxySnatIPv6, K_proxySnatPort, K_COUNT,
};
static const char *KEY_NAMES[K_COUNT] = {
    "_poll", "_ctStatus", "protocolIdentifier", "sourceIPv4Address", "sourceIPv6Address", "destinationIPv4Address",
    "destinationIPv6Address", "sourceTransportPort", "destinationTransportPort", "packetTotalCount",
    "octetTotalCount", "reversePacketTotalCount", "reverseOctetTotalCount", "flowStartSeconds", "flowEndSeconds",
    "tcpState", "destinationServiceIPv4", "destinationServiceIPv6", "destinationClusterIPv4",
    "destinationClusterIPv6", "destinationServicePort", "proxySnatIPv4", "proxySnatIPv6", "proxySnatPort",
};
static PyObject *KEYS[K_COUNT]; /* interned */

#define IPS_DYING (1UL << 9)
#define IPPROTO_TCP_ 6

typedef struct {
    PyObject *poll, *end, *states, *zones, *protocols, *records;
    int by_mark;
    unsigned long mark, mask;
    Py_ssize_t seen;
} Poll;

/* the text of two raw addresses is the same */
static int same_address(const Entry *e, int a, int b) {
    int valid_a = e->address[a] != NULL && (e->address_length[a] == 4 || e->address_length[a] == 16);
    int valid_b = e->address[b] != NULL && (e->address_length[b] == 4 || e->address_length[b] == 16);
    if (!valid_a || !valid_b) return valid_a == valid_b;
    return e->address_length[a] == e->address_length[b] &&
           memcmp(e->address[a], e->address[b], e->address_length[a]) == 0;
}

/* record[key] = value, taking the reference to value */
static int put(PyObject *record, int key, PyObject *value) {
    if (value == NULL) return -1;
    int result = PyDict_SetItem(record, KEYS[key], value);
    Py_DECREF(value);
    return result;
}

/* is the entry's number in the set (None: every number is) */
static int in_set(PyObject *set, long number) {
    if (set == Py_None) return 1;
    PyObject *value = PyLong_FromLong(number);
    if (value == NULL) return -1;
    int found = PySet_Contains(set, value);
    Py_DECREF(value);
    return found;
}

/* the record to_record() makes, for a wanted entry */
static int append_record(const Entry *e, void *context) {
    Poll *poll = context;
    poll->seen++;
    int wanted = in_set(poll->zones, e->zone);
    if (wanted > 0 && poll->by_mark) wanted = (e->mark & poll->mask) == poll->mark;
    if (wanted > 0) wanted = in_set(poll->protocols, e->proto);
    if (wanted <= 0) return wanted;
    int v6 = e->address[0] != NULL && e->address_length[0] == 16;
    PyObject *record = _PyDict_NewPresized(19);
    if (record == NULL) return -1;
    PyObject *state;
    long number = e->proto == IPPROTO_TCP_ ? e->state : -1;
    if (number >= 0 && number < PyTuple_GET_SIZE(poll->states))
        state = Py_NewRef(PyTuple_GET_ITEM(poll->states, number));
    else
        state = PyUnicode_New(0, 0);
    int failed =
        put(record, K_poll, Py_NewRef(poll->poll)) < 0 ||
        put(record, K_ctStatus, PyLong_FromUnsignedLong(e->status)) < 0 ||
        put(record, K_protocolIdentifier, PyLong_FromLong(e->proto)) < 0 ||
        put(record, v6 ? K_sourceIPv6Address : K_sourceIPv4Address, address(e->address[0], e->address_length[0])) < 0 ||
        put(record, v6 ? K_destinationIPv6Address : K_destinationIPv4Address,
            address(e->address[2], e->address_length[2])) < 0 ||
        put(record, K_sourceTransportPort, PyLong_FromLong(e->port[0])) < 0 ||
        put(record, K_destinationTransportPort, PyLong_FromLong(e->port[2])) < 0 ||
        put(record, K_packetTotalCount, PyLong_FromUnsignedLongLong(e->counter[0])) < 0 ||
        put(record, K_octetTotalCount, PyLong_FromUnsignedLongLong(e->counter[1])) < 0 ||
        put(record, K_reversePacketTotalCount, PyLong_FromUnsignedLongLong(e->counter[2])) < 0 ||
        put(record, K_reverseOctetTotalCount, PyLong_FromUnsignedLongLong(e->counter[3])) < 0 ||
        put(record, K_flowStartSeconds, PyLong_FromUnsignedLongLong(e->start_ns / 1000000000ULL)) < 0 ||
        put(record, K_flowEndSeconds,
            (e->status & IPS_DYING) && e->stop_ns ? PyLong_FromUnsignedLongLong(e->stop_ns / 1000000000ULL)
                                                   : Py_NewRef(poll->end)) < 0 ||
        put(record, K_tcpState, state) < 0;
    if (!failed && (!same_address(e, 1, 2) || e->port[1] != e->port[2])) { /* DNAT: a Service's destination */
        PyObject *service = address(e->address[1], e->address_length[1]);
        failed = service == NULL ||
                 put(record, v6 ? K_destinationServiceIPv6 : K_destinationServiceIPv4, Py_NewRef(service)) < 0 ||
                 put(record, v6 ? K_destinationClusterIPv6 : K_destinationClusterIPv4, Py_NewRef(service)) < 0 ||
                 put(record, K_destinationServicePort, PyLong_FromLong(e->port[1])) < 0;
        Py_XDECREF(service);
    }
    if (!failed && (!same_address(e, 3, 0) || e->port[3] != e->port[0])) /* SNAT on the way out */
        failed =
            put(record, v6 ? K_proxySnatIPv6 : K_proxySnatIPv4, address(e->address[3], e->address_length[3])) < 0 ||
            put(record, K_proxySnatPort, PyLong_FromLong(e->port[3])) < 0;
    failed = failed || PyList_Append(poll->records, record) < 0;
    Py_DECREF(record);
    return failed ? -1 : 0;
}

/*
 * parse_records(data, poll, end, states, zones, mark, mask, protocols, records) -> (seen, done, error)
 *
 * The records of one recv() of a ctnetlink dump, as flowscope.plugins.sources.ctnetlink.to_record
 * makes them, appended to the list records: only entries in zones (a set, or None for all), whose
 * mark & mask is mark (None: any mark) and whose protocol is in protocols (a set or None). poll is
 * the records' _poll, end their flowEndSeconds unless dying (None until end_records sets it: the
 * time after the whole dump), states the TCP state names by number. seen counts every entry, wanted
 * or not; done and error are as for parse_conntrack.
 */
static PyObject *parse_records(PyObject *Py_UNUSED(self), PyObject *args) {
    Py_buffer data;
    Poll poll = {0};
    PyObject *mark;
    if (!PyArg_ParseTuple(args, "y*OOO!OOkOO!", &data, &poll.poll, &poll.end, &PyTuple_Type, &poll.states,
                          &poll.zones, &mark, &poll.mask, &poll.protocols, &PyList_Type, &poll.records))
        return NULL;
    poll.by_mark = mark != Py_None;
    if (poll.by_mark) poll.mark = PyLong_AsUnsignedLong(mark);
    int done = 0, error = 0, failed = PyErr_Occurred() != NULL;
    if (!failed) failed = walk(data.buf, data.len, append_record, &poll, &done, &error) < 0;
    PyBuffer_Release(&data);
    if (failed) return NULL;
    return Py_BuildValue("(nii)", poll.seen, done, error);
}

/* end_records(records, end): flowEndSeconds = end in every record whose flowEndSeconds is None */
static PyObject *end_records(PyObject *Py_UNUSED(self), PyObject *args) {
    PyObject *records, *end;
    if (!PyArg_ParseTuple(args, "O!O", &PyList_Type, &records, &end)) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(records); i++) {
        PyObject *record = PyList_GET_ITEM(records, i);
        if (!PyDict_Check(record)) continue;
        PyObject *value = PyDict_GetItemWithError(record, KEYS[K_flowEndSeconds]);
        if (value == NULL && PyErr_Occurred()) return NULL;
        if (value == Py_None && PyDict_SetItem(record, KEYS[K_flowEndSeconds], end) < 0) return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef methods[] = {
    {"parse_conntrack", parse_conntrack, METH_VARARGS, "Parse the messages of one recv() of a ctnetlink dump."},
    {"parse_records", parse_records, METH_VARARGS, "The records of the wanted entries of one recv() of a dump."},
    {"end_records", end_records, METH_VARARGS, "Set the flowEndSeconds left None by parse_records."},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_ctnetlink", "The ctnetlink dump parser of flowscope.plugins.sources.ctnetlink, in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__ctnetlink(void) {
    for (int i = 0; i < K_COUNT; i++)
        if ((KEYS[i] = PyUnicode_InternFromString(KEY_NAMES[i])) == NULL) return NULL;
    return PyModule_Create(&module);
}
