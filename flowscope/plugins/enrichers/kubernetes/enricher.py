"""``kubernetes`` enricher: Pod, Service and NetworkPolicy facts for the IP addresses of flows.

Fills only fields that are empty, so what an exporter already sent is never overwritten. The
inventory comes from a static file (``inventory:``) or from the API (list and watch, through a
kubeconfig or in-cluster credentials) and is shared by every enricher of the pipeline.
"""

from __future__ import annotations

import json
import os
import time
from typing import Any, NamedTuple

from pydantic import Field

from flowscope.core.components import Batch, Enricher, Record
from flowscope.core.config import Duration, OptionsModel
from flowscope.core.errors import ConfigIssue
from flowscope.core.hookspecs import hookimpl
from flowscope.core.preflight import readable_file
from flowscope.plugins.enrichers.kubernetes.inventory import Inventory
from flowscope.plugins.enrichers.kubernetes.objects import Pod, Service, ServicePort
from flowscope.plugins.enrichers.kubernetes.policies import K8S_NETWORK_POLICY, PolicyEvaluator, Verdict
from flowscope.plugins.enrichers.kubernetes.static import load_file

_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026"})
_PROTOCOL_NAMES = {6: "TCP", 17: "UDP", 132: "SCTP"}


class KubernetesOptions(OptionsModel):
    inventory: str | None = Field(None, description="a YAML file of Kubernetes objects instead of the API")
    kubeconfig: str | None = Field(None, description="kubeconfig for the API (default: in-cluster, or ~/.kube/config)")
    context: str | None = Field(None, description="kubeconfig context")
    pods: bool = Field(True, description="fill Pod names, namespaces and nodes")
    services: bool = Field(True, description="fill destinationServicePortName from the original destination")
    networkPolicies: bool = Field(True, description="attribute flows to NetworkPolicies")
    podLabels: bool = Field(False, description="fill sourcePodLabels/destinationPodLabels (JSON, sorted keys)")
    uids: bool = Field(
        False, description="fill the UIDs of the Pods, their Nodes, the Service and the policies (sourcePodUUID ...)"
    )
    nodeName: str | None = Field(None, description="exporter mode: only Pods of this node (default: every Pod)")
    localPodsOnly: bool = Field(False, description="with nodeName: drop flows with no Pod of this node, as Antrea")
    readyTimeout: Duration = Field("30s", description="how long records wait for the first sync of the API")
    deletedPodGrace: Duration = Field("5m", description="deleted Pods still answer for flows this long")
    policyCacheSize: int = Field(
        100_000, ge=1, description="NetworkPolicy verdicts kept (one per Pod pair and port); the least recently used go"
    )


