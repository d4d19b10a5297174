"""Built-in Information Elements: IANA (0), IANA reverse (29305) and Antrea (56506).

Registered through the ``register_elements`` hook like any plugin's elements.
"""

from __future__ import annotations

from collections.abc import Callable

from flowscope.core.elements import ANTREA, IANA, IANA_REVERSE
from flowscope.core.hookspecs import hookimpl

u8, u16, u32, u64 = "unsigned8", "unsigned16", "unsigned32", "unsigned64"
i32 = "signed32"
v4, v6, mac = "ipv4Address", "ipv6Address", "macAddress"
s, octets, secs = "string", "octetArray", "dateTimeSeconds"
ms, us, ns = "dateTimeMilliseconds", "dateTimeMicroseconds", "dateTimeNanoseconds"

# (id, name, type) from the IANA IPFIX registry.
IANA_ELEMENTS: list[tuple[int, str, str]] = [
    (1, "octetDeltaCount", u64),
    (2, "packetDeltaCount", u64),
    (3, "deltaFlowCount", u64),
    (4, "protocolIdentifier", u8),
    (5, "ipClassOfService", u8),
    (6, "tcpControlBits", u16),
    (7, "sourceTransportPort", u16),
    (8, "sourceIPv4Address", v4),
    (9, "sourceIPv4PrefixLength", u8),
    (10, "ingressInterface", u32),
    (11, "destinationTransportPort", u16),
    (12, "destinationIPv4Address", v4),
    (13, "destinationIPv4PrefixLength", u8),
    (14, "egressInterface", u32),
    (15, "ipNextHopIPv4Address", v4),
    (16, "bgpSourceAsNumber", u32),
    (17, "bgpDestinationAsNumber", u32),
    (18, "bgpNextHopIPv4Address", v4),
    (19, "postMCastPacketDeltaCount", u64),
    (20, "postMCastOctetDeltaCount", u64),
    (21, "flowEndSysUpTime", u32),
    (22, "flowStartSysUpTime", u32),
    (23, "postOctetDeltaCount", u64),
    (24, "postPacketDeltaCount", u64),
    (25, "minimumIpTotalLength", u64),
    (26, "maximumIpTotalLength", u64),
    (27, "sourceIPv6Address", v6),
    (28, "destinationIPv6Address", v6),
    (29, "sourceIPv6PrefixLength", u8),
    (30, "destinationIPv6PrefixLength", u8),
    (31, "flowLabelIPv6", u32),
    (32, "icmpTypeCodeIPv4", u16),
    (33, "igmpType", u8),
    (36, "flowActiveTimeout", u16),
    (37, "flowIdleTimeout", u16),
    (40, "exportedOctetTotalCount", u64),
    (41, "exportedMessageTotalCount", u64),
    (42, "exportedFlowRecordTotalCount", u64),
    (52, "minimumTTL", u8),
    (53, "maximumTTL", u8),
    (54, "fragmentIdentification", u32),
    (56, "sourceMacAddress", mac),
    (57, "postDestinationMacAddress", mac),
    (58, "vlanId", u16),
    (59, "postVlanId", u16),
    (60, "ipVersion", u8),
    (61, "flowDirection", u8),
    (62, "ipNextHopIPv6Address", v6),
    (63, "bgpNextHopIPv6Address", v6),
    (64, "ipv6ExtensionHeaders", u32),
    (80, "destinationMacAddress", mac),
    (81, "postSourceMacAddress", mac),
    (85, "octetTotalCount", u64),
    (86, "packetTotalCount", u64),
    (130, "exporterIPv4Address", v4),
    (131, "exporterIPv6Address", v6),
    (136, "flowEndReason", u8),
    (139, "icmpTypeCodeIPv6", u16),
    (144, "exportingProcessId", u32),
    (145, "templateId", u16),
    (148, "flowId", u64),
    (149, "observationDomainId", u32),
    (150, "flowStartSeconds", secs),
    (151, "flowEndSeconds", secs),
    (152, "flowStartMilliseconds", ms),
    (153, "flowEndMilliseconds", ms),
    (154, "flowStartMicroseconds", us),
    (155, "flowEndMicroseconds", us),
    (156, "flowStartNanoseconds", ns),
    (157, "flowEndNanoseconds", ns),
    (160, "systemInitTimeMilliseconds", ms),
    (161, "flowDurationMilliseconds", u32),
    (176, "icmpTypeIPv4", u8),
    (177, "icmpCodeIPv4", u8),
    (178, "icmpTypeIPv6", u8),
    (179, "icmpCodeIPv6", u8),
    (180, "udpSourcePort", u16),
    (181, "udpDestinationPort", u16),
    (182, "tcpSourcePort", u16),
    (183, "tcpDestinationPort", u16),
    (210, "paddingOctets", octets),
    (225, "postNATSourceIPv4Address", v4),
    (226, "postNATDestinationIPv4Address", v4),
    (227, "postNAPTSourceTransportPort", u16),
    (228, "postNAPTDestinationTransportPort", u16),
    (233, "firewallEvent", u8),
    (239, "biflowDirection", u8),
    (403, "originalExporterIPv4Address", v4),
    (404, "originalExporterIPv6Address", v6),
    (405, "originalObservationDomainId", u32),
]

