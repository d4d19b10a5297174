"""The NetworkPolicy verdict cache: one verdict per Pod pair and port, least recently used out, and
the next record after a change of a Pod, a Namespace or a NetworkPolicy gets the new verdict.

Changes go through ``Inventory.apply`` and ``Inventory.replace``, as the watcher applies them.
"""

from __future__ import annotations

import pytest
import yaml

from flowscope.plugins.enrichers.kubernetes.enricher import KubernetesEnricher
from flowscope.plugins.enrichers.kubernetes.inventory import Inventory
from flowscope.testing import make_context

T0 = 1767225600  # 2026-01-01T00:00:00Z
TCP = 6
CLIENT, SERVER = "10.1.0.10", "10.1.0.20"
ALLOWED = ("allow-web", "prod", "ingress-0", 1)
DENIED = ("", "", "", 2)


def namespace(name: str, **labels: str) -> dict:
    return {"kind": "Namespace", "metadata": {"name": name, "labels": labels}}


def pod(name: str, ips: list[str], namespace: str = "prod", ports=(), labels=None, **status) -> dict:
    return {
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "labels": labels or {},
            "creationTimestamp": status.pop("created", "2026-01-01T00:00:00Z"),
        },
        "spec": {"nodeName": "node-1", "containers": [{"name": "c", "ports": list(ports)}]},
        "status": {"phase": "Running", "podIPs": [{"ip": ip} for ip in ips], **status},
    }


def policy(name: str = "allow-web", ingress=None, **selector: str) -> dict:
    rule = {"from": [{"namespaceSelector": {"matchLabels": {"team": "web"}}, "podSelector": {"matchLabels": selector}}]}
    return {
        "kind": "NetworkPolicy",
        "metadata": {"name": name, "namespace": "prod"},
        "spec": {
            "podSelector": {"matchLabels": {"app": "server"}},
            "ingress": ingress if ingress is not None else [{**rule, "ports": [{"protocol": "TCP", "port": "http"}]}],
        },
    }


HTTP = [{"name": "http", "containerPort": 8080}]
OBJECTS = [
    namespace("prod", team="web"),
    pod("client", [CLIENT], labels={"app": "client"}),
    pod("server", [SERVER], ports=HTTP, labels={"app": "server"}),
    policy(app="client"),
]


@pytest.fixture
def enricher(tmp_path):
    path = tmp_path / "inventory.yaml"
    path.write_text(yaml.safe_dump_all(OBJECTS))
    options = KubernetesEnricher.Options(inventory=str(path), policyCacheSize=3).model_dump()
    return KubernetesEnricher(options, make_context("k8s-cache", kind="enricher"))


def flow(src: str = CLIENT, dst: str = SERVER, port: int = 8080, source_port: int = 40000, start: int = T0) -> dict:
    v = "IPv6" if ":" in src else "IPv4"
    return {
        f"source{v}Address": src,
        f"destination{v}Address": dst,
        "sourceTransportPort": source_port,
        "destinationTransportPort": port,
        "protocolIdentifier": TCP,
        "flowStartSeconds": start,
    }


def ingress(enricher: KubernetesEnricher, record: dict | None = None):
    [out] = enricher.enrich([record or flow()])
    if "ingressNetworkPolicyRuleAction" not in out:
        return None
    return tuple(out[f"ingressNetworkPolicy{f}"] for f in ("Name", "Namespace", "RuleName", "RuleAction"))


def test_flows_of_a_pod_pair_share_one_verdict(enricher):
    for source_port in range(40000, 40100):
        assert ingress(enricher, flow(source_port=source_port)) == ALLOWED
    assert enricher.evaluator.misses == 1
    assert ingress(enricher, flow(port=8081)) == DENIED  # another destination port: another verdict
    assert enricher.evaluator.misses == 2


def test_the_least_recently_used_verdict_goes_first(enricher):
    for port in (1, 2, 3):  # the cache holds 3
        ingress(enricher, flow(port=port))
    ingress(enricher, flow(port=1))  # used again: port 2 is now the least recently used
    ingress(enricher, flow(port=4))  # evicts port 2
    assert enricher.evaluator.misses == 4
    ingress(enricher, flow(port=1))
    ingress(enricher, flow(port=3))
    assert enricher.evaluator.misses == 4  # still cached
    ingress(enricher, flow(port=2))
    assert enricher.evaluator.misses == 5  # evaluated again


def test_source_pod_labels_changed(enricher):
    assert ingress(enricher) == ALLOWED
    enricher.inventory.apply("Pod", "MODIFIED", pod("client", [CLIENT], labels={"app": "other"}))
    assert ingress(enricher) == DENIED
    enricher.inventory.apply("Pod", "MODIFIED", pod("client", [CLIENT], labels={"app": "client"}))
    assert ingress(enricher) == ALLOWED


