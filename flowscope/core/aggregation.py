"""The aggregator's correlation and aggregation: a flow-table policy (reference §3.2 to §3.7).

Records of one connection from its source node and its destination node are correlated into one
record; per-node statistics, throughputs and the common counters are kept as Antrea's Flow
Aggregator keeps them, and a record is exported on a 1-second tick once it is ready, at most once
per active timeout without new data, and removed after the inactive timeout.

Unlike Antrea, a record whose peer never arrives is not deleted without trace: after
``correlationTimeout`` it is exported as it is (``partialRecords: export``, the default) or dropped
(``drop``), and either way counted.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from flowscope.core.components import Record
from flowscope.core.flowtable import CONTROL, Flow, FlowTable, register_policy
from flowscope.core.ipfix.antrea import AGGREGATOR_IPV4, AGGREGATOR_IPV6

INTER_NODE, FROM_EXTERNAL = 2, 4
DROP, REJECT = 2, 3
END_OF_FLOW = 3
COUNTERS = (
    "packetTotalCount",
    "octetTotalCount",
    "packetDeltaCount",
    "octetDeltaCount",
    "reversePacketTotalCount",
    "reverseOctetTotalCount",
    "reversePacketDeltaCount",
    "reverseOctetDeltaCount",
)
TOTALS = ("packetTotalCount", "octetTotalCount", "reversePacketTotalCount", "reverseOctetTotalCount")
DELTAS = ("packetDeltaCount", "octetDeltaCount", "reversePacketDeltaCount", "reverseOctetDeltaCount")


class _Side:
    """The names of one node's figures, computed once."""

    def __init__(self, side: str):
        self.counters = tuple(f"{name}From{side}Node" for name in COUNTERS)
        self.totals = tuple(f"{name}From{side}Node" for name in TOTALS)
        self.deltas = tuple(f"{name}From{side}Node" for name in DELTAS)
        self.end = f"flowEndSecondsFrom{side}Node"
        self.throughput = f"throughputFrom{side}Node"
        self.reverse_throughput = f"reverseThroughputFrom{side}Node"
        self.octet_total = f"octetTotalCountFrom{side}Node"
        self.reverse_octet_total = f"reverseOctetTotalCountFrom{side}Node"


