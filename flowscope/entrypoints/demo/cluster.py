"""The demo's simulated cluster, as data: two Nodes, their Pods, a Service, an external host, the
NetworkPolicies, and the traffic between them; and the static Kubernetes inventory describing it.

Every name made on the host starts with :data:`PREFIX`, so that what a killed demo left behind can
be found and removed.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import yaml

PREFIX = "fsd"
"""Network namespaces and links of the demo are named ``fsd-...``."""
CLUSTER_CIDR = "10.210.0.0/16"
SERVICE_CIDR = "10.96.0.0/16"
NODE_LINK = "192.168.210.0/24"


@dataclass(frozen=True)
class Node:
    name: str
    pod_cidr: str
    gateway: str  # the Node's address on its Pods' bridge
    link_ip: str  # the Node's address on the link between the Nodes

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"


@dataclass(frozen=True)
class Pod:
    namespace: str
    name: str
    node: str
    ip: str
    labels: dict[str, str]
    tcp_ports: tuple[int, ...] = ()
    udp_ports: tuple[int, ...] = ()
    allow_only_from: tuple[str, ...] | None = None  # isolated: its ports answer only these addresses

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.namespace}-{self.name}"[:48]


@dataclass(frozen=True)
class Service:
    namespace: str
    name: str
    cluster_ip: str
    port: int
    port_name: str
    target: str  # the Pod behind it (one backend)
    target_port: int


@dataclass(frozen=True)
class Talk:
    """A client Pod talking to a destination every ``every`` seconds: TCP requests or UDP datagrams."""

    client: str  # namespace/name
    host: str  # an address: a Pod's, the Service's, or the external host's
    port: int
    protocol: str  # tcp or udp
    size: int  # bytes sent each time
    every: float
    what: str  # what the demo shows with it


@dataclass(frozen=True)
class External:
    name: str
    ip: str
    gateway: str  # the address of the Node it hangs off, on their link
    node: str
    tcp_ports: tuple[int, ...] = (443,)
    udp_ports: tuple[int, ...] = (53,)

    @property
    def netns(self) -> str:
        return f"{PREFIX}-{self.name}"


@dataclass(frozen=True)
class Cluster:
    nodes: tuple[Node, ...]
    pods: tuple[Pod, ...]
    service: Service
    external: External
    talks: tuple[Talk, ...]
    policies: tuple[dict[str, Any], ...] = field(default=())

    def pod(self, key: str) -> Pod:
        namespace, name = key.split("/")
        return next(p for p in self.pods if (p.namespace, p.name) == (namespace, name))

    def node(self, name: str) -> Node:
        return next(n for n in self.nodes if n.name == name)


def _policy(namespace: str, name: str, selector: dict, ingress: list[dict]) -> dict[str, Any]:
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"podSelector": {"matchLabels": selector}, "policyTypes": ["Ingress"], "ingress": ingress},
    }


CLUSTER = Cluster(
    nodes=(
        Node("node-a", "10.210.1.0/24", "10.210.1.1", "192.168.210.1"),
        Node("node-b", "10.210.2.0/24", "10.210.2.1", "192.168.210.2"),
    ),
    pods=(
        Pod("shop", "web-0", "node-a", "10.210.1.10", {"app": "web", "tier": "frontend"}, (8080,), (8125,)),
        Pod("ops", "probe-0", "node-a", "10.210.1.20", {"app": "probe"}),
        Pod("shop", "cart-0", "node-b", "10.210.2.10", {"app": "cart", "tier": "backend"}, (8080,)),
        Pod("billing", "ledger-0", "node-b", "10.210.2.20", {"app": "ledger"}, (9000,), (), ("10.210.2.10",)),
    ),
    service=Service("shop", "cart", "10.96.0.10", 80, "http", "shop/cart-0", 8080),
    external=External("external", "203.0.113.10", "203.0.113.1", "node-b"),
    talks=(
        Talk("shop/web-0", "10.96.0.10", 80, "tcp", 20_000, 1.0, "Pod-to-Service, inter-node (through the Service)"),
        Talk("shop/cart-0", "10.210.2.20", 9000, "tcp", 8_000, 1.5, "Pod-to-Pod, intra-node, allowed by policy"),
        Talk("shop/web-0", "10.210.2.20", 9000, "tcp", 1_000, 2.0, "Pod-to-Pod, inter-node, denied by policy"),
        Talk("ops/probe-0", "10.210.1.10", 8125, "udp", 600, 0.5, "Pod-to-Pod, intra-node, UDP"),
        Talk("ops/probe-0", "10.210.2.10", 8080, "tcp", 4_000, 2.0, "Pod-to-Pod, inter-node"),
        Talk("shop/web-0", "203.0.113.10", 443, "tcp", 12_000, 2.0, "Pod-to-External, TCP"),
        Talk("ops/probe-0", "203.0.113.10", 53, "udp", 200, 1.0, "Pod-to-External, UDP"),
    ),
    policies=(
        _policy(
            "billing",
            "isolate-ledger",
            {"app": "ledger"},
            [
                {
                    "from": [
                        {
                            "namespaceSelector": {"matchLabels": {"name": "shop"}},
                            "podSelector": {"matchLabels": {"app": "cart"}},
                        }
                    ],
                    "ports": [{"protocol": "TCP", "port": 9000}],
                }
            ],
        ),
        _policy(
            "shop",
            "allow-cart-from-web",
            {"app": "cart"},
            [
                {
                    "from": [{"podSelector": {}}, {"namespaceSelector": {"matchLabels": {"name": "ops"}}}],
                    "ports": [{"protocol": "TCP", "port": 8080}],
                }
            ],
        ),
    ),
)


def inventory(cluster: Cluster = CLUSTER) -> str:
    """The static Kubernetes inventory (a YAML List) that describes the cluster to the enrichers."""
    items: list[dict[str, Any]] = []
    for namespace in sorted({pod.namespace for pod in cluster.pods}):
        items.append({"kind": "Namespace", "metadata": {"name": namespace, "labels": {"name": namespace}}})
    for node in cluster.nodes:
        items.append(
            {
                "kind": "Node",
                "metadata": {"name": node.name},
                "spec": {"podCIDR": node.pod_cidr},
                "status": {"addresses": [{"type": "InternalIP", "address": node.link_ip}]},
            }
        )
    for pod in cluster.pods:
        items.append(
            {
                "kind": "Pod",
                "metadata": {
                    "name": pod.name,
                    "namespace": pod.namespace,
                    "labels": pod.labels,
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                },
                "spec": {
                    "nodeName": pod.node,
                    "containers": [{"name": "main", "ports": [{"containerPort": p} for p in pod.tcp_ports]}],
                },
                "status": {"phase": "Running", "podIP": pod.ip, "podIPs": [{"ip": pod.ip}]},
            }
        )
    service = cluster.service
    target = cluster.pod(service.target)
    items.append(
        {
            "kind": "Service",
            "metadata": {"name": service.name, "namespace": service.namespace},
            "spec": {
                "clusterIP": service.cluster_ip,
                "clusterIPs": [service.cluster_ip],
                "selector": target.labels,
                "ports": [
                    {
                        "name": service.port_name,
                        "port": service.port,
                        "protocol": "TCP",
                        "targetPort": service.target_port,
                    }
                ],
            },
        }
    )
    items.extend(cluster.policies)
    return yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}, sort_keys=False)


def recorded_flows(cluster: Cluster, now: int, minutes: int = 30, step: int = 10) -> list[dict[str, Any]]:
    """The flows the cluster's traffic makes, as the aggregator would store them, over the last
    ``minutes``: what the demo shows when it cannot build the cluster (no root, no nftables)."""
    by_ip = {pod.ip: pod for pod in cluster.pods}
    service = cluster.service
    records = []
    for start in range(now - minutes * 60, now, step):
        for talk in cluster.talks:
            client = cluster.pod(talk.client)
            through_service = talk.host == service.cluster_ip
            server = cluster.pod(service.target) if through_service else by_ip.get(talk.host)
            denied = (
                server is not None and server.allow_only_from is not None and client.ip not in server.allow_only_from
            )
            sent = 0 if denied else int(talk.size * step / talk.every)
            record: dict[str, Any] = {
                "flowStartSeconds": start,
                "flowEndSeconds": start + step,
                "flowEndSecondsFromSourceNode": start + step,
                "sourceIPv4Address": client.ip,
                "destinationIPv4Address": server.ip if server else talk.host,
                "sourceTransportPort": 40000 + (start // step) % 20000,
                "destinationTransportPort": service.target_port if through_service else talk.port,
                "protocolIdentifier": 6 if talk.protocol == "tcp" else 17,
                "packetDeltaCount": max(1, sent // 1400),
                "octetDeltaCount": sent,
                "reverseOctetDeltaCount": sent // 4,
                "throughput": sent * 8 // step,
                "reverseThroughput": sent * 2 // step,
                "sourcePodNamespace": client.namespace,
                "sourcePodName": client.name,
                "sourceNodeName": client.node,
                "flowType": 3 if server is None else (1 if server.node == client.node else 2),
                "tcpState": "" if talk.protocol == "udp" else ("SYN_SENT" if denied else "TIME_WAIT"),
                "clusterId": "flowscope-demo",
            }
            if server is not None:
                record.update(
                    destinationPodNamespace=server.namespace,
                    destinationPodName=server.name,
                    destinationNodeName=server.node,
                    flowEndSecondsFromDestinationNode=start + step,
                )
            if through_service:
                record.update(
                    destinationClusterIPv4=service.cluster_ip,
                    destinationServicePort=service.port,
                    destinationServicePortName=f"{service.namespace}/{service.name}:{service.port_name}",
                )
            policy = next((p for p in cluster.policies if server is not None and _selects(p, server)), None)
            if policy is not None:
                record.update(
                    ingressNetworkPolicyNamespace="" if denied else policy["metadata"]["namespace"],
                    ingressNetworkPolicyName="" if denied else policy["metadata"]["name"],
                    ingressNetworkPolicyRuleName="" if denied else "ingress-0",
                    ingressNetworkPolicyRuleAction=2 if denied else 1,
                    ingressNetworkPolicyType=1,
                )
            records.append(record)
    return records


def _selects(policy: dict[str, Any], pod: Pod) -> bool:
    """Whether a NetworkPolicy of the demo selects the Pod."""
    selector = policy["spec"]["podSelector"]["matchLabels"]
    return policy["metadata"]["namespace"] == pod.namespace and selector.items() <= pod.labels.items()
