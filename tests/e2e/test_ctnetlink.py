"""The conntrack dump reader, on the real kernel: the C and Python parsers agree with conntrack -L, and
the records made in C are those the Python twin makes."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from flowscope.plugins.sources import ctnetlink

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("conntrack") is None, reason="needs root and conntrack-tools"
)
NS = f"fsctn{os.getpid()}"


@pytest.fixture(scope="module")
def table():
    subprocess.run(["ip", "netns", "add", NS], check=True)
    try:
        entries = [
            [
                "-p",
                "tcp",
                "-s",
                "10.1.0.1",
                "-d",
                "10.1.0.2",
                "--sport",
                "40000",
                "--dport",
                "80",
                "--state",
                "ESTABLISHED",
                "-u",
                "ASSURED",
                "-m",
                "17",
                "-w",
                "7",
            ],
            [
                "-p",
                "tcp",
                "-s",
                "10.1.0.3",
                "-d",
                "10.96.0.10",
                "--sport",
                "40001",
                "--dport",
                "443",
                "-r",
                "10.1.0.9",
                "-q",
                "10.1.0.3",
                "--reply-port-src",
                "8443",
                "--reply-port-dst",
                "40001",
                "--state",
                "TIME_WAIT",
            ],
            ["-p", "udp", "-s", "fd00::1", "-d", "fd00::2", "--sport", "5353", "--dport", "53"],
            [
                "-p",
                "icmp",
                "-s",
                "10.1.0.5",
                "-d",
                "10.1.0.6",
                "--icmp-type",
                "8",
                "--icmp-code",
                "0",
                "--icmp-id",
                "7",
            ],
        ]
        for args in entries:
            subprocess.run(
                ["ip", "netns", "exec", NS, "conntrack", "-I", *args, "-t", "300"], check=True, capture_output=True
            )
        yield
    finally:
        subprocess.run(["ip", "netns", "del", NS])


def test_parsers_agree_and_read_every_field(table):
    sock = ctnetlink.open_socket(NS)
    python = sorted(ctnetlink.dump(sock, native=False), key=lambda c: c.src)
    if ctnetlink.EXTENSION is not None:
        assert sorted(ctnetlink.dump(sock, native=True), key=lambda c: c.src) == python
    by_src = {c.src: c for c in python}
    assert len(python) == 4
    tcp = by_src["10.1.0.1"]
    assert (tcp.proto, tcp.dst, tcp.sport, tcp.dport, tcp.tcp_state, tcp.mark, tcp.zone) == (
        6,
        "10.1.0.2",
        40000,
        80,
        "ESTABLISHED",
        17,
        7,
    )
    dnat = by_src["10.1.0.3"]
    assert (dnat.dst, dnat.dport, dnat.reply_src, dnat.reply_sport, dnat.tcp_state) == (
        "10.96.0.10",
        443,
        "10.1.0.9",
        8443,
        "TIME_WAIT",
    )
    udp6 = by_src["fd00::1"]
    assert (udp6.proto, udp6.dst, udp6.reply_src, udp6.sport, udp6.dport, udp6.tcp_state) == (
        17,
        "fd00::2",
        "fd00::2",
        5353,
        53,
        "",
    )
    assert by_src["10.1.0.5"].proto == 1


def items(records: list[dict]) -> list[list[tuple]]:
    """Records with their key order, sorted by source address."""
    return sorted(([*r.items()] for r in records), key=lambda pairs: str(pairs[3][1]))


def test_records_in_c_are_the_python_twins_and_filters_agree(table):
    sock = ctnetlink.open_socket(NS)
    now = 1_700_000_000.7
    conns = ctnetlink.dump(sock, native=False)
    python, seen = ctnetlink.poll_records(sock, 3, native=False, clock=lambda: now)
    assert seen == 4
    assert items(python) == items([ctnetlink.to_record(c, 3, now) for c in conns])
    dnat = next(r for r in python if r.get("sourceIPv4Address") == "10.1.0.3")
    assert {k: v for k, v in dnat.items() if k.startswith(("destination", "proxy", "tcp", "_poll"))} == {
        "_poll": 3,
        "destinationIPv4Address": "10.1.0.9",
        "destinationTransportPort": 8443,
        "tcpState": "TIME_WAIT",
        "destinationServiceIPv4": "10.96.0.10",
        "destinationClusterIPv4": "10.96.0.10",
        "destinationServicePort": 443,
    }
    assert next(r for r in python if "sourceIPv6Address" in r)["destinationIPv6Address"] == "fd00::2"
    if ctnetlink.EXTENSION is None:
        pytest.skip("the C extension is not built")
    native, seen = ctnetlink.poll_records(sock, 3, native=True, clock=lambda: now)
    assert (items(native), seen) == (items(python), 4)
    filters = {
        ctnetlink.Filter(zones=frozenset({7})): ["10.1.0.1"],
        ctnetlink.Filter(mark=16, mark_mask=0x10): ["10.1.0.1"],
        ctnetlink.Filter(mark=0): ["10.1.0.3", "10.1.0.5", "fd00::1"],
        ctnetlink.Filter(protocols=frozenset({17, 1})): ["10.1.0.5", "fd00::1"],
        ctnetlink.Filter(zones=frozenset({0}), protocols=frozenset({6})): ["10.1.0.3"],
    }
    for wanted, sources in filters.items():
        both = [ctnetlink.poll_records(sock, 4, wanted, native, lambda: now)[0] for native in (False, True)]
        assert items(both[0]) == items(both[1])
        assert sorted(r.get("sourceIPv4Address") or r["sourceIPv6Address"] for r in both[1]) == sources


def test_a_namespace_that_does_not_exist_is_a_clear_error():
    from flowscope.plugins.sources.conntrack import ConntrackSource

    [issue] = ConntrackSource.preflight(ConntrackSource.Options(netns="no-such-ns").model_dump())
    assert str(issue).startswith("netns: 'no-such-ns' does not exist; existing: ")
