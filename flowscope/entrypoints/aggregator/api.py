"""The aggregator's API routes, as Antrea's Flow Aggregator serves them (reference §6) and
``antctl get`` (here ``flowscope get``) reads them.

``GET /flowrecords?srcip=&dstip=&proto=&srcport=&dstport=`` lists the flows held by the flow table,
each with the fixed set of fields Antrea's handler returns; ``GET /recordmetrics`` the record counts
and which exporters run. The core's server adds ``/metrics``, ``/healthz`` and ``/readyz``.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Hashable
from typing import Any

from flowscope.core.components import Record
from flowscope.core.http import Request, Response

COMMON_FIELDS = (
    "destinationNodeName",
    "destinationPodName",
    "destinationPodNamespace",
    "destinationServicePort",
    "destinationServicePortName",
    "destinationTransportPort",
    "egressIP",
    "egressName",
    "egressNetworkPolicyName",
    "egressNetworkPolicyNamespace",
    "egressNetworkPolicyRuleAction",
    "egressNetworkPolicyRuleName",
    "egressNodeName",
    "flowEndReason",
    "flowEndSeconds",
    "flowEndSecondsFromDestinationNode",
    "flowEndSecondsFromSourceNode",
    "flowStartSeconds",
    "flowType",
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace",
    "ingressNetworkPolicyRuleAction",
    "ingressNetworkPolicyRuleName",
    "octetDeltaCount",
    "octetTotalCount",
    "packetDeltaCount",
    "packetTotalCount",
    "protocolIdentifier",
    "reverseOctetDeltaCount",
    "reverseOctetTotalCount",
    "reversePacketDeltaCount",
    "reversePacketTotalCount",
    "reverseThroughput",
    "sourceNodeName",
    "sourcePodName",
    "sourcePodNamespace",
    "sourceTransportPort",
    "tcpState",
    "throughput",
)
"""The fields of every record Antrea's ``/flowrecords`` returns, whatever the IP family."""
FAMILY_FIELDS = {
    4: ("sourceIPv4Address", "destinationIPv4Address", "destinationClusterIPv4", "destinationServiceIPv4"),
    6: ("sourceIPv6Address", "destinationIPv6Address", "destinationClusterIPv6", "destinationServiceIPv6"),
}
RECORD_FIELDS = {family: tuple(sorted((*COMMON_FIELDS, *names))) for family, names in FAMILY_FIELDS.items()}
"""A record's fields by IP family, in the order of Antrea's answer (Go writes a map's keys sorted)."""
UNSET = {
    name: "" if name == "tcpState" or name.endswith(("Name", "Namespace", "IP", "IPv4", "IPv6", "Address")) else 0
    for names in RECORD_FIELDS.values()
    for name in names
}
"""What Antrea answers for a field the flow does not have: empty text, or 0 for a number."""
OPTIONAL_IPS = frozenset(
    ("destinationClusterIPv4", "destinationClusterIPv6", "destinationServiceIPv4", "destinationServiceIPv6", "egressIP")
)
"""Addresses Antrea leaves empty when the exporter sent none or the zero address."""
ZERO_IPS = ("0.0.0.0", "::")
FILTERS = (
    ("srcip", "source address", None),
    ("dstip", "destination address", None),
    ("proto", "protocol", 0xFF),
    ("srcport", "source port", 0xFFFF),
    ("dstport", "destination port", 0xFFFF),
)
"""The query's filters, in the order of a flow key: name, what it is, and the largest number it takes."""


def flow_records(request: Request) -> Response:
    """The flows the table holds whose flow key matches the filters given (all flows without any), as
    Antrea's querier matches them; a bad number answers 404 with the reason, as Antrea does."""
    try:
        wanted = _filters(request.query)
    except ValueError as exc:
        return Response.text(f"{exc}\n", 404)
    table = request.pipeline.table
    if table is None:
        return Response.json([])
    fields = table.policy.fields
    records = []
    for key, flow in list(table.flows.items()):
        record = fields(flow)
        if record is not None and _matches(_flow_key(key, record), wanted):
            records.append(api_record(record))
    return Response.json(records)


