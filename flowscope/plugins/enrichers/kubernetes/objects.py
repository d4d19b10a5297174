"""Slim copies of Kubernetes objects: only the fields flow enrichment uses.

``parse(kind, raw)`` turns an API object (a dict, as in YAML or JSON) into one of the dataclasses
below and raises ``ValueError`` with a clear reason for an object it cannot use.
"""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass, field
from typing import Any

OPERATORS = ("In", "NotIn", "Exists", "DoesNotExist")


@dataclass(frozen=True, slots=True)
class Requirement:
    key: str
    operator: str
    values: frozenset[str] = frozenset()

    def matches(self, labels: dict[str, str]) -> bool:
        present = self.key in labels
        if self.operator == "In":
            return present and labels[self.key] in self.values
        if self.operator == "NotIn":
            return not present or labels[self.key] not in self.values
        if self.operator == "Exists":
            return present
        return not present  # DoesNotExist


@dataclass(frozen=True, slots=True)
class Selector:
    """A label selector; the empty selector matches everything."""

    labels: tuple[tuple[str, str], ...] = ()
    expressions: tuple[Requirement, ...] = ()

    def matches(self, labels: dict[str, str]) -> bool:
        for key, value in self.labels:
            if labels.get(key) != value:
                return False
        return not self.expressions or all(requirement.matches(labels) for requirement in self.expressions)


@dataclass(frozen=True, slots=True, eq=False)
class Pod:
    """A Pod at one moment: every change makes a new one, so a Pod is equal only to itself (and hashable,
    as a key of the caches that depend on its labels and ports)."""

    namespace: str
    name: str
    uid: str
    ips: tuple[str, ...]
    node: str
    labels: dict[str, str]
    host_network: bool
    created: float  # epoch seconds
    deleted: float | None = None  # when the API said it was deleted
    finished: float | None = None  # when it reached Succeeded/Failed (its IP may then be reused)
    ports: tuple[tuple[str, int, str], ...] = ()  # (name, containerPort, protocol), for named ports

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class ServicePort:
    name: str
    port: int
    protocol: str
    node_port: int


@dataclass(frozen=True, slots=True)
class Service:
    namespace: str
    name: str
    uid: str
    cluster_ips: tuple[str, ...]
    external_ips: tuple[str, ...]  # LoadBalancer ingress IPs and spec.externalIPs
    ports: tuple[ServicePort, ...]


@dataclass(frozen=True, slots=True)
class Namespace:
    name: str
    labels: dict[str, str]


@dataclass(frozen=True, slots=True)
class Node:
    name: str
    addresses: tuple[str, ...]
    pod_cidrs: tuple[str, ...]
    uid: str = ""


@dataclass(frozen=True, slots=True)
class PolicyPort:
    protocol: str  # TCP, UDP, SCTP
    port: int | str | None  # None: every port; str: a named container port
    end_port: int | None = None


@dataclass(frozen=True, slots=True)
class Peer:
    """One ``from``/``to`` entry: a Pod selector, a namespace selector, both, or an ipBlock."""

    pod_selector: Selector | None = None
    namespace_selector: Selector | None = None
    cidr: Any = None  # ipaddress network
    excepts: tuple[Any, ...] = ()


@dataclass(frozen=True, slots=True)
class Rule:
    peers: tuple[Peer, ...]  # empty: every peer
    ports: tuple[PolicyPort, ...]  # empty: every port


@dataclass(frozen=True, slots=True)
class NetworkPolicy:
    namespace: str
    name: str
    uid: str
    pod_selector: Selector
    ingress: tuple[Rule, ...] | None  # None: the policy does not govern ingress
    egress: tuple[Rule, ...] | None


@dataclass(frozen=True, slots=True)
class EndpointSlice:
    namespace: str
    name: str
    service: str
    addresses: tuple[str, ...] = field(default=())


