"""Antrea's ``Flow`` message ↔ flowscope records keyed by IE name.

A record made from a ``Flow`` is the one the IPFIX path gives for the same flow: the 43 elements of
the agent's template (:data:`~flowscope.core.ipfix.antrea.EXPORTER_IPV4` / ``_IPV6``), with the same
names and value types (integers for counters, ports and seconds; text for addresses, with
``0.0.0.0``/``::`` for an address that is not known). What the message carries beyond that template
is added when it is there: the Kubernetes UIDs as Antrea's aggregator exports them (the 16 bytes
of the ``...UUID`` octetArray elements), Pod labels (JSON, as Antrea writes ``sourcePodLabels``),
the aggregator's per-node statistics, ``flowDirection`` when not 0, and the deprecated L7 fields.

The other way, a record becomes a ``Flow`` as Antrea's agent builds one: zero addresses and nil
UUIDs are left empty, ``tcpState`` fills the TCP branch only when set. Fields a ``Flow`` has no place
for (e.g. ``clusterId``) are listed by :func:`uncarried`.
"""

from __future__ import annotations

import json
import socket
import uuid
from collections.abc import Callable
from typing import Any

from flowscope.core.components import Record
from flowscope.core.ipfix.antrea import EXPORTER_IPV4, EXPORTER_IPV6, PER_NODE_STATS, THROUGHPUTS
from flowscope.plugins.grpcflow.flow_pb2 import Flow

IP_VERSION_4, IP_VERSION_6 = 4, 6
MAX_SECONDS = 0xFFFFFFFF  # dateTimeSeconds is unsigned32 on the IPFIX wire

UUID_FIELDS = {  # record element: Kubernetes field of the message
    "sourcePodUUID": "source_pod_uid",
    "sourceNodeUUID": "source_node_uid",
    "destinationPodUUID": "destination_pod_uid",
    "destinationNodeUUID": "destination_node_uid",
    "destinationServiceUUID": "destination_service_uid",
    "ingressNetworkPolicyUUID": "ingress_network_policy_uid",
    "egressNetworkPolicyUUID": "egress_network_policy_uid",
    "egressUUID": "egress_uid",
    "egressNodeUUID": "egress_node_uid",
}
_STATS = (  # record elements (forward, reverse) and the Stats field they come from
    ("packetTotalCount", "reversePacketTotalCount", "packet_total_count"),
    ("packetDeltaCount", "reversePacketDeltaCount", "packet_delta_count"),
    ("octetTotalCount", "reverseOctetTotalCount", "octet_total_count"),
    ("octetDeltaCount", "reverseOctetDeltaCount", "octet_delta_count"),
)
_PER_NODE = [  # (record element, Aggregation field, Stats field) of the 16 per-node counters
    (f"{name}From{side}Node", f"{stats}_from_{end}", field)
    for forward, reverse, field in _STATS
    for name, stats in ((forward, "stats"), (reverse, "reverse_stats"))
    for side, end in (("Source", "source"), ("Destination", "destination"))
]
_THROUGHPUTS = {
    "throughput": "throughput",
    "throughputFromSourceNode": "throughput_from_source",
    "throughputFromDestinationNode": "throughput_from_destination",
    "reverseThroughput": "reverse_throughput",
    "reverseThroughputFromSourceNode": "reverse_throughput_from_source",
    "reverseThroughputFromDestinationNode": "reverse_throughput_from_destination",
}
_END_FROM = {
    "flowEndSecondsFromSourceNode": "end_ts_from_source",
    "flowEndSecondsFromDestinationNode": "end_ts_from_destination",
}
AGGREGATION_FIELDS = frozenset([*_END_FROM, *PER_NODE_STATS, *THROUGHPUTS])
CARRIED = frozenset(
    [
        *EXPORTER_IPV4,
        *EXPORTER_IPV6,
        *UUID_FIELDS,
        *AGGREGATION_FIELDS,
        "sourcePodLabels",
        "destinationPodLabels",
        "flowDirection",
        "appProtocolName",
        "httpVals",
    ]
)
"""Every element a ``Flow`` message carries."""
_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})


class MalformedFlow(ValueError):
    """A ``Flow`` that no IPFIX record could carry (an address of the wrong size, a port over 65535...)."""


