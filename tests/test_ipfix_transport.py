"""The ipfix source and sink over real sockets: TCP, UDP and TLS on loopback."""

from __future__ import annotations

import socket
import struct
import time

import pytest

from flowscope.core.certs import ensure_certificates
from tests.helpers import COLLECTED, build, wait_for
from tests.ipfix_wire import field, message, set_, template, template_set

RECORDS = [
    {
        "flowStartSeconds": 1764165600 + i,
        "sourceIPv4Address": "10.10.0.11",
        "destinationIPv4Address": "10.10.1.21",
        "sourceTransportPort": 30000 + i,
        "destinationTransportPort": 8080,
        "protocolIdentifier": 6,
        "octetDeltaCount": 1000 + i,
        "sourcePodName": f"frontend-{i}",
        "tcpState": "ESTABLISHED",
        "flowType": 2,
    }
    for i in range(2000)
]


def collector(proto, *, dataDir, name="collect", port=0, **options):
    pipeline = build(
        {
            "sources": [{"type": "ipfix", "address": f"127.0.0.1:{port}:{proto}", "batchInterval": "20ms", **options}],
            "sinks": [{"type": "collect", "name": name, "flushInterval": "20ms"}],
            "shutdownTimeout": "2s",
            "dataDir": dataDir,
        }
    )
    pipeline.start()
    return pipeline, pipeline.sources[0][1].port


def export(records, address, **options):
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": records, "batch": 500}],
            "sinks": [
                {"type": "ipfix", "address": address, "retryBackoff": "20ms", "retryMaxBackoff": "100ms", **options}
            ],
            "shutdownTimeout": "10s",
        }
    )
    return pipeline


def sample(pipeline, metric, **labels):
    return pipeline.metrics.registry.get_sample_value(metric, {"instance": "ipfix", **labels}) or 0.0


def stop(*pipelines):
    for pipeline in pipelines:
        pipeline.stop()
        assert pipeline.wait(10)


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_records_arrive_exactly(proto, tmp_path):
    source, port = collector(proto, dataDir=str(tmp_path))
    try:
        assert export(RECORDS, f"127.0.0.1:{port}:{proto}").run() == 0
        wait_for(lambda: len(COLLECTED["collect"]) >= len(RECORDS), what="all records")
        assert COLLECTED["collect"] == RECORDS
        assert sample(source, "flowscope_ipfix_records_total", exporter="127.0.0.1") == len(RECORDS)
        assert sample(source, "flowscope_ipfix_lost_records_total", exporter="127.0.0.1") == 0
    finally:
        stop(source)


def test_tls_with_client_certificates(tmp_path, caplog):
    certs = ensure_certificates(tmp_path / "certs", ["127.0.0.1", "localhost"])
    source, port = collector(
        "tls",
        tlsCert=str(certs.server_cert),
        tlsKey=str(certs.server_key),
        clientCA=str(certs.ca_cert),
        dataDir=str(tmp_path),
    )
    try:
        good = export(
            RECORDS[:100],
            f"127.0.0.1:{port}:tls",
            caCert=str(certs.ca_cert),
            clientCert=str(certs.client_cert),
            clientKey=str(certs.client_key),
        )
        assert good.run() == 0
        wait_for(lambda: len(COLLECTED["collect"]) >= 100, what="records over TLS")
        assert COLLECTED["collect"] == RECORDS[:100]
        anonymous = build(
            {
                "sources": [{"type": "memory", "records": RECORDS[:5]}],
                "sinks": [
                    {
                        "type": "ipfix",
                        "address": f"127.0.0.1:{port}:tls",
                        "caCert": str(certs.ca_cert),
                        "retryBackoff": "20ms",
                    }
                ],
                "shutdownTimeout": "500ms",
            }
        )
        anonymous.start()
        assert anonymous.wait(10)
        # refused for lack of a client certificate: nothing is counted as sent, all 5 are accounted for
        counters = anonymous.metrics.counters("sink", "ipfix")
        assert (counters.value("emitted"), counters.value("dropped", "shutdown")) == (0, 5)
        assert "tlsv13 alert certificate required" in caplog.text
        wait_for(
            lambda: (
                sample(source, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason="tls_error") >= 1
            ),
            what="the refused handshake to be counted",
        )
        assert len(COLLECTED["collect"]) == 100
    finally:
        stop(source)


