"""``flowscope up`` on a host's own conntrack: here a fresh network namespace stands in for the host,
so that the test sees only the connections it makes."""

from __future__ import annotations

import os
import re
import shutil
import socket
import subprocess

import pytest

from tests.e2e.test_demo import Demo, query
from tests.helpers import wait_for
from tests.interop.support import in_netns

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="reading conntrack needs root"),
    pytest.mark.skipif(shutil.which("nft") is None, reason="nftables is not installed"),
    pytest.mark.skipif(shutil.which("conntrack") is None, reason="conntrack-tools is not installed"),
]
HOST = "fsu-host"


def inside(*command: str) -> str:
    return subprocess.run(["ip", "netns", "exec", HOST, *command], capture_output=True, text=True, check=True).stdout


@pytest.fixture
def host():
    subprocess.run(["ip", "netns", "add", HOST], check=True)
    try:
        inside("ip", "link", "set", "lo", "up")
        yield HOST
    finally:
        subprocess.run(["ip", "netns", "del", HOST], check=True)


def exchange(payload: int) -> int:
    """One TCP connection on loopback carrying ``payload`` bytes; the client's port."""
    with socket.create_server(("127.0.0.1", 0)) as server, socket.create_connection(server.getsockname()) as client:
        accepted, _ = server.accept()
        with accepted:
            client.sendall(b"x" * payload)
            received = 0
            while received < payload:
                received += len(accepted.recv(65536))
        return client.getsockname()[1]


def test_up_says_what_is_missing_then_stores_the_hosts_flows(host, tmp_path):
    up = Demo("--data-dir", str(tmp_path / "up"), "--port", "10348", command="up", netns=host)
    try:
        wait_for(lambda: up.said("running; Ctrl-C stops it") or up.process.poll() is not None, 120, "flowscope up")
        assert up.process.poll() is None, "".join(up.lines)
        assert up.said(
            "this host's conntrack table is empty: the kernel tracks connections only once a netfilter rule in "
            "this network namespace uses connection tracking (NAT, or a stateful firewall rule); flows appear as "
            "soon as one does, for example: nft add table inet flowscope; "
        )
        assert up.said("byte and packet counts are off in conntrack: sysctl -w net.netfilter.nf_conntrack_acct=1")

        # what the message says to do, done
        inside("sysctl", "-qw", "net.netfilter.nf_conntrack_acct=1")
        inside("sh", "-c", re.search(r"for example: (.*)$", "".join(up.lines), re.M).group(1))
        port = in_netns(host, exchange, 5000)

        entry = ["conntrack", "-L", "-p", "tcp", "--sport", str(port)]
        wait_for(lambda: "TIME_WAIT" in inside(*entry), 30, "the connection to close")  # its counts are final
        kernel = inside(*entry)
        counts = [int(n) for n in re.findall(r"bytes=(\d+)", kernel)]
        packets = [int(n) for n in re.findall(r"packets=(\d+)", kernel)]
        assert counts[0] > 5000, kernel
        sql = (
            "SELECT sourceIP, destinationIP, protocolIdentifier, max(octetTotalCount), max(packetTotalCount), "
            "max(reverseOctetTotalCount), max(reversePacketTotalCount) "
            f"FROM flows WHERE sourceTransportPort = {port} GROUP BY sourceIP, destinationIP, protocolIdentifier"
        )
        expected = [["127.0.0.1", "127.0.0.1", 6, counts[0], packets[0], counts[1], packets[1]]]
        wait_for(lambda: in_netns(host, query, up, tmp_path / "up", sql) == expected, 120, f"the flow {expected}")
    finally:
        code = up.stop() if up.process.poll() is None else up.process.returncode
    assert code == 0, "".join(up.lines)