class KubernetesEnricher(Enricher):
    """Adds workload facts to records."""

    Options = KubernetesOptions

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[ConfigIssue]:
        """The inventory file and the kubeconfig, when given, can be read."""
        issues = []
        for key, what in (("inventory", "YAML file of Kubernetes objects"), ("kubeconfig", "kubeconfig file")):
            if options[key] is not None:
                issues += readable_file(key, options[key], what)
        return issues

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.with_pods, self.with_services = options["pods"], options["services"]
        self.with_policies, self.with_labels = options["networkPolicies"], options["podLabels"]
        self.with_uids = options["uids"]
        self.node = options["nodeName"]
        self.local_only = options["localPodsOnly"] and self.node is not None
        self.ready_timeout = options["readyTimeout"]
        shared = context.services.get("kubernetes")
        if shared is None:
            shared = context.services["kubernetes"] = _Shared(Inventory(grace=options["deletedPodGrace"]))
        self.shared = shared
        self.inventory = shared.inventory
        self.evaluator = PolicyEvaluator(self.inventory, options["policyCacheSize"])
        if options["inventory"] is not None:
            loaded = load_file(self.inventory, options["inventory"])
            context.logger.info(
                "inventory: %d objects from %s (%d skipped)", loaded, options["inventory"], self.inventory.skipped
            )
        elif shared.watcher is None:
            shared.watcher = _watcher(self.inventory, options, context)
        self._waited = False

    def start(self) -> None:
        if self.shared.watcher is not None and not self.shared.started:
            self.shared.started = True
            self.shared.watcher.start()

    def close(self) -> None:
        if self.shared.watcher is not None and self.shared.started:
            self.shared.started = False
            self.shared.watcher.stop()

    def enrich(self, records: Batch) -> Batch:
        if not self._waited:  # the first batch waits, bounded, for the first sync (Antrea #7223)
            self._waited = True
            if not self.inventory.ready.wait(self.ready_timeout):
                self.context.logger.warning(
                    "the Kubernetes inventory is not synced after %.0fs; enriching with what is known",
                    self.ready_timeout,
                )
        inventory, node, local_only = self.inventory, self.node, self.local_only
        live, pod_at = inventory.live_pods.get, inventory.pod_at
        service_port, service_for = inventory.service_ports.get, inventory.service_for
        with_pods, with_labels, with_services = self.with_pods, self.with_labels, self.with_services
        with_uids, verdicts = self.with_uids, self.evaluator.verdicts if self.with_policies else None
        kept: Batch = []
        for record in records:  # flat, with no calls on the common path: this runs for every record
            keys = _V4 if "sourceIPv4Address" in record else _V6
            src_key, dst_key, service_key, _ = keys
            src_ip = record.get(src_key) or ""
            dst_ip = record.get(dst_key) or ""
            protocol = record.get("protocolIdentifier", 0)
            src = src_pod = live(src_ip)
            if src is None and src_ip:
                src = src_pod = pod_at(src_ip, record.get("flowStartSeconds") or time.time())
            dst = dst_pod = live(dst_ip)
            if dst is None and dst_ip:
                dst = dst_pod = pod_at(dst_ip, record.get("flowStartSeconds") or time.time())
            if node is not None:
                src = src if src is not None and src.node == node else None
                dst = dst if dst is not None and dst.node == node else None
                if local_only and src is None and dst is None:
                    continue  # Antrea's agent exports only connections of its own Pods
            if with_pods:
                if src is not None and not record.get("sourcePodName"):
                    record["sourcePodName"] = src.name
                    record["sourcePodNamespace"] = src.namespace
                    if not record.get("sourceNodeName"):
                        record["sourceNodeName"] = src.node
                if dst is not None and not record.get("destinationPodName"):
                    record["destinationPodName"] = dst.name
                    record["destinationPodNamespace"] = dst.namespace
                    if not record.get("destinationNodeName"):
                        record["destinationNodeName"] = dst.node
            if with_labels:
                _fill_labels(record, "sourcePodLabels", src)
                _fill_labels(record, "destinationPodLabels", dst)
            if with_services and not record.get("destinationServicePortName"):
                ip, port = record.get(service_key), record.get("destinationServicePort")
                if ip and port and ip not in _UNSPECIFIED:  # as _service, without looking at what is not needed
                    key = (ip, port, _PROTOCOL_NAMES.get(protocol, ""))
                    found = service_port(key) or service_for(*key)
                    if found is not None:
                        record["destinationServicePortName"] = found[2]
                        record["destinationServicePort"] = found[1].port
                else:
                    self._fill_service(record, keys, dst_ip)
            if with_uids:
                self._fill_uids(record, keys, dst_ip, src, dst)
            if verdicts is not None and (src is not None or dst is not None):
                # a rule's peers are Pods of any Node; the verdicts are those of this Node's Pods
                ingress, egress = verdicts(
                    src_ip, src_pod, dst_ip, dst_pod, protocol, record.get("destinationTransportPort", 0)
                )
                if ingress is not None and dst is not None and not record.get("ingressNetworkPolicyRuleAction"):
                    _fill_verdict(record, _INGRESS, ingress)
                if egress is not None and src is not None and not record.get("egressNetworkPolicyRuleAction"):
                    _fill_verdict(record, _EGRESS, egress)
            kept.append(record)
        return kept

    def _service(self, record: Record, keys: _Keys, dst_ip: str) -> tuple[Service, ServicePort, str, str] | None:
        """The Service port the flow went to (Service, port, port name) and the address it was reached at."""
        ip = record.get(keys.service) or record.get(keys.cluster)
        port = record.get("destinationServicePort")
        if not ip or ip in _UNSPECIFIED or not port:
            ip, port = dst_ip, record.get("destinationTransportPort")  # a flow seen before DNAT
        found = self.inventory.service_for(ip, port or 0, _PROTOCOL_NAMES.get(record.get("protocolIdentifier"), ""))
        return None if found is None else (*found, ip)

    def _fill_uids(self, record: Record, keys: _Keys, dst_ip: str, src: Pod | None, dst: Pod | None) -> None:
        """The UIDs Antrea's aggregator adds with ``includeK8sUIDs``, for the objects the record names or
        the inventory finds; those the record has already are kept."""
        nodes, policies = self.inventory.nodes, self.inventory.policies
        found: dict[str, Any] = {
            "sourcePodUUID": src,
            "destinationPodUUID": dst,
            "sourceNodeUUID": nodes.get(record.get("sourceNodeName") or (src.node if src else "")),
            "destinationNodeUUID": nodes.get(record.get("destinationNodeName") or (dst.node if dst else "")),
            "egressNodeUUID": nodes.get(record.get("egressNodeName") or ""),
        }
        for direction in ("ingress", "egress"):
            name = record.get(f"{direction}NetworkPolicyName")
            if name and record.get(f"{direction}NetworkPolicyType") == K8S_NETWORK_POLICY:
                found[f"{direction}NetworkPolicyUUID"] = policies.get(
                    f"{record.get(f'{direction}NetworkPolicyNamespace') or ''}/{name}"
                )
        if record.get("destinationServicePortName") and not record.get("destinationServiceUUID"):
            service = self._service(record, keys, dst_ip)
            found["destinationServiceUUID"] = service[0] if service else None
        for key, obj in found.items():
            if obj is not None and obj.uid and not record.get(key):
                record[key] = obj.uid

    def _fill_service(self, record: Record, keys: _Keys, dst_ip: str) -> None:
        found = self._service(record, keys, dst_ip)
        if found is not None:
            _, port, port_name, ip = found
            record["destinationServicePortName"] = port_name
            record["destinationServicePort"] = port.port
            if not record.get(keys.service):
                record[keys.service] = ip


