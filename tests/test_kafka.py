"""The ``kafka`` sink and source against a real Kafka-protocol broker (Tansu, tests/kafka_support.py)."""

from __future__ import annotations

import importlib.util
import ipaddress
import json
import logging
from collections import Counter, defaultdict

import pytest

import flowscope
from flowscope.core.errors import FlowscopeError
from flowscope.core.plugins import load_plugins
from flowscope.plugins import kafkaclient
from flowscope.plugins.sinks.json import EXTENSION, encode_line
from flowscope.plugins.sinks.kafka import KafkaSink, message_key
from flowscope.plugins.sources.kafka import KafkaSource
from flowscope.testing import make_context
from tests.helpers import COLLECTED, build, run, wait_for
from tests.kafka_support import Tansu

kafka = pytest.importorskip("kafka")

SESSION = "6s"  # Tansu holds a first join for half the session timeout: keep it short


def flow(i: int, **fields) -> dict:
    """An Antrea record of connection ``i``."""
    record = {
        "sourceIPv4Address": f"10.10.0.{i % 250 + 1}",
        "destinationIPv4Address": "10.10.1.7",
        "sourceTransportPort": 30000 + i,
        "destinationTransportPort": 80,
        "protocolIdentifier": 6,
        "octetDeltaCount": 1000 + i,
        "packetDeltaCount": 10,
        "flowStartSeconds": 1_700_000_000 + i,
        "sourcePodName": f"client-{i}",
        "sourcePodNamespace": "default",
        "destinationPodName": "web-0",
        "sourcePodLabels": '{"app":"client","tier":"<front>&"}',
        "tcpState": "ESTABLISHED",
        "flowType": 2,
        "isIPv6": False,
    }
    record.update(fields)
    return record


def sink_spec(tansu: Tansu, records: list[dict], topic: str = "flows", tmp_path=None, **options) -> dict:
    sink = {"type": "kafka", "brokers": [tansu.address], "topic": topic, "timeout": "3s", **options}
    return {
        "sources": [{"type": "memory", "records": records, "batch": 7}],
        "sinks": [{**sink, "flushInterval": "50ms", "retryBackoff": "100ms", "retryMaxBackoff": "1s"}],
        "dataDir": str(tmp_path / "data"),
    }


def source_pipeline(tansu: Tansu, out: str, tmp_path, topics=("flows",), group: str = "flowscope", **options):
    spec = {
        "sources": [
            {
                "type": "kafka",
                "brokers": tansu.address,
                "topics": list(topics),
                "groupId": group,
                "sessionTimeout": SESSION,
                "pollTimeout": "100ms",
                **options,
            }
        ],
        "sinks": [{"type": "collect", "name": out, "flushInterval": "20ms"}],
        "dataDir": str(tmp_path / f"data-{out}"),
    }
    pipeline = build(spec)
    pipeline.start()
    return pipeline


def finish(pipeline) -> None:
    pipeline.stop()
    assert pipeline.wait(30), "pipeline did not stop"


def read_topic(tansu: Tansu, topic: str, count: int, timeout: float = 30) -> list:
    """The first ``count`` messages of every partition of ``topic``, read without a group."""
    consumer = kafka.KafkaConsumer(bootstrap_servers=[tansu.address], enable_auto_commit=False)
    try:
        wait_for(lambda: consumer.partitions_for_topic(topic), timeout, f"topic {topic}")
        partitions = [kafka.TopicPartition(topic, p) for p in sorted(consumer.partitions_for_topic(topic))]
        consumer.assign(partitions)
        consumer.seek_to_beginning(*partitions)
        messages: list = []

        def enough() -> bool:
            for batch in consumer.poll(timeout_ms=200).values():
                messages.extend(batch)
            return len(messages) >= count

        wait_for(enough, timeout, f"{count} messages in {topic} (have {len(messages)})")
        return messages
    finally:
        consumer.close(autocommit=False)


def produce_raw(tansu: Tansu, topic: str, values: list[bytes | None]) -> None:
    producer = kafka.KafkaProducer(bootstrap_servers=[tansu.address])
    try:
        futures = [producer.send(topic, value=value, key=b"k") for value in values]
        producer.flush(30)
        for future in futures:
            future.get(1)
    finally:
        producer.close(5)


def by_port(records: list[dict]) -> list[dict]:
    return sorted(records, key=lambda r: (r.get("sourceTransportPort", -1), r.get("flowType", 0)))


# -- sink → broker → source ----------------------------------------------------------------------


