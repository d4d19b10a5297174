"""The per-flow state of the aggregation policy, kept compactly.

An aggregated record has 70 fields, most of them empty or zero, and the flow table may hold a
million flows. A flow's state is one plain tuple,
``(shape, values, ready, from_source, updated, first_seen, shown, *figures)``:

- ``figures``: the 35 fields aggregation updates (common and per-node counters, throughputs, end
  times, end reason, TCP state), in the order of :data:`FIGURES`;
- ``values``: the first record's other non-empty fields, as correlation later changed them, whose
  names are in ``shape``, a tuple shared by every flow with the same ones;
- ``ready``: correlated, or not needing correlation; ``from_source``: the first record came from
  the source node; ``updated``: new data since the last export; ``first_seen``: when it came;
- ``shown``: which of the record's own figures (not the per-node ones) the record holds, as bits
  of :data:`OWN`: those that were not empty in the first record, or have been set since.

Tuples of numbers, strings and such tuples are not tracked by the garbage collector, whose full
collections would otherwise visit every flow's state again and again: a change makes a new tuple.
"""

from __future__ import annotations

from itertools import compress
from typing import Any

from flowscope.core.components import Record
from flowscope.core.ipfix.antrea import AGGREGATOR_IPV4, AGGREGATOR_IPV6

TOTALS = ("packetTotalCount", "octetTotalCount", "reversePacketTotalCount", "reverseOctetTotalCount")
DELTAS = ("packetDeltaCount", "octetDeltaCount", "reversePacketDeltaCount", "reverseOctetDeltaCount")
SHAPE, VALUES, READY, FROM_SOURCE, UPDATED, FIRST_SEEN, SHOWN = range(7)
FIGURES_AT = 7  # where the figures begin in a state


def _per_node(names: tuple[str, ...], side: str) -> tuple[str, ...]:
    return tuple(f"{name}From{side}Node" for name in names)


_RESET = (
    *DELTAS,
    *_per_node(DELTAS, "Source"),
    *_per_node(DELTAS, "Destination"),
    "throughput",
    "reverseThroughput",
    "throughputFromSourceNode",
    "reverseThroughputFromSourceNode",
    "throughputFromDestinationNode",
    "reverseThroughputFromDestinationNode",
)
FIGURES = (
    *_RESET,  # zeroed by each export
    *TOTALS,
    *_per_node(TOTALS, "Source"),
    *_per_node(TOTALS, "Destination"),
    "flowEndSecondsFromSourceNode",
    "flowEndSecondsFromDestinationNode",
    "flowEndSeconds",
    "flowEndReason",
    "tcpState",
)
OWN = (*DELTAS, "throughput", "reverseThroughput", *TOTALS, "flowEndSeconds", "flowEndReason", "tcpState")
"""The record's own figures, in the order of the bits of ``shown``."""
_AT = {name: index for index, name in enumerate(FIGURES)}
COMMON_DELTAS = slice(_AT[DELTAS[0]], _AT[DELTAS[0]] + 4)
COMMON_TOTALS = slice(_AT[TOTALS[0]], _AT[TOTALS[0]] + 4)
END, REASON, TCP_STATE = _AT["flowEndSeconds"], _AT["flowEndReason"], _AT["tcpState"]
THROUGHPUT, REVERSE_THROUGHPUT = _AT["throughput"], _AT["reverseThroughput"]
BIT = {_AT[name]: 1 << bit for bit, name in enumerate(OWN)}
"""The bit in ``shown`` of each of the record's own figures, by figure index."""
_RESET_SHOWN = sum(BIT[_AT[name]] for name in OWN if name in _RESET)
_ZEROS = (0,) * len(_RESET)


LATEST_SHOWS = sum(BIT[_AT[name]] for name in (*TOTALS, *DELTAS, "throughput", "reverseThroughput"))
"""The record's own figures a node's report sets when it is the latest."""