class _Cache(dict):
    """Value → converted value, filled on first sight (flows repeat the same addresses and UIDs)."""

    def __init__(self, convert: Callable[[Any], Any], limit: int = 1 << 16):
        super().__init__()
        self.convert, self.limit = convert, limit

    def __missing__(self, key: Any) -> Any:
        if len(self) >= self.limit:
            self.clear()
        value = self[key] = self.convert(key)
        return value


_IP4_TEXT = _Cache(socket.inet_ntoa)
_IP6_TEXT = _Cache(lambda packed: socket.inet_ntop(socket.AF_INET6, packed))
_UUID_BYTES = _Cache(lambda text: uuid.UUID(text).bytes)
_UUID_TEXT = _Cache(lambda packed: "" if packed == bytes(16) else str(uuid.UUID(bytes=bytes(packed))))


def _ip_packed(text: str) -> bytes:
    return socket.inet_pton(socket.AF_INET6 if ":" in text else socket.AF_INET, text)


_IP_PACKED = _Cache(_ip_packed)

# -- Flow → record ---------------------------------------------------------------------------------


def to_record(flow: Flow) -> Record:
    """The record of one ``Flow``; raises :class:`MalformedFlow` for a flow no IPFIX record can carry."""
    ip, transport, k8s, stats, reverse = flow.ip, flow.transport, flow.k8s, flow.stats, flow.reverse_stats
    src, dst = ip.source, ip.destination
    version = ip.version or (IP_VERSION_6 if len(src) == 16 else IP_VERSION_4)
    if version == IP_VERSION_4:
        size, text, zero, suffix = 4, _IP4_TEXT, "0.0.0.0", "IPv4"
    elif version == IP_VERSION_6:
        size, text, zero, suffix = 16, _IP6_TEXT, "::", "IPv6"
    else:
        raise MalformedFlow(f"ip.version is {version}; 4 and 6 are known")
    for where, packed in (("ip.source", src), ("ip.destination", dst)):
        if len(packed) != size:
            raise MalformedFlow(f"{where} has {len(packed)} bytes; an IPv{version} flow needs {size}")
    cluster, service, snat, egress_ip = (
        k8s.destination_cluster_ip,
        k8s.destination_service_ip,
        flow.proxy_snat_ip,
        k8s.egress_ip,
    )
    for where, packed in (
        ("k8s.destination_cluster_ip", cluster),
        ("k8s.destination_service_ip", service),
        ("proxy_snat_ip", snat),
    ):
        if packed and len(packed) != size:
            raise MalformedFlow(f"{where} has {len(packed)} bytes; an IPv{version} flow needs {size} or none")
    if egress_ip and len(egress_ip) not in (4, 16):
        raise MalformedFlow(f"k8s.egress_ip has {len(egress_ip)} bytes; an address has 4 or 16")
    start, end = flow.start_ts.seconds, flow.end_ts.seconds
    ports = (transport.source_port, transport.destination_port, k8s.destination_service_port, flow.proxy_snat_port)
    enums = (
        flow.end_reason,
        transport.protocol_number,
        k8s.flow_type,
        k8s.ingress_network_policy_type,
        k8s.ingress_network_policy_rule_action,
        k8s.egress_network_policy_type,
        k8s.egress_network_policy_rule_action,
        flow.flow_direction,
    )
    if (
        not (0 <= start <= MAX_SECONDS and 0 <= end <= MAX_SECONDS)
        or max(ports) > 0xFFFF
        or not all(0 <= e <= 255 for e in enums)
    ):
        raise MalformedFlow(_out_of_range(flow))
    record = {
        "flowStartSeconds": start,
        "flowEndSeconds": end,
        "flowEndReason": flow.end_reason,
        "sourceTransportPort": transport.source_port,
        "destinationTransportPort": transport.destination_port,
        "protocolIdentifier": transport.protocol_number,
        "packetTotalCount": stats.packet_total_count,
        "octetTotalCount": stats.octet_total_count,
        "packetDeltaCount": stats.packet_delta_count,
        "octetDeltaCount": stats.octet_delta_count,
        "source" + suffix + "Address": text[src],
        "destination" + suffix + "Address": text[dst],
        "reversePacketTotalCount": reverse.packet_total_count,
        "reverseOctetTotalCount": reverse.octet_total_count,
        "reversePacketDeltaCount": reverse.packet_delta_count,
        "reverseOctetDeltaCount": reverse.octet_delta_count,
        "sourcePodName": k8s.source_pod_name,
        "sourcePodNamespace": k8s.source_pod_namespace,
        "sourceNodeName": k8s.source_node_name,
        "destinationPodName": k8s.destination_pod_name,
        "destinationPodNamespace": k8s.destination_pod_namespace,
        "destinationNodeName": k8s.destination_node_name,
        "destinationServicePort": k8s.destination_service_port,
        "destinationServicePortName": k8s.destination_service_port_name,
        "ingressNetworkPolicyName": k8s.ingress_network_policy_name,
        "ingressNetworkPolicyNamespace": k8s.ingress_network_policy_namespace,
        "ingressNetworkPolicyType": k8s.ingress_network_policy_type,
        "ingressNetworkPolicyRuleName": k8s.ingress_network_policy_rule_name,
        "ingressNetworkPolicyRuleAction": k8s.ingress_network_policy_rule_action,
        "egressNetworkPolicyName": k8s.egress_network_policy_name,
        "egressNetworkPolicyNamespace": k8s.egress_network_policy_namespace,
        "egressNetworkPolicyType": k8s.egress_network_policy_type,
        "egressNetworkPolicyRuleName": k8s.egress_network_policy_rule_name,
        "egressNetworkPolicyRuleAction": k8s.egress_network_policy_rule_action,
        "tcpState": transport.TCP.state_name,
        "flowType": k8s.flow_type,
        "egressName": k8s.egress_name,
        "egressIP": (_IP4_TEXT if len(egress_ip) == 4 else _IP6_TEXT)[egress_ip] if egress_ip else "",
        "egressNodeName": k8s.egress_node_name,
        "proxySnatPort": flow.proxy_snat_port,
        "destinationCluster" + suffix: text[cluster] if cluster else zero,
        "proxySnat" + suffix: text[snat] if snat else zero,
        "destinationService" + suffix: text[service] if service else zero,
    }
    _add_uuids(record, k8s)
    if k8s.HasField("source_pod_labels"):
        record["sourcePodLabels"] = _labels_text(k8s.source_pod_labels.labels)
    if k8s.HasField("destination_pod_labels"):
        record["destinationPodLabels"] = _labels_text(k8s.destination_pod_labels.labels)
    if flow.flow_direction:
        record["flowDirection"] = flow.flow_direction
    if flow.HasField("aggregation"):
        _add_aggregation(record, flow)
    if flow.HasField("app"):
        try:
            record["httpVals"] = flow.app.http_vals.decode()
        except UnicodeDecodeError:
            raise MalformedFlow("app.http_vals is not UTF-8 text") from None
        record["appProtocolName"] = flow.app.protocol_name
    return record


