"""The `json` sink's TCP and UDP output as Logstash reads it.

Logstash is a JVM service that cannot be installed here, so the receivers below decode the bytes
by the rules of the codecs Antrea's ELK collector used on port 4736: the `tcp` input with
`json_lines` (split on "\\n", each line one JSON document) and the `udp` input with `json` (each
datagram one JSON document). A document that is not a JSON object becomes an event tagged
`_jsonparsefailure`; an `@timestamp` that Logstash's ISO 8601 parser refuses is tagged
`_timestampparsefailure` (the rules of logstash-codec-json_lines and logstash-core's Event).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from typing import Any

import pytest

from tests.helpers import build, wait_for

# What logstash-core's Timestamp.parse_iso8601 accepts, as the sink writes it (RFC 3339, UTC)
ISO8601 = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?(Z|[+-]\d{2}:?\d{2})")
RECORDS = [
    {
        "flowStartSeconds": 1767225600,
        "flowEndSeconds": 1767225610,
        "sourceIPv4Address": "10.244.1.5",
        "destinationIPv4Address": "10.244.2.9",
        "sourceTransportPort": 40001,
        "destinationTransportPort": 80,
        "protocolIdentifier": 6,
        "octetTotalCount": 1000,
        "packetTotalCount": 10,
        "sourcePodName": "web-1",
        "sourcePodNamespace": "shop",
        "destinationServicePortName": "shop/cart:http",
        "flowType": 2,
        "sourcePodLabels": '{"app":"web","tier":"<front>&"}',
    },
    {  # text that could break a line-based reader: a newline, a line separator, quotes
        "flowStartSeconds": 1767225601,
        "flowEndSeconds": 1767225611,
        "sourceIPv6Address": "fd00:10:244::5",
        "destinationIPv6Address": "fd00:10:244::9",
        "sourceTransportPort": 40002,
        "destinationTransportPort": 53,
        "protocolIdentifier": 17,
        "sourcePodName": 'we"b\n2\u2028',
        "egressName": "ünïcode",
    },
]


def events(document: bytes) -> list[dict[str, Any]]:
    """The events Logstash's json and json_lines codecs make of one JSON document."""
    try:
        parsed = json.loads(document)
    except ValueError:
        parsed = None
    items = parsed if isinstance(parsed, list) else [parsed]
    if not items or not all(isinstance(item, dict) for item in items):
        return [{"message": document.decode(errors="replace"), "tags": ["_jsonparsefailure"]}]
    made = []
    for item in items:
        timestamp = item.get("@timestamp")
        if timestamp is not None and not (isinstance(timestamp, str) and ISO8601.fullmatch(timestamp)):
            item = {key: value for key, value in item.items() if key != "@timestamp"}
            item.update({"_@timestamp": timestamp, "tags": ["_timestampparsefailure"]})
        made.append(item)
    return made


class Receiver:
    """A Logstash input on a loopback port: tcp + json_lines, or udp + json."""

    def __init__(self, proto: str):
        self.proto = proto
        self.events: list[dict[str, Any]] = []
        kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
        self.sock = socket.socket(socket.AF_INET, kind)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        if proto == "tcp":
            self.sock.listen()
        self.sock.settimeout(0.2)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                if self.proto == "udp":
                    self.events += events(self.sock.recv(65535))
                    continue
                conn, _ = self.sock.accept()
            except TimeoutError:
                continue
            self._read_lines(conn)

    def _read_lines(self, conn: socket.socket) -> None:
        """json_lines: a buffered tokenizer on "\\n"; a partial last line waits for its end."""
        pending = b""
        conn.settimeout(0.2)
        with conn:
            while not self._stop.is_set():
                try:
                    data = conn.recv(65536)
                except TimeoutError:
                    continue
                if not data:
                    return
                *lines, pending = (pending + data).split(b"\n")
                for line in lines:
                    self.events += events(line)

    def close(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()


@pytest.mark.parametrize("proto", ["tcp", "udp"])
def test_logstash_reads_every_record_whole_with_the_seed_fields(proto):
    receiver = Receiver(proto)
    try:
        pipeline = build(
            {
                "sources": [{"type": "memory", "records": RECORDS}],
                "sinks": [{"type": "json", "address": f"127.0.0.1:{receiver.port}:{proto}"}],
            }
        )
        assert pipeline.run() == 0
        wait_for(lambda: len(receiver.events) == len(RECORDS), what="both events at the Logstash input")
    finally:
        receiver.close()
    assert [sorted(event) for event in receiver.events] == [["@timestamp", "ipfix"]] * 2  # no failure tags
    assert [event["ipfix"] for event in receiver.events] == RECORDS
    assert receiver.events[1]["ipfix"]["sourcePodName"] == 'we"b\n2\u2028'


def test_the_receiver_tags_what_logstash_would_refuse():
    """The receiver's rules can fail: bytes that are not a JSON object, and a bad @timestamp."""
    assert events(b'{"ipfix": {"a": 1}') == [{"message": '{"ipfix": {"a": 1}', "tags": ["_jsonparsefailure"]}]
    assert events(b"42") == [{"message": "42", "tags": ["_jsonparsefailure"]}]
    assert events(b'{"@timestamp": "yesterday"}') == [{"_@timestamp": "yesterday", "tags": ["_timestampparsefailure"]}]
    assert events(b'[{"a": 1}, {"b": 2}]') == [{"a": 1}, {"b": 2}]