class Side:
    """Where one node's figures are."""

    __slots__ = ("common_totals", "deltas", "end", "octet_total", "reverse_octet_total", "reverse_throughput")
    __slots__ += ("throughput", "totals")

    def __init__(self, side: str):
        totals, deltas = _AT[f"{TOTALS[0]}From{side}Node"], _AT[f"{DELTAS[0]}From{side}Node"]
        self.totals, self.deltas = slice(totals, totals + 4), slice(deltas, deltas + 4)
        self.octet_total, self.reverse_octet_total = totals + 1, totals + 3
        self.common_totals = tuple((COMMON_TOTALS.start + i, totals + i) for i in range(4))
        self.end = _AT[f"flowEndSecondsFrom{side}Node"]
        self.throughput = _AT[f"throughputFrom{side}Node"]
        self.reverse_throughput = _AT[f"reverseThroughputFrom{side}Node"]


def _default(name: str, zero_ip: str) -> Any:
    if name.endswith(("IPv4", "IPv6")):
        return zero_ip
    if name.endswith(("Name", "Namespace", "RuleName", "State", "IP", "Labels", "Id")) and name != "clusterId":
        return ""
    return "" if name == "clusterId" else 0


TEMPLATES = (
    {name: _default(name, "0.0.0.0") for name in AGGREGATOR_IPV4},
    {name: _default(name, "::") for name in AGGREGATOR_IPV6},
)
"""The aggregator's IPv4 and IPv6 records, each field with its default."""
DEFAULT_FIGURES = tuple(TEMPLATES[0][name] for name in FIGURES)

Shape = tuple[tuple[str, ...], tuple[bool, ...] | None, tuple[tuple[int, int], ...], bool]
"""``(names, keep, figures, v6)``: the names of a flow's values; and how a first record whose
non-empty fields have these names splits: which of them are kept as values (``None``: all), and
pairs of figure index and position of the others; whether the flow uses the IPv6 template."""

SHAPES: dict[tuple[str, ...], Shape] = {}
"""Shapes by the names they were made from."""
_MAX_SHAPES = 10_000
_MASKS: dict[int, int] = {}  # one object for each value of ``shown`` (most are above 256)


def shape_for(names: tuple[str, ...]) -> Shape:
    """The shared shape of these names."""
    found = SHAPES.get(names)
    if found is None:
        keep = tuple(name not in _AT for name in names)
        kept = tuple(compress(names, keep))
        figures = tuple((_AT[name], position) for position, name in enumerate(names) if name in _AT)
        if len(SHAPES) >= _MAX_SHAPES:
            SHAPES.clear()
        found = SHAPES[names] = (kept, None if all(keep) else keep, figures, "sourceIPv6Address" in kept)
    return found


def mask(bits: int) -> int:
    """The shared object of a ``shown`` value."""
    return _MASKS.setdefault(bits, bits)


def split(record: Record) -> tuple[Shape, tuple, list]:
    """A first record's shape, values and figures (defaults where it has none); empty fields and
    zeros are not kept, the export fills them in."""
    values = tuple(filter(None, record.values()))
    shape = shape_for(tuple(compress(record, record.values())))
    figures = list(DEFAULT_FIGURES)
    for index, position in shape[2]:
        figures[index] = values[position]
    if shape[1] is not None:
        values = tuple(compress(values, shape[1]))
    return shape, values, figures


def export(state: tuple, cluster_id: str) -> tuple[Record | None, tuple]:
    """sendAggregatedRecord, when there is new data: the record in the aggregator's template order;
    and the state after, ready and not updated, deltas and throughputs reset if it was exported."""
    shape, values, _, from_source, updated, first_seen, shown = state[:FIGURES_AT]
    figures = state[FIGURES_AT:]
    if not updated:
        return None, (shape, values, True, from_source, False, first_seen, shown, *figures)
    record = fields(state)
    if cluster_id:
        record["clusterId"] = cluster_id
    after = _ZEROS + figures[len(_ZEROS) :]
    return record, (shape, values, True, from_source, False, first_seen, mask(shown & ~_RESET_SHOWN), *after)


def fields(state: tuple) -> Record:
    """The flow's record as it stands, in the aggregator's template order: its values and figures, and
    the template's defaults for the fields it has not had."""
    shape = state[SHAPE]
    record = dict(TEMPLATES[shape[3]])
    record.update(zip(shape[0], state[VALUES], strict=True))
    record.update(zip(FIGURES, state[FIGURES_AT:], strict=True))
    return record
