"""The per-record work of the aggregation policy: flow keys, correlation and aggregation.

:class:`Core` is the Python implementation; ``AggregateCore`` of the C extension ``_correlate.c``
does exactly the same and is used when it was built and ``FLOWSCOPE_PURE_PYTHON`` is unset
(:func:`core`). Both keep a
flow's state as :mod:`flowscope.entrypoints.aggregator.aggregate` describes.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from flowscope.core import speedups
from flowscope.core.components import Record
from flowscope.core.flowtable import CONTROL, Flow
from flowscope.entrypoints.aggregator import aggregate
from flowscope.entrypoints.aggregator.aggregate import (
    BIT,
    COMMON_DELTAS,
    COMMON_TOTALS,
    END,
    FIGURES_AT,
    LATEST_SHOWS,
    REASON,
    REVERSE_THROUGHPUT,
    TCP_STATE,
    THROUGHPUT,
    Shape,
    Side,
    mask,
    shape_for,
    split,
)

EXTENSION = speedups.built("flowscope.entrypoints.aggregator._correlate")
"""The C aggregation core (``_correlate.c``), or ``None`` when it was not built."""
INTER_NODE, FROM_EXTERNAL = 2, 4
DROP, REJECT = 2, 3
END_OF_FLOW = 3
ZERO_IPS = ("", "0.0.0.0", "::")
# correlateRecords copies these from the other side when they are set there (reference §3.4)
CORRELATED = (
    "sourcePodName",
    "sourcePodNamespace",
    "sourceNodeName",
    "destinationPodName",
    "destinationPodNamespace",
    "destinationNodeName",
    "destinationClusterIPv4",
    "destinationClusterIPv6",
    "destinationServiceIPv4",
    "destinationServiceIPv6",
    "destinationServicePort",
    "destinationServicePortName",
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace",
    "ingressNetworkPolicyRuleAction",
    "ingressNetworkPolicyType",
    "ingressNetworkPolicyRuleName",
    "egressNetworkPolicyName",
    "egressNetworkPolicyNamespace",
    "egressNetworkPolicyRuleAction",
    "egressNetworkPolicyType",
    "egressNetworkPolicyRuleName",
)
SOURCE, DESTINATION = Side("Source"), Side("Destination")
_BOTH, _SOURCE_ONLY, _DESTINATION_ONLY = (SOURCE, DESTINATION), (SOURCE,), (DESTINATION,)


def core(active: float, inactive: float, cluster_id: str, native: bool | None = None) -> Any:
    """The C core when it was built (and ``native`` is not ``False``), else the Python one."""
    if native is None:
        native = speedups.wanted(EXTENSION)
    python = Core(active, inactive, cluster_id)
    if not native:
        return python
    assert EXTENSION is not None, "the C core is not built"
    layout = (aggregate.FIGURES, aggregate.OWN, aggregate.DEFAULT_FIGURES, *aggregate.TEMPLATES)
    spec = (CONTROL, *layout, aggregate.SHAPES, shape_for, CORRELATED, ZERO_IPS)
    return EXTENSION.AggregateCore(active, inactive, cluster_id, spec, python)


def _from_source(record: Record) -> bool:
    return (bool(record.get("sourcePodName")) and not record.get("destinationPodName")) or _source_from_external(record)


def _source_from_external(record: Record) -> bool:
    """The source-node half of a FromExternal flow: keyed on its proxy SNAT address (HEAD)."""
    return (
        record.get("flowType") == FROM_EXTERNAL
        and not record.get("destinationPodName")
        and (record.get("proxySnatIPv4") or record.get("proxySnatIPv6") or "") not in ZERO_IPS
    )


def correlation_required(record: Record) -> bool:
    """Inter-node flows wait for their peer, except when the source node already denied them."""
    get = record.get
    flow_type = get("flowType")
    if not (flow_type == INTER_NODE or (flow_type == FROM_EXTERNAL and _source_from_external(record))):
        return False
    return not (
        get("egressNetworkPolicyRuleAction") in (DROP, REJECT) or get("ingressNetworkPolicyRuleAction") == REJECT
    )


class Core:
    """Keys, first records and further records of the aggregation policy (reference §3.2 to §3.5),
    and the export of a flow's record (§3.7)."""

    def __init__(self, active: float, inactive: float, cluster_id: str):
        self.active, self.inactive, self.cluster_id = active, inactive, cluster_id

    def key(self, record: Record) -> Hashable | None:
        get = record.get
        if not get("flowStartSeconds") and not get("flowEndSeconds"):
            return CONTROL  # Antrea drops records without timestamps; counted by the policy
        v4 = "sourceIPv4Address" in record
        src = get("sourceIPv4Address" if v4 else "sourceIPv6Address")
        dst = get("destinationIPv4Address" if v4 else "destinationIPv6Address")
        if src is None or dst is None:
            return CONTROL
        sport = get("sourceTransportPort", 0)
        if get("flowType") == FROM_EXTERNAL and _source_from_external(record):
            src = get("proxySnatIPv4" if v4 else "proxySnatIPv6")
            sport = get("proxySnatPort", 0)
        return (src, dst, get("protocolIdentifier", 0), sport, get("destinationTransportPort", 0))

    def start(self, flow: Flow, record: Record, now: float, out: list[Record]) -> None:
        required = correlation_required(record)
        sides = _BOTH
        from_source = False
        if required:
            from_source = _from_source(record)
            sides = _SOURCE_ONLY if from_source else _DESTINATION_ONLY
        get = record.get
        duration = get("flowEndSeconds", 0) - get("flowStartSeconds", 0)
        throughput = get("octetTotalCount", 0) * 8 // duration if duration > 0 else 0
        reverse = get("reverseOctetTotalCount", 0) * 8 // duration if duration > 0 else 0
        shape, values, figures = split(record)
        throughput, reverse = throughput or 0, reverse or 0
        for side in sides:  # as the record says: its counters are the side's, its end time too
            figures[side.totals] = figures[COMMON_TOTALS]
            figures[side.deltas] = figures[COMMON_DELTAS]
            figures[side.end] = figures[END]
            figures[side.throughput] = throughput
            figures[side.reverse_throughput] = reverse
        figures[THROUGHPUT], figures[REVERSE_THROUGHPUT] = throughput, reverse
        shown = mask(sum(bit for index, bit in BIT.items() if figures[index]))
        flow.state = (shape, values, not required, from_source, True, now, shown, *figures)
        flow.idle_deadline = now + self.inactive
        flow.active_deadline = now + self.active if required else now  # ready: export at the next tick

    def merge(self, flow: Flow, record: Record, now: float, out: list[Record]) -> None:
        state = flow.state
        shape, values, ready, from_source, _, first_seen, shown = state[:FIGURES_AT]
        figures = list(state[FIGURES_AT:])
        if correlation_required(record):
            incoming_src = _from_source(record)
            if not ready and incoming_src != from_source:
                shape, values = _correlate(record, shape, values)
                ready = True
                flow.active_deadline = now  # export at the next tick
            shown |= _aggregate(record, figures, _SOURCE_ONLY if incoming_src else _DESTINATION_ONLY)
        else:
            shown |= _aggregate(record, figures, _BOTH)
        flow.state = (shape, values, ready, from_source, True, first_seen, mask(shown), *figures)
        flow.idle_deadline = now + self.inactive

    def export(self, state: tuple) -> tuple[Record | None, tuple]:
        return aggregate.export(state, self.cluster_id)


