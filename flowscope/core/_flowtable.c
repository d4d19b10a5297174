/*
 * Flow and FlowTable: flowscope.core.flowtable's PyFlow and PyFlowTable in C, with the same
 * behaviour: the same calls to the merge policy, in the same order, and flows due in the same order.
 *
 * Deadlines are kept as the Python twin keeps them: a calendar with each distinct deadline once in a
 * heap and, for each, the entries (token, key) filed for it in the order they were filed; an entry
 * whose token is no longer its flow's is stale and skipped when it comes up. Here a deadline's
 * entries are a C array (a bucket), found through a small open-addressing map.
 */
#include "_flowtable.h"

#include <math.h>
#include <stddef.h>
#include <structmember.h>

static PyTypeObject FlowType;
#define Flow_CheckExact(op) Py_IS_TYPE(op, &FlowType)

static PyObject *CONTROL; /* the policy's "control record" key (flowscope.core.flowtable.CONTROL) */

/* ---- Flow ---------------------------------------------------------------------------------- */

static PyObject *new_flow(PyObject *key) {
    FlowObject *flow = PyObject_GC_New(FlowObject, &FlowType);
    if (flow == NULL) return NULL;
    flow->key = Py_NewRef(key);
    flow->state = Py_NewRef(Py_None);
    flow->active_deadline = flow->idle_deadline = INFINITY;
    flow->token = 0;
    PyObject_GC_Track(flow);
    return (PyObject *)flow;
}

static PyObject *flow_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"key", NULL};
    PyObject *key;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O:Flow", names, &key)) return NULL;
    return new_flow(key);
}

static int flow_traverse(FlowObject *self, visitproc visit, void *arg) {
    Py_VISIT(self->key);
    Py_VISIT(self->state);
    return 0;
}

static int flow_clear(FlowObject *self) {
    Py_CLEAR(self->key);
    Py_CLEAR(self->state);
    return 0;
}

static void flow_dealloc(FlowObject *self) {
    PyObject_GC_UnTrack(self);
    flow_clear(self);
    PyObject_GC_Del(self);
}

/* min(active, idle) as Python's min() gives it: the first unless the second is smaller */
static inline double deadline_of(const FlowObject *flow) {
    return flow->idle_deadline < flow->active_deadline ? flow->idle_deadline : flow->active_deadline;
}

static PyObject *flow_deadline(FlowObject *self, void *closure) { return PyFloat_FromDouble(deadline_of(self)); }

static PyObject *flow_repr(FlowObject *self) {
    return PyUnicode_FromFormat("Flow(%R, state=%R)", self->key, self->state);
}

static PyMemberDef flow_members[] = {
    {"key", T_OBJECT_EX, offsetof(FlowObject, key), 0, "The flow's key."},
    {"state", T_OBJECT, offsetof(FlowObject, state), 0, "The policy's state of the flow."},
    {"active_deadline", T_DOUBLE, offsetof(FlowObject, active_deadline), 0, "When the flow is due for export."},
    {"idle_deadline", T_DOUBLE, offsetof(FlowObject, idle_deadline), 0, "When the flow is due as idle."},
    {"token", T_LONGLONG, offsetof(FlowObject, token), 0, "Its latest filing in the calendar."},
    {NULL},
};

static PyGetSetDef flow_getset[] = {
    {"deadline", (getter)flow_deadline, NULL, "min(active_deadline, idle_deadline)", NULL},
    {NULL},
};

static PyTypeObject FlowType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowscope.core._flowtable.Flow",
    .tp_basicsize = sizeof(FlowObject),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "One tracked flow: its key, the policy's state and its two deadlines.",
    .tp_new = flow_new,
    .tp_dealloc = (destructor)flow_dealloc,
    .tp_traverse = (traverseproc)flow_traverse,
    .tp_clear = (inquiry)flow_clear,
    .tp_repr = (reprfunc)flow_repr,
    .tp_members = flow_members,
    .tp_getset = flow_getset,
};

