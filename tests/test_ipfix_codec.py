"""The IPFIX codec: RFC 7011 and RFC 5103 on hand-built messages, and round trips."""

from __future__ import annotations

import struct

import pytest

from flowscope.core.elements import ElementRegistry
from flowscope.core.ipfix import Decoder, FramingError, MessageWriter, TemplateStore, parse_header
from flowscope.testing import builtin_elements
from tests.ipfix_wire import field, message, options_template_set, set_, template, template_set, varlen

ELEMENTS = builtin_elements()


def decode(*messages: bytes, session="s", decoder=None, now=None):
    decoder = decoder or Decoder(ELEMENTS)
    results = [decoder.decode(m, session, now=now) for m in messages]
    return decoder, results


def test_fixed_template_with_ipv4_ports_and_counters():
    tmpl = template_set(template(256, field(8, 4), field(12, 4), field(7, 2), field(11, 2), field(4, 1), field(1, 8)))
    data = set_(256, bytes([10, 0, 0, 1, 10, 0, 0, 2]) + struct.pack(">HHBQ", 40000, 443, 6, 123456789012))
    _, [result] = decode(message(tmpl, data))
    assert result.errors == []
    assert result.records == [
        {
            "sourceIPv4Address": "10.0.0.1",
            "destinationIPv4Address": "10.0.0.2",
            "sourceTransportPort": 40000,
            "destinationTransportPort": 443,
            "protocolIdentifier": 6,
            "octetDeltaCount": 123456789012,
        }
    ]


def test_reduced_size_integers_on_input():
    tmpl = template_set(template(300, field(1, 4), field(2, 3), field(85, 1), field(86, 5), field(150, 4)))
    data = set_(
        300,
        struct.pack(">I", 4_000_000_000)
        + (70000).to_bytes(3, "big")
        + b"\x07"
        + (2**33).to_bytes(5, "big")
        + struct.pack(">I", 1764165600),
    )
    _, [result] = decode(message(tmpl, data))
    assert result.records == [
        {
            "octetDeltaCount": 4_000_000_000,
            "packetDeltaCount": 70000,
            "octetTotalCount": 7,
            "packetTotalCount": 2**33,
            "flowStartSeconds": 1764165600,
        }
    ]


def test_variable_length_strings_in_both_forms_and_enterprise_elements():
    long_name = "p" * 300
    tmpl = template_set(template(256, field(101, 65535, 56506), field(136, 65535, 56506), field(137, 1, 56506)))
    record = varlen(long_name.encode()) + varlen(b"TIME_WAIT") + b"\x02"
    assert record[:3] == b"\xff\x01\x2c"  # 255, then a 2-byte length of 300
    _, [result] = decode(message(tmpl, set_(256, record + varlen("café".encode()) + varlen(b"") + b"\x01")))
    assert result.records == [
        {"sourcePodName": long_name, "tcpState": "TIME_WAIT", "flowType": 2},
        {"sourcePodName": "café", "tcpState": "", "flowType": 1},
    ]


def test_antrea_56505_is_read_as_56506_and_the_alias_is_configurable():
    tmpl = template_set(template(256, field(101, 65535, 56505), field(136, 1)))
    msg = message(tmpl, set_(256, varlen(b"web-0") + b"\x03"))
    _, [result] = decode(msg)
    assert result.records == [{"sourcePodName": "web-0", "flowEndReason": 3}]
    _, [plain] = decode(msg, decoder=Decoder(ELEMENTS, aliases={}))
    assert plain.records == [{"ie_56505_101": b"web-0", "flowEndReason": 3}]
    assert plain.unknown_element_records == 1


def test_reverse_elements_rfc5103():
    tmpl = template_set(template(256, field(1, 8), field(1, 8, 29305), field(86, 8, 29305)))
    _, [result] = decode(message(tmpl, set_(256, struct.pack(">QQQ", 100, 50, 3))))
    assert result.records == [{"octetDeltaCount": 100, "reverseOctetDeltaCount": 50, "reversePacketTotalCount": 3}]


def test_unknown_elements_are_kept_under_a_stable_name_and_counted():
    tmpl = template_set(template(256, field(7, 2), field(5, 4, 99999), field(999, 2)))
    data = set_(256, struct.pack(">H", 53) + b"\xde\xad\xbe\xef" + b"\x00\x01")
    _, [result] = decode(message(tmpl, data, data))
    assert (
        result.records == [{"sourceTransportPort": 53, "ie_99999_5": b"\xde\xad\xbe\xef", "ie_0_999": b"\x00\x01"}] * 2
    )
    assert result.unknown_element_records == 2


