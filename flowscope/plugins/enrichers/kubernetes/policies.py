"""Kubernetes NetworkPolicy semantics, for attributing a flow to the policy that allowed or isolated it.

A Pod is isolated for ingress (egress) when a policy of its namespace selects it and lists
``Ingress`` (``Egress``) in its policy types. A flow is then allowed only when a rule of one of those
policies matches the peer and the port. Rules are named ``ingress-<i>`` / ``egress-<i>`` after their
position in the policy (Kubernetes rules have no names).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from flowscope.plugins.enrichers.kubernetes.inventory import Inventory
from flowscope.plugins.enrichers.kubernetes.objects import NetworkPolicy, Peer, Pod, PolicyPort, Rule

ALLOW, DROP = 1, 2
K8S_NETWORK_POLICY = 1
PROTOCOLS = {6: "TCP", 17: "UDP", 132: "SCTP"}


@dataclass(frozen=True, slots=True)
class Verdict:
    """What one direction of a flow met: the policy and rule (empty when denied), and the action."""

    policy: NetworkPolicy | None
    rule: str
    action: int


class PolicyEvaluator:
    """Verdicts of flows between endpoints, cached until the inventory changes."""

    def __init__(self, inventory: Inventory, cache_size: int = 100_000):
        self.inventory = inventory
        self.cache_size = cache_size
        self._cache: dict[tuple, tuple[Verdict | None, Verdict | None]] = {}
        self._version = -1

    def verdicts(
        self, src_ip: str, src: Pod | None, dst_ip: str, dst: Pod | None, protocol: int, port: int
    ) -> tuple[Verdict | None, Verdict | None]:
        """(ingress verdict at the destination Pod, egress verdict at the source Pod); None: not isolated."""
        if self._version != self.inventory.version or len(self._cache) > self.cache_size:
            self._cache.clear()
            self._version = self.inventory.version
        key = (src.key if src else src_ip, dst.key if dst else dst_ip, protocol, port)
        found = self._cache.get(key)
        if found is None:
            found = self._cache[key] = (
                self._direction(dst, "ingress", src_ip, src, dst, protocol, port) if dst else None,
                self._direction(src, "egress", dst_ip, dst, dst, protocol, port) if src else None,
            )
        return found

    def _direction(
        self, pod: Pod, direction: str, peer_ip: str, peer: Pod | None, target: Pod | None, protocol: int, port: int
    ) -> Verdict | None:
        governing = [
            policy
            for policy in self.inventory.policies_in(pod.namespace)
            if getattr(policy, direction) is not None and policy.pod_selector.matches(pod.labels)
        ]
        if not governing:
            return None
        for policy in sorted(governing, key=lambda p: p.name):
            for index, rule in enumerate(getattr(policy, direction)):
                if self._rule_matches(rule, policy, peer_ip, peer, target, protocol, port):
                    return Verdict(policy, f"{direction}-{index}", ALLOW)
        return Verdict(None, "", DROP)

    def _rule_matches(
        self,
        rule: Rule,
        policy: NetworkPolicy,
        peer_ip: str,
        peer: Pod | None,
        target: Pod | None,
        protocol: int,
        port: int,
    ) -> bool:
        if rule.ports and not any(_port_matches(p, protocol, port, target) for p in rule.ports):
            return False
        return not rule.peers or any(self._peer_matches(p, policy, peer_ip, peer) for p in rule.peers)

    def _peer_matches(self, peer: Peer, policy: NetworkPolicy, ip: str, pod: Pod | None) -> bool:
        if peer.cidr is not None:
            try:
                address = ipaddress.ip_address(ip)
            except ValueError:
                return False
            return (
                address.version == peer.cidr.version
                and address in peer.cidr
                and not any(address.version == e.version and address in e for e in peer.excepts)
            )
        if pod is None:
            return False
        if peer.namespace_selector is None:  # podSelector alone: Pods of the policy's own namespace
            return pod.namespace == policy.namespace and peer.pod_selector.matches(pod.labels)
        labels = self.inventory.namespace_labels(pod.namespace)
        if labels is None or not peer.namespace_selector.matches(labels):
            return False
        return peer.pod_selector is None or peer.pod_selector.matches(pod.labels)


def _port_matches(rule_port: PolicyPort, protocol: int, port: int, target: Pod | None) -> bool:
    if PROTOCOLS.get(protocol) != rule_port.protocol:
        return False
    wanted = rule_port.port
    if wanted is None:
        return True
    if isinstance(wanted, str):  # a named port of the destination Pod
        return target is not None and any(
            name == wanted and number == port and proto == rule_port.protocol for name, number, proto in target.ports
        )
    if rule_port.end_port is not None:
        return wanted <= port <= rule_port.end_port
    return port == wanted
