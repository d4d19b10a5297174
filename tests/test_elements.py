"""The IE registry holds every element of the Antrea reference, keyed by name and by (enterprise, id)."""

from __future__ import annotations

import pytest

from flowscope.core.elements import ANTREA, IANA, IANA_REVERSE, ElementRegistry
from flowscope.core.errors import PluginError
from flowscope.core.plugins import load_plugins


@pytest.fixture(scope="module")
def registry() -> ElementRegistry:
    return load_plugins().elements


ANTREA_IDS = {
    100: "sourcePodNamespace",
    101: "sourcePodName",
    102: "destinationPodNamespace",
    103: "destinationPodName",
    104: "sourceNodeName",
    105: "destinationNodeName",
    106: "destinationClusterIPv4",
    107: "destinationClusterIPv6",
    108: "destinationServicePort",
    109: "destinationServicePortName",
    110: "ingressNetworkPolicyName",
    115: "ingressNetworkPolicyType",
    116: "ingressNetworkPolicyRulePriority",
    120: "packetTotalCountFromSourceNode",
    127: "reverseOctetDeltaCountFromSourceNode",
    128: "packetTotalCountFromDestinationNode",
    135: "reverseOctetDeltaCountFromDestinationNode",
    136: "tcpState",
    137: "flowType",
    138: "tcpStatePrevList",
    139: "ingressNetworkPolicyRuleAction",
    140: "egressNetworkPolicyRuleAction",
    141: "ingressNetworkPolicyRuleName",
    142: "egressNetworkPolicyRuleName",
    143: "sourcePodLabels",
    144: "destinationPodLabels",
    145: "throughput",
    146: "reverseThroughput",
    150: "reverseThroughputFromDestinationNode",
    151: "flowEndSecondsFromSourceNode",
    152: "flowEndSecondsFromDestinationNode",
    153: "egressName",
    154: "egressIP",
    157: "egressNodeName",
    158: "clusterId",
    159: "sourcePodUUID",
    167: "egressNodeUUID",
    168: "destinationServiceIPv4",
    169: "destinationServiceIPv6",
    170: "proxySnatIPv4",
    171: "proxySnatIPv6",
    172: "proxySnatPort",
}


def test_every_antrea_id_from_100_to_172_is_registered(registry):
    ids = sorted(e.element_id for e in registry if e.enterprise_id == ANTREA)
    assert ids == list(range(100, 173))
    for element_id, name in ANTREA_IDS.items():
        assert registry.by_id(ANTREA, element_id).name == name


@pytest.mark.parametrize(
    ("name", "enterprise", "element_id", "type_"),
    [
        ("octetDeltaCount", IANA, 1, "unsigned64"),
        ("packetDeltaCount", IANA, 2, "unsigned64"),
        ("protocolIdentifier", IANA, 4, "unsigned8"),
        ("sourceTransportPort", IANA, 7, "unsigned16"),
        ("sourceIPv4Address", IANA, 8, "ipv4Address"),
        ("destinationTransportPort", IANA, 11, "unsigned16"),
        ("destinationIPv4Address", IANA, 12, "ipv4Address"),
        ("sourceIPv6Address", IANA, 27, "ipv6Address"),
        ("destinationIPv6Address", IANA, 28, "ipv6Address"),
        ("flowDirection", IANA, 61, "unsigned8"),
        ("octetTotalCount", IANA, 85, "unsigned64"),
        ("packetTotalCount", IANA, 86, "unsigned64"),
        ("flowEndReason", IANA, 136, "unsigned8"),
        ("flowStartSeconds", IANA, 150, "dateTimeSeconds"),
        ("flowEndSeconds", IANA, 151, "dateTimeSeconds"),
        ("originalExporterIPv4Address", IANA, 403, "ipv4Address"),
        ("originalExporterIPv6Address", IANA, 404, "ipv6Address"),
        ("originalObservationDomainId", IANA, 405, "unsigned32"),
        ("reversePacketTotalCount", IANA_REVERSE, 86, "unsigned64"),
        ("reverseOctetTotalCount", IANA_REVERSE, 85, "unsigned64"),
        ("reversePacketDeltaCount", IANA_REVERSE, 2, "unsigned64"),
        ("reverseOctetDeltaCount", IANA_REVERSE, 1, "unsigned64"),
        ("tcpState", ANTREA, 136, "string"),
        ("flowType", ANTREA, 137, "unsigned8"),
        ("egressIP", ANTREA, 154, "string"),
        ("flowEndSecondsFromSourceNode", ANTREA, 151, "dateTimeSeconds"),
        ("ingressNetworkPolicyRulePriority", ANTREA, 116, "signed32"),
        ("sourcePodUUID", ANTREA, 159, "octetArray"),
    ],
)
def test_reference_elements(registry, name, enterprise, element_id, type_):
    element = registry.by_name(name)
    assert (element.enterprise_id, element.element_id, element.type) == (enterprise, element_id, type_)
    assert registry.by_id(enterprise, element_id) is element


def test_id_136_means_different_elements_in_different_registries(registry):
    assert registry.by_id(IANA, 136).name == "flowEndReason"
    assert registry.by_id(ANTREA, 136).name == "tcpState"


def test_lengths_follow_the_data_type(registry):
    assert registry["octetDeltaCount"].length == 8
    assert registry["sourceIPv6Address"].length == 16
    assert registry["flowStartSeconds"].length == 4
    assert registry["sourcePodName"].length == 65535


def test_registering_the_same_element_twice_is_harmless_and_clashes_are_not():
    registry = ElementRegistry()
    registry.register("myField", 4242, 7, "string", origin="a")
    registry.register("myField", 4242, 7, "string", origin="b")
    assert len(registry) == 1
    with pytest.raises(PluginError, match="'myField' \\(4242/8, string\\) from plugin 'c' clashes"):
        registry.register("myField", 4242, 8, "string", origin="c")
    with pytest.raises(PluginError, match="element_id 0 must be an integer from 1 to 32767"):
        registry.register("zero", 4242, 0, "string")
    with pytest.raises(PluginError, match="enterprise_id -1 must be an integer from 0 to 4294967295"):
        registry.register("neg", -1, 5, "string")