def test_all_abstract_data_types_round_trip():
    registry = ElementRegistry()
    types = {
        "u8": "unsigned8",
        "u16": "unsigned16",
        "u32": "unsigned32",
        "u64": "unsigned64",
        "s8": "signed8",
        "s16": "signed16",
        "s32": "signed32",
        "s64": "signed64",
        "f32": "float32",
        "f64": "float64",
        "flag": "boolean",
        "mac": "macAddress",
        "v4": "ipv4Address",
        "v6": "ipv6Address",
        "secs": "dateTimeSeconds",
        "millis": "dateTimeMilliseconds",
        "micros": "dateTimeMicroseconds",
        "nanos": "dateTimeNanoseconds",
        "text": "string",
        "blob": "octetArray",
    }
    for element_id, (name, type_) in enumerate(types.items(), start=1):
        registry.register(name, 4242, element_id, type_)
    record = {
        "u8": 255,
        "u16": 65535,
        "u32": 4294967295,
        "u64": 2**64 - 1,
        "s8": -128,
        "s16": -32768,
        "s32": -(2**31),
        "s64": -(2**63),
        "f32": 1.5,
        "f64": -2.25,
        "flag": True,
        "mac": "02:42:ac:11:00:02",
        "v4": "192.168.1.1",
        "v6": "fd00::1:2",
        "secs": 1764165600,
        "millis": 1764165600123,
        "micros": 1764165600123456,
        "nanos": 1764165600123456789,
        "text": "ünïcode ✓",
        "blob": bytes(range(20)),
    }
    writer = MessageWriter(registry, odid=9)
    [msg], dropped = writer.encode([record, {**record, "flag": False}])
    assert dropped == {}
    _, [result] = decode(msg, decoder=Decoder(registry))
    assert result.errors == []
    assert result.records[0] == record
    assert result.records[1]["flag"] is False
    assert parse_header(msg).odid == 9


def test_missing_values_are_sent_as_zero():
    writer = MessageWriter(ELEMENTS)
    writer.template_for({"sourceIPv4Address": None, "sourcePodName": None, "octetDeltaCount": None})
    [msg], _ = writer.encode([{"sourceIPv4Address": None, "sourcePodName": None, "octetDeltaCount": None}])
    _, [result] = decode(msg)
    assert result.records == [{"sourceIPv4Address": "0.0.0.0", "sourcePodName": "", "octetDeltaCount": 0}]


def test_writer_sets_enterprise_bits_antrea_number_and_template_once_per_session():
    writer = MessageWriter(ELEMENTS, antrea_enterprise_id=56505)
    records = [{"sourcePodName": "a", "octetDeltaCount": 1}, {"sourcePodName": "b", "octetDeltaCount": 2}]
    [first], _ = writer.encode(records)
    # header, template set (id 2) holding template 256 with two fields, then the data set
    assert first[16:20] == struct.pack(">HH", 2, 4 + 4 + 8 + 4)
    assert first[20:24] == struct.pack(">HH", 256, 2)
    assert first[24:32] == struct.pack(">HHI", 101 | 0x8000, 65535, 56505)
    assert first[32:36] == struct.pack(">HH", 1, 8)
    [second], _ = writer.encode(records)
    assert struct.unpack_from(">H", second, 16)[0] == 256  # no template again in this session
    writer.new_session()
    [third], _ = writer.encode(records)
    assert struct.unpack_from(">H", third, 16)[0] == 2


def test_messages_never_exceed_the_maximum_and_sequence_numbers_count_records():
    writer = MessageWriter(ELEMENTS, max_size=512)
    records = [{"sourcePodName": f"pod-{i}", "octetDeltaCount": i, "sourceIPv4Address": "10.1.2.3"} for i in range(500)]
    messages, _ = writer.encode(records)
    assert max(len(m) for m in messages) <= 512
    decoder = Decoder(ELEMENTS)
    seen = 0
    for msg in messages:
        header = parse_header(msg)
        assert header.length == len(msg)
        assert header.sequence == seen
        result = decoder.decode(msg, "s")
        seen += len(result.records)
    assert seen == 500
    assert writer.sequence == 500


def test_records_that_cannot_be_encoded_are_dropped_and_counted():
    writer = MessageWriter(ELEMENTS, max_size=300)
    messages, dropped = writer.encode(
        [
            {"octetDeltaCount": "lots"},  # wrong type
            {"sourceIPv4Address": "not-an-ip"},
            {"octetDeltaCount": -1},  # out of range for unsigned64
            {"sourcePodName": "x" * 400},  # larger than a message
            {"@timestamp": "2026"},  # nothing the registry knows
            {"octetDeltaCount": 5},
        ]
    )
    assert dropped == {"unencodable": 3, "too_large": 1, "no_known_fields": 1}
    _, results = decode(*messages)
    assert [r for result in results for r in result.records] == [{"octetDeltaCount": 5}]