/* ---- the calendar ---------------------------------------------------------------------------- */

typedef struct {
    long long token;
    PyObject *key; /* strong */
} Entry;

typedef struct {
    double deadline;
    Py_ssize_t head, count, capacity; /* entries[head:count] are still to come */
    Entry *entries;
} Bucket;

typedef struct {
    Bucket **heap; /* by deadline; each deadline once */
    Py_ssize_t size, capacity;
    Bucket **slots; /* open addressing by deadline, linear probing; NULL is free */
    Py_ssize_t mask;
    Bucket *last; /* the bucket filed into last: the next filing is most often for it too */
} Calendar;

static size_t hash_deadline(double deadline) {
    uint64_t bits;
    if (deadline == 0) deadline = 0; /* -0.0 and 0.0 are one deadline */
    memcpy(&bits, &deadline, sizeof bits);
    bits ^= bits >> 33;
    bits *= 0xff51afd7ed558ccdULL;
    bits ^= bits >> 33;
    return (size_t)bits;
}

static Bucket *map_find(Calendar *c, double deadline) {
    if (c->slots == NULL) return NULL;
    for (size_t i = hash_deadline(deadline) & c->mask;; i = (i + 1) & c->mask) {
        Bucket *b = c->slots[i];
        if (b == NULL || b->deadline == deadline) return b;
    }
}

static int map_grow(Calendar *c) {
    Py_ssize_t capacity = c->slots == NULL ? 64 : 2 * (c->mask + 1);
    Bucket **slots = PyMem_Calloc(capacity, sizeof *slots);
    if (slots == NULL) return -1;
    for (Py_ssize_t i = 0; i < c->size; i++) { /* every bucket is in the heap */
        size_t j = hash_deadline(c->heap[i]->deadline) & (capacity - 1);
        while (slots[j] != NULL) j = (j + 1) & (capacity - 1);
        slots[j] = c->heap[i];
    }
    PyMem_Free(c->slots);
    c->slots = slots;
    c->mask = capacity - 1;
    return 0;
}

static void map_remove(Calendar *c, Bucket *bucket) {
    size_t i = hash_deadline(bucket->deadline) & c->mask;
    while (c->slots[i] != bucket) i = (i + 1) & c->mask;
    /* backward-shift deletion: move up each later entry of the run that may take the hole */
    for (size_t j = (i + 1) & c->mask; c->slots[j] != NULL; j = (j + 1) & c->mask) {
        size_t home = hash_deadline(c->slots[j]->deadline) & c->mask;
        if (((j - home) & c->mask) >= ((j - i) & c->mask)) {
            c->slots[i] = c->slots[j];
            i = j;
        }
    }
    c->slots[i] = NULL;
}

static void heap_push(Calendar *c, Bucket *bucket) {
    Py_ssize_t i = c->size++;
    while (i > 0) {
        Py_ssize_t parent = (i - 1) / 2;
        if (c->heap[parent]->deadline <= bucket->deadline) break;
        c->heap[i] = c->heap[parent];
        i = parent;
    }
    c->heap[i] = bucket;
}

static void heap_pop(Calendar *c) {
    Bucket *last = c->heap[--c->size];
    Py_ssize_t i = 0, n = c->size;
    for (;;) {
        Py_ssize_t child = 2 * i + 1;
        if (child >= n) break;
        if (child + 1 < n && c->heap[child + 1]->deadline < c->heap[child]->deadline) child++;
        if (last->deadline <= c->heap[child]->deadline) break;
        c->heap[i] = c->heap[child];
        i = child;
    }
    if (n > 0) c->heap[i] = last;
}

static void free_bucket(Bucket *bucket) {
    for (Py_ssize_t i = bucket->head; i < bucket->count; i++) Py_DECREF(bucket->entries[i].key);
    PyMem_Free(bucket->entries);
    PyMem_Free(bucket);
}

