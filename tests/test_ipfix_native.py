"""The C decoder returns exactly what the generated Python decoder returns, on any input; its whole-message
fast path gives what the full decoder gives, or leaves the message to it."""

from __future__ import annotations

import copy
import json
import pickle
import struct
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowscope.core.elements import ANTREA
from flowscope.core.ipfix import Decoder, MessageWriter, codec
from flowscope.core.ipfix.codec import ResolvedField, compile_decoder
from flowscope.testing import builtin_elements
from tests.bench.records import antrea_records
from tests.ipfix_wire import field, message, options_template_set, set_, template, template_set

pytestmark = pytest.mark.skipif(codec.EXTENSION is None, reason="the C decoder is not built (no compiler?)")

TYPES = [
    "unsigned8",
    "unsigned16",
    "unsigned32",
    "unsigned64",
    "signed8",
    "signed16",
    "signed32",
    "signed64",
    "float32",
    "float64",
    "boolean",
    "macAddress",
    "string",
    "octetArray",
    "dateTimeSeconds",
    "dateTimeMilliseconds",
    "dateTimeMicroseconds",
    "dateTimeNanoseconds",
    "ipv4Address",
    "ipv6Address",
    None,
]

fields = st.lists(
    st.tuples(st.sampled_from(TYPES), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 65535])),
    min_size=1,
    max_size=8,
)


def outcome(decode, body):
    """The records (as text: NaN equals NaN), or "overrun" for the errors the Decoder counts."""
    try:
        return repr(decode(body))
    except (struct.error, IndexError, OverflowError):
        return "overrun"


@settings(max_examples=1500, deadline=None)
@given(fields, st.binary(max_size=300))
def test_native_and_python_decoders_agree(spec, body):
    resolved = [ResolvedField(f"f{i}", type_, length) for i, (type_, length) in enumerate(spec)]
    python, min_python = compile_decoder(resolved, native=False)
    if min_python == 0:
        return  # such templates are refused before any decoder is used
    native, min_native = compile_decoder(resolved, native=True)
    assert min_native == min_python
    assert outcome(native, body) == outcome(python, body)


def test_repeated_and_many_distinct_values_decode_as_the_python_decoder_does():
    """Values are shared between records (each field's last value, the cache of text and bytes): across
    sets, templates and more distinct values than the cache holds, every record is still exactly right."""
    resolved = [
        ResolvedField("name", "string", 65535),
        ResolvedField("address", "ipv4Address", 4),
        ResolvedField("mac", "macAddress", 6),
        ResolvedField("raw", "octetArray", 3),
        ResolvedField("port", "unsigned16", 2),
        ResolvedField("fixed", "string", 8),
    ]
    python, _ = compile_decoder(resolved, native=False)
    native, _ = compile_decoder(resolved, native=True)

    def record(i: int) -> bytes:
        name = f"pod-{i % 7000}".encode()  # more distinct names than the cache's 4096 slots
        return (
            bytes([len(name)])
            + name
            + bytes([10, 0, i % 3, 1])
            + bytes([0, 1, 2, 3, 4, i % 2])
            + bytes([i % 2, 0, 0])
            + struct.pack(">H", i % 5)
            + f"n{i % 4}".encode().ljust(8, b"\0")
        )

    for start in range(0, 20_000, 50):
        body = b"".join(record(i) for i in range(start, start + 50))
        assert native(body) == python(body)
        assert [r["name"] for r in native(body)] == [f"pod-{i % 7000}" for i in range(start, start + 50)]


def exporter_messages(count: int) -> list[bytes]:
    """Messages of ``count`` records (the first message holds the template set too)."""
    records = [
        {
            "sourceIPv4Address": f"10.0.0.{i % 200}",
            "destinationIPv4Address": "10.0.1.1",
            "sourcePodName": f"pod-{i}",
            "octetDeltaCount": i * 1000,
            "sourceTransportPort": i % 65536,
        }
        for i in range(count)
    ]
    messages, _ = MessageWriter(builtin_elements(), max_size=1472).encode(records)
    return messages


def test_decode_data_gives_what_decode_gives_for_data_sets():
    messages = exporter_messages(500)
    fast, full = Decoder(builtin_elements()), Decoder(builtin_elements())
    session = ("udp", "127.0.0.1", 4739)
    assert fast.decode_data(messages[0], session, 0.0) is None  # its template set goes to the full decoder
    fast.decode(messages[0], session)
    full_records, fast_records = [], []
    for data in messages:
        result = full.decode(data, session)
        full_records += result.records
        if result.templates:
            continue
        odid, sequence, records = fast.decode_data(data, session, 0.0)
        assert (odid, sequence) == (result.header.odid, result.header.sequence)
        fast_records += records
    assert fast_records and fast_records == full_records[len(full_records) - len(fast_records) :]
    assert [r["sourcePodName"] for r in full_records] == [f"pod-{i}" for i in range(500)]


