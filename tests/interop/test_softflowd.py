"""flowscope's ipfix source decodes softflowd's IPFIX (``softflowd -v 10``, an independent encoder).

softflowd runs in the first of two namespaces joined by a veth pair, capturing its veth end and
exporting to flowscope's collector on 127.0.0.1 inside that namespace, over UDP or TCP (``-P``),
one record a direction or, with ``-b``, biflow records carrying RFC 5103 reverse elements. Real
traffic crosses the veth: a 1,000,000-byte TCP transfer and UDP datagrams over IPv4 and IPv6.
flowscope's totals must equal softflowd's own statistics and, to the byte, what was sent.

softflowd 1.1.0 opens its capture with a packet-buffer timeout of 0, so with libpcap's TPACKET_V3
ring (libpcap >= 1.5 on Linux) it only sees packets once a ring block is full: on a quiet
interface it processes nothing (softflowd issue #48, pull request #71 "Enable libpcap immediate
mode for live capture"). The test therefore sends filler datagrams on another 5-tuple until
softflowd has processed every packet libpcap had received before the filler began.
"""

from __future__ import annotations

import re
import socket

import pytest

from tests.interop.support import (
    UDP4,
    UDP6,
    Collector,
    Peer,
    check_tcp_octets,
    flow_key,
    in_netns,
    mixed_traffic,
    need,
    run,
    tcp_fin_senders,
    totals_by_flow,
    wait_until,
)

FILLER_PORT = 7777
MODES = ["udp", "udp-biflow", "tcp"]


def statistics(control) -> dict[str, int]:
    """Counters from ``softflowctl statistics``."""
    out = run(["softflowctl", "-c", str(control), "statistics"], timeout=10, check=False)
    stats = {}
    for key, pattern in {
        "processed": r"Packets processed: (\d+)",
        "ignored": r"Ignored packets: (\d+)",
        "received": r"Packets received by libpcap: (\d+)",
        "active": r"Number of active flows: (\d+)",
    }.items():
        found = re.search(pattern, out)
        if found:
            stats[key] = int(found.group(1))
    tcp = re.search(r"^\s*tcp \(6\):\s+(\d+)\s+(\d+)", out, re.MULTILINE)
    if tcp:
        stats["tcp_octets"], stats["tcp_packets"] = int(tcp.group(1)), int(tcp.group(2))
    return stats