/* file (token, key) for deadline (finite or -inf) */
static int calendar_file(Calendar *c, double deadline, long long token, PyObject *key) {
    Bucket *bucket = c->last;
    if (bucket == NULL || bucket->deadline != deadline) bucket = map_find(c, deadline);
    if (bucket == NULL) {
        if ((c->size + 1) * 2 > (c->slots == NULL ? 0 : c->mask + 1) && map_grow(c) < 0) goto no_memory;
        if (c->size == c->capacity) {
            Py_ssize_t capacity = c->capacity ? 2 * c->capacity : 64;
            Bucket **heap = PyMem_Realloc(c->heap, capacity * sizeof *heap);
            if (heap == NULL) goto no_memory;
            c->heap = heap;
            c->capacity = capacity;
        }
        if ((bucket = PyMem_Calloc(1, sizeof *bucket)) == NULL) goto no_memory;
        bucket->deadline = deadline;
        size_t i = hash_deadline(deadline) & c->mask;
        while (c->slots[i] != NULL) i = (i + 1) & c->mask;
        c->slots[i] = bucket;
        heap_push(c, bucket);
    }
    if (bucket->count == bucket->capacity) {
        Py_ssize_t capacity = bucket->capacity ? 2 * bucket->capacity : 8;
        Entry *entries = PyMem_Realloc(bucket->entries, capacity * sizeof *entries);
        if (entries == NULL) goto no_memory;
        bucket->entries = entries;
        bucket->capacity = capacity;
    }
    bucket->entries[bucket->count].token = token;
    bucket->entries[bucket->count++].key = Py_NewRef(key);
    c->last = bucket;
    return 0;
no_memory:
    PyErr_NoMemory();
    return -1;
}

/* the earliest entry, taken out of the calendar (which has one); the key is a new reference */
static void calendar_take(Calendar *c, double *deadline, long long *token, PyObject **key) {
    Bucket *bucket = c->heap[0];
    Entry *entry = &bucket->entries[bucket->head++];
    *deadline = bucket->deadline;
    *token = entry->token;
    *key = entry->key;
    if (bucket->head == bucket->count) {
        heap_pop(c);
        map_remove(c, bucket);
        if (c->last == bucket) c->last = NULL;
        bucket->head = bucket->count; /* its entries' keys were handed out */
        free_bucket(bucket);
    }
}

static void calendar_clear(Calendar *c) {
    for (Py_ssize_t i = 0; i < c->size; i++) free_bucket(c->heap[i]);
    PyMem_Free(c->heap);
    PyMem_Free(c->slots);
    memset(c, 0, sizeof *c);
}

/* ---- FlowTable ------------------------------------------------------------------------------- */

typedef struct {
    PyObject_HEAD
    PyObject *policy, *flows, *on_evict;
    Py_ssize_t max_flows, evictions;
    long long counter;
    Calendar calendar;
} Table;

static PyTypeObject TableType;

static PyObject *table_new(PyTypeObject *type, PyObject *args, PyObject *kwargs) {
    static char *names[] = {"policy", "max_flows", "on_evict", NULL};
    PyObject *policy, *on_evict = Py_None;
    Py_ssize_t max_flows = 1000000;
    if (!PyArg_ParseTupleAndKeywords(args, kwargs, "O|nO:FlowTable", names, &policy, &max_flows, &on_evict))
        return NULL;
    if (max_flows < 1) return PyErr_Format(PyExc_ValueError, "max_flows must be at least 1");
    Table *self = (Table *)type->tp_alloc(type, 0);
    if (self == NULL) return NULL;
    self->policy = Py_NewRef(policy);
    self->on_evict = Py_NewRef(on_evict);
    self->max_flows = max_flows;
    if ((self->flows = PyDict_New()) == NULL) {
        Py_DECREF(self);
        return NULL;
    }
    return (PyObject *)self;
}

