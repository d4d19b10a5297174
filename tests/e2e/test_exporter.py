"""The exporter bundle on the real kernel conntrack, in two network namespaces joined by a veth.

Namespace A holds the client and is the exporter's "node"; namespace B holds the server. The
exporter reads A's conntrack table, exports through its ipfix sink to a collector on loopback,
and (an extra sink) to a collect sink the tests read.
"""

from __future__ import annotations

import itertools
import os
import shutil
import subprocess
import sys
import time

import pytest

from tests.helpers import COLLECTED, build

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="network namespaces and conntrack need root"),
    pytest.mark.skipif(shutil.which("ip") is None, reason="iproute2 is not installed"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
]

A, B = f"fsxa{os.getpid()}", f"fsxb{os.getpid()}"
A4, B4, A6, B6 = "10.231.7.11", "10.231.7.12", "fd00:231:7::11", "fd00:231:7::12"

SERVER = r"""
import socket, sys
family, address, port, proto, reply = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], int(sys.argv[5])
fam = socket.AF_INET6 if family == "6" else socket.AF_INET
if proto == "tcp":
    s = socket.socket(fam, socket.SOCK_STREAM); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((address, port)); s.listen(); print("ready", flush=True)
    c, _ = s.accept(); got = 0
    while True:
        data = c.recv(65536)
        if not data: break
        got += len(data)
    c.sendall(b"r" * reply); c.shutdown(socket.SHUT_WR); c.close()
else:
    s = socket.socket(fam, socket.SOCK_DGRAM); s.bind((address, port)); print("ready", flush=True)
    for _ in range(int(sys.argv[6])):
        data, peer = s.recvfrom(65536); s.sendto(b"r" * reply, peer)
"""

CLIENT = r"""
import socket, sys, time
family, address, port, proto = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4]
size, count = int(sys.argv[5]), int(sys.argv[6])
fam = socket.AF_INET6 if family == "6" else socket.AF_INET
if proto == "tcp":
    c = socket.create_connection((address, port)); c.sendall(b"x" * size); c.shutdown(socket.SHUT_WR)
    while c.recv(65536): pass
    c.close()
else:
    c = socket.socket(fam, socket.SOCK_DGRAM)
    for _ in range(count):
        c.sendto(b"x" * size, (address, port)); c.recvfrom(65536); time.sleep(0.05)
"""


TRACK = """
table inet flowscope_track {
  chain out {
    type filter hook output priority 0; ct state new counter
  }
  chain in {
    type filter hook input priority 0; ct state new counter
  }
}
"""


def sh(*args: str, ns: str | None = None, check: bool = True) -> str:
    command = ["ip", "netns", "exec", ns, *args] if ns else list(args)
    result = subprocess.run(command, capture_output=True, text=True, timeout=30)
    if check and result.returncode:
        raise AssertionError(f"{' '.join(command)} failed: {result.stderr}")
    return result.stdout


