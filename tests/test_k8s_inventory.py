"""The inventory: time-aware IP index, deletions with grace, bad objects skipped and counted."""

from __future__ import annotations

import pytest

from flowscope.core.errors import ConfigError
from flowscope.plugins.enrichers.kubernetes.inventory import Inventory
from flowscope.plugins.enrichers.kubernetes.objects import parse
from flowscope.plugins.enrichers.kubernetes.static import load_file

T0 = 1767225600  # 2026-01-01T00:00:00Z


def pod(name, ip, created, phase="Running", finished=None, labels=None, host=False, namespace="jobs"):
    status = {"phase": phase, "podIP": ip}
    if finished:
        status["containerStatuses"] = [{"state": {"terminated": {"finishedAt": finished}}}]
    return {
        "kind": "Pod",
        "metadata": {"name": name, "namespace": namespace, "creationTimestamp": created, "labels": labels or {}},
        "spec": {"nodeName": "n1", "hostNetwork": host},
        "status": status,
    }


def test_ip_reused_after_a_completed_job_resolves_by_flow_start_time():
    inventory = Inventory(clock=lambda: T0 + 3600)
    inventory.apply(
        "Pod", "ADDED", pod("job-x", "10.0.0.7", "2026-01-01T00:00:00Z", "Succeeded", finished="2026-01-01T00:10:00Z")
    )
    inventory.apply("Pod", "ADDED", pod("web-new", "10.0.0.7", "2026-01-01T00:20:00Z"))
    assert inventory.pod_at("10.0.0.7", T0 + 300).name == "job-x"  # while the Job ran
    assert inventory.pod_at("10.0.0.7", T0 + 1500).name == "web-new"  # after the reuse
    assert inventory.pod_at("10.0.0.7", T0 + 599).name == "job-x"  # just before the Job ended
    assert inventory.pod_at("10.0.0.7", T0 + 900) is None  # between the two: nobody had the address


def test_deleted_pods_answer_for_earlier_flows_during_the_grace_period():
    now = [T0 + 100]
    inventory = Inventory(grace=60, clock=lambda: now[0])
    inventory.apply("Pod", "ADDED", pod("a", "10.0.0.8", "2026-01-01T00:00:00Z"))
    inventory.apply("Pod", "DELETED", pod("a", "10.0.0.8", "2026-01-01T00:00:00Z"))
    assert "jobs/a" not in inventory.pods
    assert inventory.pod_at("10.0.0.8", T0 + 50).name == "a"
    now[0] = T0 + 200
    inventory.apply("Pod", "ADDED", pod("b", "10.0.0.9", "2026-01-01T00:03:00Z"))
    inventory.apply("Pod", "DELETED", pod("b", "10.0.0.9", "2026-01-01T00:03:00Z"))  # purges the expired "a"
    assert inventory.pod_at("10.0.0.8", T0 + 50) is None


def test_updates_replace_labels_and_ips_and_bump_the_version():
    inventory = Inventory()
    inventory.apply("Pod", "ADDED", pod("a", "10.0.0.1", "2026-01-01T00:00:00Z", labels={"app": "x"}))
    version = inventory.version
    inventory.apply("Pod", "MODIFIED", pod("a", "10.0.0.2", "2026-01-01T00:00:00Z", labels={"app": "y"}))
    assert inventory.version > version
    assert inventory.pod_at("10.0.0.1") is None
    assert inventory.pod_at("10.0.0.2").labels == {"app": "y"}


def test_host_network_pods_are_not_indexed_by_ip():
    inventory = Inventory()
    inventory.apply("Pod", "ADDED", pod("agent", "192.168.1.1", "2026-01-01T00:00:00Z", host=True))
    assert inventory.pod_at("192.168.1.1") is None
    assert "jobs/agent" in inventory.pods


def test_relist_deletes_what_is_gone():
    inventory = Inventory()
    inventory.replace(
        "Pod", [pod("a", "10.0.0.1", "2026-01-01T00:00:00Z"), pod("b", "10.0.0.2", "2026-01-01T00:00:00Z")]
    )
    inventory.replace("Pod", [pod("b", "10.0.0.2", "2026-01-01T00:00:00Z")])
    assert sorted(inventory.pods) == ["jobs/b"]


@pytest.mark.parametrize(
    ("kind", "raw", "message"),
    [
        ("Pod", {"metadata": {}}, "Pod without metadata.name"),
        (
            "Pod",
            {"metadata": {"name": "p"}, "status": {"podIP": "10.0.0.300"}},
            "Pod default/p status.podIPs: '10.0.0.300' is not an IP address",
        ),
        (
            "NetworkPolicy",
            {
                "metadata": {"name": "np", "namespace": "a"},
                "spec": {"podSelector": {"matchExpressions": [{"key": "k", "operator": "Maybe"}]}},
            },
            "NetworkPolicy a/np podSelector: unknown operator 'Maybe'; use one of In, NotIn, Exists, DoesNotExist",
        ),
        (
            "NetworkPolicy",
            {
                "metadata": {"name": "np", "namespace": "a"},
                "spec": {"podSelector": {}, "ingress": [{"from": [{"ipBlock": {"cidr": "nonsense"}}]}]},
            },
            "NetworkPolicy a/np ingress[0].from[0].ipBlock: 'nonsense' does not appear to be an IPv4 or IPv6 network",
        ),
        (
            "NetworkPolicy",
            {"metadata": {"name": "np", "namespace": "a"}, "spec": {"podSelector": {}, "policyTypes": ["Sideways"]}},
            "NetworkPolicy a/np: unknown policyTypes ['Sideways']; use Ingress and/or Egress",
        ),
        (
            "Service",
            {"metadata": {"name": "s", "namespace": "a"}, "spec": {"ports": [{"name": "http"}]}},
            "Service s is malformed (KeyError: 'port')",
        ),
    ],
)
def test_unusable_objects_are_refused_with_a_reason(kind, raw, message):
    with pytest.raises(ValueError) as err:
        parse(kind, raw)
    assert str(err.value) == message


def test_static_file_skips_bad_objects_and_keeps_the_rest(tmp_path, caplog):
    path = tmp_path / "inv.yaml"
    path.write_text(
        "kind: Pod\nmetadata: {name: good, namespace: a}\nstatus: {podIP: 10.1.1.1}\n---\n"
        "kind: Pod\nmetadata: {name: bad, namespace: a}\nstatus: {podIP: not-an-ip}\n---\n"
        "kind: ConfigMap\nmetadata: {name: cm}\n---\n"
        "kind: NetworkPolicy\nmetadata: {name: np, namespace: a}\n"
        "spec: {podSelector: {matchExpressions: [{key: k, operator: Maybe}]}}\n"
    )
    inventory = Inventory()
    assert load_file(inventory, path) == 1
    assert inventory.skipped == 3
    assert inventory.pod_at("10.1.1.1").name == "good"
    assert inventory.ready.is_set()
    assert "skipping Pod bad: Pod a/bad status.podIPs: 'not-an-ip' is not an IP address" in caplog.text
    assert "unknown operator 'Maybe'" in caplog.text


def test_static_file_errors_name_the_file(tmp_path):
    with pytest.raises(ConfigError, match=r"inventory: cannot read '.*missing\.yaml'"):
        load_file(Inventory(), tmp_path / "missing.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("kind: Pod\nmetadata: [unclosed\n")
    with pytest.raises(ConfigError, match="is not valid YAML at line"):
        load_file(Inventory(), broken)
