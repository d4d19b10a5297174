"""The IPFIX collector under attack: concurrent sessions, template exhaustion, wrong field lengths, huge
templates, kernel drops, slowloris, forged sequence numbers and mutated messages. Each attack leaves
the collector up, counting what it refused, and serving legitimate exporters."""

from __future__ import annotations

import json
import logging
import random
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from tests.helpers import CLI, COLLECTED, GATE, build, wait_for
from tests.ipfix_wire import field, message, set_, template, template_set, varlen

# sourceIPv4Address, destinationIPv4Address, octetDeltaCount, sourcePodName (Antrea, variable length)
LEGIT_TEMPLATE = template(300, field(8, 4), field(12, 4), field(1, 8), field(101, 65535, 56506))
LEGIT = "127.0.0.2"  # legitimate exporters send from here; attackers from 127.0.0.1


def legit_record(i: int) -> bytes:
    return bytes([10, 0, i >> 8 & 255, i & 255]) + bytes([10, 1, 0, 1]) + struct.pack(">Q", 1000 + i) + varlen(b"web")


def legit_messages(count: int = 100, odid: int = 7) -> list[bytes]:
    first = message(template_set(LEGIT_TEMPLATE), set_(300, legit_record(0)), odid=odid, sequence=0)
    return [first] + [message(set_(300, legit_record(i)), odid=odid, sequence=i) for i in range(1, count)]


def collector(tmp_path: Path, proto: str, name: str = "collect", **options):
    pipeline = build(
        {
            "sources": [
                {"type": "ipfix", "address": f"127.0.0.1:0:{proto}", "batchInterval": "20ms", **options},
            ],
            "sinks": [{"type": "collect", "name": name, "flushInterval": "20ms"}],
            "shutdownTimeout": "2s",
            "dataDir": str(tmp_path),
        }
    )
    pipeline.start()
    return pipeline, pipeline.sources[0][1]


def sample(pipeline, metric: str, **labels) -> float:
    return pipeline.metrics.registry.get_sample_value(metric, {"instance": "ipfix", **labels}) or 0.0


def udp_sender(address: str = "127.0.0.1") -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind((address, 0))
    return sock


def send_tcp(port: int, messages: list[bytes], address: str = LEGIT) -> None:
    with socket.create_connection(("127.0.0.1", port), timeout=10, source_address=(address, 0)) as sock:
        sock.sendall(b"".join(messages))


def stop(*pipelines) -> None:
    for pipeline in pipelines:
        pipeline.stop()
        assert pipeline.wait(15)


@pytest.fixture
def no_thread_dies(monkeypatch):
    """Fail the test if any thread dies of an exception."""
    deaths: list[str] = []
    monkeypatch.setattr(threading, "excepthook", lambda args: deaths.append(f"{args.thread.name}: {args.exc_value!r}"))
    yield deaths
    assert deaths == []


