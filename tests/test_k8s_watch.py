"""The Kubernetes watcher against a local API server, through a kubeconfig, as against a real cluster."""

from __future__ import annotations

import datetime
import logging
import time
from collections.abc import Callable

import pytest
from prometheus_client import CollectorRegistry

from flowscope.core.errors import ConfigError
from flowscope.plugins.enrichers.kubernetes.inventory import KINDS, Inventory
from flowscope.plugins.enrichers.kubernetes.watch import Watcher
from tests.helpers import antrea_json, run_cli
from tests.k8s_api_server import K8sApiServer

WAIT = 10.0  # seconds: the longest any single wait may take
HOUR_AGO = (datetime.datetime.now(datetime.UTC) - datetime.timedelta(hours=1)).strftime("%Y-%m-%dT%H:%M:%SZ")


def pod(name: str, ip: str, namespace: str = "default", **labels: str) -> dict:
    return {
        "metadata": {"name": name, "namespace": namespace, "labels": labels, "creationTimestamp": HOUR_AGO},
        "spec": {"nodeName": "node-1", "containers": [{"name": "main", "ports": [{"containerPort": 8080}]}]},
        "status": {"phase": "Running", "podIP": ip, "podIPs": [{"ip": ip}]},
    }


def seed(server: K8sApiServer) -> None:
    server.add("Namespace", {"metadata": {"name": "default", "labels": {"team": "web"}}})
    server.add("Namespace", {"metadata": {"name": "kube-system"}})
    server.add(
        "Node",
        {
            "metadata": {"name": "node-1"},
            "spec": {"podCIDR": "10.0.0.0/24"},
            "status": {"addresses": [{"type": "InternalIP", "address": "192.168.1.10"}]},
        },
    )
    server.add("Pod", pod("web-0", "10.0.0.10", app="web"))
    server.add("Pod", pod("web-1", "10.0.0.11", app="web"))
    server.add("Pod", pod("db-0", "10.0.0.20", app="db"))
    server.add(
        "Service",
        {
            "metadata": {"name": "web", "namespace": "default"},
            "spec": {
                "clusterIP": "10.96.0.10",
                "clusterIPs": ["10.96.0.10"],
                "ports": [{"port": 80, "protocol": "TCP"}],
            },
        },
    )
    server.add(
        "EndpointSlice",
        {
            "metadata": {"name": "web-abc", "namespace": "default", "labels": {"kubernetes.io/service-name": "web"}},
            "endpoints": [{"addresses": ["10.0.0.10"]}, {"addresses": ["10.0.0.11"]}],
        },
    )
    server.add(
        "NetworkPolicy",
        {"metadata": {"name": "deny-all", "namespace": "default"}, "spec": {"podSelector": {}}},
    )


def eventually(check: Callable[[], object], what: str, timeout: float = WAIT) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout}s: {what}")
        time.sleep(0.02)


@pytest.fixture
def server():
    with K8sApiServer() as server:
        seed(server)
        yield server


@pytest.fixture
def registry() -> CollectorRegistry:
    return CollectorRegistry()


@pytest.fixture
def watcher(server, tmp_path, registry):
    """A started watcher on the server's kubeconfig; made on first call, stopped after the test."""
    made: list[Watcher] = []
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")

    def make(start: bool = True, **kwargs) -> Watcher:
        w = Watcher(Inventory(), kubeconfig=str(kubeconfig), metrics=registry, watch_timeout=5, **kwargs)
        made.append(w)
        if start:
            w.start()
        return w

    yield make
    for w in made:
        w.stop()


def sample(registry: CollectorRegistry, name: str, **labels: str) -> float:
    return registry.get_sample_value(name, labels) or 0.0


def restarts(registry: CollectorRegistry, kind: str, reason: str) -> float:
    return sample(registry, "flowscope_kubernetes_watch_restarts_total", kind=kind, reason=reason)


def test_initial_list_fills_the_inventory(server, watcher, registry):
    w = watcher(start=False)
    w.page_size = 2  # lists in pages of two: limit/continue
    w.start()
    assert w.wait_ready(WAIT)
    inventory = w.inventory
    assert inventory.ready.is_set()
    assert set(inventory.pods) == {"default/web-0", "default/web-1", "default/db-0"}
    assert inventory.pod_at("10.0.0.20").name == "db-0"
    assert inventory.namespace_labels("default") == {"team": "web"}
    assert set(inventory.nodes) == {"node-1"}
    found = inventory.service_for("10.96.0.10", 80, "TCP")
    assert found is not None and (found[0].name, found[1].port) == ("web", 80)
    assert inventory.slices["default/web-abc"].addresses == ("10.0.0.10", "10.0.0.11")
    assert [p.name for p in inventory.policies_in("default")] == ["deny-all"]
    assert inventory.skipped == 0
    assert any("continue" in params for params in server.list_requests("Pod"))  # three Pods: two pages
    for kind in KINDS:
        assert sample(registry, "flowscope_kubernetes_synced", kind=kind) == 1.0
        # every watch resumes from the version of its list, with bookmarks and a short timeout
        eventually(lambda kind=kind: server.watch_requests(kind), f"a watch of {kind}")
        first = server.watch_requests(kind)[0]
        assert first["resourceVersion"] == w.resource_versions[kind]
        assert first["allowWatchBookmarks"] == "true"
        assert int(first["timeoutSeconds"]) <= 30