def _add_uuids(record: Record, k8s: Any) -> None:
    for name, field in UUID_FIELDS.items():
        uid = getattr(k8s, field)
        if uid:
            try:
                record[name] = _UUID_BYTES[uid]
            except ValueError:
                raise MalformedFlow(f"k8s.{field} {uid!r} is not a UID (a UUID such as 'e3b0c442-...')") from None


def _labels_text(labels: Any) -> str:
    """The labels as Antrea writes ``sourcePodLabels``: compact JSON, sorted keys, Go's HTML escapes."""
    if not labels:
        return "{}"
    return json.dumps(dict(labels), sort_keys=True, separators=(",", ":"), ensure_ascii=False).translate(_GO_ESCAPES)


def _add_aggregation(record: Record, flow: Flow) -> None:
    aggregation = flow.aggregation
    for name, field in _END_FROM.items():
        seconds = getattr(aggregation, field).seconds
        if not 0 <= seconds <= MAX_SECONDS:
            raise MalformedFlow(f"aggregation.{field} is {seconds} s; it must be 0 to {MAX_SECONDS}")
        record[name] = seconds
    for name, stats, field in _PER_NODE:
        record[name] = getattr(getattr(aggregation, stats), field)
    for name, field in _THROUGHPUTS.items():
        record[name] = getattr(aggregation, field)