def test_tls_requires_a_client_certificate_from_its_ca_by_default(tmp_path):
    source, port = collector("tls", dataDir=str(tmp_path / "aggregator"))  # certificates made there
    server_ca = tmp_path / "aggregator" / "certs" / "ca.crt"
    stranger = ensure_certificates(tmp_path / "stranger", ["127.0.0.1"])

    def exporter(data_dir, **tls):
        pipeline = build(
            {
                "sources": [{"type": "memory", "records": RECORDS[:5]}],
                "sinks": [{"type": "ipfix", "address": f"127.0.0.1:{port}:tls", "retryBackoff": "50ms", **tls}],
                "shutdownTimeout": "1s",
                "dataDir": str(data_dir),
            }
        )
        pipeline.run()
        return pipeline.metrics.counters("sink", "ipfix").value("emitted")

    try:
        # beside the aggregator (the same data folder), the exporter presents the client certificate made there
        assert exporter(tmp_path / "aggregator") == 5
        wait_for(lambda: len(COLLECTED["collect"]) == 5, what="the records of the exporter with a certificate")
        assert exporter(tmp_path / "anonymous", caCert=str(server_ca)) == 0
        foreign = {"clientCert": str(stranger.client_cert), "clientKey": str(stranger.client_key)}
        assert exporter(tmp_path / "foreign", caCert=str(server_ca), **foreign) == 0
        assert len(COLLECTED["collect"]) == 5
        assert sample(source, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason="tls_error") >= 2
    finally:
        stop(source)