def test_pod_added_updated_deleted(server, watcher, registry):
    w = watcher()
    assert w.wait_ready(WAIT)
    inventory = w.inventory
    server.add("Pod", pod("job-0", "10.0.0.30", app="job"))
    eventually(lambda: inventory.pod_at("10.0.0.30") is not None, "the added Pod")
    assert inventory.pods["default/job-0"].labels == {"app": "job"}

    server.update("Pod", pod("job-0", "10.0.0.30", app="job", stage="2"))
    eventually(lambda: inventory.pods["default/job-0"].labels.get("stage") == "2", "the updated labels")

    before = time.time() - 2
    server.delete("Pod", "job-0", "default")
    eventually(lambda: "default/job-0" not in inventory.pods, "the deletion")
    gone = inventory.pod_at("10.0.0.30", before)  # a flow from before the deletion: still answered
    assert gone is not None and gone.name == "job-0" and gone.deleted is not None
    assert inventory.pod_at("10.0.0.30", time.time() + 60) is None  # long after: no one has that IP
    eventually(lambda: w.resource_versions["Pod"] == str(server.version), "the resume point at the deletion")
    for type_ in ("ADDED", "MODIFIED", "DELETED"):
        assert sample(registry, "flowscope_kubernetes_events_total", kind="Pod", type=type_) == 1.0


def test_bookmark_advances_the_resume_point(server, watcher, registry):
    w = watcher()
    assert w.wait_ready(WAIT)
    eventually(lambda: server.open_watches("Pod") == 1, "the Pod watch")
    server.add("Namespace", {"metadata": {"name": "other"}})  # the global version moves on, not the Pods'
    version = server.bookmark("Pod")
    eventually(lambda: w.resource_versions["Pod"] == version, "the bookmark's version as the resume point")
    assert sample(registry, "flowscope_kubernetes_events_total", kind="Pod", type="BOOKMARK") == 1.0
    assert len(w.inventory.pods) == 3 and w.inventory.skipped == 0  # a bookmark carries no object
    watches = len(server.watch_requests("Pod"))
    server.drop_connections()
    eventually(lambda: len(server.watch_requests("Pod")) > watches, "the resumed Pod watch")
    assert server.watch_requests("Pod")[-1]["resourceVersion"] == version
    assert len(server.list_requests("Pod")) == 1  # resumed, not listed again


@pytest.mark.parametrize("http", [False, True], ids=["error-event", "http-410"])
def test_expired_lists_again_without_losing_changes(server, watcher, registry, http):
    w = watcher()
    assert w.wait_ready(WAIT)
    inventory = w.inventory
    eventually(lambda: server.open_watches("Pod") == 1, "the Pod watch")
    with server.atomic():  # no watch sees these: the history is compacted before they are sent
        server.add("Pod", pod("new-0", "10.0.0.40"))
        server.update("Pod", pod("web-0", "10.0.0.10", app="web", version="2"))
        server.delete("Pod", "db-0", "default")
        server.expire("Pod", http=http)
    eventually(lambda: len(server.list_requests("Pod")) == 2, "the list after 410 Gone")
    eventually(lambda: "default/new-0" in inventory.pods, "the Pod added while expired")
    assert inventory.pods["default/web-0"].labels.get("version") == "2"
    assert "default/db-0" not in inventory.pods
    assert inventory.pod_at("10.0.0.20", time.time() - 5).name == "db-0"  # deleted, still known for old flows
    assert restarts(registry, "Pod", "expired") >= 1
    assert inventory.ready.is_set()
    # and the new watch carries on from the new list
    server.add("Pod", pod("new-1", "10.0.0.41"))
    eventually(lambda: "default/new-1" in inventory.pods, "a Pod added after the list")
    assert len(server.list_requests("Namespace")) == 1  # the other kinds were not disturbed


