"""Kubernetes NetworkPolicy semantics, for attributing a flow to the policy that allowed or isolated it.

A Pod is isolated for ingress (egress) when a policy of its namespace selects it and lists
``Ingress`` (``Egress``) in its policy types. A flow is then allowed only when a rule of one of those
policies matches the peer and the port. Rules are named ``ingress-<i>`` / ``egress-<i>`` after their
position in the policy (Kubernetes rules have no names).
"""

from __future__ import annotations

import ipaddress
from collections import OrderedDict
from dataclasses import dataclass, field

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
    name: str = field(init=False, repr=False, compare=False)  # of the policy, or empty
    namespace: str = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "name", self.policy.name if self.policy else "")
        object.__setattr__(self, "namespace", self.policy.namespace if self.policy else "")


DENIED = Verdict(None, "", DROP)


class PolicyEvaluator:
    """Verdicts of flows between endpoints, in a least-recently-used cache.

    A verdict depends on the two Pods (their namespaces, labels and container ports: a changed Pod is
    a new object, and Pods are keys by identity), the two addresses (ipBlocks), the protocol and the
    destination port, and on the NetworkPolicies and Namespaces: a change of those empties the cache.
    """

    def __init__(self, inventory: Inventory, cache_size: int = 100_000):
        self.inventory = inventory
        self.cache_size = max(1, cache_size)
        self._cache: OrderedDict[tuple, tuple[Verdict | None, Verdict | None]] = OrderedDict()
        # per Pod: the policies that isolate it for ingress and for egress
        self._governing: OrderedDict[Pod, tuple[list[NetworkPolicy], list[NetworkPolicy]]] = OrderedDict()
        self._version = -1
        self.misses = 0  # verdicts evaluated rather than found in the cache

    def clear(self) -> None:
        """Forget every verdict."""
        self._cache.clear()
        self._governing.clear()

    def verdicts(
        self, src_ip: str, src: Pod | None, dst_ip: str, dst: Pod | None, protocol: int, port: int
    ) -> tuple[Verdict | None, Verdict | None]:
        """(ingress verdict at the destination Pod, egress verdict at the source Pod); None: not isolated."""
        version = self.inventory.policy_version  # read first: a change during the evaluation empties the cache
        if version != self._version:
            self.clear()
            self._version = version
        cache = self._cache
        key = (src_ip, src, dst_ip, dst, protocol, port)
        found = cache.get(key)
        if found is not None:
            cache.move_to_end(key)
            return found
        self.misses += 1
        found = cache[key] = (
            self._direction(dst, "ingress", src_ip, src, dst, protocol, port) if dst else None,
            self._direction(src, "egress", dst_ip, dst, dst, protocol, port) if src else None,
        )
        if len(cache) > self.cache_size:
            cache.popitem(last=False)
        return found

    def _governing_policies(self, pod: Pod, direction: str) -> list[NetworkPolicy]:
        """The policies of the Pod's namespace that select it and govern ``direction``, by name."""
        found = self._governing.get(pod)
        if found is None:
            selecting = self.inventory.policies_selecting(pod)
            found = self._governing[pod] = (
                [p for p in selecting if p.ingress is not None],
                [p for p in selecting if p.egress is not None],
            )
            if len(self._governing) > self.cache_size:
                self._governing.popitem(last=False)
        else:
            self._governing.move_to_end(pod)
        return found[0] if direction == "ingress" else found[1]

    def _direction(
        self, pod: Pod, direction: str, peer_ip: str, peer: Pod | None, target: Pod | None, protocol: int, port: int
    ) -> Verdict | None:
        governing = self._governing_policies(pod, direction)
        if not governing:
            return None
        protocol_name = PROTOCOLS.get(protocol)
        for policy in governing:
            for index, rule in enumerate(getattr(policy, direction)):
                if rule.ports and not _any_port(rule.ports, protocol_name, port, target):
                    continue
                if rule.peers and not self._any_peer(rule, policy, peer_ip, peer):
                    continue
                return Verdict(policy, f"{direction}-{index}", ALLOW)
        return DENIED

    def _any_peer(self, rule: Rule, policy: NetworkPolicy, ip: str, pod: Pod | None) -> bool:
        """Whether a peer of the rule matches the address or the Pod at the other end."""
        for peer in rule.peers:
            if peer.cidr is not None:
                if _in_block(peer, ip):
                    return True
            elif pod is None:
                continue
            elif peer.namespace_selector is None:  # podSelector alone: Pods of the policy's own namespace
                if pod.namespace == policy.namespace and peer.pod_selector.matches(pod.labels):
                    return True
            else:
                labels = self.inventory.namespace_labels(pod.namespace)
                if (
                    labels is not None
                    and peer.namespace_selector.matches(labels)
                    and (peer.pod_selector is None or peer.pod_selector.matches(pod.labels))
                ):
                    return True
        return False


def _in_block(peer: Peer, ip: str) -> bool:
    try:
        address = ipaddress.ip_address(ip)
    except ValueError:
        return False
    return (
        address.version == peer.cidr.version
        and address in peer.cidr
        and not any(address.version == e.version and address in e for e in peer.excepts)
    )


def _any_port(ports: tuple[PolicyPort, ...], protocol: str | None, port: int, target: Pod | None) -> bool:
    """Whether a port of the rule matches; a named port is one of the destination Pod's."""
    for rule_port in ports:
        if protocol != rule_port.protocol:
            continue
        wanted = rule_port.port
        if wanted is None:
            return True
        if isinstance(wanted, str):
            if target is not None and any(
                name == wanted and number == port and proto == protocol for name, number, proto in target.ports
            ):
                return True
        elif wanted == port if rule_port.end_port is None else wanted <= port <= rule_port.end_port:
            return True
    return False