def test_records_go_through_kafka_unchanged(tansu, tmp_path):
    records = [flow(i) for i in range(30)]
    records.append(flow(30, sourceIPv4Address="", destinationIPv4Address="", isIPv6=True,
                        sourceIPv6Address="fd00:10:10::5", destinationIPv6Address="fd00:10:10::7"))  # fmt: skip
    records.append(flow(31, sourcePodUUID=bytes(range(16)), paddingOctets=b"\x00\xff"))
    records.append(flow(32, destinationPodUUID="4d0a4c8e-1b2c-4d5e-8f90-0123456789ab"))
    sink = run(sink_spec(tansu, records, tmp_path=tmp_path))
    assert sink.metrics.counters("sink", "kafka").value("emitted") == 33

    messages = read_topic(tansu, "flows", 33)
    assert len(messages) == 33
    first = json.loads(min(messages, key=lambda m: json.loads(m.value)["ipfix"]["sourceTransportPort"]).value)
    assert list(first) == ["@timestamp", "ipfix"]
    assert first["ipfix"] == flow(0)
    raw = {m.key: m.value for m in messages}
    assert (
        b'"sourcePodLabels":"{\\"app\\":\\"client\\",\\"tier\\":\\"\\u003cfront\\u003e\\u0026\\"}"'
        in raw[b"6 10.10.0.1:30000 10.10.1.7:80"]
    )
    assert b"6 [fd00:10:10::5]:30030 [fd00:10:10::7]:80" in raw

    pipeline = source_pipeline(tansu, "out", tmp_path)
    wait_for(lambda: len(COLLECTED.get("out", [])) >= 33, 60, "33 records from the kafka source")
    finish(pipeline)
    assert by_port(COLLECTED["out"]) == by_port(records)
    counters = pipeline.metrics.counters("source", "kafka")
    assert (counters.value("received"), counters.value("dropped", "malformed")) == (33, 0)


def test_both_halves_of_a_connection_share_a_key_and_a_partition(tansu, tmp_path):
    tansu.create_topic("pairs", 6)
    records = []
    for i in range(20):
        records.append(flow(i, flowType=2, sourceNodeName="node-a"))  # from the source Node
        records.append(flow(i, flowType=2, destinationNodeName="node-b"))  # from the destination Node
        reply = flow(i, sourceNodeName="node-b")  # the same connection seen from its other end
        reply.update(
            sourceIPv4Address=reply["destinationIPv4Address"],
            destinationIPv4Address=reply["sourceIPv4Address"],
            sourceTransportPort=reply["destinationTransportPort"],
            destinationTransportPort=reply["sourceTransportPort"],
        )
        records.append(reply)
    run(sink_spec(tansu, records, topic="pairs", tmp_path=tmp_path))

    partitions = defaultdict(set)
    for message in read_topic(tansu, "pairs", 60):
        partitions[message.key].add(message.partition)
    assert sorted(partitions) == sorted(f"6 10.10.0.{i + 1}:{30000 + i} 10.10.1.7:80".encode() for i in range(20))
    assert all(len(found) == 1 for found in partitions.values())
    assert len(set().union(*partitions.values())) > 1  # the keys do spread over the partitions


def test_the_key_orders_the_endpoints():
    a = {"sourceIPv4Address": "10.0.0.9", "destinationIPv4Address": "10.0.0.10", "protocolIdentifier": 17,
         "sourceTransportPort": 53, "destinationTransportPort": 40000}  # fmt: skip
    b = {"sourceIPv4Address": "10.0.0.10", "destinationIPv4Address": "10.0.0.9", "protocolIdentifier": 17,
         "sourceTransportPort": 40000, "destinationTransportPort": 53}  # fmt: skip
    assert message_key(a) == message_key(b) == b"17 10.0.0.10:40000 10.0.0.9:53"
    assert message_key({"octetDeltaCount": 1}) is None
    one_host = {"sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.1", "protocolIdentifier": 6,
                "sourceTransportPort": 10, "destinationTransportPort": 9}  # fmt: skip
    assert message_key(one_host) == b"6 10.0.0.1:9 10.0.0.1:10"  # ports compared as numbers
    v6 = {"sourceIPv4Address": "", "sourceIPv6Address": ipaddress.ip_address("fd00::5"),
          "destinationIPv6Address": "fd00::1", "sourceTransportPort": "443"}  # fmt: skip
    assert message_key(v6) == b"0 [fd00::1]:0 [fd00::5]:443"
    assert message_key({"destinationIPv4Address": "10.0.0.2", "protocolIdentifier": 17}) == b"17 :0 10.0.0.2:0"


