"""Records as the Antrea Flow Aggregator's CSV rows: its ``FlowRecord`` fields and the flow logger's line.

The Flow Aggregator turns every record into a ``FlowRecord`` (``pkg/flowaggregator/flowrecord``)
before its CSV writers (the flow logger, the S3 uploader) format it. :func:`flow_record` does the
same for a flowscope record: each field named as the Go struct's field in lowerCamelCase, with the
Go zero value (``0`` or ``""``) when the record lacks it, and with Antrea's choices made:

- ``sourceIP`` and ``destinationIP`` come from the IPv4 element, else the IPv6 one;
- ``destinationClusterIP`` and ``destinationServiceIP`` likewise, an unspecified address
  (``0.0.0.0``, ``::``) counting as none, as the aggregator's preprocessor does;
- ``egressIP`` (a string element) is parsed and written in canonical form, ``""`` if it is not an
  address;
- times are epoch seconds; Pod labels are the records' JSON text.

:func:`logger_line` is one line of Antrea's flow logger (``pkg/flowaggregator/flowlogger``): the
columns of :data:`LOGGER_COLUMNS` joined by commas, without quoting (as Antrea writes them), with
protocol, rule actions and policy types spelled out when ``pretty``. Neither function does any I/O.
"""

from __future__ import annotations

import functools
import ipaddress
from collections.abc import Callable
from typing import Any

Record = dict[str, Any]

RULE_ACTIONS = {0: "", 1: "Allow", 2: "Drop", 3: "Reject"}
"""``ingress/egressNetworkPolicyRuleAction`` values and their pretty names (others are ``Invalid``)."""
POLICY_TYPES = {0: "", 1: "K8sNetworkPolicy", 2: "AntreaNetworkPolicy", 3: "AntreaClusterNetworkPolicy"}
"""``ingress/egressNetworkPolicyType`` values and their pretty names (others are ``Invalid``)."""
PROTOCOLS = {1: "ICMP", 2: "IGMP", 6: "TCP", 17: "UDP", 58: "IPv6-ICMP", 132: "SCTP"}
"""``protocolIdentifier`` values and their pretty names (others are ``Unknown Protocol``)."""

_UNSPECIFIED = frozenset(("", "0.0.0.0", "::"))


def rule_action_name(action: int) -> str:
    """Antrea's ``PrettyPrintRuleAction``."""
    return RULE_ACTIONS.get(action, "Invalid")


def policy_type_name(policy_type: int) -> str:
    """Antrea's ``PrettyPrintPolicyType``."""
    return POLICY_TYPES.get(policy_type, "Invalid")


def protocol_name(protocol: int) -> str:
    """Antrea's ``PrettyPrintProtocolIdentifier``."""
    return PROTOCOLS.get(protocol, "Unknown Protocol")


def _as_int(name: str, value: Any) -> int:
    """A number field's value that is not an ``int``: missing is 0; a bool, a whole float or a decimal string
    is taken; anything else raises ``ValueError`` naming the field."""
    if value is None:
        return 0
    if isinstance(value, bool) or (isinstance(value, float) and value.is_integer()):
        return int(value)
    if isinstance(value, str) and value.strip().lstrip("-").isdigit():
        return int(value)
    raise ValueError(f"{name} = {value!r} is not a number")


def _number(name: str) -> Callable[[Record], int]:
    def get(record: Record) -> int:
        value = record.get(name)
        return value if type(value) is int else _as_int(name, value)

    return get


def _text(name: str) -> Callable[[Record], str]:
    def get(record: Record) -> str:
        value = record.get(name)
        return value if type(value) is str else ("" if value is None else str(value))

    return get


def _address(v4: str, v6: str) -> Callable[[Record], str]:
    return lambda record: record.get(v4) or record.get(v6) or ""


def _specified_address(v4: str, v6: str) -> Callable[[Record], str]:
    def get(record: Record) -> str:
        for name in (v4, v6):
            value = record.get(name)
            if value and value not in _UNSPECIFIED:
                return value
        return ""

    return get


@functools.lru_cache(maxsize=4096)  # a cluster has few Egress IPs
def canonical_ip(text: str) -> str:
    """``text`` as Go's ``net.IP.String()`` writes the parsed address; ``""`` if it is not one."""
    try:
        address = ipaddress.ip_address(text)
    except ValueError:
        return ""
    if isinstance(address, ipaddress.IPv6Address):
        if address.ipv4_mapped is not None:
            return str(address.ipv4_mapped)
        return str(ipaddress.IPv6Address(address.packed))  # without a zone
    return str(address)


def _egress_ip(record: Record) -> str:
    value = record.get("egressIP")
    return canonical_ip(value) if value and isinstance(value, str) else ""


def _names(text: str) -> list[str]:
    return text.split()