def test_destination_pod_no_longer_selected(enricher):
    assert ingress(enricher) == ALLOWED
    enricher.inventory.apply("Pod", "MODIFIED", pod("server", [SERVER], ports=HTTP, labels={"app": "cache"}))
    assert ingress(enricher) is None  # not isolated any more


def test_destination_named_port_changed(enricher):
    assert ingress(enricher) == ALLOWED
    ports = [{"name": "http", "containerPort": 9090}]
    enricher.inventory.apply("Pod", "MODIFIED", pod("server", [SERVER], ports=ports, labels={"app": "server"}))
    assert ingress(enricher) == DENIED
    assert ingress(enricher, flow(port=9090)) == ALLOWED


def test_namespace_labels_changed(enricher):
    assert ingress(enricher) == ALLOWED
    enricher.inventory.apply("Namespace", "MODIFIED", namespace("prod", team="db"))
    assert ingress(enricher) == DENIED
    enricher.inventory.replace("Namespace", [namespace("prod", team="web")])  # a relist
    assert ingress(enricher) == ALLOWED


def test_policy_added_changed_and_deleted(enricher):
    assert ingress(enricher) == ALLOWED
    enricher.inventory.apply("NetworkPolicy", "MODIFIED", policy(app="nobody"))
    assert ingress(enricher) == DENIED
    enricher.inventory.apply("NetworkPolicy", "ADDED", policy("a-first", ingress=[{}]))  # every peer, every port
    assert ingress(enricher) == ("a-first", "prod", "ingress-0", 1)
    enricher.inventory.apply("NetworkPolicy", "DELETED", policy("a-first"))
    assert ingress(enricher) == DENIED
    enricher.inventory.replace("NetworkPolicy", [])  # a relist without policies
    assert ingress(enricher) is None


def test_pod_recreated_with_the_address_of_another(enricher):
    assert ingress(enricher) == ALLOWED
    enricher.inventory.apply("Pod", "DELETED", pod("client", [CLIENT], labels={"app": "client"}))
    enricher.inventory.apply(
        "Pod", "ADDED", pod("intruder", [CLIENT], labels={"app": "intruder"}, created="2026-01-01T01:00:00Z")
    )
    assert ingress(enricher, flow(start=T0 + 7200)) == DENIED  # the new Pod
    assert ingress(enricher, flow(start=T0 + 60)) == ALLOWED  # a flow of the deleted Pod, in its grace period


def test_ip_block_verdicts_differ_by_address_family_of_one_pod(enricher):
    """A dual-stack Pod: the ipBlock allows its IPv4 address only."""
    enricher.inventory.apply("Pod", "MODIFIED", pod("client", [CLIENT, "fd00::10"], labels={"app": "nobody"}))
    enricher.inventory.apply(
        "Pod", "MODIFIED", pod("server", [SERVER, "fd00::20"], ports=HTTP, labels={"app": "server"})
    )
    enricher.inventory.apply(
        "NetworkPolicy", "MODIFIED", policy(ingress=[{"from": [{"ipBlock": {"cidr": "10.1.0.0/16"}}]}])
    )
    assert ingress(enricher) == ALLOWED
    assert ingress(enricher, flow("fd00::10", "fd00::20")) == DENIED


def test_the_index_of_running_pods_follows_deletions_and_reuse():
    """Addresses of one running Pod are found without looking at times; the others through pod_at."""
    now = [T0 + 3600]
    inventory = Inventory(grace=60, clock=lambda: now[0])
    inventory.apply("Pod", "ADDED", pod("a", [CLIENT]))
    assert inventory.live_pods[CLIENT].name == "a"
    inventory.apply("Pod", "DELETED", pod("a", [CLIENT]))
    assert CLIENT not in inventory.live_pods
    assert inventory.pod_at(CLIENT, T0 + 60).name == "a"  # in its grace period
    inventory.apply("Pod", "ADDED", pod("b", [CLIENT], created="2026-01-01T01:00:00Z"))
    assert CLIENT not in inventory.live_pods  # two Pods had it: by time
    now[0] += 120
    inventory.apply("Pod", "ADDED", pod("c", [SERVER]))
    inventory.apply("Pod", "DELETED", pod("c", [SERVER]))  # purges the expired "a"
    assert inventory.live_pods[CLIENT].name == "b"
    assert SERVER not in inventory.live_pods
    inventory.apply("Pod", "MODIFIED", pod("b", [CLIENT], phase="Succeeded", created="2026-01-01T01:00:00Z"))
    assert CLIENT not in inventory.live_pods  # finished: its address may be reused
