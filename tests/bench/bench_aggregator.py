"""Benchmark: the aggregator bundle, IPFIX in over TCP → correlation → json sink.

Speed: for each of ``--flows`` concurrent connections, both nodes' records of every connection are
sent to ``flowscope aggregator``; its CPU time (all threads) gives records per CPU-second, and the
output shows whether any record was lost.

Memory: for each of ``--memory-flows``, both nodes' records of every connection are sent to a new
aggregator with long timeouts; once it has exported every correlated record and its flow table holds
every flow (kept until the inactive timeout), and it has been idle for a few seconds, the growth of
the whole process's resident memory since just after start-up, divided by the flows, is the memory
per tracked flow: the table's flows and whatever else the process kept or did not give back.

Each size runs ``--rounds`` times, each in a new aggregator; the median is shown with the range.

    .venv/bin/python tests/bench/bench_aggregator.py [--flows 10000,100000] [--memory-flows 100000,500000] [--rounds 3]
"""

from __future__ import annotations

import argparse
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import NamedTuple

from bench_ipfix import free_port, metric  # tests/bench/bench_ipfix.py
from measure import Row, Spread, cpu_seconds, report, rss_bytes  # tests/bench/measure.py

from flowscope.core.ipfix import MessageWriter
from flowscope.core.ipfix.antrea import EXPORTER_IPV4
from flowscope.testing import builtin_elements

IDLE = 3.0
"""Seconds the aggregator is left idle, holding its flows, before its memory is read."""
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


def messages_for(halves_: tuple[list[dict], ...]) -> list[bytes]:
    """The IPFIX messages of these halves of the connections, 2,000 records a message set, alternating."""
    writer = MessageWriter(builtin_elements())
    return [
        m
        for chunk in range(0, len(halves_[0]), 2000)
        for half in halves_
        for m in writer.encode(half[chunk : chunk + 2000])[0]
    ]


class Aggregator:
    """A ``flowscope aggregator`` process taking IPFIX over TCP, writing JSON lines to ``out``."""

    def __init__(self, work: Path, out: Path, kill: bool = False):
        self.kill = kill
        self.port, self.metrics_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
        config = work / "aggregator.yaml"
        config.write_text(
            f"aggregatorTransportProtocol: tcp\nlistenAddress: '127.0.0.1:{self.port}'\n"
            "grpcListenAddress: '127.0.0.1:0'\nactiveFlowRecordTimeout: 600s\n"
            f"inactiveFlowRecordTimeout: 900s\napiServer: {{apiPort: {free_port(socket.SOCK_STREAM)}}}\n"
            f"dataDir: {work / 'data'}\nmetricsAddress: '127.0.0.1:{self.metrics_port}'\n"
            f"sinks: [{{type: json, path: {out}, batchSize: 5000, onFull: block}}]\nshutdownTimeout: 60s\n"
        )
        self.process = subprocess.Popen([*FLOWSCOPE, "aggregator", "-c", str(config)])

    def __enter__(self) -> Aggregator:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.kill:  # its flows' exports at a stop are not measured
            self.process.kill()
        else:
            self.process.send_signal(signal.SIGTERM)
        self.process.wait(120)

    def connect(self) -> socket.socket:
        """A connection to its collector, once it serves its metrics and accepts one."""
        deadline = time.monotonic() + 30
        while True:
            try:
                self.tracked()
                return socket.create_connection(("127.0.0.1", self.port), timeout=5)
            except OSError:
                assert time.monotonic() < deadline, "the aggregator did not start"
                time.sleep(0.2)

    def wait_tracking(self, flows: int, timeout: float = 300) -> None:
        """Wait until its flow table holds ``flows`` flows (the gauge is set on each 1-second tick)."""
        deadline = time.monotonic() + timeout
        while self.tracked() < flows:
            assert time.monotonic() < deadline, "the aggregator did not take every flow in time"
            time.sleep(0.2)

    def tracked(self) -> float:
        """The flow table's size at the last tick (``flowscope_flowtable_flows``, a gauge without labels)."""
        return metric(self.metrics_port, "flowscope_flowtable_flows")


def run(flows: int, messages: list[bytes], work: Path, round_: int) -> Round:
    out = work / f"out-{flows}-{round_}.jsonl"  # kept to the end: no round writes into pages another freed
    with Aggregator(work, out) as aggregator:
        process = aggregator.process
        sender = aggregator.connect()
        before, ticks_before = cpu_seconds(process.pid), _ticks(process.pid)
        with sender:  # open until the output is complete: the session's thread (it decodes) must be counted
            for message in messages:
                sender.sendall(message)
            deadline = time.monotonic() + 300
            while _lines(out) < flows and time.monotonic() < deadline:
                time.sleep(0.2)
            used = cpu_seconds(process.pid) - before
            user, system = (after - earlier for after, earlier in zip(_ticks(process.pid), ticks_before, strict=True))
    return Round(used, system / max(1, user + system), _lines(out))


def memory_per_flow(flows: int, messages: list[bytes], work: Path, round_: int) -> float:
    """Bytes of the aggregator's resident memory (whole process) per tracked flow: its growth from just
    after start-up to when it has correlated and exported ``flows`` connections and holds them (for the
    inactive timeout), read after the process has been idle for a while."""
    out = work / f"memory-{flows}-{round_}.jsonl"
    with Aggregator(work, out, kill=True) as aggregator, aggregator.connect() as sender:
        started = rss_bytes(aggregator.process.pid)
        for message in messages:
            sender.sendall(message)
        deadline = time.monotonic() + 300
        while _lines(out) < flows:
            assert time.monotonic() < deadline, "the aggregator did not export every flow in time"
            time.sleep(0.2)
        aggregator.wait_tracking(flows)
        time.sleep(IDLE)
        return (rss_bytes(aggregator.process.pid) - started) / flows


def _ticks(pid: int) -> tuple[int, int]:
    """User and kernel CPU time of a process (all threads), in clock ticks."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]), int(fields[12])


def _lines(path: Path) -> int:
    if not path.exists():
        return 0
    with path.open("rb") as stream:
        return sum(1 for _ in stream)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--flows", default="10000,100000", help="sizes whose records/CPU-s are measured")
    parser.add_argument("--memory-flows", default="100000,500000", help="sizes whose memory per flow is measured")
    parser.add_argument("--rounds", type=int, default=3, help="aggregator runs per size (default 3)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        for flows in (int(f) for f in args.flows.split(",") if f):
            messages = messages_for(halves(flows))
            rounds = [run(flows, messages, Path(tmp), n) for n in range(args.rounds)]
            del messages
            rates = Spread.of([2 * flows / r.cpu for r in rounds])
            lost = max(flows - r.exported for r in rounds)
            kernel = statistics.median(r.kernel for r in rounds)
            print(f"{flows:,} flows: {2 * flows:,} records, {kernel:.0%} of the CPU time in the kernel, {lost} lost")
            report(
                Row(
                    f"Aggregator, {flows:,} flows",
                    "records/CPU-s",
                    rates,
                    target="≥ 100,000 (none lost)",
                    met=rates.median >= 100_000 and lost == 0,
                )
            )
        for flows in (int(f) for f in args.memory_flows.split(",") if f):
            messages = messages_for(halves(flows))
            per_flow = Spread.of([memory_per_flow(flows, messages, Path(tmp), n) for n in range(args.rounds)])
            del messages
            report(
                Row(
                    f"Aggregator memory, {flows:,} flows",
                    "bytes per tracked flow",
                    per_flow,
                    target="≤ 1,536",
                    met=per_flow.median <= 1536,
                )
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())