def _out_of_range(flow: Flow) -> str:
    """Which value of a flow that failed the range checks is out of range."""
    checks = [
        ("start_ts", flow.start_ts.seconds, MAX_SECONDS),
        ("end_ts", flow.end_ts.seconds, MAX_SECONDS),
        ("transport.source_port", flow.transport.source_port, 0xFFFF),
        ("transport.destination_port", flow.transport.destination_port, 0xFFFF),
        ("k8s.destination_service_port", flow.k8s.destination_service_port, 0xFFFF),
        ("proxy_snat_port", flow.proxy_snat_port, 0xFFFF),
        ("end_reason", flow.end_reason, 255),
        ("transport.protocol_number", flow.transport.protocol_number, 255),
        ("k8s.flow_type", flow.k8s.flow_type, 255),
        ("k8s.ingress_network_policy_type", flow.k8s.ingress_network_policy_type, 255),
        ("k8s.ingress_network_policy_rule_action", flow.k8s.ingress_network_policy_rule_action, 255),
        ("k8s.egress_network_policy_type", flow.k8s.egress_network_policy_type, 255),
        ("k8s.egress_network_policy_rule_action", flow.k8s.egress_network_policy_rule_action, 255),
        ("flow_direction", flow.flow_direction, 255),
    ]
    for where, value, most in checks:
        if not 0 <= value <= most:
            return f"{where} is {value}; it must be 0 to {most}"
    return "a value is out of range"


def mark_exporter(record: Record, exporter: str, odid: int) -> None:
    """Where the record came from, as the ipfix source's ``exporterFields`` add it."""
    v6 = ":" in exporter
    record["originalObservationDomainId"] = odid
    record["originalExporterIPv4Address"] = "0.0.0.0" if v6 else exporter
    record["originalExporterIPv6Address"] = exporter if v6 else "::"


# -- record → Flow ---------------------------------------------------------------------------------


