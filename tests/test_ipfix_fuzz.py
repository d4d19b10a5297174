"""Fuzzing the decoder and the TCP framing: no input makes an exception escape."""

from __future__ import annotations

import socket
import struct
import time

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowscope.core.ipfix import Decoder, FramingError
from flowscope.testing import builtin_elements
from tests.helpers import COLLECTED, build
from tests.ipfix_wire import field, message, set_, template, template_set, varlen

ELEMENTS = builtin_elements()
TEMPLATES = template_set(
    template(256, field(8, 4), field(7, 2), field(1, 8), field(101, 65535, 56506), field(136, 65535, 56506)),
    template(257, field(27, 16), field(150, 4), field(56, 6)),
)
VALID = message(
    TEMPLATES,
    set_(256, bytes([10, 0, 0, 1]) + struct.pack(">HQ", 80, 1000) + varlen(b"web-0") + varlen(b"ESTABLISHED")),
    set_(257, bytes(16) + struct.pack(">I", 1764165600) + bytes(6)),
)


def decode_never_raises(data: bytes) -> None:
    decoder = Decoder(ELEMENTS)
    try:
        result = decoder.decode(data, "s")
    except FramingError:
        return
    for record in result.records:
        assert isinstance(record, dict)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=2048))
def test_random_bytes(data):
    decode_never_raises(data)


@settings(max_examples=600, deadline=None)
@given(st.lists(st.tuples(st.integers(0, len(VALID) - 1), st.integers(0, 255)), min_size=1, max_size=8))
def test_mutated_valid_messages(mutations):
    data = bytearray(VALID)
    for position, value in mutations:
        data[position] = value
    decode_never_raises(bytes(data))


@settings(max_examples=300, deadline=None)
@given(st.integers(16, len(VALID)), st.binary(max_size=64))
def test_truncated_and_extended_messages(cut, tail):
    decode_never_raises(VALID[:cut] + tail)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.binary(min_size=1, max_size=4096))
def test_tcp_collector_survives_any_byte_stream(tmp_path_factory, stream):
    """Garbage on a session never kills the collector: a good session afterwards is decoded."""
    COLLECTED.clear()
    pipeline = build(
        {
            "sources": [{"type": "ipfix", "address": "127.0.0.1:0:tcp", "batchInterval": "10ms"}],
            "sinks": [{"type": "collect", "flushInterval": "10ms"}],
            "dataDir": str(tmp_path_factory.mktemp("d")),
        }
    )
    pipeline.start()
    port = pipeline.sources[0][1].port
    try:
        with socket.create_connection(("127.0.0.1", port)) as bad:
            bad.sendall(stream)
        with socket.create_connection(("127.0.0.1", port)) as good:
            good.sendall(VALID)
        deadline = time.monotonic() + 5
        while not any(r.get("sourcePodName") == "web-0" for r in COLLECTED.get("collect", [])):
            assert time.monotonic() < deadline, "the collector stopped decoding after a garbage session"
            time.sleep(0.01)
    finally:
        pipeline.stop()
        assert pipeline.wait(5)
