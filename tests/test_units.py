"""Go-style durations and <host>:<port>[:<proto>] addresses."""

import pytest

from flowscope.core.config import Address, format_duration, parse_address, parse_duration


@pytest.mark.parametrize(
    ("text", "seconds"),
    [
        ("5s", 5.0),
        ("500ms", 0.5),
        ("1m30s", 90.0),
        ("1h", 3600.0),
        ("1.5h", 5400.0),
        ("2h45m", 9900.0),
        ("100us", 1e-4),
        ("100µs", 1e-4),
        ("10ns", 1e-8),
        ("0", 0.0),
        (0, 0.0),
        ("+3s", 3.0),
        (".5s", 0.5),
        ("1h0m0s", 3600.0),
        ("300ms", 0.3),
    ],
)
def test_go_durations(text, seconds):
    assert parse_duration(text) == pytest.approx(seconds)


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("5", 'a number needs a unit: write "5s" for 5 seconds'),
        (5, 'a number needs a unit: write "5s" for 5 seconds'),
        ("-5s", "must not be negative"),
        ("5 s", "not a duration"),
        ("5sec", "not a duration"),
        ("1d", "not a duration"),
        ("", "empty"),
        (True, "expected a duration"),
        (None, "expected a duration"),
        ([5], "expected a duration"),
    ],
)
def test_bad_durations(text, message):
    with pytest.raises(ValueError) as err:
        parse_duration(text)
    assert message in str(err.value)


def test_format_duration_round_trips():
    for seconds in (0.5, 5, 60, 90, 3600, 5400):
        assert parse_duration(format_duration(seconds)) == seconds
    assert format_duration(90) == "1m30s"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:4739:tcp", Address("127.0.0.1", 4739, "tcp")),
        ("127.0.0.1:4739", Address("127.0.0.1", 4739, None)),
        ("[fd00::1]:4739:tls", Address("fd00::1", 4739, "tls")),
        ("[::1]:9000", Address("::1", 9000, None)),
        ("flow-aggregator.flow-aggregator.svc:4739:udp", Address("flow-aggregator.flow-aggregator.svc", 4739, "udp")),
        (":4739:udp", Address("", 4739, "udp")),
    ],
)
def test_addresses(text, expected):
    assert parse_address(text) == expected


def test_address_defaults_as_antrea_flow_collector_addr():
    parsed = parse_address("flow-aggregator.flow-aggregator.svc", default_port=4739, default_proto="tls")
    assert parsed == Address("flow-aggregator.flow-aggregator.svc", 4739, "tls")
    assert parse_address("10.0.0.1::udp", default_port=4739) == Address("10.0.0.1", 4739, "udp")
    assert str(parse_address("[fd00::1]:4739:tls")) == "[fd00::1]:4739:tls"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("fd00::1:4739", 'IPv6 addresses must be written in brackets, e.g. "[fd00::1:4739]:4739"'),
        ("[fd00::1:4739", "no closing ']'"),
        ("[zz::1]:4739", "'zz::1' in brackets is not an IPv6 address"),
        ("127.0.0.1", "the port is missing"),
        ("127.0.0.1:99999", "port '99999' must be a number from 1 to 65535"),
        ("127.0.0.1:0", "port '0' must be a number from 1 to 65535"),
        ("127.0.0.1:http", "port 'http' must be a number"),
        ("127.0.0.1:4739:sctp", "protocol 'sctp' is not supported; use one of: tcp, udp, tls"),
        ("bad host!:4739", "'bad host!' is not a valid host name"),
        ("", "expected <host>:<port>"),
        (4739, "expected <host>:<port>"),
    ],
)
def test_bad_addresses(text, message):
    with pytest.raises(ValueError) as err:
        parse_address(text)
    assert message in str(err.value)
