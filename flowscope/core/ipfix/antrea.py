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
_AGGREGATED_TAIL = [
    *PER_NODE_STATS,
    "flowEndSecondsFromSourceNode",
    "flowEndSecondsFromDestinationNode",
    *THROUGHPUTS,
    "sourcePodLabels",
    "destinationPodLabels",
    "clusterId",
]

AGGREGATOR_IPV4 = [
    *_COMMON_IANA,
    "sourceIPv4Address",
    "destinationIPv4Address",
    *_REVERSE,
    *_ANTREA,
    "proxySnatIPv4",
    "destinationClusterIPv4",
    "destinationServiceIPv4",
    *_AGGREGATED_TAIL,
]
"""The 70 elements of the Flow Aggregator's IPv4 record in aggregate mode (reference §3.9)."""

AGGREGATOR_IPV6 = [
    *_COMMON_IANA,
    "sourceIPv6Address",
    "destinationIPv6Address",
    *_REVERSE,
    *_ANTREA,
    "proxySnatIPv6",
    "destinationClusterIPv6",
    "destinationServiceIPv6",
    *_AGGREGATED_TAIL,
]
"""The Flow Aggregator's IPv6 record in aggregate mode."""


def fnv1_32(data: bytes) -> int:
    """FNV-1 (not 1a), 32 bits, as Go's ``hash/fnv.New32``."""
    value = 0x811C9DC5
    for byte in data:
        value = (value * 0x01000193) & 0xFFFFFFFF
        value ^= byte
    return value