@pytest.mark.slow
@pytest.mark.parametrize(("transport", "biflow"), [("udp", False), ("udp", True), ("tcp", False)], ids=MODES)
def test_softflowd_ipfix_decoded_with_exact_totals(tmp_path, veth_pair, transport, biflow):
    need("softflowd", "softflowctl")
    net = veth_pair
    collector = Collector(f"127.0.0.1:0:{transport}", tmp_path / "collector", netns=net.ns_a)
    control = tmp_path / "softflowd.ctl"
    timeouts = ["maxlife=2", "expint=1", "tcp=1", "tcp.fin=1", "tcp.rst=1", "udp=1", "icmp=1", "general=1"]
    argv = ["softflowd", "-d", "-v", "10", "-i", net.if_a, "-n", f"127.0.0.1:{collector.port}"]
    argv += [arg for t in timeouts for arg in ("-t", t)]
    argv += ["-p", str(tmp_path / "softflowd.pid"), "-c", str(control), "-P", transport]
    if biflow:
        argv.append("-b")  # one record a connection, the reverse direction in RFC 5103 reverse elements
    filler_rx = filler_tx = None
    try:
        with Peer("softflowd", argv, tmp_path / "softflowd.log", netns=net.ns_a) as softflowd:
            softflowd.wait_for_log(r"Exporting flows from", 15)
            wait_until(lambda: "received" in statistics(control), 10, lambda: f"softflowctl: {softflowd.describe()}")

            tcp, flows = mixed_traffic(net)

            # push every packet of the traffic above through softflowd's capture ring
            received = statistics(control)["received"]
            filler_rx = in_netns(net.ns_b, _udp_socket, (net.v4_b, FILLER_PORT))
            filler_tx = in_netns(net.ns_a, _udp_socket, (net.v4_a, FILLER_PORT))

            def caught_up() -> bool:
                for _ in range(100):
                    filler_tx.sendto(b"f", (net.v4_b, FILLER_PORT))
                stats = statistics(control)
                return stats.get("processed", 0) + stats.get("ignored", 0) >= received

            wait_until(caught_up, 15, lambda: f"softflowd to process {received} packets: {statistics(control)}")

            views: dict[str, dict] = {}

            def exported() -> bool:
                views["softflowd"] = stats = statistics(control)
                views["flowscope"] = ours = totals_by_flow(collector.records)
                fins = tcp_fin_senders(collector.records)
                tcp_packets = sum(p for k, (p, _) in ours.items() if k[4] == 6)
                tcp_octets = sum(o for k, (_, o) in ours.items() if k[4] == 6)
                return (
                    all(key in ours for key in flows.values())
                    and {tcp["client_port"], 8000} <= fins  # both directions' last packets are in
                    and (stats.get("tcp_packets"), stats.get("tcp_octets")) == (tcp_packets, tcp_octets)
                )

            # softflowd exports a flow 1 s after its FIN (expiry runs every second)
            wait_until(
                exported,
                20,
                lambda: (
                    f"the flows to be exported: flowscope has {views.get('flowscope')}, "
                    f"softflowd {views.get('softflowd')}\n{softflowd.describe()}"
                ),
                interval=0.2,
            )
            # with -d softflowd installs no SIGTERM/SIGINT handler: ask it over its control socket
            run(["softflowctl", "-c", str(control), "shutdown"], timeout=10)
            status = softflowd.wait(10)  # 1 after a shutdown through the control socket (softflowd 1.1.0)
            assert status in (0, 1) and "Shutting down on user request" in softflowd.log(), softflowd.describe()
    finally:
        for sock in (filler_rx, filler_tx):
            if sock is not None:
                sock.close()
        collector.stop()

    ours = views["flowscope"]
    # TCP: what softflowd itself counted (its per-protocol statistics of expired flows) ...
    tcp_flows = [v for k, v in ours.items() if k[4] == 6]
    assert sum(p for p, _ in tcp_flows) == views["softflowd"]["tcp_packets"]
    assert sum(o for _, o in tcp_flows) == views["softflowd"]["tcp_octets"]
    # ... and what crossed the wire (exact unless a segment was retransmitted)
    for name, payload in (("tcp forward", tcp["forward_payload"]), ("tcp reverse", tcp["reverse_payload"])):
        check_tcp_octets(name, payload, *ours[flows[name]], tcp["retransmissions"])
    # UDP: exactly what was sent
    assert ours[flows["udp ipv4"]] == (UDP4[0], UDP4[0] * (20 + 8 + UDP4[1])) == (10, 10280)
    assert ours[flows["udp ipv6"]] == (UDP6[0], UDP6[0] * (40 + 8 + UDP6[1])) == (5, 2740)
    # with -b, one record a connection: the reverse direction in reverseOctetDeltaCount & co.
    reverse = [r for r in collector.records if "reverseOctetDeltaCount" in r]
    if biflow:
        forward = [r for r in reverse if flow_key(r) == flows["tcp forward"]]
        assert sum(r["reverseOctetDeltaCount"] for r in forward) == ours[flows["tcp reverse"]][1]
        assert all(flow_key(r) != flows["tcp reverse"] for r in collector.records)
    else:
        assert reverse == []
    print(
        f"{len(collector.records)} records from softflowd{' -b' if biflow else ''} over {transport} "
        f"({tcp['retransmissions']} TCP retransmissions); "
        + "; ".join(f"{name}: {ours[key][0]} packets {ours[key][1]} bytes" for name, key in flows.items())
        + f"; elements: {sorted(set().union(*collector.records))}"
    )
    # No decode error. Sequence gaps are softflowd's: its IPFIX header carries the count of data
    # records sent *including* the message's own, without options records (ipfix.c:
    # "*records_sent += records; ipfix->sequence = htonl(*records_sent)"), where RFC 7011 §3.1
    # counts those sent before the message; Wireshark flags the same messages.
    problems = collector.problems()
    problems.pop("sequence_gaps", None)
    assert problems == {}


def _udp_socket(address: tuple[str, int]) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(address)
    return sock
