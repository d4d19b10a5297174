"""flowscope's ipfix source decodes pmacct's IPFIX (pmacctd's nfprobe plugin, an independent encoder).

Two network namespaces joined by a veth pair; pmacctd runs in the first, capturing its veth end,
with two plugins fed by the same packets: ``nfprobe`` exports IPFIX to flowscope's collector (on
127.0.0.1 inside that namespace) and ``memory`` keeps pmacct's own per-5-tuple totals, read with
``pmacct -s``. Real traffic of known size crosses the veth: a 1,000,000-byte TCP transfer, UDP
datagrams over IPv4 and over IPv6. What flowscope decodes must equal pmacct's own totals exactly,
and the UDP flows must equal what was sent to the byte.
"""

from __future__ import annotations

import signal
import time

import pytest

from tests.interop.support import (
    TCP_BYTES,
    UDP4,
    UDP6,
    Collector,
    Peer,
    check_tcp_octets,
    flow_key,
    mixed_traffic,
    need,
    run,
    tcp_fin_senders,
    totals_by_flow,
    wait_until,
)

PROTOCOLS = {"tcp": 6, "udp": 17, "icmp": 1, "ipv6-icmp": 58}


def pmacct_memory(pipe) -> dict[tuple, tuple[int, int]]:
    """pmacct's memory table: (src, dst, sport, dport, proto) -> (packets, bytes)."""
    out = run(["pmacct", "-s", "-p", str(pipe), "-O", "csv"], timeout=10)
    table = {}
    for line in out.splitlines()[1:]:
        src, dst, sport, dport, proto, packets, octets = line.split(",")
        key = (src, dst, int(sport), int(dport), PROTOCOLS.get(proto, proto))
        table[key] = (int(packets), int(octets))
    return table


@pytest.mark.slow
def test_pmacct_nfprobe_ipfix_matches_pmacct_totals(tmp_path, veth_pair):
    need("pmacctd", "pmacct")
    net = veth_pair
    collector = Collector("127.0.0.1:0:udp", tmp_path / "collector", netns=net.ns_a)
    pipe = tmp_path / "pmacct.pipe"
    aggregate = "src_host,dst_host,src_port,dst_port,proto"
    config = tmp_path / "pmacctd.conf"
    config.write_text(
        "daemonize: false\n"
        f"pcap_interface: {net.if_a}\n"
        "promisc: false\n"
        "plugins: nfprobe[exp], memory[own]\n"
        f"aggregate[exp]: {aggregate}\n"
        f"aggregate[own]: {aggregate}\n"
        f"nfprobe_receiver[exp]: 127.0.0.1:{collector.port}\n"
        "nfprobe_version[exp]: 10\n"
        "nfprobe_timeouts[exp]: tcp=1:tcp.rst=1:tcp.fin=1:udp=1:icmp=1:general=1:maxlife=2:expint=1\n"
        f"imt_path[own]: {pipe}\n"
    )
    try:
        with Peer("pmacctd", ["pmacctd", "-f", str(config)], tmp_path / "pmacctd.log", netns=net.ns_a) as pmacctd:
            pmacctd.wait_for_log(rf"\[{net.if_a},0\] link type is", 15)
            pmacctd.wait_for_log(r"waiting for data on", 15)
            pmacctd.wait_for_log(r"Exporting flows to", 15)

            began = time.time()
            tcp, flows = mixed_traffic(net)
            views: dict[str, dict] = {}

            def agree() -> bool:
                views["pmacct"] = pmacct_memory(pipe)
                views["flowscope"] = totals_by_flow(collector.records)
                return all(
                    key in views["pmacct"] and views["flowscope"].get(key) == views["pmacct"][key]
                    for key in flows.values()
                ) and {tcp["client_port"], 8000} <= tcp_fin_senders(collector.records)

            def disagreement() -> str:
                pmacct, ours = views.get("pmacct", {}), views.get("flowscope", {})
                flows_seen = "; ".join(
                    f"{n}: pmacct {pmacct.get(k)}, flowscope {ours.get(k)}" for n, k in flows.items()
                )
                return f"flowscope's totals to match pmacct's own for {flows_seen}\n{pmacctd.describe()}"

            # nfprobe exports a flow once it has been idle 1 s (expiry runs every second)
            wait_until(agree, 20, disagreement, interval=0.2)
            ended = time.time()
            pmacctd.stop(signal.SIGINT, timeout=10)
    finally:
        collector.stop()

    ours = views["flowscope"]
    # UDP: exactly what was sent (IPv4 20 + UDP 8, IPv6 40 + UDP 8 header bytes per datagram)
    assert ours[flows["udp ipv4"]] == (UDP4[0], UDP4[0] * (20 + 8 + UDP4[1])) == (10, 10280)
    assert ours[flows["udp ipv6"]] == (UDP6[0], UDP6[0] * (40 + 8 + UDP6[1])) == (5, 2740)
    # TCP: what crossed the wire (exact unless a segment was retransmitted)
    for name, payload in (("tcp forward", tcp["forward_payload"]), ("tcp reverse", tcp["reverse_payload"])):
        check_tcp_octets(name, payload, *ours[flows[name]], tcp["retransmissions"])
    assert ours[flows["tcp forward"]][1] > TCP_BYTES

    # nfprobe's absolute timestamps (dateTimeMilliseconds) fall within the test
    ours_records = [r for r in collector.records if flow_key(r) in flows.values()]
    for r in ours_records:
        assert began * 1000 - 1000 <= r["flowStartMilliseconds"] <= r["flowEndMilliseconds"] <= ended * 1000, r
    records = [r for r in collector.records if (r.get("sourceIPv6Address") or "").startswith("fd00:")]
    assert records and all(r["ipVersion"] == 6 for r in records)
    print(
        f"{len(collector.records)} records from pmacct ({tcp['retransmissions']} TCP retransmissions); "
        + "; ".join(f"{name}: {ours[key][0]} packets {ours[key][1]} bytes" for name, key in flows.items())
        + f"; elements: {sorted(set().union(*collector.records))}"
    )
    assert collector.problems() == {}