def test_dropped_connections_resume_without_loss(server, watcher, registry):
    w = watcher()
    assert w.wait_ready(WAIT)
    inventory = w.inventory
    eventually(lambda: server.open_watches() == len(KINDS), "every watch open")
    resume_from = w.resource_versions["Pod"]
    with server.atomic():  # cut first: the streams never carry these
        assert server.drop_connections() == len(KINDS)
        server.add("Pod", pod("web-2", "10.0.0.12", app="web"))
        server.delete("Pod", "web-1", "default")
        server.add("Namespace", {"metadata": {"name": "team-b", "labels": {"team": "b"}}})
    eventually(lambda: "default/web-2" in inventory.pods, "the Pod added while disconnected")
    eventually(lambda: "default/web-1" not in inventory.pods, "the Pod deleted while disconnected")
    eventually(lambda: inventory.namespace_labels("team-b") == {"team": "b"}, "the Namespace added meanwhile")
    assert restarts(registry, "Pod", "error") >= 1
    resumed = server.watch_requests("Pod")[1]
    assert resumed["resourceVersion"] == resume_from  # resumed where it was, not listed again
    assert len(server.list_requests("Pod")) == 1
    eventually(lambda: sample(registry, "flowscope_kubernetes_synced", kind="Pod") == 1.0, "synced again")


def test_forbidden_kind_is_logged_and_the_others_sync(server, watcher, registry, caplog):
    caplog.set_level(logging.INFO, logger="flowscope.kubernetes")
    server.forbid("NetworkPolicy")
    w = watcher()
    others = [kind for kind in KINDS if kind != "NetworkPolicy"]
    eventually(lambda: all(w.synced[kind] for kind in others), "the other kinds listed")
    eventually(lambda: restarts(registry, "NetworkPolicy", "forbidden") >= 1, "the 403 counted")
    assert not w.wait_ready(0.2)  # not every kind: the inventory is not complete
    assert not w.inventory.ready.is_set()
    assert "default/web-0" in w.inventory.pods
    assert sample(registry, "flowscope_kubernetes_synced", kind="NetworkPolicy") == 0.0
    errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    assert any(
        "forbidden: list networkpolicies at cluster scope; grant get/list/watch on networkpolicies" in m
        and 'API group "networking.k8s.io"' in m
        and "system:serviceaccount:flowscope:flowscope" in m  # what the API server said: who was refused
        for m in errors
    ), errors
    assert not any("Pod" in m or " pods" in m for m in errors)
    incomplete = [r.getMessage() for r in caplog.records if "incomplete" in r.getMessage()]
    assert incomplete and "NetworkPolicy: forbidden" in incomplete[-1]

    server.forbid("NetworkPolicy", False)  # RBAC fixed: it syncs on the next retry
    assert w.wait_ready(WAIT)
    assert [p.name for p in w.inventory.policies_in("default")] == ["deny-all"]


def test_unauthorized_is_logged_clearly(server, watcher, registry, caplog):
    caplog.set_level(logging.INFO, logger="flowscope.kubernetes")
    server.unauthorized()
    w = watcher()
    eventually(lambda: all(restarts(registry, kind, "unauthorized") >= 1 for kind in KINDS), "401 counted")
    assert not w.wait_ready(0.1)
    messages = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
    pods = [m for m in messages if "to list pods" in m]
    assert pods, messages
    assert pods[0].startswith(f"unauthorized: the API server at {server.url} rejected the credentials")
    assert "kubeconfig" in pods[0] and "expired" in pods[0] and "retrying in" in pods[0]

    server.unauthorized(False)  # credentials renewed
    assert w.wait_ready(WAIT)
    assert len(w.inventory.pods) == 3


def test_wrong_token_is_unauthorized(server, tmp_path, registry, caplog):
    caplog.set_level(logging.INFO, logger="flowscope.kubernetes")
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig", token="stale")
    w = Watcher(Inventory(), kubeconfig=str(kubeconfig), kinds=["Pod"], metrics=registry)
    w.start()
    try:
        eventually(lambda: restarts(registry, "Pod", "unauthorized") >= 1, "401 counted")
    finally:
        w.stop()
    assert any(m.startswith("unauthorized:") for m in caplog.messages)


def test_unusable_objects_are_skipped_not_fatal(server, watcher, caplog):
    caplog.set_level(logging.INFO, logger="flowscope.kubernetes")
    no_port = {"metadata": {"name": "broken", "namespace": "default"}, "spec": {"ports": [{"name": "http"}]}}
    server.add("Service", no_port)  # in the first list: a KeyError in the parser
    server.add("Service", {"metadata": {"name": "bogus", "namespace": "default"}, "spec": {"clusterIPs": ["x"]}})
    w = watcher()
    assert w.wait_ready(WAIT)
    inventory = w.inventory
    assert set(inventory.services) == {"default/web"}
    assert inventory.skipped == 2  # each counted once
    server.add("Pod", pod("odd", "not-an-ip"))
    server.add("Pod", pod("fine", "10.0.0.50"))
    eventually(lambda: "default/fine" in inventory.pods, "the Pod after the unusable one")
    assert "default/odd" not in inventory.pods and inventory.skipped == 3
    server.update("Service", {**no_port, "metadata": {**no_port["metadata"], "labels": {"v": "2"}}})
    server.add("Service", {"metadata": {"name": "db", "namespace": "default"}, "spec": {"clusterIP": "10.96.0.20"}})
    eventually(lambda: "default/db" in inventory.services, "the Service after the unusable one")
    assert set(inventory.services) == {"default/web", "default/db"} and inventory.skipped == 4
    assert any("skipping Service broken" in m for m in caplog.messages)
    assert len(server.list_requests("Pod")) == 1 and len(server.list_requests("Service")) == 1  # no relist loop