def test_exporter_buffers_until_the_collector_appears_and_across_a_restart(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    exporter = build(
        {
            "sources": [{"type": "memory", "records": RECORDS[:1000], "batch": 100, "hold": True}],
            "sinks": [
                {
                    "type": "ipfix",
                    "address": f"127.0.0.1:{port}:tcp",
                    "retryBackoff": "20ms",
                    "retryMaxBackoff": "100ms",
                    "batchSize": 100,
                    "flushInterval": "20ms",
                }
            ],
            "shutdownTimeout": "10s",
        }
    )
    exporter.start()  # nothing listens yet: open() fails, records wait in the buffer
    time.sleep(0.3)
    first, _ = collector("tcp", port=port, dataDir=str(tmp_path))
    wait_for(lambda: len(COLLECTED["collect"]) >= 1000, what="buffered records after the collector started")
    assert COLLECTED["collect"] == RECORDS[:1000]
    stop(first)
    sink = exporter.sinks[0]
    sink.put(RECORDS[1000:1500])  # sent while no collector listens: kept and retried
    time.sleep(0.3)
    second, _ = collector("tcp", name="second", port=port, dataDir=str(tmp_path))
    try:
        sink.put(RECORDS[1500:2000])
        wait_for(lambda: len(COLLECTED.get("second", [])) >= 1000, what="records across the restart")
        # at least once: nothing is lost; a batch in flight when the collector went away may repeat
        assert {r["sourceTransportPort"] for r in COLLECTED["second"]} == {
            r["sourceTransportPort"] for r in RECORDS[1000:2000]
        }
        connections = exporter.metrics.registry.get_sample_value(
            "flowscope_ipfix_exporter_connections_total", {"instance": "ipfix"}
        )
        assert connections == 2
    finally:
        stop(exporter, second)


def test_udp_collector_survives_garbage_and_counts_it(tmp_path):
    source, port = collector("udp", dataDir=str(tmp_path))
    tmpl = template_set(template(256, field(7, 2), field(1, 8)))
    good = message(tmpl, set_(256, struct.pack(">HQ", 53, 99)), sequence=0)
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for datagram in (b"\x00" * 7, b"garbage!" * 4, good[:-3], struct.pack(">HHIII", 5, 16, 0, 0, 0), good):
                sender.sendto(datagram, ("127.0.0.1", port))
            wait_for(lambda: len(COLLECTED["collect"]) >= 1, what="the good datagram")
        assert COLLECTED["collect"] == [{"sourceTransportPort": 53, "octetDeltaCount": 99}]
        errors = {
            r: sample(source, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason=r)
            for r in ("truncated", "bad_version", "bad_length")
        }
        assert errors == {"truncated": 1, "bad_version": 2, "bad_length": 1}
    finally:
        stop(source)


def test_tcp_session_with_broken_framing_is_closed_and_others_carry_on(tmp_path, caplog):
    caplog.set_level("INFO", logger="flowscope")
    source, port = collector("tcp", dataDir=str(tmp_path))
    tmpl = template_set(template(256, field(7, 2)))
    try:
        with socket.create_connection(("127.0.0.1", port)) as bad:
            bad.sendall(message(tmpl, set_(256, b"\x00\x01")) + b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
            bad.settimeout(5)
            assert bad.recv(10) == b""  # the collector closed the session
        with socket.create_connection(("127.0.0.1", port)) as good:
            good.sendall(message(tmpl, set_(256, b"\x00\x02")))
        wait_for(lambda: len(COLLECTED["collect"]) >= 2, what="records from both sessions")
        assert COLLECTED["collect"] == [{"sourceTransportPort": 1}, {"sourceTransportPort": 2}]
        assert sample(source, "flowscope_ipfix_decode_errors_total", exporter="127.0.0.1", reason="bad_version") == 1
        assert "broken framing: unsupported version 18245 (IPFIX is version 10)" in caplog.text
        assert "IPFIX session opened: tcp 127.0.0.1:" in caplog.text
    finally:
        stop(source)


def test_sequence_gaps_are_counted_per_domain(tmp_path):
    source, port = collector("udp", dataDir=str(tmp_path))
    tmpl = template_set(template(256, field(7, 2)))
    one = set_(256, b"\x00\x01")
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
            for msg in (
                message(tmpl, one, sequence=0, odid=1),
                message(one, sequence=1, odid=1),
                message(one, sequence=5, odid=1),  # 3 records lost
                message(tmpl, one, sequence=100, odid=2),  # another domain: its own sequence
                message(one, sequence=101, odid=2),
                message(one, sequence=4, odid=1),  # a late, reordered one: not a gap
            ):
                sender.sendto(msg, ("127.0.0.1", port))
            wait_for(lambda: len(COLLECTED["collect"]) >= 6, what="six records")
        assert sample(source, "flowscope_ipfix_sequence_gaps_total", exporter="127.0.0.1") == 1
        assert sample(source, "flowscope_ipfix_lost_records_total", exporter="127.0.0.1") == 3
    finally:
        stop(source)


def test_udp_templates_survive_a_collector_restart(tmp_path):
    tmpl = template_set(template(256, field(7, 2)))
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        sender.bind(("127.0.0.1", 0))
        first, port = collector("udp", dataDir=str(tmp_path))
        sender.sendto(message(tmpl, set_(256, b"\x00\x01")), ("127.0.0.1", port))
        wait_for(lambda: len(COLLECTED["collect"]) >= 1, what="first record")
        stop(first)
        second, _ = collector("udp", port=port, dataDir=str(tmp_path))
        try:
            sender.sendto(message(set_(256, b"\x00\x02"), sequence=1), ("127.0.0.1", port))  # no template resent
            wait_for(lambda: len(COLLECTED["collect"]) >= 2, what="record decoded with the persisted template")
            assert COLLECTED["collect"] == [{"sourceTransportPort": 1}, {"sourceTransportPort": 2}]
        finally:
            stop(second)


def test_udp_exporter_refreshes_templates(tmp_path):
    source, port = collector("udp", dataDir=str(tmp_path), persistTemplates=False)
    exporter = build(
        {
            "sources": [{"type": "memory", "records": RECORDS[:10], "batch": 1, "hold": True}],
            "sinks": [
                {"type": "ipfix", "address": f"127.0.0.1:{port}:udp", "templateRefreshTimeout": "100ms", "batchSize": 1}
            ],
        }
    )
    exporter.start()
    wait_for(lambda: len(COLLECTED["collect"]) >= 10, what="first records")
    stop(source)
    # a new collector that never saw the templates decodes the exporter's data once they are sent again
    restarted, _ = collector("udp", name="again", port=port, dataDir=str(tmp_path), persistTemplates=False)
    try:
        assert sample(restarted, "flowscope_ipfix_templates") == 0
        sends = exporter.metrics.registry.get_sample_value
        before = sends("flowscope_ipfix_exporter_template_sends_total", {"instance": "ipfix"})
        deadline = time.monotonic() + 30
        while not COLLECTED.get("again") and time.monotonic() < deadline:
            exporter.sinks[0].put([RECORDS[20]])
            time.sleep(0.05)
        assert COLLECTED["again"][0] == RECORDS[20]
        # only a refresh after the restart can have given it the template
        assert sends("flowscope_ipfix_exporter_template_sends_total", {"instance": "ipfix"}) > before
    finally:
        stop(exporter, restarted)


def test_messages_respect_max_size_on_udp(tmp_path):
    source, port = collector("udp", dataDir=str(tmp_path))
    try:
        assert export(RECORDS, f"127.0.0.1:{port}:udp", maxIPFIXMsgSize=600).run() == 0
        wait_for(lambda: len(COLLECTED["collect"]) >= len(RECORDS), what="all records")
        messages = sample(source, "flowscope_ipfix_messages_total", exporter="127.0.0.1")
        assert messages >= len(RECORDS) * 40 / 600  # ~40-byte records, at most 600 bytes per message
    finally:
        stop(source)


def test_listening_on_a_taken_port_is_a_clear_error(tmp_path):
    from flowscope.core.errors import ConfigError

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(ConfigError) as err:
            collector("tcp", port=port, dataDir=str(tmp_path))
    assert f"address: cannot listen on 127.0.0.1:{port}:tcp: Address already in use" in str(err.value)
