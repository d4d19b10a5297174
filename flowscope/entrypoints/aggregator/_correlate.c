/*
 * AggregateCore: the per-record work of the aggregator's ``aggregate`` table mode, in C. Its Python
 * twin is flowscope.entrypoints.aggregator.correlate.Core; both keep the same state tuples and give
 * the same records. Used when this module is built and FLOWSCOPE_PURE_PYTHON is unset.
 *
 * Flows of the C flow table (flowscope.core._flowtable) are changed directly, through the layout
 * its header describes; any other flow through its attributes.
 */
#include "_flowtable.h"

#include <stdint.h>
#include <string.h>

static PyTypeObject *FLOW_TYPE; /* flowscope.core._flowtable.Flow, NULL when that module is not built */
#define Flow_CheckExact(op) (FLOW_TYPE != NULL && Py_IS_TYPE(op, FLOW_TYPE))

/*
 * AggregateCore(active, inactive, cluster_id, spec, fallback): the per-record work of the aggregation
 * policy, exactly as flowscope.entrypoints.aggregator.correlate.Core does it in Python, on the same state tuples
 * (flowscope.entrypoints.aggregator.aggregate). Values are handled with the generic object protocol, so any value
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
    F_CORRELATED, /* then flowscope.entrypoints.aggregator.correlate.CORRELATED, in its order */
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

/* the figures, by position (flowscope.entrypoints.aggregator.aggregate.FIGURES) */
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

/* the record's own figures, in the order of the bits of a state's `shown` (flowscope.entrypoints.aggregator.aggregate.OWN) */
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

/* the shared shape of these names (flowscope.entrypoints.aggregator.aggregate.shape_for), a new reference */
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

/* a record's shape, values and figures (flowscope.entrypoints.aggregator.aggregate.split); figures get new references */
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

/* correlateRecords: new references to the shape and values after it (flowscope.entrypoints.aggregator.correlate._correlate) */
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
   record's own figures it set (flowscope.entrypoints.aggregator.correlate._aggregate) */
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

/* export(state) -> (record or None, state after): flowscope.entrypoints.aggregator.aggregate.export */
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
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowscope.entrypoints.aggregator._correlate.AggregateCore",
    .tp_basicsize = sizeof(Core),
    .tp_flags = Py_TPFLAGS_DEFAULT,
    .tp_doc = "The per-record work of the aggregation policy (flowscope.entrypoints.aggregator.correlate.Core), in C.",
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

/* The C flow table's Flow type, if that extension was built (else its flows are never seen here). */
static int find_flow_type(void) {
    PyObject *flowtable = PyImport_ImportModule("flowscope.core._flowtable");
    if (flowtable == NULL) {
        if (!PyErr_ExceptionMatches(PyExc_ImportError)) return -1;
        PyErr_Clear();
        return 0;
    }
    PyObject *type = PyObject_GetAttrString(flowtable, "Flow");
    Py_DECREF(flowtable);
    if (type == NULL) return -1;
    if (!PyType_Check(type) || ((PyTypeObject *)type)->tp_basicsize != sizeof(FlowObject)) {
        Py_DECREF(type);
        PyErr_SetString(PyExc_ImportError, "flowscope.core._flowtable.Flow does not have the layout of _flowtable.h");
        return -1;
    }
    FLOW_TYPE = (PyTypeObject *)type; /* kept for the life of the process */
    return 0;
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_correlate", "The aggregation core of flowscope.entrypoints.aggregator.correlate, in C.", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__correlate(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && (find_flow_type() < 0 || init_core(m) < 0)) Py_CLEAR(m);
    return m;
}
