"""Antrea-shaped flow records shared by the benchmarks."""

from __future__ import annotations

import random

from flowscope.core.ipfix.antrea import EXPORTER_IPV4


def antrea_records(count: int) -> list[dict]:
    rng = random.Random(7)
    records = []
    for i in range(count):
        octets = rng.randrange(100, 10**8)
        values = {
            "flowStartSeconds": 1764165600 + i // 50,
            "flowEndSeconds": 1764165660 + i // 50,
            "flowEndReason": rng.choice((1, 2, 3)),
            "sourceTransportPort": 32768 + i % 28000,
            "destinationTransportPort": rng.choice((80, 443, 5432, 6379, 8080)),
            "protocolIdentifier": 6,
            "packetTotalCount": octets // 1200,
            "octetTotalCount": octets,
            "packetDeltaCount": octets // 2400,
            "octetDeltaCount": octets // 2,
            "sourceIPv4Address": f"10.244.{i % 8}.{i % 250 + 2}",
            "destinationIPv4Address": f"10.244.{(i + 3) % 8}.{(i * 7) % 250 + 2}",
            "reversePacketTotalCount": octets // 2400,
            "reverseOctetTotalCount": octets // 3,
            "reversePacketDeltaCount": octets // 4800,
            "reverseOctetDeltaCount": octets // 6,
            "sourcePodName": f"frontend-7d9c5b8f6-{i % 997:05x}",
            "sourcePodNamespace": "shop",
            "sourceNodeName": f"k8s-worker-{i % 8}",
            "destinationPodName": f"cart-5f6b4c9d8-{i % 389:05x}",
            "destinationPodNamespace": "shop",
            "destinationNodeName": f"k8s-worker-{(i + 3) % 8}",
            "destinationServicePort": 8080,
            "destinationServicePortName": "shop/cart:http",
            "ingressNetworkPolicyName": "allow-frontend-to-cart",
            "ingressNetworkPolicyNamespace": "shop",
            "ingressNetworkPolicyType": 1,
            "ingressNetworkPolicyRuleName": "ingress-0",
            "ingressNetworkPolicyRuleAction": 1,
            "egressNetworkPolicyName": "",
            "egressNetworkPolicyNamespace": "",
            "egressNetworkPolicyType": 0,
            "egressNetworkPolicyRuleName": "",
            "egressNetworkPolicyRuleAction": 0,
            "tcpState": "ESTABLISHED",
            "flowType": 2,
            "egressName": "",
            "egressIP": "",
            "egressNodeName": "",
            "proxySnatPort": 0,
            "destinationClusterIPv4": "10.96.12.34",
            "proxySnatIPv4": "0.0.0.0",
            "destinationServiceIPv4": "10.96.12.34",
        }
        records.append({name: values[name] for name in EXPORTER_IPV4})
    return records
