"""Records → ``flows`` rows, as Antrea's Flow Aggregator writes them (reference §4.1).

Built column by column (one list per column, in :data:`INSERT_COLUMNS` order), which is what
clickhouse-connect serializes fastest. IPs are the records' canonical strings, from the IPv4 or
IPv6 element; a cluster IP of all zeros becomes ``""``; times are epoch seconds; a missing value is
``""`` for a String column and ``0`` otherwise; ``clusterUUID`` is the sink's ``clusterUUID`` (the
aggregator's cluster UUID, as Antrea writes it), or the record's ``clusterId`` when the sink has none.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from flowscope.core import speedups
from flowscope.core.components import Batch
from flowscope.plugins.sinks.clickhouse.schema import COLUMN_TYPES, INSERT_COLUMNS

EXTENSION = speedups.built("flowscope.plugins.sinks.clickhouse._rows")
_UNSPECIFIED_IPS = frozenset(("0.0.0.0", "::"))


def _either(v4: str, v6: str) -> Callable[[Batch], list[str]]:
    return lambda records: [r.get(v4) or r.get(v6) or "" for r in records]


def _cluster_ip(records: Batch) -> list[str]:
    values = [r.get("destinationClusterIPv4") or r.get("destinationClusterIPv6") or "" for r in records]
    return [("" if v in _UNSPECIFIED_IPS else v) for v in values]


_DERIVED: dict[str, Callable[[Batch], list[Any]]] = {
    "sourceIP": _either("sourceIPv4Address", "sourceIPv6Address"),
    "destinationIP": _either("destinationIPv4Address", "destinationIPv6Address"),
    "destinationClusterIP": _cluster_ip,
}
_DEFAULTS = {name: "" if COLUMN_TYPES[name] == "String" else 0 for name in INSERT_COLUMNS}


_CARRIED = tuple(name for name in INSERT_COLUMNS if name not in _DERIVED and name != "clusterUUID")
"""The columns whose values records carry as they are, under the column's name."""


def to_columns(records: Batch, cluster_uuid: str, lenient: bool = False) -> list[list[Any]]:
    """The columns of ``records``, in :data:`INSERT_COLUMNS` order.

    Records that carry every column's element (as the aggregator's do) take the fast path;
    otherwise, or with ``lenient``, a missing or null value becomes the column's default.
    """
    carried = None if lenient else _columns_of(records, _CARRIED)
    if carried is None:
        carried = [[r.get(name) or _DEFAULTS[name] for r in records] for name in _CARRIED]
    by_name = dict(zip(_CARRIED, carried, strict=True))
    columns: list[list[Any]] = []
    for name in INSERT_COLUMNS:
        derive = _DERIVED.get(name)
        if derive is not None:
            columns.append(derive(records))
        elif name == "clusterUUID":
            columns.append([cluster_uuid or r.get("clusterId") or "" for r in records])
        else:
            columns.append(by_name[name])
    return columns


def _columns_of(records: Batch, names: tuple[str, ...]) -> list[list[Any]] | None:
    """One list per name of each record's value under it; ``None`` when a record is not a dict or
    lacks a name. In C (:data:`EXTENSION`) when built and ``FLOWSCOPE_PURE_PYTHON`` is unset."""
    if type(records) is list and speedups.wanted(EXTENSION):
        return EXTENSION.gather(records, names)
    if any(type(r) is not dict for r in records):
        return None
    try:
        return [[r[name] for r in records] for name in names]
    except KeyError:
        return None


_LIMITS = {"UInt8": 1 << 8, "UInt16": 1 << 16, "UInt32": 1 << 32, "UInt64": 1 << 64, "DateTime": 1 << 32}


def invalid_values(columns: list[list[Any]]) -> dict[int, tuple[str, Any]]:
    """Rows holding a value their column cannot store: row index → (column, value), first per row."""
    bad: dict[int, tuple[str, Any]] = {}
    for name, values in zip(INSERT_COLUMNS, columns, strict=True):
        type_ = COLUMN_TYPES[name]
        if type_ == "String":
            for i, value in enumerate(values):
                if not isinstance(value, str) and i not in bad:
                    bad[i] = (name, value)
            continue
        limit = _LIMITS[type_]
        for i, value in enumerate(values):
            if (type(value) is not int or not 0 <= value < limit) and i not in bad:
                bad[i] = (name, value)
    return bad


def without_rows(columns: list[list[Any]], rows: set[int] | dict[int, Any]) -> list[list[Any]]:
    """``columns`` with the given row indexes left out."""
    return [[value for i, value in enumerate(values) if i not in rows] for values in columns]
