/* The flow table's Flow and FlowTable in C (flowscope.core.flowtable has their Python twins). */
#ifndef FLOWSCOPE_FLOWTABLE_H
#define FLOWSCOPE_FLOWTABLE_H
#define PY_SSIZE_T_CLEAN
#include <Python.h>

typedef struct {
    PyObject_HEAD
    PyObject *key, *state;
    double active_deadline, idle_deadline;
    long long token;
} FlowObject;

extern PyTypeObject FlowType;
#define Flow_CheckExact(op) Py_IS_TYPE(op, &FlowType)

int init_flowtable(PyObject *module);

#endif