class _Keys(NamedTuple):
    src: str
    dst: str
    service: str
    cluster: str


_V4 = _Keys("sourceIPv4Address", "destinationIPv4Address", "destinationServiceIPv4", "destinationClusterIPv4")
_V6 = _Keys("sourceIPv6Address", "destinationIPv6Address", "destinationServiceIPv6", "destinationClusterIPv6")
_UNSPECIFIED = ("0.0.0.0", "::")


class _Shared:
    """The pipeline's one inventory, and the watcher that keeps it in sync (if any)."""

    def __init__(self, inventory: Inventory):
        self.inventory = inventory
        self.watcher: Any = None
        self.started = False


def _fill_verdict(record: Record, keys: tuple[str, ...], verdict: Verdict) -> None:
    """The five fields of a direction's verdict (keys: _INGRESS or _EGRESS)."""
    name, namespace, kind, rule, action = keys
    record[name] = verdict.name
    record[namespace] = verdict.namespace
    record[kind] = K8S_NETWORK_POLICY
    record[rule] = verdict.rule
    record[action] = verdict.action


_INGRESS, _EGRESS = (
    tuple(f"{direction}NetworkPolicy{field}" for field in ("Name", "Namespace", "Type", "RuleName", "RuleAction"))
    for direction in ("ingress", "egress")
)


def _fill_labels(record: Record, key: str, pod: Pod | None) -> None:
    if pod is not None and not record.get(key):
        record[key] = json.dumps(pod.labels, sort_keys=True, separators=(",", ":"), ensure_ascii=False).translate(
            _GO_ESCAPES
        )


def _watcher(inventory: Inventory, options: dict[str, Any], context: Any) -> Any:
    """A list/watch of the API: the kubeconfig given, else in-cluster credentials, else $KUBECONFIG or
    ~/.kube/config (the watcher reports clearly when none can be used)."""
    from flowscope.plugins.enrichers.kubernetes.watch import Watcher

    in_cluster = options["kubeconfig"] is None and "KUBERNETES_SERVICE_HOST" in os.environ
    return Watcher(
        inventory,
        kubeconfig=options["kubeconfig"],
        context=options["context"],
        in_cluster=in_cluster,
        logger=context.logger,
        metrics=context.metrics,
    )


@hookimpl
def register_enrichers(register):
    register("kubernetes", KubernetesEnricher)
