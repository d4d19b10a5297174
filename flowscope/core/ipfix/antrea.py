"""The element lists of Antrea's IPFIX templates (reference §2.7), in wire order, and how Antrea
derives observation domain ids."""

from __future__ import annotations

_COMMON_IANA = [
    "flowStartSeconds",
    "flowEndSeconds",
    "flowEndReason",
    "sourceTransportPort",
    "destinationTransportPort",
    "protocolIdentifier",
    "packetTotalCount",
    "octetTotalCount",
    "packetDeltaCount",
    "octetDeltaCount",
]
_REVERSE = ["reversePacketTotalCount", "reverseOctetTotalCount", "reversePacketDeltaCount", "reverseOctetDeltaCount"]
_ANTREA = [
    "sourcePodName",
    "sourcePodNamespace",
    "sourceNodeName",
    "destinationPodName",
    "destinationPodNamespace",
    "destinationNodeName",
    "destinationServicePort",
    "destinationServicePortName",
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace",
    "ingressNetworkPolicyType",
    "ingressNetworkPolicyRuleName",
    "ingressNetworkPolicyRuleAction",
    "egressNetworkPolicyName",
    "egressNetworkPolicyNamespace",
    "egressNetworkPolicyType",
    "egressNetworkPolicyRuleName",
    "egressNetworkPolicyRuleAction",
    "tcpState",
    "flowType",
    "egressName",
    "egressIP",
    "egressNodeName",
    "proxySnatPort",
]

EXPORTER_IPV4 = [
    *_COMMON_IANA,
    "sourceIPv4Address",
    "destinationIPv4Address",
    *_REVERSE,
    *_ANTREA,
    "destinationClusterIPv4",
    "proxySnatIPv4",
    "destinationServiceIPv4",
]
"""The 43 elements of an Antrea agent's IPv4 flow record (v2.7+)."""

EXPORTER_IPV6 = [
    *_COMMON_IANA,
    "sourceIPv6Address",
    "destinationIPv6Address",
    *_REVERSE,
    *_ANTREA,
    "destinationClusterIPv6",
    "proxySnatIPv6",
    "destinationServiceIPv6",
]
"""The 43 elements of an Antrea agent's IPv6 flow record (v2.7+)."""

_PER_NODE_METRICS = [
    "octetDeltaCount",
    "octetTotalCount",
    "packetDeltaCount",
    "packetTotalCount",
    "reverseOctetDeltaCount",
    "reverseOctetTotalCount",
    "reversePacketDeltaCount",
    "reversePacketTotalCount",
]
PER_NODE_STATS = [f"{metric}From{side}Node" for metric in _PER_NODE_METRICS for side in ("Source", "Destination")]
"""The 16 per-node counters of an aggregated record, interleaved source, destination per metric."""

THROUGHPUTS = [
    "throughput",
    "throughputFromSourceNode",
    "throughputFromDestinationNode",
    "reverseThroughput",
    "reverseThroughputFromSourceNode",
    "reverseThroughputFromDestinationNode",
]
_AGGREGATE_MODE = [*PER_NODE_STATS, "flowEndSecondsFromSourceNode", "flowEndSecondsFromDestinationNode", *THROUGHPUTS]
_PROXY_MODE = [
    "originalObservationDomainId",
    "originalExporterIPv4Address",
    "originalExporterIPv6Address",
    "flowDirection",
]
AGGREGATOR_MODES = ("aggregate", "proxy")


def _aggregator_antrea(names: bool, uids: bool, ipv6: bool) -> list[str]:
    """The Antrea elements of the Flow Aggregator's template, as HEAD's ``AntreaInfoElements``: each
    UID right after its name group, rule names kept when names or UIDs are."""
    groups: list[tuple[bool, list[str]]] = [
        (names, ["sourcePodName", "sourcePodNamespace"]),
        (uids, ["sourcePodUUID"]),
        (names, ["sourceNodeName"]),
        (uids, ["sourceNodeUUID"]),
        (names, ["destinationPodName", "destinationPodNamespace"]),
        (uids, ["destinationPodUUID"]),
        (names, ["destinationNodeName"]),
        (uids, ["destinationNodeUUID"]),
        (True, ["destinationServicePort"]),
        (names, ["destinationServicePortName"]),
        (uids, ["destinationServiceUUID"]),
    ]
    for direction in ("ingress", "egress"):
        groups += [
            (names, [f"{direction}NetworkPolicyName", f"{direction}NetworkPolicyNamespace"]),
            (uids, [f"{direction}NetworkPolicyUUID"]),
            (True, [f"{direction}NetworkPolicyType"]),
            (names or uids, [f"{direction}NetworkPolicyRuleName"]),
            (True, [f"{direction}NetworkPolicyRuleAction"]),
        ]
    family = "IPv6" if ipv6 else "IPv4"
    groups += [
        (True, ["tcpState", "flowType"]),
        (names, ["egressName"]),
        (uids, ["egressUUID"]),
        (True, ["egressIP"]),
        (names, ["egressNodeName"]),
        (uids, ["egressNodeUUID"]),
        (True, ["proxySnatPort", f"proxySnat{family}", f"destinationCluster{family}", f"destinationService{family}"]),
    ]
    return [name for wanted, group in groups if wanted for name in group]


def aggregator_elements(
    ipv6: bool = False, mode: str = "aggregate", include_names: bool = True, include_uids: bool = False
) -> list[str]:
    """The elements of the Flow Aggregator's record toward a flow collector, in wire order, as HEAD's
    ``prepareElements`` lists them (reference §3.9): 12 IANA, 4 reverse, the Antrea elements, in
    ``aggregate`` mode the per-node counters, end times and throughputs, then the Pod labels and
    ``clusterId``, and in ``proxy`` mode the original exporter's domain id and addresses and the
    flow direction."""
    if mode not in AGGREGATOR_MODES:
        raise ValueError(f"mode {mode!r} is not an aggregator mode; use one of {', '.join(AGGREGATOR_MODES)}")
    family = "IPv6" if ipv6 else "IPv4"
    return [
        *_COMMON_IANA,
        f"source{family}Address",
        f"destination{family}Address",
        *_REVERSE,
        *_aggregator_antrea(include_names, include_uids, ipv6),
        *(_AGGREGATE_MODE if mode == "aggregate" else []),
        "sourcePodLabels",
        "destinationPodLabels",
        "clusterId",
        *(_PROXY_MODE if mode == "proxy" else []),
    ]


AGGREGATOR_IPV4 = aggregator_elements(ipv6=False)
"""The 70 elements of the Flow Aggregator's IPv4 record in aggregate mode (reference §3.9)."""

AGGREGATOR_IPV6 = aggregator_elements(ipv6=True)
"""The Flow Aggregator's IPv6 record in aggregate mode."""


def fnv1_32(data: bytes) -> int:
    """FNV-1 (not 1a), 32 bits, as Go's ``hash/fnv.New32``."""
    value = 0x811C9DC5
    for byte in data:
        value = (value * 0x01000193) & 0xFFFFFFFF
        value ^= byte
    return value
