"""Benchmark: the aggregator bundle, IPFIX in over TCP → correlation → json sink.

For 10k, 100k and 500k concurrent connections, both nodes' records of every connection are sent
to ``flowscope aggregator``; its CPU time (all threads) gives records per CPU-second, the output
shows whether any record was lost, and the memory per tracked flow is measured in-process.

    .venv/bin/python tests/bench/bench_aggregator.py [--flows 10000,100000,500000]
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench_ipfix import cpu_seconds, free_port  # tests/bench/bench_ipfix.py

from flowscope.core.aggregation import Aggregation
from flowscope.core.flowtable import FlowTable
from flowscope.core.ipfix import MessageWriter
from flowscope.core.ipfix.antrea import EXPORTER_IPV4
from flowscope.testing import builtin_elements

FLOWSCOPE = [sys.executable, "-m", "flowscope.entrypoints.cli", "--log-level", "warning"]


def halves(flows: int) -> tuple[list[dict], list[dict]]:
    """The source-node and destination-node records of ``flows`` inter-node connections."""
    sources, destinations = [], []
    for i in range(flows):
        base = {name: 0 for name in EXPORTER_IPV4}
        base.update(
            flowStartSeconds=1767225600,
            flowEndSeconds=1767225660,
            flowEndReason=2,
            protocolIdentifier=6,
            sourceTransportPort=10000 + i % 50000,
            destinationTransportPort=8080,
            packetTotalCount=100,
            octetTotalCount=120000,
            packetDeltaCount=100,
            octetDeltaCount=120000,
            sourceIPv4Address=f"10.244.{(i >> 16) & 255}.{(i >> 8) & 255}",
            destinationIPv4Address=f"10.245.0.{i & 255}",
            flowType=2,
            tcpState="ESTABLISHED",
            destinationClusterIPv4="0.0.0.0",
            proxySnatIPv4="0.0.0.0",
            destinationServiceIPv4="0.0.0.0",
            sourcePodName="",
            destinationPodName="",
        )
        for name in (
            "sourcePodNamespace",
            "sourceNodeName",
            "destinationPodNamespace",
            "destinationNodeName",
            "destinationServicePortName",
            "ingressNetworkPolicyName",
            "ingressNetworkPolicyNamespace",
            "ingressNetworkPolicyRuleName",
            "egressNetworkPolicyName",
            "egressNetworkPolicyNamespace",
            "egressNetworkPolicyRuleName",
            "egressName",
            "egressIP",
            "egressNodeName",
        ):
            base[name] = ""
        sources.append({**base, "sourcePodName": f"client-{i}", "sourcePodNamespace": "shop", "sourceNodeName": "n1"})
        destinations.append(
            {
                **base,
                "destinationPodName": f"server-{i % 97}",
                "destinationPodNamespace": "shop",
                "destinationNodeName": "n2",
            }
        )
    return sources, destinations


def run(flows: int, work: Path) -> tuple[float, int]:
    port = free_port(socket.SOCK_STREAM)
    out = work / f"out-{flows}.jsonl"
    config = work / "aggregator.yaml"
    config.write_text(
        f"aggregatorTransportProtocol: tcp\nlistenAddress: '127.0.0.1:{port}'\nactiveFlowRecordTimeout: 600s\n"
        f"inactiveFlowRecordTimeout: 900s\napiServer: {{apiPort: {free_port(socket.SOCK_STREAM)}}}\n"
        f"dataDir: {work / 'data'}\nmetricsAddress: '127.0.0.1:0'\n"
        f"sinks: [{{type: json, path: {out}, batchSize: 5000, onFull: block}}]\nshutdownTimeout: 60s\n"
    )
    process = subprocess.Popen([*FLOWSCOPE, "aggregator", "-c", str(config)])
    sources, destinations = halves(flows)
    writer = MessageWriter(builtin_elements())
    messages = [
        m
        for chunk in range(0, flows, 2000)
        for half in (sources, destinations)
        for m in writer.encode(half[chunk : chunk + 2000])[0]
    ]
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sender = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the aggregator did not start"
                time.sleep(0.2)
        before = cpu_seconds(process.pid)
        with sender:  # open until the output is complete: the session's thread (it decodes) must be counted
            for message in messages:
                sender.sendall(message)
            deadline = time.monotonic() + 300
            while _lines(out) < flows and time.monotonic() < deadline:
                time.sleep(0.2)
            used = cpu_seconds(process.pid) - before
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)
    return used, _lines(out)


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as stream:
        return sum(1 for _ in stream)


def memory_per_flow(flows: int) -> float:
    sources, _ = halves(flows)
    gc.collect()
    before = _rss()
    table = FlowTable(Aggregation(600, 900))
    table.offer(sources, 0.0, [])
    del sources
    gc.collect()
    return (_rss() - before) / flows


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", default="10000,100000,500000")
    args = parser.parse_args()
    print(f"{'flows':>8} {'records':>8} {'CPU s':>7} {'records/CPU-s':>14} {'lost':>5} {'bytes/flow':>11}")
    with tempfile.TemporaryDirectory() as tmp:
        for flows in (int(f) for f in args.flows.split(",")):
            used, exported = run(flows, Path(tmp))
            per_flow = memory_per_flow(flows)
            print(
                f"{flows:>8} {2 * flows:>8} {used:>7.2f} {2 * flows / used:>14,.0f} {flows - exported:>5} "
                f"{per_flow:>11,.0f}"
            )
    print("targets: at least 100,000 records per CPU-second, zero loss over TCP, under 1 KB per tracked flow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