def fill_flow(flow: Flow, record: Record, odid: int, export_time: int) -> None:
    """Fill an empty ``flow`` from a record, as Antrea's agent fills its messages.

    Raises ``KeyError`` (no source or destination address), ``ValueError`` or ``TypeError`` (a value
    the message cannot hold) for a record that cannot be sent.
    """
    get = record.get
    v6 = "sourceIPv6Address" in record
    suffix = "IPv6" if v6 else "IPv4"
    ipfix = flow.ipfix
    ipfix.export_time.seconds = export_time
    ipfix.observation_domain_id = odid
    flow.start_ts.seconds = get("flowStartSeconds") or 0
    flow.end_ts.seconds = get("flowEndSeconds") or 0
    flow.end_reason = get("flowEndReason") or 0
    ip = flow.ip
    ip.version = IP_VERSION_6 if v6 else IP_VERSION_4
    ip.source = _IP_PACKED[record["source" + suffix + "Address"]]
    ip.destination = _IP_PACKED[record["destination" + suffix + "Address"]]
    transport = flow.transport
    transport.protocol_number = get("protocolIdentifier") or 0
    transport.source_port = get("sourceTransportPort") or 0
    transport.destination_port = get("destinationTransportPort") or 0
    state = get("tcpState")
    if state:
        transport.TCP.state_name = state
    _fill_stats(
        flow.stats, get("packetTotalCount"), get("packetDeltaCount"), get("octetTotalCount"), get("octetDeltaCount")
    )
    _fill_stats(
        flow.reverse_stats,
        get("reversePacketTotalCount"),
        get("reversePacketDeltaCount"),
        get("reverseOctetTotalCount"),
        get("reverseOctetDeltaCount"),
    )
    k8s = flow.k8s
    k8s.flow_type = get("flowType") or 0
    k8s.source_pod_namespace = get("sourcePodNamespace") or ""
    k8s.source_pod_name = get("sourcePodName") or ""
    k8s.source_node_name = get("sourceNodeName") or ""
    k8s.destination_pod_namespace = get("destinationPodNamespace") or ""
    k8s.destination_pod_name = get("destinationPodName") or ""
    k8s.destination_node_name = get("destinationNodeName") or ""
    k8s.destination_service_port = get("destinationServicePort") or 0
    k8s.destination_service_port_name = get("destinationServicePortName") or ""
    k8s.ingress_network_policy_type = get("ingressNetworkPolicyType") or 0
    k8s.ingress_network_policy_namespace = get("ingressNetworkPolicyNamespace") or ""
    k8s.ingress_network_policy_name = get("ingressNetworkPolicyName") or ""
    k8s.ingress_network_policy_rule_name = get("ingressNetworkPolicyRuleName") or ""
    k8s.ingress_network_policy_rule_action = get("ingressNetworkPolicyRuleAction") or 0
    k8s.egress_network_policy_type = get("egressNetworkPolicyType") or 0
    k8s.egress_network_policy_namespace = get("egressNetworkPolicyNamespace") or ""
    k8s.egress_network_policy_name = get("egressNetworkPolicyName") or ""
    k8s.egress_network_policy_rule_name = get("egressNetworkPolicyRuleName") or ""
    k8s.egress_network_policy_rule_action = get("egressNetworkPolicyRuleAction") or 0
    k8s.egress_name = get("egressName") or ""
    k8s.egress_node_name = get("egressNodeName") or ""
    egress_ip = get("egressIP")
    if egress_ip:
        k8s.egress_ip = _IP_PACKED[egress_ip]
    cluster = get("destinationCluster" + suffix)
    if cluster and cluster not in ("0.0.0.0", "::"):
        k8s.destination_cluster_ip = _IP_PACKED[cluster]
    service = get("destinationService" + suffix)
    if service and service not in ("0.0.0.0", "::"):
        k8s.destination_service_ip = _IP_PACKED[service]
    snat = get("proxySnat" + suffix)
    if snat and snat not in ("0.0.0.0", "::"):
        flow.proxy_snat_ip = _IP_PACKED[snat]
    flow.proxy_snat_port = get("proxySnatPort") or 0
    for name, field in UUID_FIELDS.items():
        packed = get(name)
        if packed:
            setattr(k8s, field, _UUID_TEXT[packed])
    for name, labels in (
        ("sourcePodLabels", k8s.source_pod_labels),
        ("destinationPodLabels", k8s.destination_pod_labels),
    ):
        text = get(name)
        if text:
            _fill_labels(labels, name, text)
    direction = get("flowDirection")
    if direction:
        flow.flow_direction = direction
    if not AGGREGATION_FIELDS.isdisjoint(record):
        _fill_aggregation(flow.aggregation, get)
    if "appProtocolName" in record or "httpVals" in record:
        flow.app.protocol_name = get("appProtocolName") or ""
        flow.app.http_vals = (get("httpVals") or "").encode()


def _fill_stats(
    stats: Any, packets: int | None, packet_delta: int | None, octets: int | None, octet_delta: int | None
) -> None:
    stats.packet_total_count = packets or 0
    stats.packet_delta_count = packet_delta or 0
    stats.octet_total_count = octets or 0
    stats.octet_delta_count = octet_delta or 0


def _fill_labels(labels: Any, name: str, text: str) -> None:
    try:
        parsed = json.loads(text)
    except ValueError:
        raise ValueError(f"{name} is not JSON: {text[:60]!r}") from None
    if not isinstance(parsed, dict) or not all(isinstance(v, str) for v in parsed.values()):
        raise ValueError(f'{name} is not a JSON object of strings ({{"app":"web"}}): {text[:60]!r}')
    labels.SetInParent()  # present even when empty: "{}" says the Pod has no labels
    labels.labels.update(parsed)


def _fill_aggregation(aggregation: Any, get: Callable[[str], Any]) -> None:
    for name, field in _END_FROM.items():
        getattr(aggregation, field).seconds = get(name) or 0
    for name, stats, field in _PER_NODE:
        setattr(getattr(aggregation, stats), field, get(name) or 0)
    for name, field in _THROUGHPUTS.items():
        setattr(aggregation, field, get(name) or 0)


def uncarried(record: Record) -> set[str]:
    """The record's elements that a ``Flow`` has no field for."""
    return record.keys() - CARRIED
