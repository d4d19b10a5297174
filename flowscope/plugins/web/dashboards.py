"""The six dashboards of Antrea's Grafana Flow Collector, as data: each panel's SQL and how to draw it.

A panel's SQL reads Antrea's tables (``flows``) and views (``flows_pod_view``, ``flows_node_view``,
``flows_policy_view``) with four placeholders, filled by :func:`render` for the built-in UI and by
:func:`grafana_sql` for Grafana's ClickHouse data source:

- ``{timeFilter}``: the selected time range, on ``flowEndSeconds``;
- ``{interval}``: seconds per point of a time series;
- ``{filters}``: the dashboard-wide key/value filters, as ``AND column = value`` conditions;
- ``{excluded}``: the namespaces Antrea's dashboards leave out (the system's own).

Kinds and the columns they read: ``stat`` (one value), ``table`` (any), ``sankey`` (the ``source``
columns, the ``target`` columns, ``value``), ``timeseries`` (``time``, the ``series`` columns,
``value``), ``pie`` (the ``label`` columns, ``value``).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Any

EXCLUDED_NAMESPACES = ("kube-system", "flow-visibility", "flow-aggregator")
STEPS = (10, 30, 60, 300, 900, 1800, 3600, 3 * 3600, 6 * 3600, 12 * 3600, 86400)
MAX_POINTS = 120
_PLACEHOLDER = re.compile(r"\{(timeFilter|interval|filters|excluded)\}")


@dataclass(frozen=True)
class Panel:
    """One chart or table of a dashboard."""

    id: str
    title: str
    kind: str  # stat, table, sankey, timeseries, pie
    sql: str
    table: str  # what the filters apply to: flows, or one of the views
    source: tuple[str, ...] = ()  # sankey: the columns naming a link's source
    target: tuple[str, ...] = ()  # sankey: ... its target
    series: tuple[str, ...] = ()  # timeseries: the columns naming a line
    label: tuple[str, ...] = ()  # pie: the columns naming a slice
    unit: str = ""  # bytes, bps, or a count
    description: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "kind": self.kind,
            "source": list(self.source),
            "target": list(self.target),
            "series": list(self.series),
            "label": list(self.label),
            "unit": self.unit,
            "description": self.description,
        }


@dataclass(frozen=True)
class Dashboard:
    id: str
    title: str
    description: str
    panels: tuple[Panel, ...] = field(default_factory=tuple)

    def as_dict(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "title": self.title,
            "description": self.description,
            "panels": [panel.as_dict() for panel in self.panels],
        }


POD = ("sourcePodNamespace", "sourcePodName")
DESTINATION_POD = ("destinationPodNamespace", "destinationPodName")
SERVICE = ("destinationServicePortName", "destinationServicePort")
NOT_SYSTEM = "sourcePodNamespace NOT IN {excluded} AND destinationPodNamespace NOT IN {excluded}"


def _sankey(id_: str, title: str, table: str, where: str, source: tuple, target: tuple, value: str) -> Panel:
    keys = ", ".join((*source, *target))
    return Panel(
        id_,
        title,
        "sankey",
        f"SELECT {keys}, sum({value}) AS value FROM {table} WHERE {where} AND {{timeFilter}}{{filters}} "
        f"GROUP BY {keys} HAVING value > 0 ORDER BY value DESC LIMIT 50",
        table,
        source=source,
        target=target,
        unit="bytes",
    )


def _throughput(id_: str, title: str, table: str, where: str, series: tuple, value: str = "avg(throughput)") -> Panel:
    keys = ", ".join(series)
    return Panel(
        id_,
        title,
        "timeseries",
        f"SELECT toStartOfInterval(flowEndSeconds, toIntervalSecond({{interval}})) AS time, {keys}, {value} AS value "
        f"FROM {table} WHERE {where} AND {{timeFilter}}{{filters}} GROUP BY time, {keys} ORDER BY time",
        table,
        series=series,
        unit="bps",
    )


def _pie(id_: str, title: str, table: str, where: str, label: tuple) -> Panel:
    keys = ", ".join(label)
    return Panel(
        id_,
        title,
        "pie",
        f"SELECT {keys}, sum(octetDeltaCount) AS value FROM {table} WHERE {where} AND {{timeFilter}}{{filters}} "
        f"GROUP BY {keys} HAVING value > 0 ORDER BY value DESC LIMIT 20",
        table,
        label=label,
        unit="bytes",
    )


FLOW_RECORD_COLUMNS = (
    "flowEndSeconds",
    "sourceIP",
    "sourceTransportPort",
    "destinationIP",
    "destinationTransportPort",
    "protocolIdentifier",
    "sourcePodNamespace",
    "sourcePodName",
    "sourceNodeName",
    "destinationPodNamespace",
    "destinationPodName",
    "destinationNodeName",
    "destinationServicePortName",
    "flowType",
    "tcpState",
    "octetDeltaCount",
    "reverseOctetDeltaCount",
    "throughput",
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyRuleAction",
    "egressNetworkPolicyName",
    "egressNetworkPolicyRuleAction",
)
_VERDICT = (
    "multiIf(ingressNetworkPolicyRuleAction IN (2, 3) OR egressNetworkPolicyRuleAction IN (2, 3), 'denied', "
    "ingressNetworkPolicyRuleAction = 1 OR egressNetworkPolicyRuleAction = 1, 'allowed', 'no policy')"
)
_INGRESS = "ingressNetworkPolicyNamespace", "ingressNetworkPolicyName"
_EGRESS = "egressNetworkPolicyNamespace", "egressNetworkPolicyName"

DASHBOARDS: tuple[Dashboard, ...] = (
    Dashboard(
        "flow_records",
        "Flow Records",
        "Every flow record of the time range, newest first; filters apply to every panel.",
        (
            Panel(
                "records",
                "Flow records",
                "stat",
                "SELECT count() AS value FROM flows WHERE {timeFilter}{filters}",
                "flows",
            ),
            Panel(
                "table",
                "Flow records (latest 10,000)",
                "table",
                f"SELECT {', '.join(FLOW_RECORD_COLUMNS)} FROM flows WHERE {{timeFilter}}{{filters}} "
                "ORDER BY flowEndSeconds DESC LIMIT 10000",
                "flows",
            ),
        ),
    ),
    Dashboard(
        "pod_to_pod",
        "Pod-to-Pod",
        "Traffic between Pods (intra-node and inter-node flows), without the system namespaces.",
        (
            _sankey(
                "bytes",
                "Bytes, source Pod → destination Pod",
                "flows_pod_view",
                f"flowType IN (1, 2) AND {NOT_SYSTEM}",
                POD,
                DESTINATION_POD,
                "octetDeltaCount",
            ),
            _sankey(
                "reverse_bytes",
                "Reverse bytes, source Pod → destination Pod",
                "flows_pod_view",
                f"flowType IN (1, 2) AND {NOT_SYSTEM}",
                POD,
                DESTINATION_POD,
                "reverseOctetDeltaCount",
            ),
            _throughput(
                "source_throughput",
                "Throughput by source Pod",
                "flows_pod_view",
                f"flowType IN (1, 2) AND {NOT_SYSTEM}",
                POD,
            ),
            _throughput(
                "destination_throughput",
                "Throughput by destination Pod",
                "flows_pod_view",
                f"flowType IN (1, 2) AND {NOT_SYSTEM}",
                DESTINATION_POD,
            ),
            _pie(
                "source_namespaces",
                "Bytes by source namespace",
                "flows_pod_view",
                f"flowType IN (1, 2) AND {NOT_SYSTEM}",
                ("sourcePodNamespace",),
            ),
            _pie(
                "destination_namespaces",
                "Bytes by destination namespace",
                "flows_pod_view",
                f"flowType IN (1, 2) AND {NOT_SYSTEM}",
                ("destinationPodNamespace",),
            ),
        ),
    ),
    Dashboard(
        "pod_to_external",
        "Pod-to-External",
        "Traffic from Pods to addresses outside the cluster, by destination IP.",
        (
            _sankey(
                "bytes",
                "Bytes, source Pod → destination IP",
                "flows_pod_view",
                "flowType = 3 AND sourcePodNamespace NOT IN {excluded}",
                POD,
                ("destinationIP",),
                "octetDeltaCount",
            ),
            _sankey(
                "reverse_bytes",
                "Reverse bytes, source Pod → destination IP",
                "flows_pod_view",
                "flowType = 3 AND sourcePodNamespace NOT IN {excluded}",
                POD,
                ("destinationIP",),
                "reverseOctetDeltaCount",
            ),
            _throughput(
                "source_throughput",
                "Throughput by source Pod",
                "flows_pod_view",
                "flowType = 3 AND sourcePodNamespace NOT IN {excluded}",
                POD,
            ),
            _throughput(
                "destination_throughput",
                "Throughput by destination IP",
                "flows_pod_view",
                "flowType = 3 AND sourcePodNamespace NOT IN {excluded}",
                ("destinationIP",),
            ),
        ),
    ),
    Dashboard(
        "pod_to_service",
        "Pod-to-Service",
        "Traffic from Pods to Services, by the Service's port name and port.",
        (
            _sankey(
                "bytes",
                "Bytes, source Pod → destination Service",
                "flows_pod_view",
                f"flowType IN (1, 2) AND destinationServicePortName != '' AND {NOT_SYSTEM}",
                POD,
                SERVICE,
                "octetDeltaCount",
            ),
            _sankey(
                "reverse_bytes",
                "Reverse bytes, source Pod → destination Service",
                "flows_pod_view",
                f"flowType IN (1, 2) AND destinationServicePortName != '' AND {NOT_SYSTEM}",
                POD,
                SERVICE,
                "reverseOctetDeltaCount",
            ),
            _throughput(
                "source_throughput",
                "Throughput by source Pod",
                "flows_pod_view",
                f"flowType IN (1, 2) AND destinationServicePortName != '' AND {NOT_SYSTEM}",
                POD,
            ),
            _throughput(
                "service_throughput",
                "Throughput by destination Service",
                "flows_pod_view",
                f"flowType IN (1, 2) AND destinationServicePortName != '' AND {NOT_SYSTEM}",
                SERVICE,
            ),
        ),
    ),
    Dashboard(
        "node_to_node",
        "Node-to-Node",
        "Traffic between Nodes, intra-Node and inter-Node.",
        (
            _sankey(
                "bytes",
                "Bytes, source Node → destination Node",
                "flows_node_view",
                "sourceNodeName != ''",
                ("sourceNodeName",),
                ("destinationNodeName",),
                "octetDeltaCount",
            ),
            _sankey(
                "reverse_bytes",
                "Reverse bytes, source Node → destination Node",
                "flows_node_view",
                "sourceNodeName != ''",
                ("sourceNodeName",),
                ("destinationNodeName",),
                "reverseOctetDeltaCount",
            ),
            _throughput(
                "source_throughput",
                "Throughput by source Node",
                "flows_node_view",
                "sourceNodeName != ''",
                ("sourceNodeName",),
                "sum(octetDeltaCount) * 8 / {interval}",
            ),
            _throughput(
                "destination_throughput",
                "Throughput by destination Node",
                "flows_node_view",
                "destinationNodeName != ''",
                ("destinationNodeName",),
                "sum(octetDeltaCount) * 8 / {interval}",
            ),
            _pie(
                "source_nodes", "Bytes by source Node", "flows_node_view", "sourceNodeName != ''", ("sourceNodeName",)
            ),
            _pie(
                "destination_nodes",
                "Bytes by destination Node",
                "flows_node_view",
                "destinationNodeName != ''",
                ("destinationNodeName",),
            ),
        ),
    ),
    Dashboard(
        "network_policy",
        "Network-Policy",
        "Traffic with NetworkPolicies enforced: which egress and ingress rules let it through, or denied it.",
        (
            Panel(
                "verdicts",
                "Flow records by verdict",
                "pie",
                f"SELECT {_VERDICT} AS verdict, count() AS value FROM flows WHERE {{timeFilter}}{{filters}} "
                "GROUP BY verdict ORDER BY value DESC",
                "flows",
                label=("verdict",),
            ),
            _sankey(
                "policies",
                "Bytes, egress policy → ingress policy",
                "flows_policy_view",
                "(egressNetworkPolicyName != '' OR ingressNetworkPolicyName != '')",
                _EGRESS,
                _INGRESS,
                "octetDeltaCount",
            ),
            _sankey(
                "pods",
                "Bytes between Pods under a policy",
                "flows_policy_view",
                "(egressNetworkPolicyName != '' OR ingressNetworkPolicyName != '')",
                POD,
                DESTINATION_POD,
                "octetDeltaCount",
            ),
            _throughput(
                "ingress_throughput",
                "Throughput by ingress policy",
                "flows_policy_view",
                "ingressNetworkPolicyName != ''",
                _INGRESS,
            ),
            _throughput(
                "egress_throughput",
                "Throughput by egress policy",
                "flows_policy_view",
                "egressNetworkPolicyName != ''",
                _EGRESS,
            ),
        ),
    ),
)
BY_ID = {dashboard.id: dashboard for dashboard in DASHBOARDS}


def interval(seconds: float) -> int:
    """The step of a time series over ``seconds``: the smallest that gives at most MAX_POINTS points."""
    return next((step for step in STEPS if seconds / step <= MAX_POINTS), STEPS[-1])


def render(panel: Panel, start: int, end: int, filters: dict[str, str]) -> tuple[str, dict[str, Any]]:
    """The panel's SQL for a time range and filters, with its query parameters.

    The filters' values travel as parameters, never in the SQL text; their keys must be columns of
    the panel's table (checked by the caller).
    """
    parameters: dict[str, Any] = {"start": start, "end": end}
    conditions = []
    for number, (key, value) in enumerate(sorted(filters.items())):
        parameters[f"f{number}"] = value
        conditions.append(f" AND toString({key}) = {{f{number}:String}}")
    parts = {
        "timeFilter": "flowEndSeconds BETWEEN toDateTime({start:UInt32}) AND toDateTime({end:UInt32})",
        "interval": str(interval(end - start)),
        "filters": "".join(conditions),
        "excluded": _excluded(),
    }
    return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], panel.sql), parameters


def grafana_sql(panel: Panel) -> str:
    """The panel's SQL with Grafana's macros; ad-hoc filters are the data source's to apply."""
    parts = {
        "timeFilter": "$__timeFilter(flowEndSeconds)",
        "interval": "$__interval_s",
        "filters": "",
        "excluded": _excluded(),
    }
    return _PLACEHOLDER.sub(lambda match: parts[match.group(1)], panel.sql)


def _excluded() -> str:
    return "(" + ", ".join(json.dumps(namespace).replace('"', "'") for namespace in EXCLUDED_NAMESPACES) + ")"