@pytest.mark.parametrize("pure_python", [False, True])
def test_message_values_are_the_json_sinks_lines(monkeypatch, pure_python):
    """With the json sink's C encoder (one buffer for the batch, cut at its newlines) or without it."""
    if pure_python:
        monkeypatch.setenv("FLOWSCOPE_PURE_PYTHON", "1")
    records = [flow(0), flow(1, sourcePodUUID=bytes(range(16)), note="a\u2028b\nc"), {"nested": {"x": [1]}, 3: "three"}]
    options = dict(KafkaSink.Options.model_validate({"brokers": "127.0.0.1:9092", "topic": "t"}))
    sink = KafkaSink(options, make_context("kafka"))
    assert (sink._encoder is None) == (pure_python or EXTENSION is None)
    timestamp = "2026-11-26T15:00:00Z"
    assert sink._values(records, timestamp) == [encode_line(record, timestamp)[:-1] for record in records]


# -- consumer groups -----------------------------------------------------------------------------


def test_two_replicas_share_the_partitions_and_every_record_comes_out_once(tansu, tmp_path):
    tansu.create_topic("shared", 4)
    first, second = [flow(i) for i in range(40)], [flow(i) for i in range(40, 100)]
    one = source_pipeline(tansu, "one", tmp_path, topics=["shared"], group="replicas")
    _, source_one = one.sources[0]
    wait_for(lambda: len(source_one.assigned) == 4, 60, "the first replica to read every partition")
    run(sink_spec(tansu, first, topic="shared", tmp_path=tmp_path))
    wait_for(lambda: len(COLLECTED.get("one", [])) == 40, 60, "the first 40 records at the first replica")

    two = source_pipeline(tansu, "two", tmp_path, topics=["shared"], group="replicas")
    _, source_two = two.sources[0]

    def split() -> bool:
        a, b = source_one.assigned, source_two.assigned
        return bool(a) and bool(b) and not a & b and len(a | b) == 4

    wait_for(split, 60, "the partitions to be split between the replicas")
    run(sink_spec(tansu, second, topic="shared", tmp_path=tmp_path))
    wait_for(lambda: len(COLLECTED["one"]) + len(COLLECTED.get("two", [])) >= 100, 60, "all 100 records")
    finish(one)
    finish(two)

    seen = Counter(r["sourceTransportPort"] for r in COLLECTED["one"] + COLLECTED["two"])
    assert seen == Counter(30000 + i for i in range(100))  # each exactly once
    assert COLLECTED["two"], "the second replica read its share"
    assert {r["sourceTransportPort"] for r in COLLECTED["two"]} <= {30000 + i for i in range(40, 100)}


# -- failures ------------------------------------------------------------------------------------


@pytest.mark.slow
def test_a_broker_restart_loses_nothing(tansu, tmp_path):
    """Tansu keeps nothing across a restart: what it had acknowledged before is gone with it, and the
    topic is made again by the first request after it. What the sink took while the broker was down
    arrives after the restart."""
    path = tmp_path / "in.jsonl"
    path.write_text("".join(json.dumps(flow(i)) + "\n" for i in range(10)))
    spec = sink_spec(tansu, [], topic="restart", tmp_path=tmp_path)
    spec["sources"] = [{"type": "jsonl", "path": str(path), "follow": True, "pollInterval": "20ms"}]
    pipeline = build(spec)
    pipeline.start()
    counters = pipeline.metrics.counters("sink", "kafka")
    wait_for(lambda: counters.value("emitted") == 10, 30, "the first 10 records written")
    assert sorted(json.loads(m.value)["ipfix"]["sourceTransportPort"] for m in read_topic(tansu, "restart", 10)) == [
        30000 + i for i in range(10)
    ]

    tansu.stop()
    with path.open("a") as out:
        out.write("".join(json.dumps(flow(i)) + "\n" for i in range(10, 30)))
    wait_for(lambda: counters.value("retried") >= 2, 60, "the sink to retry while the broker is down")
    assert counters.value("emitted") == 10
    tansu.start()
    wait_for(lambda: counters.value("emitted") == 30, 60, "the 20 records kept during the outage")
    with path.open("a") as out:
        out.write("".join(json.dumps(flow(i)) + "\n" for i in range(30, 35)))
    wait_for(lambda: counters.value("emitted") == 35, 30, "records sent after the restart")
    finish(pipeline)

    ports = sorted(json.loads(m.value)["ipfix"]["sourceTransportPort"] for m in read_topic(tansu, "restart", 25))
    assert ports == [30000 + i for i in range(10, 35)]  # each once, none lost
    assert counters.value("dropped") == 0