def parse(kind: str, raw: dict[str, Any]) -> Any:
    """The slim object of a raw API object of ``kind`` (Pod, Service, Namespace, Node, NetworkPolicy, EndpointSlice).

    :raises ValueError: saying why the object cannot be used.
    """
    try:
        return _parse(kind, raw)
    except (KeyError, TypeError, AttributeError) as exc:  # a field missing or of the wrong shape
        name = (raw.get("metadata") or {}).get("name", "?") if isinstance(raw, dict) else "?"
        raise ValueError(f"{kind} {name} is malformed ({type(exc).__name__}: {exc})") from None


def _parse(kind: str, raw: dict[str, Any]) -> Any:
    if not isinstance(raw, dict):
        raise ValueError(f"a {kind} must be a mapping, not {type(raw).__name__}")
    meta = raw.get("metadata") or {}
    name = meta.get("name")
    if not isinstance(name, str) or not name:
        raise ValueError(f"{kind} without metadata.name")
    namespace = meta.get("namespace") or "default"
    spec, status = raw.get("spec") or {}, raw.get("status") or {}
    uid = str(meta.get("uid", ""))
    labels = _labels(meta.get("labels"), f"{kind} {name}")
    if kind == "Pod":
        ips = tuple(ip["ip"] for ip in status.get("podIPs") or [] if isinstance(ip, dict) and ip.get("ip"))
        if not ips and status.get("podIP"):
            ips = (status["podIP"],)
        for ip in ips:
            _ip(ip, f"Pod {namespace}/{name} status.podIPs")
        ports = tuple(
            (port.get("name", ""), int(port["containerPort"]), port.get("protocol", "TCP"))
            for container in spec.get("containers") or []
            for port in container.get("ports") or []
            if "containerPort" in port
        )
        finished = None
        if status.get("phase") in ("Succeeded", "Failed"):
            finished = _last_termination(status) or _time(meta.get("deletionTimestamp")) or 0.0
        return Pod(
            namespace,
            name,
            uid,
            ips,
            spec.get("nodeName", ""),
            labels,
            bool(spec.get("hostNetwork")),
            _time(meta.get("creationTimestamp")) or 0.0,
            _time(meta.get("deletionTimestamp")),
            finished,
            ports,
        )
    if kind == "Service":
        cluster_ips = tuple(ip for ip in (spec.get("clusterIPs") or [spec.get("clusterIP")]) if ip and ip != "None")
        external = [*(spec.get("externalIPs") or [])]
        for ingress in (status.get("loadBalancer") or {}).get("ingress") or []:
            if ingress.get("ip"):
                external.append(ingress["ip"])
        for ip in (*cluster_ips, *external):
            _ip(ip, f"Service {namespace}/{name}")
        ports = tuple(
            ServicePort(
                port.get("name", ""), int(port["port"]), port.get("protocol", "TCP"), int(port.get("nodePort", 0))
            )
            for port in spec.get("ports") or []
        )
        return Service(namespace, name, uid, cluster_ips, tuple(external), ports)
    if kind == "Namespace":
        return Namespace(name, labels)
    if kind == "Node":
        addresses = tuple(
            a["address"] for a in status.get("addresses") or [] if a.get("type") in ("InternalIP", "ExternalIP")
        )
        cidrs = tuple(spec.get("podCIDRs") or ([spec["podCIDR"]] if spec.get("podCIDR") else []))
        return Node(name, addresses, cidrs, uid)
    if kind == "NetworkPolicy":
        return _policy(namespace, name, uid, spec)
    if kind == "EndpointSlice":
        addresses = tuple(a for endpoint in raw.get("endpoints") or [] for a in endpoint.get("addresses") or [])
        return EndpointSlice(namespace, name, labels.get("kubernetes.io/service-name", ""), addresses)
    raise ValueError(f"kind {kind!r} is not used; use Pod, Service, Namespace, Node, NetworkPolicy or EndpointSlice")


def selector(raw: Any, where: str) -> Selector:
    """A label selector from its API form."""
    if raw is None:
        return Selector()
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: a selector must be a mapping")
    labels = _labels(raw.get("matchLabels"), where)
    expressions = []
    for expression in raw.get("matchExpressions") or []:
        operator = expression.get("operator")
        if operator not in OPERATORS:
            raise ValueError(f"{where}: unknown operator {operator!r}; use one of {', '.join(OPERATORS)}")
        values = frozenset(str(v) for v in expression.get("values") or [])
        if operator in ("In", "NotIn") and not values:
            raise ValueError(f"{where}: operator {operator} needs values")
        expressions.append(Requirement(str(expression.get("key", "")), operator, values))
    return Selector(tuple(sorted(labels.items())), tuple(expressions))


