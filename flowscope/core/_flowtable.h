/*
 * The layout of flowscope.core._flowtable's Flow objects. The aggregation core
 * (flowscope/entrypoints/aggregator/_correlate.c) sets their state and deadlines directly: it takes
 * the Flow type from the imported module and checks its size against this struct.
 */
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

#endif