_POLICY_FIELDS = [
    f"{side}NetworkPolicy{part}"
    for side in ("ingress", "egress")
    for part in ("Name", "Namespace", "RuleName", "RuleAction", "Type")
]
_ORDER = [
    *_names(
        """flowStartSeconds flowEndSeconds flowEndSecondsFromSourceNode flowEndSecondsFromDestinationNode
        flowEndReason sourceIP destinationIP sourceTransportPort destinationTransportPort protocolIdentifier
        packetTotalCount octetTotalCount packetDeltaCount octetDeltaCount reversePacketTotalCount
        reverseOctetTotalCount reversePacketDeltaCount reverseOctetDeltaCount sourcePodName sourcePodNamespace
        sourceNodeName destinationPodName destinationPodNamespace destinationNodeName destinationClusterIP
        destinationServiceIP destinationServicePort destinationServicePortName"""
    ),
    *_POLICY_FIELDS,
    *_names(
        """tcpState flowType sourcePodLabels destinationPodLabels throughput reverseThroughput
        throughputFromSourceNode throughputFromDestinationNode reverseThroughputFromSourceNode
        reverseThroughputFromDestinationNode egressName egressIP egressNodeName"""
    ),
]
_TEXTS = frozenset(
    _names(
        """sourcePodName sourcePodNamespace sourceNodeName destinationPodName destinationPodNamespace
        destinationNodeName destinationServicePortName ingressNetworkPolicyName ingressNetworkPolicyNamespace
        ingressNetworkPolicyRuleName egressNetworkPolicyName egressNetworkPolicyNamespace egressNetworkPolicyRuleName
        tcpState sourcePodLabels destinationPodLabels egressName egressNodeName"""
    )
)
_DERIVED: dict[str, Callable[[Record], str]] = {
    "sourceIP": _address("sourceIPv4Address", "sourceIPv6Address"),
    "destinationIP": _address("destinationIPv4Address", "destinationIPv6Address"),
    "destinationClusterIP": _specified_address("destinationClusterIPv4", "destinationClusterIPv6"),
    "destinationServiceIP": _specified_address("destinationServiceIPv4", "destinationServiceIPv6"),
    "egressIP": _egress_ip,
}

FIELDS: dict[str, Callable[[Record], Any]] = {
    name: _DERIVED.get(name) or (_text(name) if name in _TEXTS else _number(name)) for name in _ORDER
}
"""Antrea's ``FlowRecord`` fields in the Go struct's order (51): name → how to read it from a record
(an ``int`` for numbers and times, a ``str`` otherwise). A field that is an element keeps its name."""

LOGGER_COLUMNS = [
    *_names(
        """flowStartSeconds flowEndSeconds sourceIP destinationIP sourceTransportPort destinationTransportPort
        protocolIdentifier sourcePodName sourcePodNamespace sourceNodeName destinationPodName
        destinationPodNamespace destinationNodeName destinationClusterIP destinationServiceIP
        destinationServicePort destinationServicePortName"""
    ),
    *_POLICY_FIELDS,
    "egressName",
    "egressIP",
    "egressNodeName",
]
"""The flow logger's 30 columns, in its order (``FlowLogger.WriteRecord``)."""

_PRETTY: dict[str, Callable[[int], str]] = {
    "protocolIdentifier": protocol_name,
    "ingressNetworkPolicyRuleAction": rule_action_name,
    "ingressNetworkPolicyType": policy_type_name,
    "egressNetworkPolicyRuleAction": rule_action_name,
    "egressNetworkPolicyType": policy_type_name,
}
_PLAIN = [FIELDS[name] for name in LOGGER_COLUMNS]
_PRETTY_COLUMNS = [
    (lambda record, get=FIELDS[name], show=_PRETTY[name]: show(get(record))) if name in _PRETTY else FIELDS[name]
    for name in LOGGER_COLUMNS
]


def flow_record(record: Record) -> dict[str, Any]:
    """Antrea's ``FlowRecord`` of ``record``: every field of :data:`FIELDS`, Go zero values for the
    missing ones. Raises ``ValueError`` naming the field when a number field holds something else."""
    return {name: get(record) for name, get in FIELDS.items()}


def logger_row(record: Record, pretty: bool = True) -> list[str]:
    """The flow logger's columns of ``record`` as text (see :data:`LOGGER_COLUMNS`)."""
    return [
        value if type(value) is str else str(value)
        for value in (get(record) for get in (_PRETTY_COLUMNS if pretty else _PLAIN))
    ]


def logger_line(record: Record, pretty: bool = True) -> str:
    """One flow logger line, without the newline. A line break inside a value is written as ``\\n``
    (or ``\\r``) so that a record stays one line."""
    line = ",".join(logger_row(record, pretty))
    if "\n" in line or "\r" in line:
        line = line.replace("\n", "\\n").replace("\r", "\\r")
    return line