def test_api_server_down_backs_off(server, watcher, registry, caplog):
    caplog.set_level(logging.INFO, logger="flowscope.kubernetes")
    w = watcher(kinds=["Pod"])
    assert w.wait_ready(WAIT)
    server.close()
    eventually(lambda: restarts(registry, "Pod", "error") >= 3, "three failures")
    retries = [m for m in caplog.messages if m.startswith("watch pods on") and "failed" in m]
    assert any(m.endswith("retrying in 0.5s") for m in retries), retries
    assert any(m.endswith("retrying in 1.0s") for m in retries), retries
    assert sample(registry, "flowscope_kubernetes_synced", kind="Pod") == 0.0
    assert set(w.inventory.pods) == {"default/web-0", "default/web-1", "default/db-0"}  # what it knew is kept


def test_missing_kubeconfig_is_a_config_error(tmp_path):
    path = tmp_path / "nowhere" / "kubeconfig"
    with pytest.raises(ConfigError) as caught:
        Watcher(Inventory(), kubeconfig=str(path))
    assert str(path) in str(caught.value)
    assert "does not exist" in str(caught.value)


def test_unusable_kubeconfig_is_a_config_error(server, tmp_path):
    broken = tmp_path / "broken"
    broken.write_text("clusters: [\n", encoding="utf-8")
    with pytest.raises(ConfigError, match=r"broken'? is not valid YAML"):
        Watcher(Inventory(), kubeconfig=str(broken))
    good = server.kubeconfig(tmp_path / "kubeconfig")
    with pytest.raises(ConfigError) as caught:
        Watcher(Inventory(), kubeconfig=str(good), context="prod")
    assert "'prod'" in str(caught.value) and str(good) in str(caught.value)
    with pytest.raises(ConfigError, match="unknown kind"):
        Watcher(Inventory(), kubeconfig=str(good), kinds=["Pod", "Ingress"])


def test_in_cluster_outside_a_cluster_is_a_config_error(monkeypatch):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    with pytest.raises(ConfigError, match="in_cluster: no in-cluster service account"):
        Watcher(Inventory(), in_cluster=True)


def test_stop_is_prompt(server, watcher):
    w = watcher()
    assert w.wait_ready(WAIT)
    eventually(lambda: server.open_watches() == len(KINDS), "every watch open")
    started = time.monotonic()
    w.stop()
    assert time.monotonic() - started < 2.0
    assert not any(thread.is_alive() for thread in w._threads.values())
    eventually(lambda: server.open_watches() == 0, "the server's streams closed", timeout=5)


def test_flowscope_run_enriches_from_the_api_server(server, tmp_path):
    """As a user runs it: the kubernetes enricher with a kubeconfig, jsonl in, Antrea JSON out."""
    import json

    flows = tmp_path / "flows.jsonl"
    flows.write_text(
        json.dumps(
            {
                "sourceIPv4Address": "10.0.0.10",
                "destinationIPv4Address": "10.0.0.20",
                "destinationServiceIPv4": "10.96.0.10",
                "destinationServicePort": 80,
                "destinationTransportPort": 8080,
                "protocolIdentifier": 6,
            }
        )
        + "\n"
    )
    out = tmp_path / "out.jsonl"
    config = tmp_path / "p.yaml"
    kubeconfig = server.kubeconfig(tmp_path / "kubeconfig")
    config.write_text(
        f"sources: [{{type: jsonl, path: {flows}}}]\n"
        f"enrichers: [{{type: kubernetes, kubeconfig: {kubeconfig}, podLabels: true}}]\n"
        f"sinks: [{{type: json, path: {out}}}]\n"
    )
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    [record] = antrea_json(out)
    assert (record["sourcePodName"], record["destinationPodName"], record["sourcePodLabels"]) == (
        "web-0",
        "db-0",
        '{"app":"web"}',
    )
    assert record["destinationServicePortName"] == "default/web"
    assert (record["ingressNetworkPolicyName"], record["ingressNetworkPolicyRuleAction"]) == ("", 2)  # deny-all
