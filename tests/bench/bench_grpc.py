"""Benchmark: gRPC ingest (Antrea's FlowExportService, mutual TLS) next to TCP IPFIX ingest, same run.

The same Antrea-shaped records (the agent's 43 elements) go to ``flowscope run`` (source → blackhole
sink), once through the ``grpc`` source and once through the ``ipfix`` source over TCP, each in two
shapes: packed (500 flows per ExportRequest, as flowscope's grpc sink sends; IPFIX messages of up to
64 KiB, as its ipfix sink sends on TCP) and one flow per message (as Antrea's agent sends both).
The CPU time of the receiving process, every thread (``/proc/PID/stat``: user + system, threads that
have ended included), gives records per CPU-second; the ratio gRPC/IPFIX is printed for each shape.
The senders are prepared beforehand (serialized messages) and run in this process, whose CPU is not counted.

    .venv/bin/python tests/bench/bench_grpc.py [--records N] [--rounds N]
"""

from __future__ import annotations

import argparse
import os
import platform
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import grpc
from bench_ipfix import FLOWSCOPE, free_port, metric, serving, wait_until  # tests/bench/bench_ipfix.py
from measure import Row, Spread, cpu_seconds, ratios, report  # tests/bench/measure.py
from records import antrea_records  # tests/bench/records.py

from flowscope.core.certs import ensure_certificates
from flowscope.core.ipfix import MessageWriter
from flowscope.plugins.grpcflow.convert import fill_flow
from flowscope.plugins.grpcflow.flow_pb2 import ExportRequest
from flowscope.plugins.grpcflow.source import SERVICE
from flowscope.testing import builtin_elements

PACKED = 500  # flows per ExportRequest, the grpc sink's default


def grpc_payloads(records: list[dict], per_message: int) -> list[bytes]:
    """The records as serialized ExportRequest messages of ``per_message`` flows."""
    payloads = []
    for start in range(0, len(records), per_message):
        request = ExportRequest()
        for record in records[start : start + per_message]:
            fill_flow(request.flows.add(), record, odid=1, export_time=int(time.time()))
        payloads.append(request.SerializeToString())
    return payloads


def ipfix_messages(records: list[dict], packed: bool) -> list[bytes]:
    """The records as IPFIX messages, templates first: packed up to 64 KiB, or one record each."""
    writer = MessageWriter(builtin_elements(), max_size=65535)
    data = writer.encode(records)[0] if packed else [m for record in records for m in writer.encode([record])[0]]
    return writer.template_messages(int(time.time())) + data


def ingest(source: str, send: Callable[[int], None], records: int, work: Path) -> float:
    """CPU seconds ``flowscope run`` (``source`` → blackhole) spends on taking ``records`` in."""
    port, metrics_port = free_port(socket.SOCK_STREAM), free_port(socket.SOCK_STREAM)
    config = work / "receiver.yaml"
    config.write_text(
        f"sources: [{source.format(port=port)}]\nsinks: [{{type: blackhole}}]\n"
        f"metricsAddress: '127.0.0.1:{metrics_port}'\ndataDir: {work / 'data'}\n"
    )
    process = subprocess.Popen([*FLOWSCOPE, "run", "-c", str(config)])
    try:
        if not wait_until(lambda: serving(metrics_port), 30):
            raise SystemExit("FAILED: flowscope did not serve its metrics within 30 s")
        before = cpu_seconds(process.pid)
        send(port)
        deadline = time.monotonic() + 300
        while metric(metrics_port, "flowscope_records_emitted_total") < records:
            assert time.monotonic() < deadline, "not every record arrived"
            time.sleep(0.05)
        used = cpu_seconds(process.pid) - before
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(30)
    return used


def grpc_sender(payloads: list[bytes], certs: Path) -> Callable[[int], None]:
    def send(port: int) -> None:
        credentials = grpc.ssl_channel_credentials(
            (certs / "ca.crt").read_bytes(), (certs / "client.key").read_bytes(), (certs / "client.crt").read_bytes()
        )
        with grpc.secure_channel(
            f"127.0.0.1:{port}", credentials, [("grpc.ssl_target_name_override", "localhost")]
        ) as channel:
            export = channel.stream_unary(f"/{SERVICE}/Export")  # the bytes go as they are
            export(iter(payloads), timeout=600)

    return send


def ipfix_sender(messages: list[bytes]) -> Callable[[int], None]:
    def send(port: int) -> None:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as sender:
            for message in messages:
                sender.sendall(message)

    return send


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.records
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    print(f"building {n} Antrea-shaped records and their messages ...", flush=True)
    records = antrea_records(n)
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        certs = ensure_certificates(work / "data" / "certs", ["localhost", "127.0.0.1"]).ca_cert.parent
        grpc_source = "{{type: grpc, address: '127.0.0.1:{port}'}}"
        ipfix_source = "{{type: ipfix, address: '127.0.0.1:{port}:tcp'}}"
        for shape, per_message, packed in (("packed", PACKED, True), ("one flow per message", 1, False)):
            payloads, messages = grpc_payloads(records, per_message), ipfix_messages(records, packed)
            grpc_rates: list[float] = []
            ipfix_rates: list[float] = []
            for _ in range(args.rounds):
                grpc_rates.append(n / ingest(grpc_source, grpc_sender(payloads, certs), n, work))
                ipfix_rates.append(n / ingest(ipfix_source, ipfix_sender(messages), n, work))
            report(
                Row(
                    stage=f"gRPC ingest over mTLS, {shape}",
                    unit="records/CPU-s",
                    ours=Spread.of(grpc_rates),
                    peer_name="flowscope's IPFIX over TCP",
                    peer=Spread.of(ipfix_rates),
                    ratio=Spread.of(ratios(grpc_rates, ipfix_rates)),
                )
            )
    print("gRPC over mutual TLS, IPFIX over plain TCP; CPU of the receiving process, all threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