def test_template_withdrawal_single_and_all():
    t256 = template(256, field(7, 2))
    t257 = template(257, field(11, 2))
    data = set_(256, b"\x00\x01") + set_(257, b"\x00\x02")
    withdraw_256 = template_set(struct.pack(">HH", 256, 0))
    withdraw_all = template_set(struct.pack(">HH", 2, 0))
    _, results = decode(
        message(template_set(t256, t257), data), message(withdraw_256, data), message(withdraw_all, data)
    )
    assert [len(r.records) for r in results] == [2, 1, 0]
    assert [e.reason for e in results[1].errors] == ["unknown_template"]
    assert [e.reason for e in results[2].errors] == ["unknown_template", "unknown_template"]
    assert (results[1].withdrawals, results[2].withdrawals) == (1, 1)


def test_options_template_records_are_kept_apart():
    opts = options_template_set(400, 1, field(149, 4), field(41, 8), field(42, 8))
    data = set_(400, struct.pack(">IQQ", 7, 10, 500))
    _, [result] = decode(message(opts, data))
    assert result.records == []
    assert result.options == [
        {"observationDomainId": 7, "exportedMessageTotalCount": 10, "exportedFlowRecordTotalCount": 500}
    ]


def test_padding_at_the_end_of_sets_is_ignored():
    tmpl = template_set(template(256, field(7, 2), field(4, 1)), template(257, field(101, 65535, 56506)))
    fixed = set_(256, b"\x00\x35\x11" * 2 + b"\x00\x00")
    variable = set_(257, varlen(b"abc") + b"\x00")  # one byte of padding: less than a 1-byte minimum? no: 0-length
    _, [result] = decode(message(tmpl, fixed))
    assert result.records == [{"sourceTransportPort": 53, "protocolIdentifier": 17}] * 2
    _, [result] = decode(message(tmpl, variable))
    # a zero byte after the record reads as one more record with an empty string
    assert result.records == [{"sourcePodName": "abc"}, {"sourcePodName": ""}]


def test_templates_are_scoped_per_session_and_domain():
    a = template_set(template(256, field(7, 2)))
    b = template_set(template(256, field(11, 2)))
    decoder = Decoder(ELEMENTS)
    decoder.decode(message(a, odid=1), "s1")
    decoder.decode(message(b, odid=2), "s1")
    decoder.decode(message(b, odid=1), "s2")
    data = set_(256, b"\x00\x07")
    assert decoder.decode(message(data, odid=1), "s1").records == [{"sourceTransportPort": 7}]
    assert decoder.decode(message(data, odid=2), "s1").records == [{"destinationTransportPort": 7}]
    assert decoder.decode(message(data, odid=1), "s2").records == [{"destinationTransportPort": 7}]
    assert [e.reason for e in decoder.decode(message(data, odid=2), "s2").errors] == ["unknown_template"]
    decoder.store.drop_session("s1")
    assert [e.reason for e in decoder.decode(message(data, odid=1), "s1").errors] == ["unknown_template"]


def test_udp_template_lifetime_and_refresh():
    decoder = Decoder(ELEMENTS, template_lifetime=60)
    tmpl = template_set(template(256, field(7, 2)))
    data = set_(256, b"\x00\x07")
    decoder.decode(message(tmpl), "udp", now=1000.0)
    assert decoder.decode(message(data), "udp", now=1059.0).records == [{"sourceTransportPort": 7}]
    assert [e.reason for e in decoder.decode(message(data), "udp", now=1061.0).errors] == ["unknown_template"]
    decoder.decode(message(tmpl), "udp", now=1061.0)  # refreshed
    assert decoder.decode(message(data), "udp", now=1100.0).records == [{"sourceTransportPort": 7}]


def test_udp_templates_persist_across_a_restart(tmp_path):
    path = tmp_path / "templates.json"
    session = ("udp", "10.0.0.9", 50000)
    first = Decoder(ELEMENTS, TemplateStore(path))
    first.decode(message(template_set(template(256, field(101, 65535, 56506), field(7, 2))), odid=5), session)
    first.decode(message(template_set(template(256, field(7, 2))), odid=5), ("tcp-session",))  # not persisted
    first.store.save()
    second = Decoder(ELEMENTS, TemplateStore(path))
    assert second.store.load(second.compile) == 1
    result = second.decode(message(set_(256, varlen(b"db-0") + b"\x15\x38"), odid=5), session)
    assert result.records == [{"sourcePodName": "db-0", "sourceTransportPort": 5432}]
    path.write_text("{broken")
    assert Decoder(ELEMENTS, TemplateStore(path)).store.load(second.compile) == 0


# -- bad input ------------------------------------------------------------------------------------


