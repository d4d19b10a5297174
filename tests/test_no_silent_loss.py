"""Nothing lost quietly: records left at a stop are an error and an exit status, a spool survives a
crash during its replay, a full disk never leaves half a batch, and a stop keeps to shutdownTimeout."""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from flowscope.core import spool
from flowscope.core.certs import ensure_certificates
from tests.helpers import GATE, build, wait_for

ROOT = Path(__file__).resolve().parents[1]
RECORDS = [{"seq": i, "sourcePodName": f"web-{i % 7}"} for i in range(5000)]


def test_records_left_at_a_stop_are_an_error_and_exit_status_3(tmp_path, caplog):
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": RECORDS[:120], "batch": 40}],
            "sinks": [{"type": "flaky", "name": "down", "failures": -1, "retryBackoff": "20ms"}],
            "shutdownTimeout": "500ms",
            "dataDir": str(tmp_path),
        }
    )
    with caplog.at_level(logging.ERROR):
        assert pipeline.run() == 3
    assert pipeline.metrics.counters("sink", "down").value("dropped", "shutdown") == 120
    assert (
        "sink 'down': 120 records were not delivered before the pipeline stopped and are lost; set spool: true"
        in caplog.text
    )


def test_a_spooled_stop_is_not_an_error(tmp_path):
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": RECORDS[:10]}],
            "sinks": [{"type": "flaky", "name": "down", "failures": -1, "retryBackoff": "20ms", "spool": True}],
            "shutdownTimeout": "300ms",
            "dataDir": str(tmp_path),
        }
    )
    assert pipeline.run() == 0
    spooled = tmp_path / "spool" / "down.jsonl"
    assert len(spooled.read_text().splitlines()) == 10
    assert stat.S_IMODE(spooled.stat().st_mode) == 0o600


SLOW_RUN = """
import sys
from flowscope.entrypoints.cli import build_cli
import tests.helpers as helpers
build_cli([helpers]).main(args=sys.argv[1:], prog_name="flowscope")
"""


def test_a_spool_replay_survives_a_crash(tmp_path):
    out = tmp_path / "out.txt"
    spool.save(tmp_path / "data" / "spool" / "files.jsonl", [{"seq": i} for i in range(50_000)])
    config = tmp_path / "p.yaml"

    def start(delay: str) -> subprocess.Popen:
        config.write_text(
            "sources: [{type: memory, records: []}]\n"
            f"sinks: [{{type: seqfile, name: files, path: '{out}', delay: {delay}, batchSize: 2000, spool: true}}]\n"
            f"dataDir: {tmp_path / 'data'}\nshutdownTimeout: 60s\n"
        )
        return subprocess.Popen([sys.executable, "-c", SLOW_RUN, "run", "-c", str(config)], cwd=ROOT)

    first = start("0.5")
    try:
        wait_for(lambda: out.exists() and len(out.read_text().split()) >= 4000, 60, "part of the replay")
        first.send_signal(signal.SIGKILL)
        first.wait(10)
    finally:
        first.kill()
    assert (tmp_path / "data" / "spool" / "files.jsonl").exists(), "the spool stays until it is delivered"
    second = start("0")
    assert second.wait(120) == 0
    delivered = [int(seq) for seq in out.read_text().split()]
    assert set(delivered) == set(range(50_000))  # at least once: the part delivered before the crash comes twice
    assert not (tmp_path / "data" / "spool" / "files.jsonl").exists()


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_never_leaves_half_a_batch(small_disk, tmp_path):
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (800 << 10))
    out = small_disk / "flows.jsonl"
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": RECORDS, "batch": 250, "hold": True}],
            "sinks": [
                {"type": "json", "path": str(out), "batchSize": 250, "retryBackoff": "20ms", "retryMaxBackoff": "50ms"}
            ],
            "dataDir": str(tmp_path / "data"),
        }
    )
    pipeline.start()
    try:
        counters = pipeline.metrics.counters("sink", "json")
        wait_for(lambda: counters.value("retried") >= 3, 30, "the disk to fill up")
        lines = out.read_text().splitlines()
        assert all(json.loads(line) for line in lines)  # every line whole, even with the disk full
        filler.unlink()
        wait_for(lambda: counters.value("emitted") == len(RECORDS), 30, "every record once there is room")
    finally:
        pipeline.stop()
        pipeline.wait(10)
    seqs = [json.loads(line)["ipfix"]["seq"] for line in out.read_text().splitlines()]
    assert seqs == list(range(len(RECORDS)))  # each exactly once, in order


