"""Antrea's ClickHouse schema (reference §4.2), as data: the ``flows`` table, its three views, the
versioned migrations that build or upgrade it, and the DDL for one server or for a cluster.

Single server: ``flows`` (MergeTree) and the materialized views ``flows_pod_view``,
``flows_node_view`` and ``flows_policy_view`` (SummingMergeTree), as Antrea's flow-visibility chart.
Cluster (as Theia): ``flows_local`` (ReplicatedMergeTree) under a ``Distributed`` ``flows``, and each
view as ``<view>_local`` (ReplicatedSummingMergeTree) under a ``Distributed`` ``<view>``, with
``clusterUUID`` added to every view's keys.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

# The flows table, in DDL order: (name, type, DEFAULT expression or "").
FLOWS_COLUMNS: tuple[tuple[str, str, str], ...] = (
    ("timeInserted", "DateTime", "now()"),
    ("flowStartSeconds", "DateTime", ""),
    ("flowEndSeconds", "DateTime", ""),
    ("flowEndSecondsFromSourceNode", "DateTime", ""),
    ("flowEndSecondsFromDestinationNode", "DateTime", ""),
    ("flowEndReason", "UInt8", ""),
    ("sourceIP", "String", ""),
    ("destinationIP", "String", ""),
    ("sourceTransportPort", "UInt16", ""),
    ("destinationTransportPort", "UInt16", ""),
    ("protocolIdentifier", "UInt8", ""),
    ("packetTotalCount", "UInt64", ""),
    ("octetTotalCount", "UInt64", ""),
    ("packetDeltaCount", "UInt64", ""),
    ("octetDeltaCount", "UInt64", ""),
    ("reversePacketTotalCount", "UInt64", ""),
    ("reverseOctetTotalCount", "UInt64", ""),
    ("reversePacketDeltaCount", "UInt64", ""),
    ("reverseOctetDeltaCount", "UInt64", ""),
    ("sourcePodName", "String", ""),
    ("sourcePodNamespace", "String", ""),
    ("sourceNodeName", "String", ""),
    ("destinationPodName", "String", ""),
    ("destinationPodNamespace", "String", ""),
    ("destinationNodeName", "String", ""),
    ("destinationClusterIP", "String", ""),
    ("destinationServicePort", "UInt16", ""),
    ("destinationServicePortName", "String", ""),
    ("ingressNetworkPolicyName", "String", ""),
    ("ingressNetworkPolicyNamespace", "String", ""),
    ("ingressNetworkPolicyRuleName", "String", ""),
    ("ingressNetworkPolicyRuleAction", "UInt8", ""),
    ("ingressNetworkPolicyType", "UInt8", ""),
    ("egressNetworkPolicyName", "String", ""),
    ("egressNetworkPolicyNamespace", "String", ""),
    ("egressNetworkPolicyRuleName", "String", ""),
    ("egressNetworkPolicyRuleAction", "UInt8", ""),
    ("egressNetworkPolicyType", "UInt8", ""),
    ("tcpState", "String", ""),
    ("flowType", "UInt8", ""),
    ("sourcePodLabels", "String", ""),
    ("destinationPodLabels", "String", ""),
    ("throughput", "UInt64", ""),
    ("reverseThroughput", "UInt64", ""),
    ("throughputFromSourceNode", "UInt64", ""),
    ("throughputFromDestinationNode", "UInt64", ""),
    ("reverseThroughputFromSourceNode", "UInt64", ""),
    ("reverseThroughputFromDestinationNode", "UInt64", ""),
    ("clusterUUID", "String", ""),
    ("trusted", "UInt8", "0"),
    ("egressName", "String", ""),
    ("egressIP", "String", ""),
    ("egressNodeName", "String", ""),
)
COLUMN_TYPES = {name: type_ for name, type_, _ in FLOWS_COLUMNS}
# What Antrea's Flow Aggregator inserts: every column but the two with defaults.
INSERT_COLUMNS: tuple[str, ...] = tuple(name for name, _, default in FLOWS_COLUMNS if not default)

_TIMES = ("timeInserted", "flowEndSeconds", "flowEndSecondsFromSourceNode", "flowEndSecondsFromDestinationNode")
_DELTAS = ("octetDeltaCount", "reverseOctetDeltaCount", "throughput", "reverseThroughput")
_NODE_SUMS = (
    *_DELTAS,
    "throughputFromSourceNode",
    "reverseThroughputFromSourceNode",
    "throughputFromDestinationNode",
    "reverseThroughputFromDestinationNode",
)


@dataclass(frozen=True)
class View:
    """A SummingMergeTree materialized view over ``flows``: its key columns and summed columns."""

    name: str
    keys: tuple[str, ...]
    sums: tuple[str, ...]


VIEWS: tuple[View, ...] = (
    View(
        "flows_pod_view",
        (
            *_TIMES,
            "sourcePodName",
            "destinationPodName",
            "destinationIP",
            "destinationServicePort",
            "destinationServicePortName",
            "flowType",
            "sourcePodNamespace",
            "destinationPodNamespace",
            "sourceTransportPort",
            "destinationTransportPort",
        ),
        (*_DELTAS, "throughputFromSourceNode", "throughputFromDestinationNode"),
    ),
    View(
        "flows_node_view",
        (*_TIMES, "sourceNodeName", "destinationNodeName", "sourcePodNamespace", "destinationPodNamespace"),
        _NODE_SUMS,
    ),
    View(
        "flows_policy_view",
        (
            *_TIMES,
            "egressNetworkPolicyName",
            "egressNetworkPolicyNamespace",
            "egressNetworkPolicyRuleAction",
            "ingressNetworkPolicyName",
            "ingressNetworkPolicyNamespace",
            "ingressNetworkPolicyRuleAction",
            "sourcePodName",
            "sourceTransportPort",
            "sourcePodNamespace",
            "destinationPodName",
            "destinationTransportPort",
            "destinationPodNamespace",
            "destinationServicePort",
            "destinationServicePortName",
            "destinationIP",
        ),
        _NODE_SUMS,
    ),
)

MIGRATIONS_TABLE = "flowscope_migrations"
DEFAULT_TTL = 3600
"""Seconds rows live in tables flowscope creates when no ``ttl`` is given (Antrea's 1h)."""


@dataclass(frozen=True)
class Layout:
    """Where and how the schema is created: one server, or a cluster (``cluster`` names it)."""

    ttl_seconds: int = DEFAULT_TTL
    cluster: str = ""

    @property
    def on_cluster(self) -> str:
        return f" ON CLUSTER '{self.cluster}'" if self.cluster else ""

    @property
    def flows_target(self) -> str:
        """The table rows are written to by views and TTLs: ``flows``, or ``flows_local`` in a cluster."""
        return "flows_local" if self.cluster else "flows"

    def ttl_clause(self) -> str:
        merge = min(self.ttl_seconds, 14400)
        return f"TTL timeInserted + INTERVAL {self.ttl_seconds} SECOND\nSETTINGS merge_with_ttl_timeout = {merge}"

    def engine(self, kind: str, table: str) -> str:
        if not self.cluster:
            return kind
        return f"Replicated{kind}('/clickhouse/tables/{{shard}}/{{database}}/{table}', '{{replica}}')"

    def distributed(self, table: str, local: str) -> str:
        """A ``Distributed`` table over ``local`` on every shard (cluster only)."""
        return (
            f"CREATE TABLE IF NOT EXISTS {table}{self.on_cluster} AS {local}\n"
            f"ENGINE = Distributed('{self.cluster}', currentDatabase(), {local}, rand())"
        )


def column_definition(name: str) -> str:
    type_ = COLUMN_TYPES[name]
    default = next(d for n, _, d in FLOWS_COLUMNS if n == name)
    return f"{name} {type_}" + (f" DEFAULT {default}" if default else "")


def create_flows(layout: Layout) -> list[str]:
    columns = ",\n    ".join(column_definition(name) for name, _, _ in FLOWS_COLUMNS)
    table = layout.flows_target
    statements = [
        f"CREATE TABLE IF NOT EXISTS {table}{layout.on_cluster} (\n    {columns}\n)\n"
        f"ENGINE = {layout.engine('MergeTree', table)}\n"
        f"ORDER BY (timeInserted, flowEndSeconds)\n{layout.ttl_clause()}"
    ]
    if layout.cluster:
        statements.append(layout.distributed("flows", "flows_local"))
    return statements


def create_view(view: View, layout: Layout) -> list[str]:
    keys = (*view.keys, "clusterUUID") if layout.cluster else view.keys
    key_list = ",\n    ".join(keys)
    sums = ",\n    ".join(f"sum({column}) AS {column}" for column in view.sums)
    name = f"{view.name}_local" if layout.cluster else view.name
    statements = [
        f"CREATE MATERIALIZED VIEW IF NOT EXISTS {name}{layout.on_cluster}\n"
        f"ENGINE = {layout.engine('SummingMergeTree', name)}\n"
        f"ORDER BY (\n    {key_list}\n)\n{layout.ttl_clause()}\nPOPULATE\n"
        f"AS SELECT\n    {key_list},\n    {sums}\nFROM {layout.flows_target}\nGROUP BY\n    {key_list}"
    ]
    if layout.cluster:
        statements.append(layout.distributed(view.name, name))
    return statements


def add_columns(names: tuple[str, ...], layout: Layout) -> list[str]:
    """Add columns that an older ``flows`` lacks, each in its place (after its DDL predecessor)."""
    order = [name for name, _, _ in FLOWS_COLUMNS]
    tables = ["flows_local", "flows"] if layout.cluster else ["flows"]
    statements = []
    for table in tables:
        clauses = [
            f"ADD COLUMN IF NOT EXISTS {column_definition(name)} AFTER {order[order.index(name) - 1]}" for name in names
        ]
        statements.append(f"ALTER TABLE {table}{layout.on_cluster}\n    " + ",\n    ".join(clauses))
    return statements


@dataclass(frozen=True)
class Migration:
    """One versioned step; its statements are idempotent, so a half-applied step can be run again."""

    version: int
    description: str

    def statements(self, layout: Layout) -> list[str]:
        return _STEPS[self.version](layout)


_STEPS = {
    1: create_flows,
    2: lambda layout: add_columns(("trusted",), layout),
    3: lambda layout: add_columns(("egressName", "egressIP"), layout),
    4: lambda layout: add_columns(("egressNodeName",), layout),
    5: lambda layout: [statement for view in VIEWS for statement in create_view(view, layout)],
}
MIGRATIONS: tuple[Migration, ...] = (
    Migration(1, "flows table"),
    Migration(2, "flows.trusted (policy recommendation)"),
    Migration(3, "flows.egressName and flows.egressIP"),
    Migration(4, "flows.egressNodeName"),
    Migration(5, "flows_pod_view, flows_node_view and flows_policy_view"),
)
LATEST = MIGRATIONS[-1].version


def create_migrations_table(layout: Layout) -> str:
    return (
        f"CREATE TABLE IF NOT EXISTS {MIGRATIONS_TABLE}{layout.on_cluster} "
        "(version UInt32, description String, appliedAt DateTime DEFAULT now())\n"
        f"ENGINE = {layout.engine('MergeTree', MIGRATIONS_TABLE)} ORDER BY version"
    )


def pending(applied: int) -> Iterator[Migration]:
    """The migrations after version ``applied``, in order."""
    return (m for m in MIGRATIONS if m.version > applied)


def ddl(layout: Layout) -> list[str]:
    """Every statement that builds the latest schema from nothing."""
    return [statement for migration in MIGRATIONS for statement in migration.statements(layout)]
