"""Benchmark: the aggregator bundle, IPFIX in over TCP → correlation → json sink.

For 10k, 100k and 500k concurrent connections, both nodes' records of every connection are sent
to ``flowscope aggregator``; its CPU time (all threads) gives records per CPU-second, the output
shows whether any record was lost, and the memory per tracked flow is measured in a new process. Each
size runs ``--rounds`` times, each in a new aggregator; the median is shown with the range, and
the share of the CPU time spent in the kernel (page faults, copying the output to the page cache).

    .venv/bin/python tests/bench/bench_aggregator.py [--flows 10000,100000,500000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from bench_ipfix import free_port  # tests/bench/bench_ipfix.py
from measure import cpu_seconds  # tests/bench/measure.py

from flowscope.core.flowtable import FlowTable
from flowscope.core.ipfix import MessageWriter
from flowscope.core.ipfix.antrea import EXPORTER_IPV4
from flowscope.entrypoints.aggregator.aggregation import Aggregation
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


class Round(NamedTuple):
    cpu: float  # seconds, every thread of the aggregator
    kernel: float  # the kernel's share of it
    exported: int


def messages_for(flows: int) -> list[bytes]:
    """The IPFIX messages of both halves of ``flows`` connections, 2,000 records a message set."""
    sources, destinations = halves(flows)
    writer = MessageWriter(builtin_elements())
    return [
        m
        for chunk in range(0, flows, 2000)
        for half in (sources, destinations)
        for m in writer.encode(half[chunk : chunk + 2000])[0]
    ]


def run(flows: int, messages: list[bytes], work: Path, round_: int) -> Round:
    port = free_port(socket.SOCK_STREAM)
    out = work / f"out-{flows}-{round_}.jsonl"  # kept to the end: no round writes into pages another freed
    config = work / "aggregator.yaml"
    config.write_text(
        f"aggregatorTransportProtocol: tcp\nlistenAddress: '127.0.0.1:{port}'\n"
        "grpcListenAddress: '127.0.0.1:0'\nactiveFlowRecordTimeout: 600s\n"
        f"inactiveFlowRecordTimeout: 900s\napiServer: {{apiPort: {free_port(socket.SOCK_STREAM)}}}\n"
        f"dataDir: {work / 'data'}\nmetricsAddress: '127.0.0.1:0'\n"
        f"sinks: [{{type: json, path: {out}, batchSize: 5000, onFull: block}}]\nshutdownTimeout: 60s\n"
    )
    process = subprocess.Popen([*FLOWSCOPE, "aggregator", "-c", str(config)])
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                sender = socket.create_connection(("127.0.0.1", port), timeout=5)
                break
            except OSError:
                assert time.monotonic() < deadline, "the aggregator did not start"
                time.sleep(0.2)
        before, ticks_before = cpu_seconds(process.pid), _ticks(process.pid)
        with sender:  # open until the output is complete: the session's thread (it decodes) must be counted
            for message in messages:
                sender.sendall(message)
            deadline = time.monotonic() + 300
            while _lines(out) < flows and time.monotonic() < deadline:
                time.sleep(0.2)
            used = cpu_seconds(process.pid) - before
            user, system = (after - earlier for after, earlier in zip(_ticks(process.pid), ticks_before, strict=True))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(120)
    return Round(used, system / max(1, user + system), _lines(out))


def _ticks(pid: int) -> tuple[int, int]:
    """User and kernel CPU time of a process (all threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as stream:
        return sum(1 for _ in stream)


def memory_per_flow(flows: int) -> float:
    """Bytes of resident memory per tracked flow, measured in a new process (where no freed memory
    can be reused without showing)."""
    script = f"import bench_aggregator as b; print(b.measure_memory_per_flow({flows}))"
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=Path(__file__).parent, capture_output=True, text=True, check=True
    )
    return float(done.stdout)


def measure_memory_per_flow(flows: int) -> float:
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
    parser.add_argument("--rounds", type=int, default=3, help="aggregator runs per size (default 3)")
    args = parser.parse_args()
    print(
        f"{'flows':>8} {'records':>9} {'CPU s':>6} {'records/CPU-s':>14} {'range':>17} {'kernel':>7} {'lost':>5}"
        f" {'bytes/flow':>11}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        for flows in (int(f) for f in args.flows.split(",")):
            messages = messages_for(flows)
            rounds = [run(flows, messages, Path(tmp), n) for n in range(args.rounds)]
            del messages
            rates = sorted(2 * flows / r.cpu for r in rounds)
            per_flow = memory_per_flow(flows)
            print(
                f"{flows:>8} {2 * flows:>9} {statistics.median(r.cpu for r in rounds):>6.2f}"
                f" {statistics.median(rates):>14,.0f} {f'{rates[0]:,.0f}-{rates[-1]:,.0f}':>17}"
                f" {statistics.median(r.kernel for r in rounds):>7.0%} {max(flows - r.exported for r in rounds):>5}"
                f" {per_flow:>11,.0f}"
            )
    print("targets: at least 100,000 records per CPU-second, zero loss over TCP, under 1 KB per tracked flow")
    return 0


if __name__ == "__main__":
    sys.exit(main())
