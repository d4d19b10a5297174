"""The aggregator's API routes, as Antrea's Flow Aggregator serves them (reference §6) and
``antctl get`` (here ``flowscope get``) reads them.

``GET /flowrecords?srcip=&dstip=&proto=&srcport=&dstport=`` lists the flows held by the flow table;
``GET /recordmetrics`` the record counts. The core's server adds ``/metrics``, ``/healthz`` and
``/readyz``.
"""

from __future__ import annotations

from typing import Any

from flowscope.core.http import Request, Response

FLOW_FIELDS = (
    "sourceIPv4Address",
    "destinationIPv4Address",
    "sourceIPv6Address",
    "destinationIPv6Address",
    "sourceTransportPort",
    "destinationTransportPort",
    "protocolIdentifier",
    "flowStartSeconds",
    "flowEndSeconds",
    "flowEndReason",
    "flowType",
    "sourcePodName",
    "sourcePodNamespace",
    "sourceNodeName",
    "destinationPodName",
    "destinationPodNamespace",
    "destinationNodeName",
    "destinationClusterIPv4",
    "destinationClusterIPv6",
    "destinationServicePort",
    "destinationServicePortName",
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace",
    "ingressNetworkPolicyRuleName",
    "ingressNetworkPolicyRuleAction",
    "ingressNetworkPolicyType",
    "egressNetworkPolicyName",
    "egressNetworkPolicyNamespace",
    "egressNetworkPolicyRuleName",
    "egressNetworkPolicyRuleAction",
    "egressNetworkPolicyType",
    "egressName",
    "egressIP",
    "egressNodeName",
    "tcpState",
    "packetTotalCount",
    "octetTotalCount",
    "packetDeltaCount",
    "octetDeltaCount",
    "reversePacketTotalCount",
    "reverseOctetTotalCount",
    "reversePacketDeltaCount",
    "reverseOctetDeltaCount",
    "throughput",
    "reverseThroughput",
)
FILTERS = ("srcip", "dstip", "proto", "srcport", "dstport")


def flow_records(request: Request) -> Response:
    """The flows the table holds, filtered; a bad filter answers 404 with the reason, as Antrea does."""
    try:
        wanted = _filters(request.query)
    except ValueError as exc:
        return Response.text(str(exc), 404)
    table = request.pipeline.table
    if table is None:
        return Response.json([])
    fields = table.policy.fields
    records = []
    for flow in list(table.flows.values()):
        record = fields(flow)
        if record is not None and _matches(record, wanted):
            records.append({name: record[name] for name in FLOW_FIELDS if name in record})
    return Response.json(records)


def record_metrics(request: Request) -> Response:
    """Records received, exported and dropped, flows held, exporters connected, and which outputs are on."""
    pipeline = request.pipeline
    sample = pipeline.metrics.registry.get_sample_value
    received = sum(pipeline.metrics.counters("source", name).value("received") for name, _ in pipeline.sources)
    dropped = (
        sum(pipeline.metrics.counters("sink", runner.name).value("dropped") for runner in pipeline.sinks)
        + sum(getattr(pipeline.table.policy, "counters", {}).values())
        if pipeline.table
        else 0
    )
    types = [c.type for c in pipeline.config.sinks]
    metrics = {
        "numRecordsExported": int(pipeline.metrics.counters("table", pipeline.config.table.mode).value("emitted")),
        "numRecordsReceived": int(received),
        "numRecordsDropped": int(dropped),
        "numFlows": len(pipeline.table) if pipeline.table is not None else 0,
        "numConnToCollector": int(
            sum(sample("flowscope_ipfix_sessions", {"instance": name}) or 0 for name, _ in pipeline.sources)
        ),
        "withClickHouseExporter": "clickhouse" in types,
        "withS3Exporter": False,
        "withLogExporter": "json" in types,
        "withIPFIXExporter": "ipfix" in types,
    }
    return Response.json({k: v for k, v in metrics.items() if v})  # omitempty, as Antrea's JSON


def _filters(query: dict[str, str]) -> dict[str, Any]:
    wanted: dict[str, Any] = {}
    for name in FILTERS:
        value = query.get(name)
        if not value:
            continue
        if name in ("proto", "srcport", "dstport"):
            if not value.isdigit():
                raise ValueError(f"{name}: {value!r} is not a number")
            wanted[name] = int(value)
        else:
            wanted[name] = value
    return wanted


def _matches(values: dict[str, Any], wanted: dict[str, Any]) -> bool:
    checks = {
        "srcip": values.get("sourceIPv4Address") or values.get("sourceIPv6Address"),
        "dstip": values.get("destinationIPv4Address") or values.get("destinationIPv6Address"),
        "proto": values.get("protocolIdentifier"),
        "srcport": values.get("sourceTransportPort"),
        "dstport": values.get("destinationTransportPort"),
    }
    return all(checks[name] == value for name, value in wanted.items() if value)