def test_decode_data_leaves_every_other_message_to_the_full_decoder():

    decoder = Decoder(builtin_elements(), template_lifetime=60)
    session = ("udp", "127.0.0.1", 4739)
    now = 1_000_000.0
    record = struct.pack(">IH", 0x0A000001, 443)  # sourceIPv4Address, destinationTransportPort
    decoder.decode(
        message(
            template_set(
                template(256, field(8, 4), field(11, 2)),
                template(258, field(8, 4), field(4000, 2, 9)),
                template(260, field(100, 65535, ANTREA)),  # sourcePodNamespace
            ),
            options_template_set(257, 1, field(8, 4), field(11, 2)),
        ),
        session,
        now,
    )
    good = message(set_(256, record * 2), sequence=7, odid=0)
    assert decoder.decode_data(good, session, now) == (
        0,
        7,
        [{"sourceIPv4Address": "10.0.0.1", "destinationTransportPort": 443}] * 2,
    )
    others = {
        "a template set": message(template_set(template(259, field(8, 4)))),
        "an unknown template": message(set_(300, record)),
        "an options template's data": message(set_(257, record)),
        "a template with unknown elements": message(set_(258, record)),
        "a record past its set": message(set_(260, b"\x0aeth")),
        "a set shorter than a record": message(set_(256, record[:3])),
        "a set longer than the message": message(set_(256, record))[:-2],
        "no sets": message(),
        "version 9": message(set_(256, record), version=9),
        "another session": None,
    }
    assert decoder.decode_data(message(set_(260, b"\x04shop")), session, now) == (
        0,
        0,
        [{"sourcePodNamespace": "shop"}],
    )
    for what, data in others.items():
        if data is None:
            assert decoder.decode_data(good, ("udp", "127.0.0.1", 4740), now) is None, what
        else:
            assert decoder.decode_data(data, session, now) is None, what
    assert decoder.decode_data(good, session, now + 61) is None  # the template expired


def antrea_exporter_records(count: int) -> list[dict]:
    """Records decoded by the C decoder from Antrea's IPv4 exporter template (43 elements)."""
    sent = antrea_records(count)
    messages, _ = MessageWriter(builtin_elements(), max_size=1472).encode(sent)
    decoder = Decoder(builtin_elements())
    received = [record for data in messages for record in decoder.decode(data, "s").records]
    assert received == sent
    return received


def test_records_sharing_a_keys_table_behave_as_any_dict():
    """Records of one template share its keys (a split table): each holds only its values. Whatever is
    done to one record (keys added past what the shared table holds, deleted, re-added, popped, cleared)
    leaves the others as they were, and every dict operation sees what a plain dict would."""
    records = antrea_exporter_records(200)
    first = records[0]
    plain = dict(first)
    assert len(first) == 43 and first == plain and list(first) == list(plain)
    if (
        sys.implementation.name == "cpython"
        and sys.version_info[:2] == (3, 11)
        and not hasattr(sys, "gettotalrefcount")
    ):
        assert sys.getsizeof(first) < sys.getsizeof(plain) / 2
    for i in range(60):  # past the 13 keys the shared table has room for
        first[f"extra{i}"] = i
        plain[f"extra{i}"] = i
        assert list(first.items()) == list(plain.items())
    del first["sourcePodName"], plain["sourcePodName"]
    first["sourcePodName"] = plain["sourcePodName"] = "again"
    assert list(first.items()) == list(plain.items()) and first.popitem() == plain.popitem()
    second = records[1]
    second["extra0"] = "mine"  # a key another record added to the shared table
    assert list(second)[-1] == "extra0" and len(second) == 44 and second["extra0"] == "mine"
    del second["octetDeltaCount"]
    assert "octetDeltaCount" not in second and len(second) == 43
    assert pickle.loads(pickle.dumps(second)) == second == copy.deepcopy(second) == {**second} == second.copy()
    assert json.loads(json.dumps(second)) == second
    second.clear()
    assert second == {} and len(second) == 0
    sent = antrea_records(200)
    for record, expected in zip(records[2:], sent[2:], strict=True):  # untouched by what was done to the others
        assert list(record.items()) == list(expected.items())
