"""Benchmark: the kubernetes enricher over a large inventory.

20,000 Pods, 5,000 Services and 1,000 NetworkPolicies in 200 namespaces: the resident memory of the
inventory, and the enrichment rate in records per CPU-second with NetworkPolicy attribution off
(Pod and Service lookups only) and on.

    .venv/bin/python tests/bench/bench_kubernetes.py
"""

from __future__ import annotations

import gc
import os
import random
import sys
import time
from pathlib import Path

from flowscope.plugins.enrichers.kubernetes.enricher import KubernetesEnricher
from flowscope.plugins.enrichers.kubernetes.inventory import Inventory
from flowscope.testing import make_context

PODS, SERVICES, POLICIES, NAMESPACES, RECORDS = 20_000, 5_000, 1_000, 200, 200_000


def rss_mb() -> float:
    pages = int(Path("/proc/self/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE") / 2**20


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
                "status": {"phase": "Running", "podIP": f"10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"},
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


def records() -> list[dict]:
    rng = random.Random(5)
    out = []
    for _ in range(RECORDS):
        a, b, s = rng.randrange(PODS), rng.randrange(PODS), rng.randrange(SERVICES)
        out.append(
            {
                "sourceIPv4Address": f"10.{(a >> 16) & 255}.{(a >> 8) & 255}.{a & 255}",
                "destinationIPv4Address": f"10.{(b >> 16) & 255}.{(b >> 8) & 255}.{b & 255}",
                "destinationServiceIPv4": f"10.96.{s >> 8}.{s & 255}",
                "destinationServicePort": 80,
                "destinationTransportPort": 8080,
                "protocolIdentifier": 6,
                "flowStartSeconds": 1767225700,
            }
        )
    return out


def rate(enricher: KubernetesEnricher, batch: list[dict]) -> float:
    copies = [dict(r) for r in batch]
    started = time.process_time()
    for start in range(0, len(copies), 1000):
        enricher.enrich(copies[start : start + 1000])
    return len(copies) / (time.process_time() - started)


def main() -> int:
    gc.collect()
    before = rss_mb()
    context = make_context("k8s", kind="enricher")
    enricher = KubernetesEnricher(KubernetesEnricher.Options(inventory=os.devnull).model_dump(), context)
    fill(enricher.inventory)
    gc.collect()
    used = rss_mb() - before
    print(f"inventory: {PODS:,} Pods, {SERVICES:,} Services, {POLICIES:,} NetworkPolicies")
    print(f"resident memory of the inventory: {used:.0f} MB (target < 150 MB)")
    batch = records()
    enricher.with_policies = False
    print(f"Pods and Services:              {rate(enricher, batch):12,.0f} records/CPU-s (target 300,000)")
    enricher.with_policies = True
    print(f"Pods, Services and policies:    {rate(enricher, batch):12,.0f} records/CPU-s (cold cache)")
    print(f"Pods, Services and policies:    {rate(enricher, batch):12,.0f} records/CPU-s (warm cache)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