def test_a_fifo_without_a_reader_blocks_neither_start_nor_stop(tmp_path):
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": RECORDS[:10], "hold": True}],
            "sinks": [{"type": "json", "path": str(fifo), "retryBackoff": "50ms"}],
            "shutdownTimeout": "1s",
            "dataDir": str(tmp_path),
        }
    )
    started = threading.Thread(target=pipeline.start, daemon=True)
    started.start()
    started.join(20)
    assert not started.is_alive(), "start() waited for a reader of the FIFO"
    assert not pipeline.sinks[0].ready
    with open(fifo, "rb") as reader:  # a reader comes: the records go through
        wait_for(lambda: pipeline.sinks[0].ready, 20, "the sink to open the FIFO")
        lines = reader.readline() + reader.readline()
    assert lines.count(b"\n") == 2
    pipeline.stop()
    assert pipeline.wait(10)


@pytest.mark.parametrize("on_full", ["block", "dropOldest"])
def test_stopping_keeps_to_the_shutdown_timeout(tmp_path, on_full):
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": RECORDS, "batch": 500, "hold": True}],
            "sinks": [{"type": "gate", "name": "gate", "bufferSize": 2000, "onFull": on_full}],
            "shutdownTimeout": "3s",
            "dataDir": str(tmp_path),
        }
    )
    pipeline.start()
    try:
        wait_for(lambda: pipeline.sinks[0].buffered >= 1000, 20, "the buffer to fill")  # and 1,000 in the write
        began = time.monotonic()
        pipeline.stop()
        assert pipeline.wait(30)
        assert time.monotonic() - began < 3 + 1 + 1.5  # the timeout, the second it may take, and some slack
        assert pipeline.exit_status() == 3
    finally:
        GATE.set()  # let the stuck write end


def test_tcp_to_a_tls_collector_keeps_the_records(tmp_path, caplog):
    certs = ensure_certificates(tmp_path / "certs", ["127.0.0.1"])
    collector = build(
        {
            "sources": [
                {
                    "type": "ipfix",
                    "address": "127.0.0.1:0:tls",
                    "tlsCert": str(certs.server_cert),
                    "tlsKey": str(certs.server_key),
                    "clientCA": str(certs.ca_cert),
                }
            ],
            "sinks": [{"type": "collect"}],
            "dataDir": str(tmp_path),
        }
    )
    collector.start()
    try:
        port = collector.sources[0][1].port
        exporter = build(
            {
                "sources": [{"type": "memory", "records": [{"sourceTransportPort": 1, "octetDeltaCount": 2}]}],
                "sinks": [{"type": "ipfix", "address": f"127.0.0.1:{port}:tcp", "retryBackoff": "50ms"}],
                "shutdownTimeout": "1s",
                "dataDir": str(tmp_path / "exporter"),
            }
        )
        assert exporter.run() == 3
        counters = exporter.metrics.counters("sink", "ipfix")
        assert (counters.value("emitted"), counters.value("dropped", "shutdown")) == (0, 1)
        assert f"sending to 127.0.0.1:{port}:tcp failed" in caplog.text
    finally:
        collector.stop()
        collector.wait(10)


def test_json_over_tcp_notices_a_closed_collector(tmp_path):
    server = socket.create_server(("127.0.0.1", 0))
    port = server.getsockname()[1]
    received: list[bytes] = []
    closed = threading.Event()

    def serve():
        conn, _ = server.accept()
        with conn:  # the first connection gets one batch, then the collector closes it
            received.append(conn.recv(65536))
        closed.set()
        conn, _ = server.accept()
        with conn:
            while chunk := conn.recv(65536):
                received.append(chunk)

    threading.Thread(target=serve, daemon=True).start()
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": RECORDS[:1], "hold": True}],
            "sinks": [{"type": "json", "address": f"127.0.0.1:{port}:tcp", "batchSize": 1, "retryBackoff": "20ms"}],
            "dataDir": str(tmp_path),
        }
    )
    pipeline.start()
    try:
        assert closed.wait(10), "the first record never came"
        pipeline.sinks[0].put([{"seq": 99}])
        wait_for(lambda: b'"seq":99' in b"".join(received), 10, "the record on a new connection")
    finally:
        pipeline.stop()
        pipeline.wait(10)
        server.close()
