"""Benchmark: IPFIX decoding and UDP collection, next to nfcapd in the same run.

1. Decode rate of Antrea-shaped data records (the 43-element IPv4 exporter template, strings as in a
   real cluster), in records per CPU-second: packed into 1472-byte messages, and one record per
   message as Antrea's agent sends them.
2. Collector ingest over UDP loopback, in rounds: each round sends the same stream to nfcapd, to
   ``flowscope run`` (ipfix source → blackhole sink) and to ``flowscope run`` (ipfix source → json sink
   writing a file), and takes the CPU seconds of each whole collector process (every thread, ended
   ones too) from the moment it is idle and listening until its CPU stops growing. Every collector
   must receive every record (nfcapd: counted with nfdump; json: the file's lines; blackhole: the
   sink's written count); the rows give records per CPU-second, median and range over the rounds.
3. Zero loss over TCP: the stream sent through the ipfix sink to the ipfix source.

    .venv/bin/python tests/bench/bench_ipfix.py [--records N] [--rounds R]
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

from measure import Row, Spread, cpu_seconds, ratios, report  # tests/bench/measure.py
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


def wait_until(condition, timeout: float, poll: float = 0.05) -> bool:
    """Poll ``condition`` until it holds (``True``) or ``timeout`` seconds pass (``False``)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            return False
        time.sleep(poll)
    return True


def cpu_settled(pid: int, quiet: float = 0.5, timeout: float = 60) -> float:
    """The process's CPU seconds once they have stopped growing for ``quiet`` seconds."""
    deadline = time.monotonic() + timeout
    last, since = cpu_seconds(pid), time.monotonic()
    while time.monotonic() - since < quiet:
        if time.monotonic() > deadline:
            raise SystemExit(f"FAILED: process {pid} kept using CPU for {timeout:g}s")
        time.sleep(0.05)
        now = cpu_seconds(pid)
        if now != last:
            last, since = now, time.monotonic()
    return last


def udp_bound(port: int) -> bool:
    """Some socket listens on UDP ``port`` of 127.0.0.1 (/proc/net/udp)."""
    wanted = f"0100007F:{port:04X}"
    return any(line.split()[1] == wanted for line in Path("/proc/net/udp").read_text().splitlines()[1:])


def metric(port: int, name: str, **labels: str) -> float:
    """The sum of a metric's samples on a flowscope's metrics port, of those with ``labels``."""
    body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    wanted = [f'{key}="{value}"' for key, value in labels.items()]
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith((name + "{", name + " ")) and all(label in line for label in wanted)
    )


def serving(metrics_port: int) -> bool:
    try:
        metric(metrics_port, "flowscope_records_emitted_total")
    except OSError:
        return False
    return True


def flowscope_ingest(messages: list[bytes], records: int, work: Path, sink: str) -> tuple[float, int]:
    """CPU seconds of ``flowscope run`` (ipfix over UDP → ``sink``) taking the messages in, and the records
    that reached the sink: the json sink's lines in its file, the blackhole sink's written count."""
    port, metrics_port = free_port(), free_port(socket.SOCK_STREAM)
    run = work / f"flowscope-{sink}"
    output = run / "records.jsonl"
    sink_config = f"{{type: json, path: '{output}'}}" if sink == "json" else "{type: blackhole}"
    run.mkdir()
    config = run / "collector.yaml"
    config.write_text(
        f"sources: [{{type: ipfix, address: '127.0.0.1:{port}:udp', receiveBuffer: 33554432}}]\n"
        f"sinks: [{sink_config}]\nmetricsAddress: '127.0.0.1:{metrics_port}'\ndataDir: {run / 'data'}\n"
    )
    process = subprocess.Popen([*FLOWSCOPE, "run", "-c", str(config)])
    try:
        if not wait_until(lambda: serving(metrics_port), 30):
            raise SystemExit("FAILED: flowscope did not start within 30s")
        before = cpu_settled(process.pid)
        blast(messages, port)
        # done when the sink has every record; with some lost, when the process stops working
        wait_until(lambda: metric(metrics_port, "flowscope_records_emitted_total", stage="sink") >= records, 30)
        used = cpu_settled(process.pid) - before
        written = int(metric(metrics_port, "flowscope_records_emitted_total", stage="sink"))
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    if sink == "json":
        with output.open("rb") as lines:
            written = sum(1 for _ in lines)
        output.unlink()
    return used, written


def nfcapd_ingest(messages: list[bytes], work: Path) -> tuple[float, int]:
    """CPU seconds of nfcapd taking the messages in, and the records in the files it wrote."""
    port = free_port()
    directory = work / "nfcapd"
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir()
    process = subprocess.Popen(
        ["nfcapd", "-w", str(directory), "-p", str(port), "-b", "127.0.0.1", "-B", "33554432", "-t", "3600"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        if not wait_until(lambda: udp_bound(port), 30):
            raise SystemExit("FAILED: nfcapd did not listen within 30s")
        before = cpu_settled(process.pid)
        blast(messages, port)
        used = cpu_settled(process.pid) - before  # nfcapd has no live count: done when its CPU stops growing
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    summary = subprocess.run(["nfdump", "-R", str(directory), "-q", "-o", "fmt:%pkt"], capture_output=True, text=True)
    return used, sum(1 for line in summary.stdout.splitlines() if line.strip())


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
    parser.add_argument("--records", type=int, default=300_000, help="records sent to each collector per round")
    parser.add_argument("--rounds", type=int, default=3, help="rounds, each measuring every collector once")
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

    failures: list[str] = []
    have_nfcapd = shutil.which("nfcapd") is not None
    if not have_nfcapd:
        print("nfcapd not installed (apt-get install nfdump): flowscope's figures only, no ratio")
    rates: dict[str, list[float]] = {"nfcapd": [], "blackhole": [], "json": []}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for round_ in range(1, args.rounds + 1):
            round_dir = work / f"round{round_}"
            round_dir.mkdir()
            for name in ("nfcapd", "blackhole", "json") if have_nfcapd else ("blackhole", "json"):
                if name == "nfcapd":
                    cpu, received = nfcapd_ingest(packed, round_dir)
                else:
                    cpu, received = flowscope_ingest(packed, n, round_dir, name)
                rates[name].append(received / cpu)
                print(
                    f"round {round_}, {name:9}: {received / cpu:12,.0f} records/CPU-s  "
                    f"({cpu:.2f} CPU-s, {received:,}/{n} received)",
                    flush=True,
                )
                if received != n:
                    failures.append(f"round {round_}, {name}: {received:,} of {n:,} records received")
        sent, got = tcp_loss(records[: min(n, 50_000)], work)
        print(f"TCP: {got}/{sent} records received, {sent - got} lost")
        if got != sent:
            failures.append(f"TCP: {sent - got} of {sent} records lost")
    peer = Spread.of(rates["nfcapd"]) if have_nfcapd else None
    for sink, target in (("blackhole", 0.25), ("json", 0.15)):
        ratio = Spread.of(ratios(rates[sink], rates["nfcapd"])) if have_nfcapd else None
        report(
            Row(
                stage=f"IPFIX over UDP, {sink} sink",
                unit="records/CPU-s",
                ours=Spread.of(rates[sink]),
                peer_name="nfcapd" if have_nfcapd else "",
                peer=peer,
                ratio=ratio,
                target=f"≥ {target}x nfcapd",
                met=None if ratio is None else ratio.median >= target,
            )
        )
    for failure in failures:
        print(f"FAILED: {failure}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
    sys.exit(main())
