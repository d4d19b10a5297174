"""The inventory: the cluster's Pods, Services, Namespaces, Nodes and NetworkPolicies, indexed for
flow enrichment, fed by the API (list and watch) or by a static file.

The IP index knows time: an IP reused by a new Pod after a finished Job Pod resolves to the Pod
that was alive when the flow started (Antrea #8030). Deleted and finished Pods stay indexed for a
grace period; host-network Pods are not indexed by IP.
"""

from __future__ import annotations

import dataclasses
import logging
import threading
import time
from collections.abc import Iterable
from typing import Any

from flowscope.plugins.enrichers.kubernetes.objects import (
    EndpointSlice,
    Namespace,
    NetworkPolicy,
    Node,
    Pod,
    Service,
    ServicePort,
    parse,
)

log = logging.getLogger("flowscope.kubernetes")
KINDS = ("Namespace", "Node", "Pod", "Service", "EndpointSlice", "NetworkPolicy")
SLACK = 1.0  # seconds of clock difference tolerated between flow times and API times


class Inventory:
    """Thread-safe indexes over slim Kubernetes objects."""

    def __init__(self, grace: float = 300.0, clock: Any = time.time):
        self.grace = grace
        self.clock = clock
        self.ready = threading.Event()  # set after the first complete load
        self.version = 0  # changes with every change
        self.policy_version = 0  # changes when NetworkPolicies or Namespaces do (Pod changes make new Pod objects)
        self.skipped = 0  # objects that could not be used
        self._lock = threading.RLock()
        self.pods: dict[str, Pod] = {}
        self.services: dict[str, Service] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.nodes: dict[str, Node] = {}
        self.policies: dict[str, NetworkPolicy] = {}
        self.slices: dict[str, EndpointSlice] = {}
        self._pods_by_ip: dict[str, list[Pod]] = {}
        self.live_pods: dict[str, Pod] = {}  # addresses of one Pod only, running: found without pod_at
        self._gone: list[Pod] = []  # deleted Pods still indexed, for the grace period
        # (ClusterIP or external IP, port, protocol): (Service, port, "ns/name:port"); NodePorts are in service_for
        self.service_ports: dict[tuple[str, int, str], tuple[Service, ServicePort, str]] = {}
        self._node_ports: dict[tuple[int, str], tuple[Service, ServicePort, str]] = {}
        self._node_ips: set[str] = set()
        self._policies_by_namespace: dict[str, list[NetworkPolicy]] = {}  # sorted by name
        # by namespace and the first matchLabels pair of the podSelector; (namespace, None, None): without one
        self._policies_by_label: dict[tuple[str, str | None, str | None], list[NetworkPolicy]] = {}

    # -- changes -------------------------------------------------------------------------------

    def apply(self, kind: str, event: str, raw: dict[str, Any]) -> bool:
        """One watch event (``ADDED``, ``MODIFIED``, ``DELETED``); ``False`` if the object was skipped."""
        try:
            obj = parse(kind, raw)
        except ValueError as exc:
            self.skip(kind, raw, exc)
            return False
        with self._lock:
            if event == "DELETED":
                self._delete(kind, obj)
            else:
                self._put(kind, obj)
            self.version += 1
        return True

    def replace(self, kind: str, raws: Iterable[dict[str, Any]]) -> None:
        """A complete list of ``kind``: objects missing from it are deleted."""
        parsed = []
        for raw in raws:
            try:
                parsed.append(parse(kind, raw))
            except ValueError as exc:
                self.skip(kind, raw, exc)
        with self._lock:
            store = self._store(kind)
            keep = {self._key(kind, obj) for obj in parsed}
            for key in [k for k in store if k not in keep]:
                self._delete(kind, store[key])
            for obj in parsed:
                self._put(kind, obj)
            self.version += 1

    def skip(self, kind: str, raw: Any, exc: Exception) -> None:
        """Count and log an object that cannot be used."""
        with self._lock:
            self.skipped += 1
        name = (raw.get("metadata") or {}).get("name", "?") if isinstance(raw, dict) else "?"
        log.warning("skipping %s %s: %s", kind, name, exc)

    def _store(self, kind: str) -> dict[str, Any]:
        return {
            "Pod": self.pods,
            "Service": self.services,
            "Namespace": self.namespaces,
            "Node": self.nodes,
            "NetworkPolicy": self.policies,
            "EndpointSlice": self.slices,
        }[kind]

    @staticmethod
    def _key(kind: str, obj: Any) -> str:
        return obj.name if kind in ("Namespace", "Node") else f"{obj.namespace}/{obj.name}"

    def _put(self, kind: str, obj: Any) -> None:
        store = self._store(kind)
        key = self._key(kind, obj)
        old = store.get(key)
        if old is not None:
            self._unindex(kind, old, replaced=True)
        store[key] = obj
        self._index(kind, obj)
        if kind in _POLICY_KINDS:  # after the change: a verdict found before it is not kept under the new version
            self.policy_version += 1

    def _delete(self, kind: str, obj: Any) -> None:
        store = self._store(kind)
        old = store.pop(self._key(kind, obj), None)
        if old is None:
            return
        if kind == "Pod":  # keep answering for flows that started before the deletion
            gone = dataclasses.replace(old, deleted=old.deleted or self.clock())
            self._replace_in_ip_index(old, gone)
            self._gone.append(gone)
            self._purge()
        else:
            self._unindex(kind, old, replaced=False)
        if kind in _POLICY_KINDS:
            self.policy_version += 1

    def _index(self, kind: str, obj: Any) -> None:
        if kind == "Pod" and not obj.host_network:
            for ip in obj.ips:  # a new list, never changed in place: lookups read without the lock
                self._set_ip(ip, sorted([*self._pods_by_ip.get(ip, ()), obj], key=lambda pod: pod.created))
        elif kind == "Service":
            for port in obj.ports:
                name = f"{obj.namespace}/{obj.name}" + (f":{port.name}" if port.name else "")
                for ip in (*obj.cluster_ips, *obj.external_ips):
                    self.service_ports[(ip, port.port, port.protocol)] = (obj, port, name)
                if port.node_port:
                    self._node_ports[(port.node_port, port.protocol)] = (obj, port, name)
        elif kind == "Node":
            self._node_ips.update(obj.addresses)
        elif kind == "NetworkPolicy":
            for index, key in self._policy_indexes(obj):
                index[key] = sorted([*index.get(key, ()), obj], key=lambda policy: policy.name)

    def _unindex(self, kind: str, obj: Any, replaced: bool) -> None:
        if kind == "Pod":
            self._replace_in_ip_index(obj, None)
        elif kind == "Service":
            for key in [k for k, found in self.service_ports.items() if found[0] is obj]:
                del self.service_ports[key]
            for key in [k for k, found in self._node_ports.items() if found[0] is obj]:
                del self._node_ports[key]
        elif kind == "Node":
            self._node_ips = {ip for node in self.nodes.values() if node is not obj for ip in node.addresses}
        elif kind == "NetworkPolicy":
            for index, key in self._policy_indexes(obj):
                policies = [p for p in index.get(key, ()) if p is not obj]
                if policies:
                    index[key] = policies
                else:
                    index.pop(key, None)

    def _policy_indexes(self, policy: NetworkPolicy) -> tuple[tuple[dict[Any, list[NetworkPolicy]], Any], ...]:
        """The indexes of NetworkPolicies, each with the key ``policy`` is listed under."""
        return (self._policies_by_namespace, policy.namespace), (self._policies_by_label, _label_key(policy))

    def _replace_in_ip_index(self, old: Pod, new: Pod | None) -> None:
        for ip in old.ips:
            pods = self._pods_by_ip.get(ip)
            if pods is None:
                continue
            self._set_ip(ip, [new if p is old else p for p in pods if new is not None or p is not old])

    def _set_ip(self, ip: str, pods: list[Pod]) -> None:
        """The Pods that had ``ip``, in order of creation, and the live index when one running Pod has it."""
        if pods:
            self._pods_by_ip[ip] = pods
        else:
            self._pods_by_ip.pop(ip, None)
        if len(pods) == 1 and pods[0].finished is None and pods[0].deleted is None:
            self.live_pods[ip] = pods[0]
        else:
            self.live_pods.pop(ip, None)

    def _purge(self) -> None:
        """Forget deleted Pods older than the grace period."""
        limit = self.clock() - self.grace
        expired = [pod for pod in self._gone if (pod.deleted or 0) < limit]
        if expired:
            self._gone = [pod for pod in self._gone if (pod.deleted or 0) >= limit]
            for pod in expired:
                self._replace_in_ip_index(pod, None)

    # -- lookups -------------------------------------------------------------------------------

    def pod_at(self, ip: str, when: float | None = None) -> Pod | None:
        """The Pod that had ``ip`` at time ``when`` (default: now)."""
        pods = self._pods_by_ip.get(ip)
        if not pods:
            return None
        if len(pods) == 1 and pods[0].finished is None and pods[0].deleted is None:
            return pods[0]
        when = when or self.clock()
        best = None
        for pod in pods:  # sorted by creation: the last one alive at `when` wins
            end = min(t for t in (pod.finished, pod.deleted, float("inf")) if t is not None)
            if pod.created - SLACK <= when < end + SLACK:
                best = pod
        return best  # None when no Pod had the address then

    def service_for(self, ip: str, port: int, protocol: str) -> tuple[Service, ServicePort, str] | None:
        """The Service, its port and their ``ns/name:port`` name behind a ClusterIP, an external or
        LoadBalancer IP, or a NodePort."""
        found = self.service_ports.get((ip, port, protocol))
        if found is None and (not self._node_ips or ip in self._node_ips):
            found = self._node_ports.get((port, protocol))
        return found

    def namespace_labels(self, name: str) -> dict[str, str] | None:
        namespace = self.namespaces.get(name)
        return None if namespace is None else namespace.labels

    def policies_in(self, namespace: str) -> list[NetworkPolicy]:
        """The NetworkPolicies of a namespace, by name."""
        return self._policies_by_namespace.get(namespace, [])

    def policies_selecting(self, pod: Pod) -> list[NetworkPolicy]:
        """The NetworkPolicies whose podSelector selects ``pod``, by name: those indexed under one of its
        labels or under none, then checked."""
        index, namespace, labels = self._policies_by_label, pod.namespace, pod.labels
        found = [*index.get((namespace, None, None), ())]
        for name, value in labels.items():
            found += index.get((namespace, name, value), ())
        return sorted((p for p in found if p.pod_selector.matches(labels)), key=lambda policy: policy.name)

    def pods_in(self, namespace: str) -> list[Pod]:
        return [pod for pod in self.pods.values() if pod.namespace == namespace]

    def __len__(self) -> int:
        return sum(len(store) for store in (self.pods, self.services, self.namespaces, self.nodes, self.policies))


_POLICY_KINDS = ("NetworkPolicy", "Namespace")  # what a verdict depends on, besides its two Pods


def _label_key(policy: NetworkPolicy) -> tuple[str, str | None, str | None]:
    """Where ``policy`` is indexed: its namespace and the first label its podSelector requires (if any)."""
    labels = policy.pod_selector.labels
    return (policy.namespace, *labels[0]) if labels else (policy.namespace, None, None)