def test_brokers_down_at_the_start_are_waited_for(tmp_path, caplog):
    broker = Tansu(tmp_path / "tansu.log")
    records = [flow(i) for i in range(5)]
    spec = sink_spec(broker, records, topic="late", tmp_path=tmp_path, connectTimeout="500ms")
    spec["sources"][0]["hold"] = True
    with caplog.at_level(logging.WARNING, logger="flowscope"):
        sink = build(spec)
        sink.start()
        source = source_pipeline(broker, "late", tmp_path, topics=["late"], connectTimeout="500ms")
        try:
            unreachable = f"cannot reach the Kafka brokers {broker.address} (key brokers) within 0.5s"
            wait_for(lambda: caplog.text.count(unreachable) >= 2, 30, "both to say the brokers cannot be reached")
            assert not sink.sinks[0].ready
            broker.start()
            wait_for(lambda: len(COLLECTED.get("late", [])) == 5, 90, "the records once the broker is up")
        finally:
            finish(sink)
            finish(source)
            broker.stop()
    assert by_port(COLLECTED["late"]) == records


def test_an_oversized_record_is_dropped_alone_and_counted(tansu, tmp_path, caplog):
    records = [flow(0), flow(1, sourcePodName="x" * 5000), flow(2)]
    with caplog.at_level(logging.WARNING, logger="flowscope"):
        pipeline = run(sink_spec(tansu, records, topic="small", tmp_path=tmp_path, maxMessageSize=2000))
    counters = pipeline.metrics.counters("sink", "kafka")
    assert (counters.value("emitted"), counters.value("dropped", "oversized")) == (2, 1)
    assert "record dropped: larger than maxMessageSize (2000 bytes)" in caplog.text
    assert "key 6 10.10.0.2:30001 10.10.1.7:80" in caplog.text
    ports = sorted(json.loads(m.value)["ipfix"]["sourceTransportPort"] for m in read_topic(tansu, "small", 2))
    assert ports == [30000, 30002]


def test_messages_that_are_not_json_objects_are_counted_and_skipped(tansu, tmp_path, caplog):
    good = [json.dumps({"@timestamp": "2024-01-01T00:00:00Z", "ipfix": flow(0)}).encode(), json.dumps(flow(1)).encode()]
    bad = [b"not json", b"[1, 2]", b'"text"', None]
    produce_raw(tansu, "mixed", [good[0], *bad, good[1]])
    with caplog.at_level(logging.WARNING, logger="flowscope"):
        pipeline = source_pipeline(tansu, "mixed", tmp_path, topics=["mixed"])
        wait_for(lambda: len(COLLECTED.get("mixed", [])) == 2, 60, "the two good records")
        wait_for(lambda: pipeline.metrics.counters("source", "kafka").value("received") == 6, 10, "all six read")
        finish(pipeline)
    assert by_port(COLLECTED["mixed"]) == [flow(0), flow(1)]
    counters = pipeline.metrics.counters("source", "kafka")
    assert counters.value("dropped", "malformed") == 4
    assert "message skipped, not a JSON object: mixed[" in caplog.text
    assert "not valid JSON" in caplog.text


def test_committed_offsets_are_where_a_new_replica_starts(tansu, tmp_path):
    produce_raw(tansu, "resume", [json.dumps(flow(i)).encode() for i in range(5)])
    first = source_pipeline(tansu, "first", tmp_path, topics=["resume"], group="resume")
    wait_for(lambda: len(COLLECTED.get("first", [])) == 5, 60, "the first five")
    finish(first)
    produce_raw(tansu, "resume", [json.dumps(flow(i)).encode() for i in range(5, 8)])
    second = source_pipeline(tansu, "second", tmp_path, topics=["resume"], group="resume")
    wait_for(lambda: len(COLLECTED.get("second", [])) == 3, 60, "the three that came after")
    finish(second)
    assert by_port(COLLECTED["second"]) == [flow(5), flow(6), flow(7)]


def test_offsets_left_uncommitted_are_committed_before_the_partitions_are_given_up(tansu):
    """The rebalance listener: offsets emitted but not committed yet (a commit that failed) are
    committed when the partitions are revoked, here by leaving the group."""
    produce_raw(tansu, "handover", [json.dumps(flow(i)).encode() for i in range(6)])
    config = {"brokers": tansu.address, "topics": ["handover"], "groupId": "handover", "sessionTimeout": SESSION}
    source = KafkaSource(dict(KafkaSource.Options.model_validate(config)), make_context("kafka", kind="source"))
    consumer = source._connect(kafka)
    polled: dict = {}

    def all_polled() -> bool:
        for partition, messages in consumer.poll(timeout_ms=200).items():
            polled.setdefault(partition, []).extend(messages)
        return sum(map(len, polled.values())) == 6

    wait_for(all_polled, 60, "six messages polled")
    records, offsets = source._decode(kafka, polled)
    assert by_port(records) == [flow(i) for i in range(6)]
    source._uncommitted.update(offsets)
    consumer.close(autocommit=False)
    assert source._uncommitted == {}
    check = kafka.KafkaConsumer(bootstrap_servers=[tansu.address], group_id="handover", enable_auto_commit=False)
    try:
        assert {tp: check.committed(tp) for tp in offsets} == {tp: o.offset for tp, o in offsets.items()}
    finally:
        check.close(autocommit=False)


