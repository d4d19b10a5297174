"""Two exporters on two "nodes" (network namespaces) and one aggregator: correlation end to end.

Node A runs the client Pod, node B the server Pod. Each exporter reads its own node's conntrack
table and knows the Pods from a static inventory; the aggregator correlates the two halves of the
inter-node connection into one record.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import COLLECTED, build

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and conntrack need root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
]

A, B = f"fsga{os.getpid()}", f"fsgb{os.getpid()}"
A4, B4 = "10.231.8.11", "10.231.8.20"
RATE_DATAGRAMS, PAYLOAD, SECONDS = 100, 1000, 8
TRACK = (
    "table inet t {\n chain o {\n  type filter hook output priority 0; ct state new counter\n }\n"
    " chain i {\n  type filter hook input priority 0; ct state new counter\n }\n}\n"
)
INVENTORY = f"""
kind: List
items:
  - {{kind: Namespace, metadata: {{name: shop}}}}
  - kind: Pod
    metadata: {{name: client-0, namespace: shop, creationTimestamp: "2020-01-01T00:00:00Z", labels: {{app: client}}}}
    spec: {{nodeName: node-a}}
    status: {{phase: Running, podIP: {A4}}}
  - kind: Pod
    metadata: {{name: server-0, namespace: shop, creationTimestamp: "2020-01-01T00:00:00Z", labels: {{app: server}}}}
    spec: {{nodeName: node-b}}
    status: {{phase: Running, podIP: {B4}}}