# Elements that describe the exporting process rather than one direction of a flow have no
# RFC 5103 reverse counterpart.
NOT_REVERSIBLE = {40, 41, 42, 130, 131, 143, 144, 145, 148, 149, 160, 210, 239, 302, 304, 305, 306, 403, 404, 405}

# (id, name, type) from Antrea's registry (go-ipfix registry_antrea.csv), enterprise 56506.
ANTREA_ELEMENTS: list[tuple[int, str, str]] = [
    (100, "sourcePodNamespace", s),
    (101, "sourcePodName", s),
    (102, "destinationPodNamespace", s),
    (103, "destinationPodName", s),
    (104, "sourceNodeName", s),
    (105, "destinationNodeName", s),
    (106, "destinationClusterIPv4", v4),
    (107, "destinationClusterIPv6", v6),
    (108, "destinationServicePort", u16),
    (109, "destinationServicePortName", s),
    (110, "ingressNetworkPolicyName", s),
    (111, "ingressNetworkPolicyNamespace", s),
    (112, "egressNetworkPolicyName", s),
    (113, "egressNetworkPolicyNamespace", s),
    (114, "ingressNetworkPolicyUID", s),
    (115, "ingressNetworkPolicyType", u8),
    (116, "ingressNetworkPolicyRulePriority", i32),
    (117, "egressNetworkPolicyUID", s),
    (118, "egressNetworkPolicyType", u8),
    (119, "egressNetworkPolicyRulePriority", i32),
    (120, "packetTotalCountFromSourceNode", u64),
    (121, "octetTotalCountFromSourceNode", u64),
    (122, "packetDeltaCountFromSourceNode", u64),
    (123, "octetDeltaCountFromSourceNode", u64),
    (124, "reversePacketTotalCountFromSourceNode", u64),
    (125, "reverseOctetTotalCountFromSourceNode", u64),
    (126, "reversePacketDeltaCountFromSourceNode", u64),
    (127, "reverseOctetDeltaCountFromSourceNode", u64),
    (128, "packetTotalCountFromDestinationNode", u64),
    (129, "octetTotalCountFromDestinationNode", u64),
    (130, "packetDeltaCountFromDestinationNode", u64),
    (131, "octetDeltaCountFromDestinationNode", u64),
    (132, "reversePacketTotalCountFromDestinationNode", u64),
    (133, "reverseOctetTotalCountFromDestinationNode", u64),
    (134, "reversePacketDeltaCountFromDestinationNode", u64),
    (135, "reverseOctetDeltaCountFromDestinationNode", u64),
    (136, "tcpState", s),
    (137, "flowType", u8),
    (138, "tcpStatePrevList", s),
    (139, "ingressNetworkPolicyRuleAction", u8),
    (140, "egressNetworkPolicyRuleAction", u8),
    (141, "ingressNetworkPolicyRuleName", s),
    (142, "egressNetworkPolicyRuleName", s),
    (143, "sourcePodLabels", s),
    (144, "destinationPodLabels", s),
    (145, "throughput", u64),
    (146, "reverseThroughput", u64),
    (147, "throughputFromSourceNode", u64),
    (148, "throughputFromDestinationNode", u64),
    (149, "reverseThroughputFromSourceNode", u64),
    (150, "reverseThroughputFromDestinationNode", u64),
    (151, "flowEndSecondsFromSourceNode", secs),
    (152, "flowEndSecondsFromDestinationNode", secs),
    (153, "egressName", s),
    (154, "egressIP", s),
    (155, "appProtocolName", s),
    (156, "httpVals", s),
    (157, "egressNodeName", s),
    (158, "clusterId", s),
    (159, "sourcePodUUID", octets),
    (160, "destinationPodUUID", octets),
    (161, "sourceNodeUUID", octets),
    (162, "destinationNodeUUID", octets),
    (163, "destinationServiceUUID", octets),
    (164, "ingressNetworkPolicyUUID", octets),
    (165, "egressNetworkPolicyUUID", octets),
    (166, "egressUUID", octets),
    (167, "egressNodeUUID", octets),
    (168, "destinationServiceIPv4", v4),
    (169, "destinationServiceIPv6", v6),
    (170, "proxySnatIPv4", v4),
    (171, "proxySnatIPv6", v6),
    (172, "proxySnatPort", u16),
]


# Antrea's UID elements (sourcePodUUID ... egressNodeUUID): octetArray of fixed length 16 in
# Antrea's registry, carried in records as the UUID's text, as Antrea's Flow message has it.
UUID_ELEMENTS = range(159, 168)


def reverse_name(name: str) -> str:
    """RFC 5103 §6.1 naming: ``octetDeltaCount`` → ``reverseOctetDeltaCount``."""
    return "reverse" + name[0].upper() + name[1:]


@hookimpl
def register_elements(register: Callable[[str, int, int, str], None]) -> None:
    for element_id, name, type_ in IANA_ELEMENTS:
        register(name, IANA, element_id, type_)
        if element_id not in NOT_REVERSIBLE:
            register(reverse_name(name), IANA_REVERSE, element_id, type_)
    for element_id, name, type_ in ANTREA_ELEMENTS:
        if element_id in UUID_ELEMENTS:
            register(name, ANTREA, element_id, type_, uuid=True)
        else:
            register(name, ANTREA, element_id, type_)