def reasons(msg: bytes, decoder=None) -> list[str]:
    _, [result] = decode(msg, decoder=decoder)
    return [e.reason for e in result.errors]


def test_truncated_message_and_lying_lengths_are_framing_errors():
    good = message(template_set(template(256, field(7, 2))))
    for data, reason in [
        (good[:10], "truncated"),
        (good[:-2], "bad_length"),  # the length field says more than there is
        (struct.pack(">HHIII", 10, 8, 0, 0, 0), "bad_length"),  # shorter than the header
        (struct.pack(">HHIII", 9, 16, 0, 0, 0), "bad_version"),  # NetFlow v9 header
    ]:
        with pytest.raises(FramingError) as err:
            Decoder(ELEMENTS).decode(data, "s")
        assert err.value.reason == reason


def test_set_length_past_the_message_is_reported_and_earlier_sets_kept():
    tmpl = template_set(template(256, field(7, 2)))
    lying = struct.pack(">HH", 256, 200) + b"\x00\x07"
    decoder = Decoder(ELEMENTS)
    decoder.decode(message(tmpl), "s")
    result = decoder.decode(message(set_(256, b"\x00\x01"), lying), "s")
    assert result.records == [{"sourceTransportPort": 1}]
    assert [e.reason for e in result.errors] == ["bad_set_length"]
    assert str(result.errors[0]) == "set 256 at offset 22 claims 200 bytes; 6 remain in the message"
    assert reasons(message(struct.pack(">HH", 256, 2))) == ["bad_set_length"]  # shorter than its own header


def test_set_shorter_than_one_record():
    decoder = Decoder(ELEMENTS)
    decoder.decode(message(template_set(template(256, field(1, 8)))), "s")
    result = decoder.decode(message(set_(256, b"\x00\x01\x02")), "s")
    assert [str(e) for e in result.errors] == ["data set for template 256 has 3 bytes, less than one 8-byte record"]


def test_data_set_for_an_unknown_template_does_not_stop_the_message():
    decoder = Decoder(ELEMENTS)
    decoder.decode(message(template_set(template(256, field(7, 2)))), "s")
    result = decoder.decode(message(set_(999, b"\x00" * 8), set_(256, b"\x00\x09")), "s")
    assert result.records == [{"sourceTransportPort": 9}]
    assert [str(e) for e in result.errors] == ["data set for template 999, which this session has not defined"]


def test_bad_templates():
    assert reasons(message(template_set(template(100, field(7, 2))))) == ["bad_template_id"]
    assert reasons(message(template_set(struct.pack(">HH", 256, 3) + field(7, 2)))) == ["template_truncated"]
    assert reasons(message(template_set(template(256, field(7, 0))))) == ["bad_field_length"]
    assert reasons(message(template_set(template(256, field(32000, 0))))) == ["empty_template"]  # unknown: any length
    assert reasons(message(set_(3, struct.pack(">HHH", 400, 1, 0) + field(7, 2)))) == ["bad_template"]
    assert reasons(message(set_(1, b"\x00\x00"))) == ["reserved_set"]


def test_template_with_zero_fields_is_a_withdrawal_not_a_crash():
    _, [result] = decode(message(template_set(struct.pack(">HH", 256, 0))))
    assert (result.errors, result.withdrawals) == ([], 0)


def test_variable_length_field_running_past_the_set():
    decoder = Decoder(ELEMENTS)
    decoder.decode(message(template_set(template(256, field(101, 65535, 56506), field(7, 2)))), "s")
    for body in (b"\x10abc\x00\x01", b"\xff\x01\x00ab\x00\x01", b"\x03abc\x00"):
        result = decoder.decode(message(set_(256, body)), "s")
        assert [e.reason for e in result.errors] == ["record_overrun"], body
        assert result.records == []


def test_the_template_store_is_bounded():
    decoder = Decoder(ELEMENTS, TemplateStore(max_templates=3))
    templates = template_set(*(template(256 + i, field(7, 2)) for i in range(5)))
    _, [result] = decode(message(templates), decoder=decoder)
    assert result.templates == 3
    assert [str(e) for e in result.errors] == ["template 259 refused: 3 templates are held already (maxTemplates)"]
    assert decoder.store.count() == 3


def test_template_and_record_go_in_separate_messages_when_together_they_are_too_large():
    writer = MessageWriter(ELEMENTS, max_size=200)
    record = {"sourcePodName": "p" * 150, "octetDeltaCount": 1}  # 152 + 8 bytes; with the template: > 200
    messages, dropped = writer.encode([record, record])
    assert dropped == {}
    assert all(len(m) <= 200 for m in messages)
    _, results = decode(*messages)
    assert [r for result in results for r in result.records] == [record, record]
