"""``flowscope demo`` and ``flowscope up``: the exporter → aggregator → ClickHouse → dashboards stack,
on a simulated two-Node cluster or on this host, in one process until Ctrl-C or SIGTERM.

The pipelines are the same plugins any config uses: per Node, the ``conntrack`` source (in the
Node's network namespace), the ``connections`` table, the ``kubernetes`` and ``flowtype``
enrichers and the ``ipfix`` sink over mutual TLS; then the ``aggregator`` bundle with embedded
ClickHouse and the dashboards on its API.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flowscope.core.errors import FlowscopeError
from flowscope.core.ipfix.antrea import fnv1_32
from flowscope.core.pipeline import Pipeline
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import Plugins
from flowscope.entrypoints.demo import topology, workload
from flowscope.entrypoints.demo.cluster import CLUSTER, CLUSTER_CIDR, Cluster, inventory, recorded_flows

Say = Callable[[str], None]
PID_FILE = Path("/run/flowscope-demo.pid")
SUMMARY_EVERY = 5.0
_TYPES = {1: "intra-node", 2: "inter-node", 3: "to-external", 4: "from-external"}  # Antrea's flowType


@dataclass
class Stack:
    """The pipelines of a run, stopped in reverse order of their start."""

    aggregator: Pipeline
    exporters: list[Pipeline] = field(default_factory=list)

    def stop(self) -> None:
        for pipeline in self.exporters:
            pipeline.stop()
        for pipeline in self.exporters:
            pipeline.wait(15)
        self.aggregator.stop()
        self.aggregator.wait(30)


def can_simulate() -> str | None:
    """Why the cluster cannot be built here, or ``None`` when it can."""
    if os.geteuid() != 0:
        return "it needs root (network namespaces, veth links, nftables)"
    for tool in ("ip", "nft"):
        if shutil.which(tool) is None:
            package = "iproute2" if tool == "ip" else "nftables"
            return f"the '{tool}' command is missing (apt-get install {package})"
    return None


def check_port(port: int) -> None:
    """The dashboards' port is free, before anything is built."""
    with socket.socket(socket.AF_INET6) as probe:
        probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(("::", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                raise FlowscopeError(f"port {port} is in use by another process; choose another with --port") from None
            raise FlowscopeError(f"cannot use port {port}: {exc.strerror or exc}") from None


def fresh_data_dir(data_dir: Path, keep: bool, say: Say) -> None:
    if keep:
        say(f"keeping the flows of earlier runs in {data_dir} (--keep)")
    elif data_dir.exists():
        shutil.rmtree(data_dir)
        say(f"starting from a clean store: removed {data_dir} of an earlier run (--keep keeps it)")
    data_dir.mkdir(parents=True, exist_ok=True)


class Lock:
    """One demo at a time: a pid file, taken over when its process is gone."""

    def __enter__(self) -> Lock:
        try:
            other = int(PID_FILE.read_text().strip())
        except (OSError, ValueError):
            other = 0
        if other and other != os.getpid() and _alive(other):
            raise FlowscopeError(
                f"flowscope demo is already running (pid {other}); stop it first (Ctrl-C or kill {other})"
            )
        PID_FILE.write_text(f"{os.getpid()}\n")
        return self

    def __exit__(self, *exc: object) -> None:
        PID_FILE.unlink(missing_ok=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def aggregator_spec(data_dir: Path, port: int, inventory_path: Path | None) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "bundle": "aggregator",
        "aggregatorTransportProtocol": "tls",
        "listenAddress": "127.0.0.1:0",
        "grpcListenAddress": "127.0.0.1:0",
        "flowAggregatorAddress": "localhost",
        "activeFlowRecordTimeout": "5s",
        "inactiveFlowRecordTimeout": "15s",
        "clusterId": "flowscope-demo",
        "recordContents": {"podLabels": True},
        "clickHouse": {"enable": True, "databaseURL": f"chdb://{data_dir / 'clickhouse'}", "commitInterval": "1s"},
        "apiServer": {"apiPort": port},
        "shutdownTimeout": "10s",
        "dataDir": str(data_dir),
    }
    if inventory_path is not None:
        spec["inventory"] = str(inventory_path)
    return spec


def exporter_spec(
    data_dir: Path, collector: int, node: str, netns: str | None, inventory_path: Path | None, pod_cidr: str | None
) -> dict[str, Any]:
    """One Node's exporter: Antrea's Flow Exporter, as the exporter bundle builds it, with policies."""
    enrichers: list[dict[str, Any]] = []
    if inventory_path is not None:
        enrichers.append({"type": "kubernetes", "inventory": str(inventory_path), "nodeName": node,
                          "localPodsOnly": True, "networkPolicies": True})  # fmt: skip
    if pod_cidr is not None:
        enrichers.append({"type": "flowtype", "nodeName": node, "podCIDRs": [pod_cidr],
                          "clusterPodCIDRs": [CLUSTER_CIDR]})  # fmt: skip
    return {
        "sources": [{"type": "conntrack", "name": f"conntrack-{node}", "netns": netns, "pollInterval": "1s"}],
        "table": {"mode": "connections", "activeTimeout": "5s", "inactiveTimeout": "5s"},
        "enrichers": enrichers,
        "sinks": [
            {
                "type": "ipfix",
                "name": f"to-aggregator-{node}",
                "address": f"127.0.0.1:{collector}:tls",
                "observationDomainId": fnv1_32(node.encode()),
                "spool": True,
            }
        ],
        "shutdownTimeout": "5s",
        "dataDir": str(data_dir),
    }


def start_pipeline(spec: dict[str, Any], plugins: Plugins) -> Pipeline:
    pipeline = Pipeline(validate_config(spec, plugins), plugins)
    pipeline.start()
    return pipeline


def dashboards_url(stack: Stack, data_dir: Path) -> str:
    token = (data_dir / "api-token").read_text().strip()
    assert stack.aggregator.api is not None
    return f"{stack.aggregator.api.url('/ui/')}#token={token}"


def demo(plugins: Plugins, data_dir: Path, port: int, keep: bool, stop: threading.Event, say: Say) -> int:
    """Build the cluster, run the stack until ``stop``, and take everything down."""
    why_not = can_simulate()
    if why_not is not None:
        check_port(port)
        say(f"flowscope demo cannot build its cluster here: {why_not}.")
        say("Showing recorded flows of the same cluster in the dashboards instead.")
        return replay(plugins, data_dir, port, keep, stop, say)
    with Lock():
        check_port(port)
        fresh_data_dir(data_dir, keep, say)
        topology.remove_leftovers(say)
        agents: list = []
        stack = None
        try:
            topology.build(CLUSTER, say)
            inventory_path = data_dir / "inventory.yaml"
            inventory_path.write_text(inventory(CLUSTER))
            policies = len(CLUSTER.policies)
            say(f"inventory of {len(CLUSTER.pods)} Pods, 1 Service and {policies} NetworkPolicies: {inventory_path}")
            stack = _start_stack(plugins, data_dir, port, inventory_path, CLUSTER, say)
            agents = workload.start(CLUSTER)
            for talk in CLUSTER.talks:
                say(f"traffic: {talk.client} → {talk.host}:{talk.port}/{talk.protocol}: {talk.what}")
            _serve(stack, data_dir, stop, say)
        finally:
            say("stopping: draining the pipelines, removing the cluster")
            if stack is not None:
                stack.stop()
            workload.stop(agents)
            topology.remove_leftovers(lambda _line: None)
        say("stopped; nothing is left behind")
    return 0


def _start_stack(
    plugins: Plugins, data_dir: Path, port: int, inventory_path: Path, cluster: Cluster, say: Say
) -> Stack:
    stack = Stack(start_pipeline(aggregator_spec(data_dir, port, inventory_path), plugins))
    collector = stack.aggregator.sources[0][1].port
    store = data_dir / "clickhouse"
    say(f"aggregator is up: IPFIX over mutual TLS on 127.0.0.1:{collector}, embedded ClickHouse in {store}")
    try:
        for node in cluster.nodes:
            spec = exporter_spec(data_dir, collector, node.name, node.netns, inventory_path, node.pod_cidr)
            stack.exporters.append(start_pipeline(spec, plugins))
            say(f"exporter of {node.name} is up: reading {node.netns}'s conntrack every second")
    except BaseException:
        stack.stop()
        raise
    return stack


def replay(plugins: Plugins, data_dir: Path, port: int, keep: bool, stop: threading.Event, say: Say) -> int:
    """Recorded flows of the demo's cluster, into the same ClickHouse schema and dashboards."""
    fresh_data_dir(data_dir, keep, say)
    recorded = data_dir / "recorded.jsonl"
    flows = recorded_flows(CLUSTER, int(time.time()))
    recorded.write_text("".join(json.dumps(flow) + "\n" for flow in flows))
    spec = {
        "sources": [{"type": "jsonl", "path": str(recorded), "follow": True}],
        "sinks": [{"type": "clickhouse", "databaseURL": f"chdb://{data_dir / 'clickhouse'}", "commitInterval": "1s"}],
        "apiAddress": f":{port}",
        "dataDir": str(data_dir),
    }
    stack = Stack(start_pipeline(spec, plugins))
    say(f"replaying {len(flows):,} recorded flows of the last 30 minutes")
    try:
        _serve(stack, data_dir, stop, say)
    finally:
        stack.stop()
    return 0


def _serve(stack: Stack, data_dir: Path, stop: threading.Event, say: Say) -> None:
    """Print where the dashboards are, then a line of figures every few seconds until ``stop``."""
    say(f"dashboards: {dashboards_url(stack, data_dir)}")
    say("running; Ctrl-C stops it")
    last_count, last_time = 0, time.monotonic()
    while not stop.wait(SUMMARY_EVERY):
        stored = stored_flows(stack.aggregator)
        now = time.monotonic()
        received = _received(stack)
        rate = (received - last_count) / (now - last_time)
        last_count, last_time = received, now
        kinds = ", ".join(f"{_TYPES.get(kind, 'unknown')} {count:,}" for kind, count in sorted(stored.items()))
        say(f"flows stored: {sum(stored.values()):,} ({kinds or 'none yet'}); records in: {rate:,.0f}/s")


def stored_flows(aggregator: Pipeline) -> dict[int, int]:
    """Rows in ClickHouse by flowType (empty until the first commit)."""
    sink = next(runner.sink for runner in aggregator.sinks if runner.name == "clickhouse")
    try:
        _, rows = sink.query("SELECT flowType, count() FROM flows GROUP BY flowType", {})
    except Exception:
        return {}
    return {int(kind): int(count) for kind, count in rows}


def _received(stack: Stack) -> float:
    return sum(
        stack.aggregator.metrics.counters("source", name).value("received") for name, _ in stack.aggregator.sources
    )


def up(plugins: Plugins, data_dir: Path, port: int, keep: bool, stop: threading.Event, say: Say) -> int:
    """The same stack on this host's own conntrack table, with no simulation."""
    check_port(port)
    fresh_data_dir(data_dir, keep, say)
    _warn_if_untracked(say)
    stack = Stack(start_pipeline(aggregator_spec(data_dir, port, None), plugins))
    collector = stack.aggregator.sources[0][1].port
    try:
        node = socket.gethostname()
        stack.exporters.append(start_pipeline(exporter_spec(data_dir, collector, node, None, None, None), plugins))
        say(f"exporter is up: reading this host's conntrack every second, as node {node}")
        _serve(stack, data_dir, stop, say)
    finally:
        stack.stop()
    return 0


TRACKING_SETTINGS = {
    "nf_conntrack_acct": "byte and packet counts",
    "nf_conntrack_timestamp": "flow start times",
}
TRACK_EXAMPLE = (
    "nft add table inet flowscope; "
    "nft add chain inet flowscope track '{ type filter hook input priority 0; }'; "
    "nft add rule inet flowscope track ct state new counter"
)


def _warn_if_untracked(say: Say) -> None:
    """One line for each thing that keeps this host's flows from showing, with what turns it on."""
    from flowscope.plugins.sources import ctnetlink

    try:
        entries = ctnetlink.dump(ctnetlink.open_socket())
    except OSError as exc:
        raise FlowscopeError(f"cannot read this host's conntrack table: {exc.strerror or exc}; it needs root") from None
    if not entries:
        say(
            "this host's conntrack table is empty: the kernel tracks connections only once a netfilter rule "
            "in this network namespace uses connection tracking (NAT, or a stateful firewall rule); "
            f"flows appear as soon as one does, for example: {TRACK_EXAMPLE}"
        )
    for setting, what in TRACKING_SETTINGS.items():
        path = Path("/proc/sys/net/netfilter") / setting
        if path.exists() and path.read_text().strip() == "0":
            say(f"{what} are off in conntrack: sysctl -w net.netfilter.{setting}=1 turns them on")
