"""The inventory: the cluster's Pods, Services, Namespaces, Nodes and NetworkPolicies, indexed for
flow enrichment, fed by the API (list and watch) or by a static file.

The IP index knows time: an IP reused by a new Pod after a finished Job Pod resolves to the Pod
that was alive when the flow started (Antrea #8030). Deleted and finished Pods stay indexed for a
grace period; host-network Pods are not indexed by IP.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import defaultdict
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
        self.version = 0  # changes whenever a policy verdict could change
        self.skipped = 0  # objects that could not be used
        self._lock = threading.RLock()
        self.pods: dict[str, Pod] = {}
        self.services: dict[str, Service] = {}
        self.namespaces: dict[str, Namespace] = {}
        self.nodes: dict[str, Node] = {}
        self.policies: dict[str, NetworkPolicy] = {}
        self.slices: dict[str, EndpointSlice] = {}
        self._pods_by_ip: dict[str, list[Pod]] = {}
        self._gone: list[Pod] = []  # deleted Pods still indexed, for the grace period
        self._service_ports: dict[tuple[str, int, str], tuple[Service, ServicePort, str]] = {}
        self._node_ports: dict[tuple[int, str], tuple[Service, ServicePort, str]] = {}
        self._node_ips: set[str] = set()
        self._policies_by_namespace: dict[str, list[NetworkPolicy]] = defaultdict(list)

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

    def _delete(self, kind: str, obj: Any) -> None:
        store = self._store(kind)
        old = store.pop(self._key(kind, obj), None)
        if old is None:
            return
        if kind == "Pod":  # keep answering for flows that started before the deletion
            gone = Pod(**{**_fields(old), "deleted": old.deleted or self.clock()})
            self._replace_in_ip_index(old, gone)
            self._gone.append(gone)
            self._purge()
        else:
            self._unindex(kind, old, replaced=False)

    def _index(self, kind: str, obj: Any) -> None:
        if kind == "Pod" and not obj.host_network:
            for ip in obj.ips:  # a new list, never changed in place: lookups read without the lock
                self._pods_by_ip[ip] = sorted([*self._pods_by_ip.get(ip, ()), obj], key=lambda pod: pod.created)
        elif kind == "Service":
            for port in obj.ports:
                name = f"{obj.namespace}/{obj.name}" + (f":{port.name}" if port.name else "")
                for ip in (*obj.cluster_ips, *obj.external_ips):
                    self._service_ports[(ip, port.port, port.protocol)] = (obj, port, name)
                if port.node_port:
                    self._node_ports[(port.node_port, port.protocol)] = (obj, port, name)
        elif kind == "Node":
            self._node_ips.update(obj.addresses)
        elif kind == "NetworkPolicy":
            self._policies_by_namespace[obj.namespace] = [*self._policies_by_namespace[obj.namespace], obj]

    def _unindex(self, kind: str, obj: Any, replaced: bool) -> None:
        if kind == "Pod":
            self._replace_in_ip_index(obj, None)
        elif kind == "Service":
            for key in [k for k, found in self._service_ports.items() if found[0] is obj]:
                del self._service_ports[key]
            for key in [k for k, found in self._node_ports.items() if found[0] is obj]:
                del self._node_ports[key]
        elif kind == "Node":
            self._node_ips = {ip for node in self.nodes.values() if node is not obj for ip in node.addresses}
        elif kind == "NetworkPolicy":
            policies = self._policies_by_namespace[obj.namespace]
            self._policies_by_namespace[obj.namespace] = [p for p in policies if p is not obj]

    def _replace_in_ip_index(self, old: Pod, new: Pod | None) -> None:
        for ip in old.ips:
            pods = self._pods_by_ip.get(ip)
            if pods is None:
                continue
            pods = [new if p is old else p for p in pods if new is not None or p is not old]
            if pods:
                self._pods_by_ip[ip] = pods
            else:
                del self._pods_by_ip[ip]

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
        found = self._service_ports.get((ip, port, protocol))
        if found is None and (not self._node_ips or ip in self._node_ips):
            found = self._node_ports.get((port, protocol))
        return found

    def namespace_labels(self, name: str) -> dict[str, str] | None:
        namespace = self.namespaces.get(name)
        return None if namespace is None else namespace.labels

    def policies_in(self, namespace: str) -> list[NetworkPolicy]:
        return self._policies_by_namespace.get(namespace, [])

    def pods_in(self, namespace: str) -> list[Pod]:
        return [pod for pod in self.pods.values() if pod.namespace == namespace]

    def __len__(self) -> int:
        return sum(len(store) for store in (self.pods, self.services, self.namespaces, self.nodes, self.policies))


def _fields(pod: Pod) -> dict[str, Any]:
    return {name: getattr(pod, name) for name in Pod.__dataclass_fields__}