static int table_traverse(Table *self, visitproc visit, void *arg) {
    Py_VISIT(self->policy);
    Py_VISIT(self->flows);
    Py_VISIT(self->on_evict);
    for (Py_ssize_t i = 0; i < self->calendar.size; i++) {
        Bucket *bucket = self->calendar.heap[i];
        for (Py_ssize_t j = bucket->head; j < bucket->count; j++) Py_VISIT(bucket->entries[j].key);
    }
    return 0;
}

static int table_clear(Table *self) {
    Py_CLEAR(self->policy);
    Py_CLEAR(self->flows);
    Py_CLEAR(self->on_evict);
    calendar_clear(&self->calendar);
    return 0;
}

static void table_dealloc(Table *self) {
    PyObject_GC_UnTrack(self);
    table_clear(self);
    Py_TYPE(self)->tp_free((PyObject *)self);
}

static Py_ssize_t table_length(Table *self) { return PyDict_GET_SIZE(self->flows); }

static FlowObject *as_flow(PyObject *object) {
    if (!Flow_CheckExact(object)) {
        PyErr_Format(PyExc_TypeError, "expected a Flow, got %.100s", Py_TYPE(object)->tp_name);
        return NULL;
    }
    return (FlowObject *)object;
}

static int schedule(Table *self, FlowObject *flow) {
    flow->token = ++self->counter;
    double deadline = deadline_of(flow);
    if (!(deadline < INFINITY)) return 0; /* never due (or NaN) */
    return calendar_file(&self->calendar, deadline, flow->token, flow->key);
}

static int remove_flow(Table *self, FlowObject *flow) {
    flow->token = -1;
    PyObject *key = Py_NewRef(flow->key); /* flows.pop(flow.key, None) */
    int result = PyDict_Contains(self->flows, key);
    if (result > 0) result = PyDict_DelItem(self->flows, key);
    Py_DECREF(key);
    return result;
}

/* the flow table's flow of a key, as a new reference; NULL (no error set) when there is none */
static FlowObject *flow_of(Table *self, PyObject *key) {
    PyObject *flow = PyDict_GetItemWithError(self->flows, key);
    if (flow == NULL) return NULL;
    if (!Flow_CheckExact(flow)) { /* only the table puts flows there */
        PyErr_SetString(PyExc_TypeError, "the flow table holds something that is not a Flow");
        return NULL;
    }
    Py_INCREF(flow);
    return (FlowObject *)flow;
}

/* pop the flow with the earliest current deadline, re-filing entries found postponed; a new
   reference, or NULL: an error, or (none set) no flow has a finite deadline */
static FlowObject *pop_soonest(Table *self) {
    Calendar *c = &self->calendar;
    while (c->size) {
        double deadline;
        long long token;
        PyObject *key;
        calendar_take(c, &deadline, &token, &key);
        FlowObject *flow = flow_of(self, key);
        Py_DECREF(key);
        if (flow == NULL) {
            if (PyErr_Occurred()) return NULL;
            continue;
        }
        if (token != flow->token) {
            Py_DECREF(flow);
            continue;
        }
        if (deadline_of(flow) > deadline) {
            int failed = schedule(self, flow);
            Py_DECREF(flow);
            if (failed) return NULL;
            continue;
        }
        return flow;
    }
    return NULL;
}

static PyObject *call_policy(Table *self, PyObject *name, PyObject **args, size_t nargs) {
    args[0] = self->policy;
    return PyObject_VectorcallMethod(name, args, nargs, NULL);
}

static PyObject *S_control, *S_start, *S_merge, *S_key, *S_expire, *S_evict, *S_flush;

