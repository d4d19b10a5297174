"""NetworkPolicy attribution: a table of flows through a static inventory, with expected verdicts.

Verdict tuples are (policy name, policy namespace, rule name, action): action 1 Allow, 2 Drop (the
Pod is isolated and no rule allows the flow; no policy is named then). None: that side is not
isolated, so nothing is filled.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from flowscope.plugins.enrichers.kubernetes.enricher import KubernetesEnricher
from flowscope.testing import make_context
from tests.helpers import antrea_json, run_cli

INVENTORY = Path(__file__).parent / "data" / "inventory.yaml"
TCP, UDP = 6, 17
FRONTEND1, FRONTEND2, API, POSTGRES, REDIS, MYSQL, TESTER, TOOL = (
    "10.0.1.10",
    "10.0.1.11",
    "10.0.1.20",
    "10.0.2.10",
    "10.0.2.20",
    "10.0.2.30",
    "10.0.3.10",
    "10.0.4.10",
)
DROP = ("", "", "", 2)

CASES = [
    # (source, destination, port, protocol, ingress verdict, egress verdict)
    (
        API,
        POSTGRES,
        5432,
        TCP,
        ("allow-api-to-postgres", "db", "ingress-0", 1),
        None,
    ),  # pod+namespace selector, named port
    (FRONTEND1, POSTGRES, 5432, TCP, DROP, DROP),  # wrong Pod: isolated both ways
    (TESTER, POSTGRES, 5432, TCP, DROP, DROP),  # namespace matches (team=web) but not the Pod; dev denies egress
    (API, POSTGRES, 5433, TCP, DROP, None),  # named port resolves to 5432 only
    (API, POSTGRES, 5432, UDP, DROP, None),  # protocol
    (API, REDIS, 6379, TCP, ("redis-from-web-ns", "db", "ingress-0", 1), None),  # namespaceSelector alone
    (TOOL, REDIS, 6379, TCP, DROP, None),  # a namespace without labels
    (FRONTEND2, REDIS, 7000, TCP, ("canary-exists", "db", "ingress-0", 1), DROP),  # Exists, any namespace, any port
    (FRONTEND1, API, 9000, TCP, ("api-ingress", "web", "ingress-0", 1), ("frontend-egress", "web", "egress-0", 1)),
    (FRONTEND1, API, 9005, TCP, ("api-ingress", "web", "ingress-0", 1), DROP),  # endPort; egress has 9000 only
    (FRONTEND1, API, 9006, TCP, DROP, DROP),  # past endPort
    ("192.168.1.5", API, 9000, TCP, ("api-ingress", "web", "ingress-1", 1), None),  # ipBlock, every port
    ("192.168.5.5", API, 9000, TCP, DROP, None),  # ipBlock except
    ("192.168.5.5", API, 9100, TCP, ("metrics-any", "web", "ingress-0", 1), None),  # no from: every peer; named port
    ("fd00:99::5", "fd00::20", 9000, TCP, ("api-ingress", "web", "ingress-1", 1), None),  # IPv6 ipBlock
    ("fd00:98::5", "fd00::20", 9000, TCP, DROP, None),  # IPv6 outside the block
    (TESTER, TOOL, 80, TCP, None, DROP),  # empty podSelector: every Pod of dev isolated
    (TOOL, TESTER, 80, TCP, DROP, None),
    (FRONTEND1, "8.8.8.8", 53, UDP, None, ("frontend-egress", "web", "egress-1", 1)),  # egress ipBlock
    (FRONTEND1, "8.8.4.4", 53, UDP, None, DROP),
    (FRONTEND1, "8.8.8.8", 53, TCP, None, DROP),  # protocol
    (TOOL, FRONTEND1, 8080, TCP, None, None),  # an Egress-only policy does not isolate ingress
    (TOOL, "1.1.1.1", 443, TCP, None, None),  # no policy anywhere
    (API, MYSQL, 3306, TCP, ("mysql-not-dev", "db", "ingress-0", 1), None),  # NotIn on namespace labels
    (TESTER, MYSQL, 3306, TCP, DROP, DROP),  # env=dev is excluded
    (TOOL, MYSQL, 3306, TCP, ("mysql-not-dev", "db", "ingress-0", 1), None),  # NotIn matches a missing label
    (
        FRONTEND1,
        REDIS,
        6379,
        TCP,
        ("redis-from-web-ns", "db", "ingress-0", 1),
        ("frontend-egress", "web", "egress-2", 1),
    ),
    (FRONTEND2, REDIS, 6379, TCP, ("canary-exists", "db", "ingress-0", 1), ("frontend-egress", "web", "egress-2", 1)),
    (FRONTEND2, API, 9000, TCP, ("api-ingress", "web", "ingress-0", 1), ("canary-egress", "web", "egress-0", 1)),
    (FRONTEND2, API, 9001, TCP, ("api-ingress", "web", "ingress-0", 1), DROP),  # named egress port grpc = 9000
    (FRONTEND1, TOOL, 80, TCP, None, DROP),  # a policy of web governs egress to another namespace
    ("192.168.100.1", API, 9000, TCP, ("api-ingress", "web", "ingress-1", 1), None),  # host-network Pod: by IP
    ("198.51.100.1", "198.51.100.2", 80, TCP, None, None),  # no Pod at all
]


@pytest.fixture(scope="module")
def enricher():
    return KubernetesEnricher(
        KubernetesEnricher.Options(inventory=str(INVENTORY)).model_dump(), make_context("k8s", kind="enricher")
    )


def flow(src: str, dst: str, port: int, protocol: int) -> dict:
    v = "IPv6" if ":" in src else "IPv4"
    return {
        f"source{v}Address": src,
        f"destination{v}Address": dst,
        "sourceTransportPort": 40000,
        "destinationTransportPort": port,
        "protocolIdentifier": protocol,
        "flowStartSeconds": 1767225600,
    }


def verdict(record: dict, direction: str):
    if f"{direction}NetworkPolicyRuleAction" not in record:
        return None
    assert record[f"{direction}NetworkPolicyType"] == 1
    return tuple(record[f"{direction}NetworkPolicy{f}"] for f in ("Name", "Namespace", "RuleName", "RuleAction"))


@pytest.mark.parametrize(("src", "dst", "port", "protocol", "ingress", "egress"), CASES)
def test_policy_case(enricher, src, dst, port, protocol, ingress, egress):
    [record] = enricher.enrich([flow(src, dst, port, protocol)])
    assert (verdict(record, "ingress"), verdict(record, "egress")) == (ingress, egress)


def test_at_least_thirty_cases():
    assert len(CASES) >= 30


def test_pods_services_and_labels(enricher):
    labelled = KubernetesEnricher(
        KubernetesEnricher.Options(inventory=str(INVENTORY), podLabels=True, networkPolicies=False).model_dump(),
        make_context("k8s2", kind="enricher"),
    )
    [record] = labelled.enrich(
        [
            {
                **flow(FRONTEND2, "10.96.0.50", 5432, TCP),
                "destinationIPv4Address": POSTGRES,
                "destinationServiceIPv4": "10.96.0.50",
                "destinationServicePort": 5432,
            }
        ]
    )
    assert (record["sourcePodName"], record["sourcePodNamespace"], record["sourceNodeName"]) == (
        "frontend-2",
        "web",
        "node-1",
    )
    assert (record["destinationPodName"], record["destinationNodeName"]) == ("postgres-0", "node-2")
    assert record["destinationServicePortName"] == "db/postgres:sql"
    assert record["sourcePodLabels"] == '{"app":"frontend","canary":"true","tier":"web"}'
    assert record["destinationPodLabels"] == '{"app":"postgres"}'
    assert "ingressNetworkPolicyName" not in record
    # an unnamed Service port, a LoadBalancer ingress IP, a NodePort on a node address, an IPv6 ClusterIP
    cases = [
        ({"destinationServiceIPv4": "10.96.0.50", "destinationServicePort": 9187}, "db/postgres", 9187),
        ({"destinationServiceIPv4": "203.0.113.7", "destinationServicePort": 80}, "web/frontend:http", 80),
        ({"destinationServiceIPv4": "192.168.100.1", "destinationServicePort": 30080}, "web/frontend:http", 80),
    ]
    for extra, name, port in cases:
        [record] = enricher.enrich([{**flow(TOOL, FRONTEND1, 8080, TCP), **extra}])
        assert (record["destinationServicePortName"], record["destinationServicePort"]) == (name, port)
    [record] = enricher.enrich([flow("fd00::5", "fd00:96::80", 80, TCP)])  # seen before DNAT
    assert record["destinationServicePortName"] == "web/frontend:http"


def test_facts_already_in_the_record_are_kept(enricher):
    record = {
        **flow(API, POSTGRES, 5432, TCP),
        "sourcePodName": "from-exporter",
        "sourcePodNamespace": "x",
        "ingressNetworkPolicyName": "antrea-np",
        "ingressNetworkPolicyRuleAction": 1,
    }
    [out] = enricher.enrich([record])
    assert (out["sourcePodName"], out["sourcePodNamespace"]) == ("from-exporter", "x")
    assert (out["ingressNetworkPolicyName"], out["ingressNetworkPolicyRuleAction"]) == ("antrea-np", 1)
    assert out["destinationPodName"] == "postgres-0"


def test_exporter_mode_fills_only_local_pods():
    local = KubernetesEnricher(
        KubernetesEnricher.Options(inventory=str(INVENTORY), nodeName="node-1").model_dump(),
        make_context("k8s3", kind="enricher"),
    )
    [record] = local.enrich([flow(FRONTEND1, API, 9000, TCP)])
    assert record["sourcePodName"] == "frontend-1"
    assert "destinationPodName" not in record  # api-1 runs on node-2


NODE_OF = {FRONTEND1: "node-1", FRONTEND2: "node-1", TESTER: "node-1", TOOL: "node-1"}
NODE_OF.update({API: "node-2", POSTGRES: "node-2", REDIS: "node-2", MYSQL: "node-2", "fd00::20": "node-2"})


@pytest.fixture(scope="module")
def node_enrichers():
    return {
        node: KubernetesEnricher(
            KubernetesEnricher.Options(inventory=str(INVENTORY), nodeName=node).model_dump(),
            make_context(f"k8s-{node}", kind="enricher"),
        )
        for node in ("node-1", "node-2")
    }


@pytest.mark.parametrize(("src", "dst", "port", "protocol", "ingress", "egress"), CASES)
def test_each_node_gives_the_verdict_of_its_own_pods(node_enrichers, src, dst, port, protocol, ingress, egress):
    """As Antrea's agents: the destination's Node reports ingress, the source's Node egress, and a
    rule's peers match Pods of any Node (a Pod of another Node is still known by its address)."""
    for node, enricher in node_enrichers.items():
        [record] = enricher.enrich([flow(src, dst, port, protocol)])
        expected_ingress = ingress if NODE_OF.get(dst) == node else None
        expected_egress = egress if NODE_OF.get(src) == node else None
        assert (verdict(record, "ingress"), verdict(record, "egress")) == (expected_ingress, expected_egress), node