"""


def sh(*args: str, ns: str | None = None) -> None:
    command = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    subprocess.run(command, check=True, capture_output=True, timeout=30)


@pytest.fixture(scope="module")
def nodes():
    for ns in (A, B):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", "veth-a", "netns", A, "type", "veth", "peer", "name", "veth-b", "netns", B)
        for ns, dev, ip in ((A, "veth-a", A4), (B, "veth-b", B4)):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "addr", "add", f"{ip}/24", "dev", dev, ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
            subprocess.run(["ip", "netns", "exec", ns, "nft", "-f", "-"], input=TRACK, text=True, check=True)
        yield
    finally:
        for ns in (A, B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


@pytest.mark.parametrize("transport", ["tcp", "grpc"])
def test_inter_node_flow_is_one_correlated_record(nodes, tmp_path, transport):
    """Over IPFIX (tcp), and over Antrea's gRPC with mutual TLS and the IPFIX collector off."""
    service_port = {"tcp": 6000, "grpc": 6001}[transport]  # the other run's conntrack entries may linger
    COLLECTED.pop("aggregated", None)
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    aggregator = build(
        {
            "bundle": "aggregator",
            "aggregatorTransportProtocol": "tcp" if transport == "tcp" else "None",
            "listenAddress": "127.0.0.1:0",
            "grpcListenAddress": "127.0.0.1:0",
            "activeFlowRecordTimeout": "3s",
            "inactiveFlowRecordTimeout": "6s",
            "clusterId": "test-cluster",
            "inventory": str(inventory),
            "recordContents": {"podLabels": True},
            "sinks": [{"type": "collect", "name": "aggregated", "flushInterval": "50ms"}],
            "metricsAddress": "127.0.0.1:0",
            "dataDir": str(tmp_path / "aggregator"),
        }
    )
    aggregator.start()
    [source] = [s for name, s in aggregator.sources if name == ("ipfix" if transport == "tcp" else "grpc")]
    assert len(aggregator.sources) == (2 if transport == "tcp" else 1)  # gRPC always listens, as in Antrea
    certs = tmp_path / "aggregator" / "certs"  # made by the aggregator on first use; gRPC is mutual TLS
    tls = {
        "caCert": str(certs / "ca.crt"),
        "clientCert": str(certs / "client.crt"),
        "clientKey": str(certs / "client.key"),
    }
    exporters = []
    for ns, node, cidr in ((A, "node-a", "10.231.8.0/28"), (B, "node-b", "10.231.8.16/28")):
        exporter = build(
            {
                "bundle": "exporter",
                "flowCollectorAddr": f"127.0.0.1:{source.port}:{transport}",
                "tls": tls if transport == "grpc" else {},
                "netns": ns,
                "nodeName": node,
                "flowPollInterval": "1s",
                "activeFlowExportTimeout": "2s",
                "idleFlowExportTimeout": "3s",
                "nodePodCIDRs": [cidr],
                "podCIDRs": "10.231.8.0/24",  # Antrea's form: the cluster's Pod CIDRs, comma-separated
                "inventory": str(inventory),
                "metricsAddress": "127.0.0.1:0",
                "dataDir": str(tmp_path / node),
            }
        )
        exporter.start()
        exporters.append(exporter)
    try:
        server = subprocess.Popen(
            [
                "ip",
                "netns",
                "exec",
                B,
                sys.executable,
                "-c",
                "import socket; s=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
                f"s.bind(('{B4}', {service_port})); s.settimeout(3)\n"
                "try:\n while True: s.recv(65536)\nexcept OSError: pass",
            ]
        )
        interval = 1 / RATE_DATAGRAMS
        sh(
            sys.executable,
            "-c",
            "import socket, time; c=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); t=time.monotonic()\n"
            f"for i in range({RATE_DATAGRAMS * SECONDS}):\n"
            f" c.sendto(b'x'*{PAYLOAD}, ('{B4}', {service_port}))\n"
            f" time.sleep(max(0, t + (i + 1) * {interval} - time.monotonic()))",
            ns=A,
        )
        traffic_end = int(time.time())
        server.wait(10)
        sent = RATE_DATAGRAMS * SECONDS * (PAYLOAD + 28)
        deadline = time.monotonic() + 20
        while not any(
            r.get("octetTotalCountFromSourceNode") == r.get("octetTotalCountFromDestinationNode") == sent
            for r in COLLECTED.get("aggregated", [])
            if r.get("destinationTransportPort") == service_port
        ):
            assert time.monotonic() < deadline, (
                f"both nodes' totals never reached {sent}: {COLLECTED.get('aggregated')}"
            )
            time.sleep(0.2)
    finally:
        for pipeline in (*exporters, aggregator):
            pipeline.stop()
            pipeline.wait(10)
    records = [r for r in COLLECTED["aggregated"] if r["destinationTransportPort"] == service_port]
    final = next(
        r for r in records if r["octetTotalCountFromSourceNode"] == r["octetTotalCountFromDestinationNode"] == sent
    )
    assert (
        final["sourcePodName"],
        final["sourceNodeName"],
        final["destinationPodName"],
        final["destinationNodeName"],
    ) == ("client-0", "node-a", "server-0", "node-b")
    assert (final["flowType"], final["clusterId"]) == (2, "test-cluster")
    assert (final["sourcePodLabels"], final["destinationPodLabels"]) == ('{"app":"client"}', '{"app":"server"}')
    assert final["octetTotalCount"] == sent
    for side in ("Source", "Destination"):  # each node's bytes are reported once, over all exports
        assert sum(r[f"octetDeltaCountFrom{side}Node"] for r in records) == sent
    rate = RATE_DATAGRAMS * (PAYLOAD + 28) * 8
    # while the traffic ran (after it, conntrack cannot tell the last packet's time: idle time dilutes the rate)
    steady = [
        r
        for r in records
        if r["flowEndSeconds"] - r["flowStartSeconds"] > 3 and r["flowEndSeconds"] <= traffic_end and r["throughput"]
    ]
    assert steady, records
    # one record's throughput divides the bytes since the previous report by whole seconds between
    # polls, so one late poll on a busy machine moves it far; their median stays near the rate
    for name in ("throughput", "throughputFromSourceNode", "throughputFromDestinationNode"):
        values = sorted(record[name] for record in steady)
        assert all(0 < value < 3 * rate for value in values), (name, values, rate)
        median = values[len(values) // 2]
        assert abs(median - rate) <= 0.2 * rate, (name, values, rate)