@pytest.fixture(scope="module")
def namespaces():
    for ns in (A, B):
        sh("ip", "netns", "add", ns)
    try:
        sh("ip", "link", "add", "veth-a", "netns", A, "type", "veth", "peer", "name", "veth-b", "netns", B)
        for ns, dev, v4, v6 in ((A, "veth-a", A4, A6), (B, "veth-b", B4, B6)):
            sh("ip", "link", "set", "lo", "up", ns=ns)
            sh("ip", "addr", "add", f"{v4}/24", "dev", dev, ns=ns)
            sh("ip", "addr", "add", f"{v6}/64", "dev", dev, "nodad", ns=ns)
            sh("ip", "link", "set", dev, "up", ns=ns)
        sh("ip", "route", "add", "default", "via", B4, ns=A)  # Service addresses route towards B
        # a netns tracks connections only once something uses conntrack: here, a rule matching on ct state
        subprocess.run(["ip", "netns", "exec", A, "nft", "-f", "-"], input=TRACK, text=True, check=True, timeout=10)
        yield
    finally:
        for ns in (A, B):
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def server(family: str, address: str, port: int, proto: str, reply: int, count: int = 1) -> subprocess.Popen:
    process = subprocess.Popen(
        [
            "ip",
            "netns",
            "exec",
            B,
            sys.executable,
            "-c",
            SERVER,
            family,
            address,
            str(port),
            proto,
            str(reply),
            str(count),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout.readline().strip() == "ready"
    return process


def client(family: str, address: str, port: int, proto: str, size: int, count: int = 1) -> None:
    sh(sys.executable, "-c", CLIENT, family, address, str(port), proto, str(size), str(count), ns=A)


@pytest.fixture()
def exporter(namespaces, tmp_path):
    """An exporter bundle reading A's conntrack, polling every second, with 2 s timeouts."""
    sink = build(
        {
            "sources": [{"type": "ipfix", "address": "127.0.0.1:0:tcp"}],
            "sinks": [{"type": "collect", "name": "wire"}],
            "dataDir": str(tmp_path / "collector"),
        }
    )
    sink.start()
    port = sink.sources[0][1].port
    pipeline = build(
        {
            "bundle": "exporter",
            "flowCollectorAddr": f"127.0.0.1:{port}:tcp",
            "netns": A,
            "nodeName": "node-a",
            "flowPollInterval": "1s",
            "activeFlowExportTimeout": "2s",
            "idleFlowExportTimeout": "2s",
            "nodePodCIDRs": ["10.231.7.0/24"],
            "sinks": [{"type": "collect", "name": "exported", "flushInterval": "50ms"}],
            "metricsAddress": "127.0.0.1:0",
            "dataDir": str(tmp_path / "exporter"),
        }
    )
    sh("conntrack", "-F", ns=A, check=False)
    pipeline.start()
    yield pipeline
    pipeline.stop()
    pipeline.wait(10)
    sink.stop()
    sink.wait(10)


def exports_of(port: int, proto: int = 6) -> list[dict]:
    return [
        r
        for r in COLLECTED.get("exported", [])
        if r["destinationTransportPort"] == port and r["protocolIdentifier"] == proto
    ]


def wait_for(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}; exported: {COLLECTED.get('exported')}"
        time.sleep(0.1)


@pytest.mark.parametrize("family", ["4", "6"])
def test_tcp_transfer_totals_match_the_kernel_and_the_close_is_reason_3(exporter, family):
    client_ip, server_ip = (A4, B4) if family == "4" else (A6, B6)
    srv = server(family, server_ip, 5001, "tcp", reply=12_345)
    client(family, server_ip, 5001, "tcp", size=1_000_000)
    srv.wait(10)
    kernel = sh("conntrack", "-L", "-f", "ipv4" if family == "4" else "ipv6", "-p", "tcp", "--dport", "5001", ns=A)
    wait_for(lambda: any(r["flowEndReason"] == 3 for r in exports_of(5001)), 15, "the end-of-flow export")
    records = exports_of(5001)
    final = records[-1]
    octets = [int(part.split("=")[1]) for part in kernel.split() if part.startswith("bytes=")]
    packets = [int(part.split("=")[1]) for part in kernel.split() if part.startswith("packets=")]
    assert (final["octetTotalCount"], final["reverseOctetTotalCount"]) == (octets[0], octets[1])
    assert (final["packetTotalCount"], final["reversePacketTotalCount"]) == (packets[0], packets[1])
    assert final["octetTotalCount"] >= 1_000_000 and final["reverseOctetTotalCount"] >= 12_345
    assert sum(r["octetDeltaCount"] for r in records) == final["octetTotalCount"]
    assert sum(r["reverseOctetDeltaCount"] for r in records) == final["reverseOctetTotalCount"]
    assert final["tcpState"] in ("TIME_WAIT", "CLOSE")
    v = "IPv4" if family == "4" else "IPv6"
    assert (final[f"source{v}Address"], final[f"destination{v}Address"]) == (client_ip, server_ip)
    if family == "4":  # podCIDRs cover the IPv4 addresses only: the IPv6 flow is between non-Pods
        assert (final["flowType"], final["sourceNodeName"], final["destinationNodeName"]) == (1, "node-a", "node-a")
    else:
        assert (final["flowType"], final["sourceNodeName"]) == (0, "")
    assert [r["flowEndReason"] for r in records].count(3) == 1
    # the same record reached the collector over IPFIX
    wait_for(
        lambda: any(
            r.get("destinationTransportPort") == 5001 and r["flowEndReason"] == 3 for r in COLLECTED.get("wire", [])
        ),
        10,
        "the IPFIX copy",
    )
    wire = [r for r in COLLECTED["wire"] if r["destinationTransportPort"] == 5001 and r["flowEndReason"] == 3]
    assert len(wire) == 1
    assert wire[0]["octetTotalCount"] == final["octetTotalCount"]


def test_udp_over_ipv6_goes_idle_with_reason_1(exporter):
    srv = server("6", B6, 5002, "udp", reply=100, count=4)
    client("6", B6, 5002, "udp", size=500, count=4)
    srv.wait(10)
    wait_for(lambda: any(r["flowEndReason"] == 1 for r in exports_of(5002, 17)), 15, "an idle export")
    records = exports_of(5002, 17)
    idle = next(r for r in records if r["flowEndReason"] == 1)
    assert (idle["sourceIPv6Address"], idle["destinationIPv6Address"]) == (A6, B6)
    assert idle["octetTotalCount"] == 4 * (500 + 48)  # IPv6 + UDP headers
    assert idle["reverseOctetTotalCount"] == 4 * (100 + 48)
    assert sum(r["octetDeltaCount"] for r in records) == idle["octetTotalCount"]
    assert idle["tcpState"] == ""


def test_long_transfer_is_exported_by_the_active_timeout_with_deltas(exporter):
    srv = server("4", B4, 5003, "udp", reply=10, count=80)
    client("4", B4, 5003, "udp", size=1000, count=80)  # 80 datagrams 50 ms apart: about 4 s of traffic
    srv.wait(20)
    wait_for(lambda: any(r["flowEndReason"] == 1 for r in exports_of(5003, 17)), 15, "the final idle export")
    records = exports_of(5003, 17)
    assert [r["flowEndReason"] for r in records][:-1] and {r["flowEndReason"] for r in records[:-1]} == {2}
    # every active timeout (2 s): flowEndSeconds is the whole second of the poll before each export (1 s polls)
    ends = [r["flowEndSeconds"] for r in records[:-1]]
    assert 1 <= len(ends) <= 3, ends
    assert all(1 <= b - a <= 3 for a, b in itertools.pairwise(ends)), ends
    assert sum(r["octetDeltaCount"] for r in records) == records[-1]["octetTotalCount"] == 80 * 1028


def test_dnat_service_connection_keeps_the_original_destination(exporter):
    rules = f"""
table ip flowscope_test {{
  chain output {{ type nat hook output priority -100; ip daddr 10.96.0.10 tcp dport 80 dnat to {B4}:5004; }}
}}
"""
    subprocess.run(["ip", "netns", "exec", A, "nft", "-f", "-"], input=rules, text=True, check=True, timeout=10)
    try:
        srv = server("4", B4, 5004, "tcp", reply=10)
        client("4", "10.96.0.10", 80, "tcp", size=2000)
        srv.wait(10)
        wait_for(lambda: any(r["flowEndReason"] == 3 for r in exports_of(5004)), 15, "the Service flow")
        final = exports_of(5004)[-1]
        assert (final["destinationIPv4Address"], final["destinationTransportPort"]) == (B4, 5004)
        assert (final["destinationServiceIPv4"], final["destinationClusterIPv4"], final["destinationServicePort"]) == (
            "10.96.0.10",
            "10.96.0.10",
            80,
        )
    finally:
        subprocess.run(["ip", "netns", "exec", A, "nft", "delete", "table", "ip", "flowscope_test"], timeout=10)


def test_agent_metrics_have_antrea_names(exporter):
    registry = exporter.metrics.registry
    wait_for(
        lambda: registry.get_sample_value("antrea_agent_conntrack_poll_cycle_duration_seconds_count"),
        10,
        "a first poll",
    )
    assert registry.get_sample_value("antrea_agent_flow_collector_reconnection_count") == 1
    assert registry.get_sample_value("antrea_agent_conntrack_max_connection_count") > 0
    assert registry.get_sample_value("antrea_agent_denied_connection_count") == 0
    assert registry.get_sample_value("antrea_agent_conntrack_total_connection_count") is not None


def test_flowscope_exporter_command(namespaces, tmp_path):
    """`flowscope exporter -c FILE` as a user runs it; SIGTERM flushes the store's connections."""
    import json
    import signal

    config = tmp_path / "exporter.yaml"
    out = tmp_path / "flows.jsonl"
    config.write_text(
        f"flowCollectorAddr: '127.0.0.1:9:udp'\nnetns: {A}\nflowPollInterval: 1s\nnodeName: node-a\n"
        f"metricsAddress: '127.0.0.1:0'\ndataDir: {tmp_path}\nsinks: [{{type: json, path: {out}}}]\n"
    )
    process = subprocess.Popen(
        [sys.executable, "-m", "flowscope.entrypoints.cli", "exporter", "-c", str(config)],
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        time.sleep(1.5)
        srv = server("4", B4, 5005, "tcp", reply=10)
        client("4", B4, 5005, "tcp", size=3000)
        srv.wait(10)
        time.sleep(2.5)
        process.send_signal(signal.SIGTERM)
        process.wait(20)
    finally:
        process.kill()
    stderr = process.stderr.read()
    assert process.returncode == 0, stderr
    records = [json.loads(line)["ipfix"] for line in out.read_text().splitlines()]
    ours = [r for r in records if r["destinationTransportPort"] == 5005]
    assert [r["flowEndReason"] for r in ours] == [3]
    assert ours[0]["octetTotalCount"] >= 3000
    assert "pipeline started: 1 source(s), 0 enricher(s), 2 sink(s), table connections" in stderr