def test_through_flowscope_run(tmp_path):
    """As a user runs it: jsonl source, kubernetes enricher, json sink."""
    flows = tmp_path / "flows.jsonl"
    flows.write_text("\n".join(json.dumps(flow(*case[:4])) for case in CASES[:5]) + "\n")
    out = tmp_path / "out.jsonl"
    config = tmp_path / "p.yaml"
    config.write_text(
        f"sources: [{{type: jsonl, path: {flows}}}]\nenrichers: [{{type: kubernetes, inventory: {INVENTORY}}}]\n"
        f"sinks: [{{type: json, path: {out}}}]\n"
    )
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    records = antrea_json(out)
    assert [(verdict(r, "ingress"), verdict(r, "egress")) for r in records] == [(c[4], c[5]) for c in CASES[:5]]


def test_exporter_bundle_with_an_inventory_exports_only_connections_of_its_pods(tmp_path):
    from flowscope.core.pipelineconfig import validate_config
    from flowscope.core.plugins import load_plugins

    config = validate_config(
        {"bundle": "exporter", "nodeName": "node-2", "inventory": str(INVENTORY), "nodePodCIDRs": ["10.0.0.0/16"]},
        load_plugins(),
    )
    assert [(e.type, e.options.get("nodeName")) for e in config.enrichers] == [
        ("kubernetes", "node-2"),
        ("flowtype", "node-2"),
    ]
    enricher = KubernetesEnricher(config.enrichers[0].options, make_context("k8s-exporter", kind="enricher"))
    kept = enricher.enrich([flow(FRONTEND1, API, 9000, TCP), flow(FRONTEND1, TOOL, 80, TCP)])
    assert [(r.get("sourcePodName"), r.get("destinationPodName")) for r in kept] == [(None, "api-1")]