static int evict_one(Table *self, PyObject *now, PyObject *out) {
    FlowObject *flow = pop_soonest(self);
    if (flow == NULL) {
        if (PyErr_Occurred()) return -1;
        Py_ssize_t pos = 0; /* no flow has a finite deadline: take the oldest inserted */
        PyObject *key, *value;
        if (!PyDict_Next(self->flows, &pos, &key, &value)) {
            PyErr_SetString(PyExc_RuntimeError, "the flow table is full but holds no flow");
            return -1;
        }
        if ((flow = as_flow(value)) == NULL) return -1;
        Py_INCREF(flow);
    }
    PyObject *args[4] = {NULL, (PyObject *)flow, now, out};
    PyObject *result = call_policy(self, S_evict, args, 4);
    if (result == NULL || remove_flow(self, flow) < 0) goto fail;
    Py_DECREF(result);
    Py_DECREF(flow);
    self->evictions++;
    if (self->on_evict != Py_None) {
        result = PyObject_CallNoArgs(self->on_evict);
        if (result == NULL) return -1;
        Py_DECREF(result);
    }
    return 0;
fail:
    Py_XDECREF(result);
    Py_DECREF(flow);
    return -1;
}

static PyObject *table_offer(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 3) return PyErr_Format(PyExc_TypeError, "offer() takes records, now, out");
    PyObject *now = args[1], *out = args[2];
    if (!PyList_Check(out)) return PyErr_Format(PyExc_TypeError, "out must be a list");
    PyObject *records = PySequence_Fast(args[0], "records must be a sequence");
    if (records == NULL) return NULL;
    PyObject *key_of = PyObject_GetAttr(self->policy, S_key), *merge = NULL, *start = NULL;
    if (key_of == NULL || (merge = PyObject_GetAttr(self->policy, S_merge)) == NULL) goto fail;
    for (Py_ssize_t i = 0; i < PySequence_Fast_GET_SIZE(records); i++) {
        PyObject *record = PySequence_Fast_GET_ITEM(records, i), *result;
        PyObject *key = PyObject_CallOneArg(key_of, record);
        if (key == NULL) goto fail;
        if (key == Py_None || key == CONTROL) {
            Py_DECREF(key);
            if (key == Py_None) {
                if (PyList_Append(out, record) < 0) goto fail;
                continue;
            }
            PyObject *call[5] = {NULL, (PyObject *)self, record, now, out};
            result = call_policy(self, S_control, call, 5);
            if (result == NULL) goto fail;
            Py_DECREF(result);
            continue;
        }
        FlowObject *flow = flow_of(self, key);
        if (flow != NULL) {
            Py_DECREF(key);
            double before = deadline_of(flow);
            PyObject *call[4] = {(PyObject *)flow, record, now, out};
            result = PyObject_Vectorcall(merge, call, 4, NULL);
            int failed = result == NULL || (deadline_of(flow) < before && schedule(self, flow) < 0);
            Py_XDECREF(result);
            Py_DECREF(flow);
            if (failed) goto fail;
            continue;
        }
        if (PyErr_Occurred() || (PyDict_GET_SIZE(self->flows) >= self->max_flows && evict_one(self, now, out) < 0)) {
            Py_DECREF(key);
            goto fail;
        }
        flow = (FlowObject *)new_flow(key);
        if (flow == NULL || (start == NULL && (start = PyObject_GetAttr(self->policy, S_start)) == NULL)) {
            Py_XDECREF(flow);
            Py_DECREF(key);
            goto fail;
        }
        PyObject *call[4] = {(PyObject *)flow, record, now, out};
        result = PyObject_Vectorcall(start, call, 4, NULL);
        int failed = result == NULL || PyDict_SetItem(self->flows, key, (PyObject *)flow) < 0 ||
                     schedule(self, flow) < 0;
        Py_XDECREF(result);
        Py_DECREF(flow);
        Py_DECREF(key);
        if (failed) goto fail;
    }
    Py_DECREF(records);
    Py_DECREF(key_of);
    Py_DECREF(merge);
    Py_XDECREF(start);
    Py_RETURN_NONE;
fail:
    Py_DECREF(records);
    Py_XDECREF(key_of);
    Py_XDECREF(merge);
    Py_XDECREF(start);
    return NULL;
}

static int as_time(PyObject *now, double *value) {
    *value = PyFloat_AsDouble(now);
    return *value == -1.0 && PyErr_Occurred() ? -1 : 0;
}