def _policy(namespace: str, name: str, uid: str, spec: dict[str, Any]) -> NetworkPolicy:
    where = f"NetworkPolicy {namespace}/{name}"
    types = spec.get("policyTypes")
    if types is None:  # the API's default: Ingress, plus Egress when egress rules are given
        types = ["Ingress", *(["Egress"] if spec.get("egress") else [])]
    unknown = [t for t in types if t not in ("Ingress", "Egress")]
    if unknown:
        raise ValueError(f"{where}: unknown policyTypes {unknown}; use Ingress and/or Egress")
    rules = {}
    for direction, peers_key in (("ingress", "from"), ("egress", "to")):
        if direction.capitalize() not in types:
            rules[direction] = None
            continue
        rules[direction] = tuple(
            _rule(rule or {}, peers_key, f"{where} {direction}[{index}]")
            for index, rule in enumerate(spec.get(direction) or [])
        )
    return NetworkPolicy(
        namespace,
        name,
        uid,
        selector(spec.get("podSelector") or {}, f"{where} podSelector"),
        rules["ingress"],
        rules["egress"],
    )


def _rule(raw: dict[str, Any], peers_key: str, where: str) -> Rule:
    peers = []
    for index, peer in enumerate(raw.get(peers_key) or []):
        at = f"{where}.{peers_key}[{index}]"
        block = peer.get("ipBlock")
        if block is not None:
            try:
                cidr = ipaddress.ip_network(block["cidr"], strict=False)
                excepts = tuple(ipaddress.ip_network(e, strict=False) for e in block.get("except") or [])
            except (KeyError, ValueError, TypeError) as exc:
                raise ValueError(f"{at}.ipBlock: {exc}") from None
            peers.append(Peer(cidr=cidr, excepts=excepts))
            continue
        pods = peer.get("podSelector")
        namespaces = peer.get("namespaceSelector")
        if pods is None and namespaces is None:
            raise ValueError(f"{at}: needs podSelector, namespaceSelector or ipBlock")
        peers.append(
            Peer(
                None if pods is None else selector(pods, f"{at}.podSelector"),
                None if namespaces is None else selector(namespaces, f"{at}.namespaceSelector"),
            )
        )
    ports = []
    for index, port in enumerate(raw.get("ports") or []):
        protocol = port.get("protocol", "TCP")
        if protocol not in ("TCP", "UDP", "SCTP"):
            raise ValueError(f"{where}.ports[{index}]: protocol {protocol!r}; use TCP, UDP or SCTP")
        number = port.get("port")
        end = port.get("endPort")
        if end is not None and not isinstance(number, int):
            raise ValueError(f"{where}.ports[{index}]: endPort needs a numeric port")
        ports.append(PolicyPort(protocol, number, end))
    return Rule(tuple(peers), tuple(ports))


def _labels(raw: Any, where: str) -> dict[str, str]:
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise ValueError(f"{where}: labels must be a mapping")
    return {str(k): str(v) for k, v in raw.items()}


def _ip(text: str, where: str) -> None:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        raise ValueError(f"{where}: {text!r} is not an IP address") from None


def _time(text: Any) -> float | None:
    if not text:
        return None
    if isinstance(text, datetime.datetime):
        return text.timestamp()
    try:
        return datetime.datetime.fromisoformat(str(text).replace("Z", "+00:00")).timestamp()
    except ValueError:
        raise ValueError(f"{text!r} is not an RFC 3339 time") from None


def _last_termination(status: dict[str, Any]) -> float | None:
    times = [
        _time(((c.get("state") or {}).get("terminated") or {}).get("finishedAt"))
        for c in status.get("containerStatuses") or []
    ]
    known = [t for t in times if t]
    return max(known) if known else None
