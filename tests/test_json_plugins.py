"""The built-in ``jsonl`` source and ``json`` sink."""

from __future__ import annotations

import json
import re

from flowscope.plugins.sinks.json import encode_record
from tests.helpers import COLLECTED, run


def test_json_lines_match_the_go_ipfix_encoding():
    record = {
        "sourcePodName": "web-0",
        "octetDeltaCount": 18446744073709551615,
        "sourceIPv6Address": "fd00::1",
        "sourcePodLabels": '{"app":"a&b<c>"}',
        "flowType": 2,
        "sourcePodUUID": b"\x01\x02\xff",
        "destinationPodName": "café",
        "trusted": True,
    }
    line = encode_record(record, "2026-11-26T15:00:00Z")
    assert line == (
        '{"@timestamp":"2026-11-26T15:00:00Z","ipfix":{"destinationPodName":"café","flowType":2,'
        '"octetDeltaCount":18446744073709551615,"sourceIPv6Address":"fd00::1",'
        '"sourcePodLabels":"{\\"app\\":\\"a\\u0026b\\u003cc\\u003e\\"}","sourcePodName":"web-0",'
        '"sourcePodUUID":"AQL/","trusted":true}}'
    )
    assert json.loads(line)["ipfix"]["sourcePodLabels"] == '{"app":"a&b<c>"}'


def test_line_separators_are_escaped_and_keys_that_are_not_strings_written_as_text():
    record = {"note": "a\u2028b\u2029c\u2013d", 2: "two", "a": {1: True}}
    assert encode_record(record, "2026-11-26T15:00:00Z") == (
        '{"@timestamp":"2026-11-26T15:00:00Z","ipfix":{"2":"two","a":{"1":true},"note":"a\\u2028b\\u2029c\u2013d"}}'
    )


def test_json_sink_appends_records_with_a_utc_timestamp(tmp_path):
    out = tmp_path / "sub" / "flows.jsonl"
    out.parent.mkdir()
    out.write_text("existing\n")
    run(
        {
            "sources": [{"type": "memory", "records": [{"a": 1}, {"a": 2}]}],
            "sinks": [{"type": "json", "path": str(out)}],
        }
    )
    lines = out.read_text().splitlines()
    assert lines[0] == "existing"
    assert [json.loads(line)["ipfix"] for line in lines[1:]] == [{"a": 1}, {"a": 2}]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", json.loads(lines[1])["@timestamp"])


def test_jsonl_source_reads_batches_skips_bad_lines_and_unwraps_antrea_json(tmp_path, caplog):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"a": 1}\n'
        "[1, 2]\n"
        '{"@timestamp": "2026-11-26T15:00:00Z", "ipfix": {"b": 2}}\n'
        "\n"
        '{"broken": \n'
        '{"ipfix": {"c": 3}, "other": 1}\n'
    )
    pipeline = run(
        {"sources": [{"type": "jsonl", "path": str(source), "batchSize": 2}], "sinks": [{"type": "collect"}]}
    )
    assert COLLECTED["collect"] == [{"a": 1}, {"b": 2}, {"ipfix": {"c": 3}, "other": 1}]
    counters = pipeline.metrics.counters("source", "jsonl")
    assert counters.value("received") == 5
    assert counters.value("dropped", "malformed") == 2
    assert counters.value("emitted") == 3
    assert f"{source} line 2 skipped: a JSON list, not an object" in caplog.text
    assert f"{source} line 5 skipped: not valid JSON" in caplog.text


def test_json_sink_output_round_trips_through_the_jsonl_source(tmp_path):
    first = tmp_path / "first.jsonl"
    records = [{"sourcePodName": "a", "octetDeltaCount": i} for i in range(5)]
    run({"sources": [{"type": "memory", "records": records}], "sinks": [{"type": "json", "path": str(first)}]})
    run({"sources": [{"type": "jsonl", "path": str(first)}], "sinks": [{"type": "collect"}]})
    assert COLLECTED["collect"] == records


def test_json_sink_sends_lines_to_tcp_and_udp_collectors():
    import socket

    with socket.socket() as server, socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        server.bind(("127.0.0.1", 0))
        server.listen()
        udp.bind(("127.0.0.1", 0))
        udp.settimeout(5)
        spec = {
            "sources": [{"type": "memory", "records": [{"a": 1}, {"a": 2}]}],
            "sinks": [
                {"type": "json", "name": "tcp", "address": f"127.0.0.1:{server.getsockname()[1]}:tcp"},
                {"type": "json", "name": "udp", "address": f"127.0.0.1:{udp.getsockname()[1]}:udp"},
            ],
        }
        run(spec)
        connection, _ = server.accept()
        connection.settimeout(5)
        received = b""
        while received.count(b"\n") < 2:
            received += connection.recv(4096)
        connection.close()
        datagrams = [udp.recv(4096), udp.recv(4096)]
    assert [json.loads(line)["ipfix"] for line in received.splitlines()] == [{"a": 1}, {"a": 2}]
    assert [json.loads(d)["ipfix"] for d in datagrams] == [{"a": 1}, {"a": 2}]