static PyObject *table_expire(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs < 2 || nargs > 3) return PyErr_Format(PyExc_TypeError, "expire() takes now, out and a limit");
    PyObject *now = args[0], *out = args[1];
    Py_ssize_t limit = -1, handed = 0;
    double at;
    if (as_time(now, &at) < 0) return NULL;
    if (nargs == 3 && args[2] != Py_None && (limit = PyNumber_AsSsize_t(args[2], PyExc_OverflowError)) == -1 &&
        PyErr_Occurred())
        return NULL;
    Calendar *c = &self->calendar;
    PyObject *expire = NULL;
    while (c->size && c->heap[0]->deadline <= at && handed != limit) {
        FlowObject *flow = pop_soonest(self);
        if (flow == NULL) {
            if (PyErr_Occurred()) goto fail;
            break;
        }
        int failed;
        if (deadline_of(flow) > at) { /* every due entry had been postponed */
            failed = schedule(self, flow);
            Py_DECREF(flow);
            if (failed) goto fail;
            break;
        }
        if (expire == NULL && (expire = PyObject_GetAttr(self->policy, S_expire)) == NULL) {
            Py_DECREF(flow);
            goto fail;
        }
        handed++;
        PyObject *call[3] = {(PyObject *)flow, now, out};
        PyObject *result = PyObject_Vectorcall(expire, call, 3, NULL);
        int keep = result == NULL ? -1 : PyObject_IsTrue(result);
        Py_XDECREF(result);
        failed = keep < 0 || (keep ? schedule(self, flow) : remove_flow(self, flow)) < 0;
        Py_DECREF(flow);
        if (failed) goto fail;
    }
    Py_XDECREF(expire);
    return PyLong_FromSsize_t(handed);
fail:
    Py_XDECREF(expire);
    return NULL;
}

static PyObject *table_next_deadline(Table *self, PyObject *unused) {
    Calendar *c = &self->calendar;
    while (c->size) {
        Bucket *bucket = c->heap[0];
        double deadline = bucket->deadline; /* copied: a key's __eq__ may change the calendar */
        long long token = bucket->entries[bucket->head].token;
        PyObject *key = Py_NewRef(bucket->entries[bucket->head].key);
        FlowObject *flow = flow_of(self, key);
        Py_DECREF(key);
        if (flow == NULL && PyErr_Occurred()) return NULL;
        int current = flow != NULL && flow->token == token;
        Py_XDECREF(flow);
        if (current) return PyFloat_FromDouble(deadline);
        if (c->size) { /* stale: drop it */
            calendar_take(c, &deadline, &token, &key);
            Py_DECREF(key);
        }
    }
    return PyFloat_FromDouble(INFINITY);
}

static PyObject *table_flush(Table *self, PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2) return PyErr_Format(PyExc_TypeError, "flush() takes now, out");
    PyObject *flows = PyDict_Values(self->flows);
    if (flows == NULL) return NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(flows); i++) {
        PyObject *flow = PyList_GET_ITEM(flows, i);
        PyObject *call[4] = {NULL, flow, args[0], args[1]};
        PyObject *result = call_policy(self, S_flush, call, 4);
        if (result == NULL) {
            Py_DECREF(flows);
            return NULL;
        }
        Py_DECREF(result);
        if (Flow_CheckExact(flow)) ((FlowObject *)flow)->token = -1;
    }
    Py_DECREF(flows);
    PyDict_Clear(self->flows);
    calendar_clear(&self->calendar);
    Py_RETURN_NONE;
}