def test_concurrent_tcp_sessions_share_the_template_store_safely(tmp_path, no_thread_dies):
    pipeline, source = collector(tmp_path, "tcp")
    rng = random.Random(1)

    def session(n: int) -> None:
        for _ in range(6):
            domains = rng.randrange(1, 31)
            messages = [
                message(template_set(template(256 + d, field(8, 4), field(1, 8))), odid=d) for d in range(domains)
            ]
            messages.append(message(set_(256, bytes([10, 0, 0, 1]) + struct.pack(">Q", n)), odid=0))
            send_tcp(source.port, messages, "127.0.0.1")

    try:
        threads = [threading.Thread(target=session, args=(n,)) for n in range(40)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        wait_for(lambda: len(COLLECTED["collect"]) == 240, 30, "one record from each of the 240 sessions")
        wait_for(lambda: sample(pipeline, "flowscope_ipfix_sessions") == 0, 30, "every session to close")
        assert sample(pipeline, "flowscope_ipfix_templates") == 0  # a closed session's templates are gone
    finally:
        stop(pipeline)


def test_one_exporter_cannot_take_the_whole_template_store(tmp_path):
    pipeline, source = collector(tmp_path, "udp", maxTemplatesPerExporter=1000)
    attacker, legit = udp_sender(), udp_sender(LEGIT)
    try:
        for domain in range(1000):  # 100,000 templates: 1,000 domains x 100 ids
            templates = [template(256 + i, field(8, 4)) for i in range(100)]
            attacker.sendto(message(template_set(*templates), odid=domain), ("127.0.0.1", source.port))
        wait_for(
            lambda: (
                sample(
                    pipeline, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason="too_many_templates"
                )
                >= 1
            ),
            30,
            "the attacker's templates to be refused",
        )
        for data in legit_messages():
            legit.sendto(data, ("127.0.0.1", source.port))
            time.sleep(0.001)
        wait_for(lambda: len(COLLECTED["collect"]) == 100, 30, "the legitimate exporter's 100 records")
        assert sample(pipeline, "flowscope_ipfix_templates") <= 1001
    finally:
        attacker.close()
        legit.close()
        stop(pipeline)


def test_data_for_unknown_domains_leaves_no_state(tmp_path):
    pipeline, source = collector(tmp_path, "udp")
    sender = udp_sender()
    try:
        for domain in range(3000):
            sender.sendto(message(set_(256, bytes(8)), odid=domain), ("127.0.0.1", source.port))
        wait_for(
            lambda: (
                sample(pipeline, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason="unknown_template")
                >= 3000
            ),
            30,
            "3,000 unknown-template errors",
        )
        assert source.store.domains() == 0
    finally:
        sender.close()
        stop(pipeline)


def run_collector(tmp_path: Path, port: int, lifetime: str = "30m") -> subprocess.Popen:
    config = tmp_path / "collector.yaml"
    config.write_text(
        f"sources: [{{type: ipfix, address: '127.0.0.1:{port}:udp', templateLifetime: {lifetime}}}]\n"
        f"sinks: [{{type: json, path: '{tmp_path / 'out.jsonl'}', flushInterval: 20ms, batchSize: 1}}]\n"
        f"dataDir: {tmp_path / 'data'}\n"
    )
    process = subprocess.Popen([*CLI, "run", "-c", str(config)], stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True).start()
    wait_for(lambda: any("pipeline started" in line for line in lines), 60, "the collector to start")
    process.lines = lines
    return process


def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_a_new_template_survives_a_sigkill(tmp_path):
    port = free_udp_port()
    store = tmp_path / "data" / "ipfix-templates" / "ipfix.json"
    process = run_collector(tmp_path, port)
    sender = udp_sender(LEGIT)
    try:
        sender.sendto(message(template_set(LEGIT_TEMPLATE), odid=7), ("127.0.0.1", port))
        wait_for(lambda: store.exists() and '"id": 300' in store.read_text(), 10, "the template to be saved")
        process.send_signal(signal.SIGKILL)
        process.wait(10)
        process = run_collector(tmp_path, port)
        sender.sendto(message(set_(300, legit_record(5)), odid=7, sequence=1), ("127.0.0.1", port))
        out = tmp_path / "out.jsonl"
        wait_for(lambda: out.exists() and out.read_text().strip(), 20, "the record decoded after the restart")
        assert json.loads(out.read_text().splitlines()[0])["ipfix"]["octetDeltaCount"] == 1005
    finally:
        sender.close()
        process.kill()
        process.wait(10)


def test_expired_templates_are_not_restored(tmp_path):
    port = free_udp_port()
    store = tmp_path / "data" / "ipfix-templates" / "ipfix.json"
    process = run_collector(tmp_path, port, lifetime="1s")
    sender = udp_sender(LEGIT)
    try:
        sender.sendto(message(template_set(LEGIT_TEMPLATE), odid=7), ("127.0.0.1", port))
        wait_for(lambda: store.exists() and '"id": 300' in store.read_text(), 10, "the template to be saved")
        process.send_signal(signal.SIGTERM)
        process.wait(20)
        time.sleep(1.1)  # the template's lifetime passes while the collector is down
        process = run_collector(tmp_path, port, lifetime="1s")
        assert not any("restored" in line for line in process.lines)
    finally:
        sender.close()
        process.kill()
        process.wait(10)


def test_templates_gauge_follows_sessions_and_restarts(tmp_path):
    pipeline, source = collector(tmp_path, "udp")
    sender = udp_sender(LEGIT)
    try:
        sender.sendto(
            message(template_set(LEGIT_TEMPLATE, template(301, field(8, 4))), odid=7), ("127.0.0.1", source.port)
        )
        wait_for(lambda: sample(pipeline, "flowscope_ipfix_templates") == 2, 10, "two templates")
    finally:
        stop(pipeline)
    restarted, _ = collector(tmp_path, "udp", name="again")
    try:
        assert sample(restarted, "flowscope_ipfix_templates") == 2
    finally:
        sender.close()
        stop(restarted)


@pytest.mark.parametrize(
    ("spec", "reason_text"),
    [
        (field(1, 65535), "octetDeltaCount (unsigned64) has length 65535 (variable); it takes 1 to 8 bytes"),
        (field(8, 1000), "sourceIPv4Address (ipv4Address) has length 1000; it takes 4 bytes"),
        (field(150, 8), "flowStartSeconds (dateTimeSeconds) has length 8; it takes 4 bytes"),
    ],
)
def test_wrong_lengths_for_fixed_size_elements_are_refused(tmp_path, caplog, spec, reason_text):
    pipeline, source = collector(tmp_path, "udp")
    sender = udp_sender()
    try:
        sender.sendto(message(template_set(template(400, spec))), ("127.0.0.1", source.port))
        wait_for(
            lambda: (
                sample(pipeline, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason="bad_field_length")
                == 1
            ),
            10,
            "the template to be refused",
        )
        assert reason_text in caplog.text
        assert source.store.count() == 0
    finally:
        sender.close()
        stop(pipeline)


def test_reduced_size_encodings_are_decoded(tmp_path):
    pipeline, source = collector(tmp_path, "udp")
    sender = udp_sender()
    try:
        # octetDeltaCount in 4 bytes, packetDeltaCount in 3, egressInterface (unsigned32) in 1 (RFC 7011 §6.2)
        spec = template(401, field(1, 4), field(2, 3), field(14, 1))
        data = struct.pack(">I", 123456) + (70000).to_bytes(3, "big") + bytes([9])
        sender.sendto(message(template_set(spec), set_(401, data)), ("127.0.0.1", source.port))
        wait_for(lambda: COLLECTED.get("collect"), 10, "the record")
        assert COLLECTED["collect"] == [{"octetDeltaCount": 123456, "packetDeltaCount": 70000, "egressInterface": 9}]
    finally:
        sender.close()
        stop(pipeline)


def test_a_huge_template_is_refused_quickly_and_logged_briefly(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="flowscope")
    pipeline, source = collector(tmp_path, "udp")
    sender = udp_sender()
    try:
        fields = [field(16000 + i, 4) for i in range(16000)]  # elements IANA has not assigned: 64 KB of template
        sender.sendto(message(template_set(template(500, *fields))), ("127.0.0.1", source.port))
        wait_for(
            lambda: (
                sample(
                    pipeline, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason="template_too_large"
                )
                == 1
            ),
            10,
            "the template to be refused",
        )
        many = [field(1000 + i, 4, 32473) for i in range(300)]  # allowed, but 300 unknown elements
        for template_id in (501, 502, 503):
            sender.sendto(message(template_set(template(template_id, *many))), ("127.0.0.1", source.port))
        wait_for(lambda: source.store.count() == 3, 10, "three templates of unknown elements")
        lines = [r.getMessage() for r in caplog.records if "unknown" in r.getMessage()]
        assert len(lines) == 1, lines  # one summary per exporter, not one line per template
        assert len(lines[0]) < 300
        assert "300 elements unknown to the registry" in lines[0]
    finally:
        sender.close()
        stop(pipeline)


def test_kernel_drops_are_counted(tmp_path):
    pipeline = build(
        {
            "sources": [{"type": "ipfix", "address": "127.0.0.1:0:udp", "receiveBuffer": 4096, "batchSize": 1}],
            "sinks": [{"type": "gate", "name": "gate", "bufferSize": 1, "batchSize": 1, "onFull": "block"}],
            "queueSize": 1,
            "shutdownTimeout": "2s",
            "dataDir": str(tmp_path),
        }
    )
    pipeline.start()
    source = pipeline.sources[0][1]
    sender = udp_sender(LEGIT)
    try:
        for data in legit_messages(2000):  # the gate holds the pipeline: the socket's buffer overflows
            sender.sendto(data, ("127.0.0.1", source.port))
        GATE.set()
        wait_for(lambda: sample(pipeline, "flowscope_ipfix_receive_drops_total") > 0, 20, "the kernel's drops")
    finally:
        GATE.set()
        sender.close()
        stop(pipeline)


def test_slowloris_does_not_lock_out_exporters(tmp_path):
    pipeline, source = collector(tmp_path, "tcp", maxSessions=100, maxSessionsPerExporter=20, messageTimeout="2s")
    attackers = []
    try:
        for _ in range(150):  # each sends half a message and waits
            sock = socket.socket()
            sock.connect(("127.0.0.1", source.port))
            sock.sendall(message(template_set(LEGIT_TEMPLATE))[:10])
            attackers.append(sock)
        wait_for(
            lambda: sample(pipeline, "flowscope_ipfix_sessions_refused_total", reason="per_exporter") >= 100,
            30,
            "the attacker's extra sessions to be refused",
        )
        send_tcp(source.port, legit_messages())
        wait_for(lambda: len(COLLECTED["collect"]) == 100, 30, "the legitimate exporter's 100 records")
        # the half-sent messages time out, and their sessions close
        wait_for(lambda: sample(pipeline, "flowscope_ipfix_sessions") == 0, 30, "the stalled sessions to close")
        assert (
            sample(pipeline, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason="message_timeout")
            == 20
        )
    finally:
        for sock in attackers:
            sock.close()
        stop(pipeline)


def test_forged_sequence_numbers_are_resets_not_loss(tmp_path):
    pipeline, source = collector(tmp_path, "udp")
    sender = udp_sender(LEGIT)
    rng = random.Random(7)
    try:
        messages = legit_messages(2)
        sender.sendto(messages[0], ("127.0.0.1", source.port))
        for _ in range(50):
            data = message(set_(300, legit_record(1)), odid=7, sequence=rng.randrange(1 << 32))
            sender.sendto(data, ("127.0.0.1", source.port))
        wait_for(lambda: len(COLLECTED["collect"]) == 51, 20, "51 records")
        assert sample(pipeline, "flowscope_ipfix_lost_records_total", exporter=LEGIT) < 1_000_000
        assert sample(pipeline, "flowscope_ipfix_sequence_resets_total", exporter=LEGIT) >= 40
    finally:
        sender.close()
        stop(pipeline)


def mutate(data: bytes, rng: random.Random) -> bytes:
    data = bytearray(data)
    for _ in range(rng.randrange(1, 6)):
        kind = rng.randrange(4)
        if kind == 0 and data:
            data[rng.randrange(len(data))] = rng.randrange(256)
        elif kind == 1 and len(data) > 4:
            del data[rng.randrange(len(data)) :]
        elif kind == 2:
            data[rng.randrange(len(data) + 1) : 0] = bytes(rng.randrange(256) for _ in range(rng.randrange(1, 9)))
        elif len(data) > 20:  # lengths are where parsers break
            position = rng.choice([2, 18, 22, 24])
            data[position : position + 2] = struct.pack(">H", rng.choice([0, 1, 3, 4, 65535, len(data), len(data) + 1]))
    return bytes(data)


VALID = message(
    template_set(LEGIT_TEMPLATE, template(302, field(27, 16), field(150, 4), field(56, 6), field(136, 1))),
    set_(300, legit_record(1) + legit_record(2)),
    set_(302, bytes(16) + struct.pack(">I", 1764165600) + bytes(6) + bytes([2])),
    odid=3,
)


@pytest.mark.parametrize("proto", ["udp", "tcp"])
def test_seeded_mutation_fuzz_keeps_the_collector_up(tmp_path, proto, no_thread_dies):
    pipeline, source = collector(tmp_path, proto)
    rng = random.Random(20261127)
    mutated = [mutate(VALID, rng) for _ in range(20_000)]
    try:
        if proto == "udp":
            sender = udp_sender()
            for data in mutated:
                sender.sendto(data, ("127.0.0.1", source.port))
            sender.close()
        else:  # a broken frame ends its session: the next message goes on a new one
            sock = None
            for data in mutated:
                try:
                    sock = sock or socket.create_connection(("127.0.0.1", source.port), timeout=10)
                    sock.sendall(data)
                except OSError:
                    if sock is not None:
                        sock.close()
                    sock = None
            if sock is not None:
                sock.close()

        def errors() -> float:
            return sum(
                sample.value
                for metric in pipeline.metrics.registry.collect()
                if metric.name == "flowscope_ipfix_decode_errors"
                for sample in metric.samples
                if sample.name.endswith("_total")
            )

        if proto == "udp":  # every datagram stands alone: many of them are errors
            wait_for(lambda: errors() > 100, 300, "decode errors to be counted")
        else:  # a broken frame ends a session: at least the sessions' errors, once every session is over
            wait_for(lambda: sample(pipeline, "flowscope_ipfix_sessions") == 0 and errors() >= 1, 300, "the sessions")
        before = len(COLLECTED["collect"])
        if proto == "tcp":
            send_tcp(source.port, legit_messages(10, odid=99))
        else:
            with udp_sender(LEGIT) as sender:
                for data in legit_messages(10, odid=99):
                    sender.sendto(data, ("127.0.0.1", source.port))
        wait_for(lambda: len(COLLECTED["collect"]) >= before + 10, 60, "valid traffic after the fuzzing")
    finally:
        stop(pipeline)
