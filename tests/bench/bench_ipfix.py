"""Benchmark: IPFIX decoding and UDP collection, next to nfcapd in the same run.

1. Decode rate of Antrea-shaped data records (the 43-element IPv4 exporter template, strings as in a
   real cluster), in records per CPU-second: packed into 1472-byte messages, and one record per
   message as Antrea's agent sends them.
2. Collector ingest over UDP loopback: the same stream sent to ``flowscope run`` (ipfix source →
   blackhole sink) and to nfcapd; CPU seconds of each collector process are compared.
3. Zero loss over TCP: the stream sent through the ipfix sink to the ipfix source.

    .venv/bin/python tests/bench/bench_ipfix.py [--records N]
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from measure import cpu_seconds  # tests/bench/measure.py
from records import antrea_records  # tests/bench/records.py

from flowscope.core.ipfix import Decoder, MessageWriter
from flowscope.testing import builtin_elements

FLOWSCOPE = [sys.executable, "-m", "flowscope.entrypoints.cli", "--log-level", "warning"]


def raise_receive_buffer_limit(size: int = 32 << 20) -> None:
    """Let both collectors have the 32 MiB UDP buffer they ask for (needs root; else the kernel default)."""
    limit = Path("/proc/sys/net/core/rmem_max")
    try:
        if int(limit.read_text()) < size:
            limit.write_text(str(size))
    except OSError:
        print(f"note: cannot raise {limit}; UDP receive buffers stay at the kernel's limit")


def decode_rate(messages: list[bytes], records: int) -> float:
    decoder = Decoder(builtin_elements())
    best = 0.0
    for _ in range(3):
        decoder.store.drop_session("bench")
        started = time.process_time()
        decoded = sum(len(decoder.decode(m, "bench").records) for m in messages)
        elapsed = time.process_time() - started
        assert decoded == records, decoded
        best = max(best, records / elapsed)
    return best


def free_port(kind: int = socket.SOCK_DGRAM) -> int:
    with socket.socket(socket.AF_INET, kind) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def blast(messages: list[bytes], port: int, per_burst: int = 50, pause: float = 0.005) -> None:
    """Send datagrams in paced bursts, so the receivers' socket buffers do not overflow."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        for start in range(0, len(messages), per_burst):
            for message in messages[start : start + per_burst]:
                sender.sendto(message, ("127.0.0.1", port))
            time.sleep(pause)


def wait_serving(metrics_port: int, timeout: float) -> None:
    """Wait until a started flowscope answers on its metrics port."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            metric(metrics_port, "flowscope_records_emitted_total")
            return
        except OSError:
            assert time.monotonic() < deadline, "flowscope did not start"
            time.sleep(0.1)


def metric(port: int, name: str) -> float:
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    return sum(float(line.rsplit(" ", 1)[1]) for line in body.splitlines() if line.startswith(name + "{"))


def flowscope_ingest(messages: list[bytes], records: int, work: Path) -> tuple[float, float]:
    port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
    config = work / "collector.yaml"
    config.write_text(
        f"sources: [{{type: ipfix, address: '127.0.0.1:{port}:udp', receiveBuffer: 33554432}}]\n"
        f"sinks: [{{type: blackhole}}]\nmetricsAddress: '127.0.0.1:{metrics_port}'\ndataDir: {work / 'data'}\n"
    )
    process = subprocess.Popen([*FLOWSCOPE, "run", "-c", str(config)])
    try:
        wait_serving(metrics_port, 20)
        before = cpu_seconds(process.pid)
        blast(messages, port)
        deadline = time.monotonic() + 60
        while metric(metrics_port, "flowscope_ipfix_records_total") < records and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(0.5)
        used = cpu_seconds(process.pid) - before
        received = metric(metrics_port, "flowscope_ipfix_records_total")
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    return used, received


def nfcapd_ingest(messages: list[bytes], work: Path) -> tuple[float, float]:
    port = free_port()
    directory = work / "nfcapd"
    directory.mkdir()
    process = subprocess.Popen(
        ["nfcapd", "-w", str(directory), "-p", str(port), "-b", "127.0.0.1", "-B", "33554432", "-t", "3600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        time.sleep(1.0)
        before = cpu_seconds(process.pid)
        blast(messages, port)
        time.sleep(1.5)
        used = cpu_seconds(process.pid) - before
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    summary = subprocess.run(["nfdump", "-R", str(directory), "-q", "-o", "fmt:%pkt"], capture_output=True, text=True)
    received = sum(1 for line in summary.stdout.splitlines() if line.strip())
    return used, received


def tcp_loss(records: list[dict], work: Path) -> tuple[int, int]:
    from tests.helpers import COLLECTED, build  # the in-process test plugins

    port = free_port(socket.SOCK_STREAM)
    collector = build(
        {
            "sources": [{"type": "ipfix", "address": f"127.0.0.1:{port}:tcp"}],
            "sinks": [{"type": "collect"}],
            "dataDir": str(work / "tcp"),
        }
    )
    collector.start()
    exporter = build(
        {
            "sources": [{"type": "memory", "records": records, "batch": 1000}],
            "sinks": [{"type": "ipfix", "address": f"127.0.0.1:{port}:tcp", "onFull": "block"}],
        }
    )
    exporter.run()
    deadline = time.monotonic() + 60
    while len(COLLECTED.get("collect", [])) < len(records) and time.monotonic() < deadline:
        time.sleep(0.05)
    collector.stop()
    collector.wait(10)
    return len(records), len(COLLECTED.get("collect", []))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    args = parser.parse_args()
    n = args.records
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    raise_receive_buffer_limit()
    print(f"building {n} Antrea-shaped records ...", flush=True)
    records = antrea_records(n)
    elements = builtin_elements()
    packed, _ = MessageWriter(elements, max_size=1472).encode(records)
    single_writer = MessageWriter(elements, max_size=1472)
    single = [m for record in records for m in single_writer.encode([record])[0]]
    print(f"{len(packed)} packed messages ({n / len(packed):.1f} records each), {len(single)} one-record messages")

    packed_rate = decode_rate(packed, n)
    single_rate = decode_rate(single, n)
    print(f"decode, packed messages:     {packed_rate:12,.0f} records/CPU-s  (target 200,000)")
    print(f"decode, one record/message:  {single_rate:12,.0f} records/CPU-s")

    ours = theirs = None
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        ours_cpu, ours_received = flowscope_ingest(packed, n, work)
        ours = ours_received / ours_cpu
        print(
            f"UDP ingest, flowscope:       {ours:12,.0f} records/CPU-s  ({ours_cpu:.2f} CPU-s, "
            f"{ours_received:,.0f}/{n} received)"
        )
        if shutil.which("nfcapd"):
            theirs_cpu, theirs_received = nfcapd_ingest(packed, work)
            theirs = theirs_received / theirs_cpu
            print(
                f"UDP ingest, nfcapd:          {theirs:12,.0f} records/CPU-s  ({theirs_cpu:.2f} CPU-s, "
                f"{theirs_received:,}/{n} received)"
            )
            print(f"ingest ratio flowscope/nfcapd: {ours / theirs:.2f}  (target 0.1)")
        else:
            print("nfcapd not installed (apt-get install nfdump): no ingest ratio")
        sent, got = tcp_loss(records[: min(n, 50_000)], work)
        print(f"TCP: {got}/{sent} records received, {sent - got} lost")
    return 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