static PyObject *table_reschedule(Table *self, PyObject *object) {
    FlowObject *flow = as_flow(object);
    if (flow == NULL || schedule(self, flow) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *table_remove(Table *self, PyObject *object) {
    FlowObject *flow = as_flow(object);
    if (flow == NULL || remove_flow(self, flow) < 0) return NULL;
    Py_RETURN_NONE;
}

static PyObject *table_get(Table *self, PyObject *key) {
    PyObject *flow = PyDict_GetItemWithError(self->flows, key);
    if (flow == NULL) {
        if (PyErr_Occurred()) return NULL;
        flow = Py_None;
    }
    return Py_NewRef(flow);
}

static PyMethodDef table_methods[] = {
    {"get", (PyCFunction)table_get, METH_O, "The flow of a key, or None."},
    {"offer", (PyCFunction)(void (*)(void))table_offer, METH_FASTCALL,
     "offer(records, now, out): feed a batch of records; whatever the policy emits is appended to out."},
    {"expire", (PyCFunction)(void (*)(void))table_expire, METH_FASTCALL,
     "expire(now, out, limit=None) -> int: hand every due flow to the policy, or the first limit of them; "
     "how many were handed."},
    {"next_deadline", (PyCFunction)table_next_deadline, METH_NOARGS,
     "The earliest deadline in the table (inf when empty). Cheap; may be early, never late."},
    {"flush", (PyCFunction)(void (*)(void))table_flush, METH_FASTCALL,
     "flush(now, out): emit every flow's records through the policy and empty the table."},
    {"reschedule", (PyCFunction)table_reschedule, METH_O,
     "File a flow again after its policy changed its deadlines outside merge/expire."},
    {"remove", (PyCFunction)table_remove, METH_O, "Forget a flow at once."},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef table_members[] = {
    {"policy", T_OBJECT_EX, offsetof(Table, policy), READONLY, "The merge policy."},
    {"flows", T_OBJECT_EX, offsetof(Table, flows), READONLY, "Flows by key."},
    {"max_flows", T_PYSSIZET, offsetof(Table, max_flows), READONLY, "The bound on the number of flows."},
    {"evictions", T_PYSSIZET, offsetof(Table, evictions), READONLY, "Flows pushed out because the table was full."},
    {NULL},
};

static PySequenceMethods table_as_sequence = {.sq_length = (lenfunc)table_length};

static PyTypeObject TableType = {
    PyVarObject_HEAD_INIT(NULL, 0).tp_name = "flowscope.core._flowtable.FlowTable",
    .tp_basicsize = sizeof(Table),
    .tp_flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .tp_doc = "Flows by key, with a calendar of deadlines and a bound on their number (flowscope.core.flowtable).",
    .tp_new = table_new,
    .tp_dealloc = (destructor)table_dealloc,
    .tp_traverse = (traverseproc)table_traverse,
    .tp_clear = (inquiry)table_clear,
    .tp_methods = table_methods,
    .tp_members = table_members,
    .tp_as_sequence = &table_as_sequence,
};

static int init_flowtable(PyObject *module) {
    PyObject **names[] = {&S_control, &S_start, &S_merge, &S_key, &S_expire, &S_evict, &S_flush};
    const char *texts[] = {"control", "start", "merge", "key", "expire", "evict", "flush"};
    for (size_t i = 0; i < sizeof names / sizeof *names; i++)
        if ((*names[i] = PyUnicode_InternFromString(texts[i])) == NULL) return -1;
    if ((CONTROL = PyObject_CallNoArgs((PyObject *)&PyBaseObject_Type)) == NULL) return -1;
    if (PyType_Ready(&FlowType) < 0 || PyType_Ready(&TableType) < 0) return -1;
    if (PyModule_AddObject(module, "CONTROL", Py_NewRef(CONTROL)) < 0) return -1;
    if (PyModule_AddObject(module, "Flow", Py_NewRef(&FlowType)) < 0) return -1;
    return PyModule_AddObject(module, "FlowTable", Py_NewRef(&TableType));
}

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_flowtable", "The flow table of flowscope.core.flowtable, in C.", -1, NULL, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__flowtable(void) {
    PyObject *m = PyModule_Create(&module);
    if (m != NULL && init_flowtable(m) < 0) Py_CLEAR(m);
    return m;
}
