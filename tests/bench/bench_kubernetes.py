"""Benchmark: the kubernetes enricher over a large inventory.

20,000 Pods, 5,000 Services and 1,000 NetworkPolicies in 200 namespaces: the resident memory of the
inventory (growth of the whole process), and the enrichment rate in records per CPU-second of this
process (getrusage), each the median of several rounds on new copies of the records:

- Pods and Services (NetworkPolicy attribution off), random Pod pairs;
- NetworkPolicy attribution on a realistic mix: 2,000 active Pod pairs with many flows each (varying
  source ports), plus 5% of records from Pod pairs never seen before;
- NetworkPolicy attribution, cold worst case: every record a random Pod pair, the verdict cache
  emptied before each round (printed, no target).

    .venv/bin/python tests/bench/bench_kubernetes.py
"""

from __future__ import annotations

import gc
import os
import random
import sys
from collections.abc import Callable

from measure import Row, Spread, own_cpu_seconds, report, rss_bytes  # tests/bench/measure.py

from flowscope.plugins.enrichers.kubernetes.enricher import KubernetesEnricher
from flowscope.plugins.enrichers.kubernetes.inventory import Inventory
from flowscope.testing import make_context

PODS, SERVICES, POLICIES, NAMESPACES = 20_000, 5_000, 1_000, 200
RECORDS, COLD_RECORDS, ROUNDS, BATCH = 200_000, 50_000, 5, 1000
ACTIVE_PAIRS, NEW_SHARE = 2_000, 0.05


def pod_ip(i: int) -> str:
    return f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def fill(inventory: Inventory) -> None:
    rng = random.Random(3)
    for n in range(NAMESPACES):
        inventory.apply("Namespace", "ADDED", {"metadata": {"name": f"ns-{n}", "labels": {"team": f"t{n % 10}"}}})
    for i in range(PODS):
        app = f"app-{i % 500}"
        inventory.apply(
            "Pod",
            "ADDED",
            {
                "metadata": {
                    "name": f"{app}-{i:06d}",
                    "namespace": f"ns-{i % NAMESPACES}",
                    "uid": f"uid-{i}",
                    "creationTimestamp": "2026-01-01T00:00:00Z",
                    "labels": {"app": app, "tier": rng.choice(["web", "backend", "db"]), "version": "v1"},
                },
                "spec": {
                    "nodeName": f"node-{i % 50}",
                    "containers": [{"ports": [{"name": "http", "containerPort": 8080}]}],
                },
                "status": {"phase": "Running", "podIP": pod_ip(i)},
            },
        )
    for s in range(SERVICES):
        inventory.apply(
            "Service",
            "ADDED",
            {
                "metadata": {"name": f"svc-{s}", "namespace": f"ns-{s % NAMESPACES}"},
                "spec": {"clusterIPs": [f"10.96.{s >> 8}.{s & 255}"], "ports": [{"name": "http", "port": 80}]},
            },
        )
    for p in range(POLICIES):
        inventory.apply(
            "NetworkPolicy",
            "ADDED",
            {
                "metadata": {"name": f"np-{p}", "namespace": f"ns-{p % NAMESPACES}"},
                "spec": {
                    "podSelector": {"matchLabels": {"app": f"app-{p % 500}"}},
                    "ingress": [
                        {
                            "from": [
                                {
                                    "namespaceSelector": {"matchLabels": {"team": f"t{p % 10}"}},
                                    "podSelector": {"matchLabels": {"tier": "web"}},
                                }
                            ],
                            "ports": [{"protocol": "TCP", "port": 8080}],
                        }
                    ],
                },
            },
        )


def record(a: int, b: int, s: int, source_port: int) -> dict:
    return {
        "sourceIPv4Address": pod_ip(a),
        "destinationIPv4Address": pod_ip(b),
        "destinationServiceIPv4": f"10.96.{s >> 8}.{s & 255}",
        "destinationServicePort": 80,
        "sourceTransportPort": source_port,
        "destinationTransportPort": 8080,
        "protocolIdentifier": 6,
        "flowStartSeconds": 1767225700,
    }


def random_pairs(count: int, seed: int) -> list[dict]:
    rng = random.Random(seed)
    return [
        record(rng.randrange(PODS), rng.randrange(PODS), rng.randrange(SERVICES), rng.randrange(32768, 61000))
        for _ in range(count)
    ]


ACTIVE = [
    (a, b, a % SERVICES) for a, b in (divmod(n, PODS) for n in random.Random(7).sample(range(PODS**2), ACTIVE_PAIRS))
]


def realistic_mix(seed: int) -> list[dict]:
    """Flows of the active pairs with varying source ports, and a share of pairs not seen before."""
    rng = random.Random(seed)
    out = []
    for _ in range(RECORDS):
        if rng.random() < NEW_SHARE:
            out.append(record(rng.randrange(PODS), rng.randrange(PODS), rng.randrange(SERVICES), 40000))
        else:
            a, b, s = rng.choice(ACTIVE)
            out.append(record(a, b, s, rng.randrange(32768, 61000)))
    return out


def rates(enricher: KubernetesEnricher, make: Callable[[int], list[dict]], before: Callable[[], None] = lambda: None):
    """Records per CPU-second of each round, each on records made (outside the measure) for it."""
    out = []
    for round_ in range(ROUNDS):
        batch = make(round_)
        before()
        gc.collect()
        started = own_cpu_seconds()
        for start in range(0, len(batch), BATCH):
            enricher.enrich(batch[start : start + BATCH])
        out.append(len(batch) / (own_cpu_seconds() - started))
    return out


def main() -> int:
    gc.collect()
    before = rss_bytes()
    context = make_context("k8s", kind="enricher")
    enricher = KubernetesEnricher(KubernetesEnricher.Options(inventory=os.devnull).model_dump(), context)
    fill(enricher.inventory)
    gc.collect()
    used = (rss_bytes() - before) / 2**20
    inventory = f"{PODS:,} Pods, {SERVICES:,} Services, {POLICIES:,} NetworkPolicies"
    report(
        Row(
            stage=f"Kubernetes inventory memory ({inventory}), process RSS growth",
            unit="MB",
            ours=Spread.of([used]),
            target="< 150 MB",
            met=used < 150,
        )
    )

    enricher.with_policies = False
    spread = Spread.of(rates(enricher, lambda r: random_pairs(RECORDS, 100 + r)))
    report(
        Row(
            stage="Kubernetes enrichment, Pods and Services",
            unit="records/CPU-s",
            ours=spread,
            target="≥ 300,000",
            met=spread.median >= 300_000,
        )
    )

    enricher.with_policies = True
    enricher.enrich(realistic_mix(-1)[:50_000])  # the active pairs seen once
    spread = Spread.of(rates(enricher, realistic_mix))
    report(
        Row(
            stage="NetworkPolicy attribution, realistic mix",
            unit="records/CPU-s",
            ours=spread,
            target="≥ 150,000",
            met=spread.median >= 150_000,
        )
    )

    cold = Spread.of(rates(enricher, lambda r: random_pairs(COLD_RECORDS, 200 + r), enricher.evaluator.clear))
    print(f"NetworkPolicy attribution, cold worst case (random pairs, empty cache): {cold.text()} records/CPU-s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