@pytest.mark.parametrize("codec", ["gzip", "lz4"])
def test_compressed_batches_arrive_whole(tansu, tmp_path, codec):
    records = [flow(i) for i in range(12)]
    run(sink_spec(tansu, records, topic=f"packed-{codec}", tmp_path=tmp_path, compression=codec))
    messages = read_topic(tansu, f"packed-{codec}", 12)
    assert by_port([json.loads(m.value)["ipfix"] for m in messages]) == records


# -- configuration -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"topic": "a b"}, "sinks[0].topic: 'a b' is not a Kafka topic name"),
        ({"acks": 2}, "sinks[0].acks:"),
        ({"brokers": []}, "sinks[0].brokers: give at least one broker"),
        ({"brokers": ":9092"}, "sinks[0].brokers: ':9092' has no host"),
        ({"caCert": "ca.pem"}, "caCert given but tls is false; set tls: true"),
        ({"username": "u", "password": "p"}, "username, password given without saslMechanism"),
        ({"saslMechanism": "SCRAM-SHA-512", "username": "u"}, "needs username and password (or passwordFile)"),
        ({"compression": "brotli"}, "sinks[0].compression: 'brotli' is not allowed"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    spec = {
        "sources": [{"type": "jsonl", "path": "-"}],
        "sinks": [{"type": "kafka", "brokers": "127.0.0.1:9092", "topic": "flows", **options}],
    }
    with pytest.raises(flowscope.ConfigError) as error:
        build(spec)
    assert message in str(error.value)


def test_options_map_to_the_client():
    assert load_plugins(entry_points=True).components["sink"]["kafka"] is KafkaSink
    config = {"brokers": "k0:9093, [fd00::1]", "topic": "t", "tls": True, "tlsVerify": False}
    config.update(saslMechanism="SCRAM-SHA-256", username="u", password="secret")
    options = dict(KafkaSink.Options.model_validate(config))
    settings = kafkaclient.client_settings(options, make_context("kafka").logger)
    assert settings["bootstrap_servers"] == ["k0:9093", "[fd00::1]:9092"]
    assert (settings["security_protocol"], settings["sasl_mechanism"]) == ("SASL_SSL", "SCRAM-SHA-256")
    assert (settings["sasl_plain_username"], settings["sasl_plain_password"]) == ("u", "secret")


def test_a_missing_crc32c_is_said_once_per_instance(caplog, monkeypatch):
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *args: None if name == "crc32c" else object())
    with caplog.at_level(logging.WARNING, logger="flowscope"):
        for _ in range(2):
            kafkaclient.check_crc32c(logging.getLogger("flowscope.sink.crc-check"))
    assert caplog.text.count("the Python package crc32c is not installed") == 1
    assert "install it: pip install crc32c" in caplog.text


def test_a_codec_without_its_package_is_a_config_error():
    spec = {
        "sources": [{"type": "jsonl", "path": "-"}],
        "sinks": [{"type": "kafka", "brokers": "127.0.0.1:9092", "topic": "flows", "compression": "zstd"}],
    }
    if kafka.codec.has_zstd():
        pytest.skip("zstandard is installed here")
    with pytest.raises(flowscope.ConfigError) as error:
        build(spec)
    assert "sinks[0].compression: 'zstd' needs the Python package zstandard" in str(error.value)


def test_a_ca_file_that_is_not_a_certificate_stops_the_start(tmp_path):
    (tmp_path / "ca.pem").write_text("not a certificate\n")
    sink = {"type": "kafka", "brokers": "127.0.0.1:9", "topic": "t", "tls": True, "caCert": str(tmp_path / "ca.pem")}
    spec = {"sources": [{"type": "memory", "records": [flow(0)]}], "sinks": [sink], "dataDir": str(tmp_path / "data")}
    pipeline = build(spec)
    with pytest.raises(FlowscopeError) as error:
        pipeline.start()
    assert "caCert" in str(error.value) and "ca.pem" in str(error.value)