def api_record(record: Record) -> dict[str, Any]:
    """Antrea's fields of a flow's record, in Antrea's order, with zeros and empty text for unset ones."""
    family = 6 if "sourceIPv6Address" in record and "sourceIPv4Address" not in record else 4
    answer = {}
    for name in RECORD_FIELDS[family]:
        value = record.get(name)
        answer[name] = UNSET[name] if value is None or (name in OPTIONAL_IPS and value in ZERO_IPS) else value
    return answer


def record_metrics(request: Request) -> Response:
    """Records received, exported and dropped, flows held, exporters connected, and which exporters run;
    zeros and ``false`` left out, as Antrea's JSON (``omitempty``) leaves them."""
    pipeline = request.pipeline
    sample = pipeline.metrics.registry.get_sample_value
    received = sum(pipeline.metrics.counters("source", name).value("received") for name, _ in pipeline.sources)
    dropped = sum(pipeline.metrics.counters("sink", runner.name).value("dropped") for runner in pipeline.sinks)
    if pipeline.table is not None:  # the aggregation's own drops (no timestamps, no peer with partialRecords: drop)
        counters = getattr(pipeline.table.policy, "counters", {})
        dropped += sum(n for what, n in counters.items() if what.startswith("dropped"))
    sinks = [(c.name, c.type) for c in pipeline.config.sinks]
    metrics = {
        "numRecordsExported": int(pipeline.metrics.counters("table", pipeline.config.table.mode).value("emitted")),
        "numRecordsReceived": int(received),
        "numRecordsDropped": int(dropped),
        "numFlows": len(pipeline.table) if pipeline.table is not None else 0,
        "numConnToCollector": int(  # IPFIX sessions and gRPC Export streams open
            sum(
                sample(gauge, {"instance": name}) or 0
                for name, _ in pipeline.sources
                for gauge in ("flowscope_ipfix_sessions", "flowscope_grpc_streams")
            )
        ),
        **exporter_flags(sinks),
    }
    return Response.json({k: v for k, v in metrics.items() if v})


def exporter_flags(sinks: list[tuple[str, str]]) -> dict[str, bool]:
    """Antrea's ``with...Exporter`` flags from the pipeline's sinks, as ``(name, type)``: the flow
    collector (the bundle's ``flow-collector``, IPFIX or JSON, or any ``ipfix`` sink), ClickHouse,
    the S3 uploader and the flow logger."""
    types = {type_ for _, type_ in sinks}
    return {
        "withClickHouseExporter": "clickhouse" in types,
        "withS3Exporter": "s3" in types,
        "withLogExporter": "flowlogger" in types,
        "withIPFIXExporter": "ipfix" in types or ("flow-collector", "json") in sinks,
    }


def _filters(query: dict[str, str]) -> dict[int, Any]:
    """The filters given, by their position in a flow key; 0 and empty ones match every flow, as in Antrea."""
    wanted: dict[int, Any] = {}
    for position, (name, what, largest) in enumerate(FILTERS):
        value = query.get(name, "")
        if largest is None:
            wanted[position] = _canonical_ip(value) if value else None
            continue
        if not value:
            continue
        if not (value.isascii() and value.isdigit()):
            raise ValueError(f'Error when parsing {what}: strconv.ParseUint: parsing "{value}": invalid syntax')
        if int(value) > largest:
            raise ValueError(f'Error when parsing {what}: strconv.ParseUint: parsing "{value}": value out of range')
        wanted[position] = int(value)
    return {position: value for position, value in wanted.items() if value}


def _canonical_ip(value: str) -> str:
    """An address as flow keys hold it (``fd00::1`` for ``fd00:0::1``); anything else as it is."""
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        return value


def _flow_key(key: Hashable, record: Record) -> tuple:
    """``(source, destination, protocol, source port, destination port)``: the table's key, which for the
    source node's half of a FromExternal flow holds its proxy SNAT address and port, as Antrea's does."""
    if isinstance(key, tuple) and len(key) == len(FILTERS):
        return key
    v4 = "sourceIPv4Address" in record
    return (
        record.get("sourceIPv4Address" if v4 else "sourceIPv6Address"),
        record.get("destinationIPv4Address" if v4 else "destinationIPv6Address"),
        record.get("protocolIdentifier"),
        record.get("sourceTransportPort"),
        record.get("destinationTransportPort"),
    )


def _matches(key: tuple, wanted: dict[int, Any]) -> bool:
    return all(key[position] == value for position, value in wanted.items())
