/*
 * gather: the clickhouse sink's columns of values that records carry as they are, in C. Its Python twin
 * is flowscope.plugins.sinks.clickhouse.rows._columns_of; both give the same lists, or None. Used when
 * this module is built and FLOWSCOPE_PURE_PYTHON is unset.
 *
 * gather(records: list, names: tuple[str, ...]) -> list[list] | None
 *
 * One list per name, holding each record's value under that name, in record order; None when a record
 * is not a dict or lacks one of the names (the caller then fills in defaults). Each record is visited
 * once, for all its names, rather than once per name: a batch of 50,000 records is far larger than the
 * processor's caches, and reading it once per column is what costs.
 */
#define PY_SSIZE_T_CLEAN
#include <Python.h>

static PyObject *gather(PyObject *Py_UNUSED(module), PyObject *const *args, Py_ssize_t nargs) {
    if (nargs != 2 || !PyList_CheckExact(args[0]) || !PyTuple_CheckExact(args[1]))
        return PyErr_Format(PyExc_TypeError, "gather(records: list, names: tuple)");
    PyObject *records = args[0], *names = args[1];
    Py_ssize_t count = PyList_GET_SIZE(records), width = PyTuple_GET_SIZE(names);
    PyObject *columns = PyList_New(width);
    if (columns == NULL) return NULL;
    for (Py_ssize_t c = 0; c < width; c++) {
        PyObject *column = PyList_New(count);
        if (column == NULL) goto fail;
        PyList_SET_ITEM(columns, c, column);
    }
    for (Py_ssize_t r = 0; r < count; r++) {
        PyObject *record = PyList_GET_ITEM(records, r);
        if (!PyDict_CheckExact(record)) goto missing;
        for (Py_ssize_t c = 0; c < width; c++) {
            PyObject *value = PyDict_GetItemWithError(record, PyTuple_GET_ITEM(names, c)); /* borrowed */
            if (value == NULL) {
                if (PyErr_Occurred()) goto fail;
                goto missing;
            }
            PyList_SET_ITEM(PyList_GET_ITEM(columns, c), r, Py_NewRef(value));
        }
    }
    return columns;
missing:
    Py_DECREF(columns); /* with the values set so far; unset items are NULL, which lists allow */
    Py_RETURN_NONE;
fail:
    Py_DECREF(columns);
    return NULL;
}

static PyMethodDef methods[] = {
    {"gather", (PyCFunction)(void (*)(void))gather, METH_FASTCALL,
     "gather(records, names) -> one list of values per name, or None when a record lacks a name"},
    {NULL, NULL, 0, NULL},
};

static struct PyModuleDef module = {PyModuleDef_HEAD_INIT, "_rows", "The clickhouse sink's column gathering, in C.", -1, methods, NULL, NULL, NULL, NULL};

PyMODINIT_FUNC PyInit__rows(void) { return PyModule_Create(&module); }