SOURCE, DESTINATION = _Side("Source"), _Side("Destination")
_RESET = (
    *SOURCE.deltas,
    *DESTINATION.deltas,
    "throughput",
    "reverseThroughput",
    SOURCE.throughput,
    DESTINATION.throughput,
    SOURCE.reverse_throughput,
    DESTINATION.reverse_throughput,
)
_ZERO_IPS = ("", "0.0.0.0", "::")
# correlateRecords copies these from the other side when they are set there (reference §3.4)
_CORRELATED = (
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


@dataclass(slots=True)
class Aggregate:
    """One connection as the aggregator keeps it."""

    record: Record  # the first record received, updated as Antrea updates it, with the per-node figures
    ready: bool = False  # correlated, or not needing correlation
    updated: bool = True  # new data since the last export
    first_seen: float = 0.0


def _from_source(record: Record) -> bool:
    return (bool(record.get("sourcePodName")) and not record.get("destinationPodName")) or _source_from_external(record)


def _source_from_external(record: Record) -> bool:
    """The source-node half of a FromExternal flow: keyed on its proxy SNAT address (HEAD)."""
    return (
        record.get("flowType") == FROM_EXTERNAL
        and not record.get("destinationPodName")
        and (record.get("proxySnatIPv4") or record.get("proxySnatIPv6") or "") not in _ZERO_IPS
    )


def correlation_required(record: Record) -> bool:
    """Inter-node flows wait for their peer, except when the source node already denied them."""
    if not (record.get("flowType") == INTER_NODE or _source_from_external(record)):
        return False
    return not (
        record.get("egressNetworkPolicyRuleAction") in (DROP, REJECT)
        or record.get("ingressNetworkPolicyRuleAction") == REJECT
    )


class Aggregation:
    """Flow-table policy reproducing Antrea's Flow Aggregator (HEAD), with counted partial records."""

    def __init__(
        self,
        active: float,
        inactive: float,
        correlation_timeout: float | None = None,
        partial: str = "export",
        cluster_id: str = "",
        counters: dict[str, int] | None = None,
    ):
        self.cluster_id = cluster_id
        self.active = active
        self.inactive = inactive
        self.correlation_timeout = 3 * active if correlation_timeout is None else correlation_timeout
        self.partial = partial
        self.counters = counters if counters is not None else {}

    @classmethod
    def from_config(cls, table: Any) -> Aggregation:
        return cls(
            table.activeTimeout, table.inactiveTimeout, table.correlationTimeout, table.partialRecords, table.clusterId
        )

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    # -- keys ----------------------------------------------------------------------------------

    def key(self, record: Record) -> Hashable | None:
        if not record.get("flowStartSeconds") and not record.get("flowEndSeconds"):
            return CONTROL  # Antrea drops records without timestamps; counted in control()
        v4 = "sourceIPv4Address" in record
        src = record.get("sourceIPv4Address" if v4 else "sourceIPv6Address")
        dst = record.get("destinationIPv4Address" if v4 else "destinationIPv6Address")
        if src is None or dst is None:
            return CONTROL
        sport = record.get("sourceTransportPort", 0)
        if _source_from_external(record):
            src = record.get("proxySnatIPv4" if v4 else "proxySnatIPv6")
            sport = record.get("proxySnatPort", 0)
        return (src, dst, record.get("protocolIdentifier", 0), sport, record.get("destinationTransportPort", 0))

    def control(self, table: FlowTable, record: Record, now: float, out: list[Record]) -> None:
        self._count(
            "dropped_no_timestamps"
            if "flowEndSeconds" not in record or not record.get("flowEndSeconds")
            else "dropped_no_addresses"
        )

    # -- arrival -------------------------------------------------------------------------------

    def start(self, flow: Flow, record: Record, now: float, out: list[Record]) -> None:
        required = correlation_required(record)
        fill_src = fill_dst = True
        if required:
            fill_src = _from_source(record)
            fill_dst = not fill_src
        start, end = record.get("flowStartSeconds", 0), record.get("flowEndSeconds", 0)
        duration = end - start
        throughput = record.get("octetTotalCount", 0) * 8 // duration if duration > 0 else 0
        reverse = record.get("reverseOctetTotalCount", 0) * 8 // duration if duration > 0 else 0
        values = [record.get(name, 0) for name in COUNTERS]
        kept = {k: v for k, v in record.items() if v}  # empty fields and zeros are not kept: _export fills them
        for side, filled in ((SOURCE, fill_src), (DESTINATION, fill_dst)):
            if filled:
                kept.update(zip(side.counters, values, strict=True))
                kept[side.end] = end
                kept[side.throughput] = throughput
                kept[side.reverse_throughput] = reverse
        kept["throughput"], kept["reverseThroughput"] = throughput, reverse
        for name in [name for name, value in kept.items() if not value]:
            del kept[name]
        flow.state = Aggregate(kept, ready=not required, first_seen=now)
        flow.idle_deadline = now + self.inactive
        flow.active_deadline = now + self.active if required else now  # ready: export at the next tick

    def merge(self, flow: Flow, record: Record, now: float, out: list[Record]) -> None:
        state: Aggregate = flow.state
        base = state.record
        if correlation_required(record):
            incoming_src = _from_source(record)
            if not state.ready and incoming_src != _from_source(base):
                self._correlate(record, base)
                state.ready = True
                flow.active_deadline = now  # export at the next tick
            self._aggregate(record, state, fill_src=incoming_src, fill_dst=not incoming_src)
        else:
            self._aggregate(record, state, fill_src=True, fill_dst=True)
        state.updated = True
        flow.idle_deadline = now + self.inactive

    @staticmethod
    def _correlate(incoming: Record, base: Record) -> None:
        for name in _CORRELATED:
            value = incoming.get(name)
            if value and value not in _ZERO_IPS:
                base[name] = value
        if _source_from_external(incoming):
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

    @staticmethod
    def _aggregate(incoming: Record, state: Aggregate, fill_src: bool, fill_dst: bool) -> None:
        """aggregateRecords (reference §3.5)."""
        base = stats = state.record  # the per-node figures live beside the record's own fields
        end = incoming.get("flowEndSeconds", 0)
        latest = end >= base.get("flowEndSeconds", 0)
        if latest:
            base["flowEndSeconds"] = end
        sides = [side for side, fill in ((SOURCE, fill_src), (DESTINATION, fill_dst)) if fill]
        diffs = []
        for side in sides:
            previous = stats.get(side.end) or incoming.get("flowStartSeconds", 0)
            stats[side.end] = end
            if end <= previous:
                return  # no time has passed: ignored for the statistics (and no division by zero)
            diffs.append(end - previous)
        if base.get("flowEndReason") != END_OF_FLOW:
            base["flowEndReason"] = incoming.get("flowEndReason", base.get("flowEndReason", 0))
        if latest:
            base["tcpState"] = incoming.get("tcpState", base.get("tcpState", ""))
        totals = [incoming.get(name, 0) for name in TOTALS]
        deltas = [incoming.get(name, 0) for name in DELTAS]
        for side, diff in zip(sides, diffs, strict=True):
            octets = max(0, totals[1] - stats.get(side.octet_total, 0))
            reverse = max(0, totals[3] - stats.get(side.reverse_octet_total, 0))
            stats.update(zip(side.totals, totals, strict=True))
            for name, delta in zip(side.deltas, deltas, strict=True):
                stats[name] = stats.get(name, 0) + delta
            if latest:
                for name, side_name in zip(TOTALS, side.totals, strict=True):
                    base[name] = max(base.get(name, 0), stats.get(side_name, 0))
                for name, side_name in zip(DELTAS, side.deltas, strict=True):
                    base[name] = stats.get(side_name, 0)
            stats[side.throughput] = octets * 8 // diff
            stats[side.reverse_throughput] = reverse * 8 // diff
            if latest:
                stats["throughput"] = stats[side.throughput]
                stats["reverseThroughput"] = stats[side.reverse_throughput]

    # -- expiry --------------------------------------------------------------------------------

    def expire(self, flow: Flow, now: float, out: list[Record]) -> bool:
        state: Aggregate = flow.state
        if not state.ready:
            if now - state.first_seen < self.correlation_timeout:  # still waiting for the other node
                flow.active_deadline = now + self.active
                flow.idle_deadline = now + self.inactive
                return True
            if self.partial == "drop":
                self._count("dropped_uncorrelated")
                return False
            self._count("exported_uncorrelated")
            state.ready = True
        if state.updated:
            out.append(self._export(state))
            state.updated = False
        if flow.idle_deadline <= now:
            return False
        flow.active_deadline = now + self.active
        return True

    def evict(self, flow: Flow, now: float, out: list[Record]) -> None:
        if flow.state.updated:
            out.append(self._export(flow.state))

    def flush(self, flow: Flow, now: float, out: list[Record]) -> None:
        self.evict(flow, now, out)

    def _export(self, state: Aggregate) -> Record:
        """sendAggregatedRecord: emit a copy in the aggregator's template order, then reset deltas and throughputs."""
        base = state.record
        record = dict(_TEMPLATE_V6 if "sourceIPv6Address" in base else _TEMPLATE_V4)  # template order, defaults
        record.update(base)
        record["clusterId"] = self.cluster_id or base.get("clusterId", "")
        for name in DELTAS:
            base.pop(name, None)
        for name in _RESET:
            base.pop(name, None)
        return record


def _default(name: str, zero_ip: str) -> Any:
    if name.endswith(("IPv4", "IPv6")):
        return zero_ip
    if name.endswith(("Name", "Namespace", "RuleName", "State", "IP", "Labels", "Id")) and name != "clusterId":
        return ""
    return "" if name == "clusterId" else 0


_TEMPLATE_V4 = {name: _default(name, "0.0.0.0") for name in AGGREGATOR_IPV4}
_TEMPLATE_V6 = {name: _default(name, "::") for name in AGGREGATOR_IPV6}

register_policy("aggregate", Aggregation.from_config)