def _correlate(incoming: Record, shape: Shape, values: tuple) -> tuple[Shape, tuple]:
    """correlateRecords (reference §3.4): the fields only the other node knows."""
    updates = [
        (name, value)
        for name, value in zip(CORRELATED, map(incoming.get, CORRELATED), strict=True)
        if value and value not in ZERO_IPS
    ]
    external = _source_from_external(incoming)
    if not updates and not external:
        return shape, values
    base = dict(zip(shape[0], values, strict=True))
    base.update(updates)
    if external:
        v4 = "sourceIPv4Address" in incoming
        for name in (
            "sourceIPv4Address" if v4 else "sourceIPv6Address",
            "sourceTransportPort",
            "proxySnatIPv4" if v4 else "proxySnatIPv6",
            "proxySnatPort",
        ):
            if name in incoming:
                base[name] = incoming[name]
        base["flowType"] = FROM_EXTERNAL
    return shape_for(tuple(base)), tuple(base.values())


def _aggregate(incoming: Record, figures: list, sides: tuple[Side, ...]) -> int:
    """aggregateRecords (reference §3.5) on ``figures``; the bits of the record's own figures it set."""
    get = incoming.get
    end = get("flowEndSeconds", 0)
    latest = end >= figures[END]
    shows = 0
    if latest:
        figures[END] = end
        shows = BIT[END]
    diffs = []
    for side in sides:
        previous = figures[side.end] or get("flowStartSeconds", 0)
        figures[side.end] = end
        if end <= previous:
            return shows  # no time has passed: ignored for the statistics (and no division by zero)
        diffs.append(end - previous)
    if figures[REASON] != END_OF_FLOW:
        figures[REASON] = get("flowEndReason", figures[REASON])
        shows |= BIT[REASON]
    if latest:
        figures[TCP_STATE] = get("tcpState", figures[TCP_STATE])
        shows |= BIT[TCP_STATE]
    totals = (
        get("packetTotalCount", 0),
        get("octetTotalCount", 0),
        get("reversePacketTotalCount", 0),
        get("reverseOctetTotalCount", 0),
    )
    packets, octets, reverse_packets, reverse_octets = (
        get("packetDeltaCount", 0),
        get("octetDeltaCount", 0),
        get("reversePacketDeltaCount", 0),
        get("reverseOctetDeltaCount", 0),
    )
    for side, diff in zip(sides, diffs, strict=True):
        octet_diff = max(0, totals[1] - figures[side.octet_total])
        reverse_diff = max(0, totals[3] - figures[side.reverse_octet_total])
        figures[side.totals] = totals
        first = side.deltas.start
        figures[first] = figures[first] + packets
        figures[first + 1] = figures[first + 1] + octets
        figures[first + 2] = figures[first + 2] + reverse_packets
        figures[first + 3] = figures[first + 3] + reverse_octets
        if latest:
            for common, own in side.common_totals:
                figures[common] = max(figures[common], figures[own])
            figures[COMMON_DELTAS] = figures[side.deltas]
        figures[side.throughput] = octet_diff * 8 // diff
        figures[side.reverse_throughput] = reverse_diff * 8 // diff
        if latest:
            figures[THROUGHPUT] = figures[side.throughput]
            figures[REVERSE_THROUGHPUT] = figures[side.reverse_throughput]
            shows |= LATEST_SHOWS
    return shows
