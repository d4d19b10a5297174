"""nfdump's collector (nfcapd) receives flowscope's IPFIX export and keeps every record.

5000 Antrea-shaped IPv4 records go over UDP to ``nfcapd``; once it has read every datagram it is
stopped with SIGTERM (it then writes its file), and ``nfdump`` lists what it stored. nfdump maps
octetDeltaCount/packetDeltaCount to in bytes/packets and the reverse (PEN 29305) delta counters
to out bytes/packets; it skips Antrea's enterprise elements, variable-length ones included.
(nfdump 1.7.1 ignores flowStartSeconds/flowEndSeconds, Antrea's timestamps: it shows 1970.)
"""

from __future__ import annotations

import json
import re
import signal
import socket

import pytest

from flowscope.core.ipfix.messages import MessageWriter
from tests.helpers import free_port
from tests.interop.support import ELEMENTS, Peer, antrea_record, export, need, run, wait_until

RECORDS = 5000


def receive_queue(port: int) -> int | None:
    """Bytes waiting in the receive queue of the UDP socket bound to ``port`` (``None``: no socket)."""
    out = run(["ss", "-H", "-u", "-a", "-n", f"sport = :{port}"], timeout=10)
    for line in out.splitlines():
        fields = line.split()
        if len(fields) >= 4 and fields[3].endswith(f":{port}"):
            return int(fields[1])
    return None


def start_nfcapd(tmp_path, flows) -> tuple[Peer, int]:
    """nfcapd in the foreground on a free loopback port (retried if the port was taken meanwhile)."""
    for attempt in range(3):
        port = free_port(socket.SOCK_DGRAM)
        argv = ["nfcapd", "-w", str(flows), "-b", "127.0.0.1", "-p", str(port), "-B", "4194304"]
        peer = Peer("nfcapd", argv, tmp_path / f"nfcapd-{attempt}.log")
        try:
            peer.wait_for_log(r"Startup nfcapd\.", 15)
            return peer, port
        except pytest.fail.Exception:
            peer.stop(signal.SIGKILL)
            if "in use" not in peer.log():
                raise
    pytest.fail("nfcapd found no free port in 3 attempts")


@pytest.mark.slow
def test_nfcapd_counts_every_record_and_byte(tmp_path):
    need("nfcapd", "nfdump", "ss")
    records = [antrea_record(i, "ipv4") for i in range(RECORDS)]
    flows = tmp_path / "flows"
    flows.mkdir()
    nfcapd, port = start_nfcapd(tmp_path, flows)
    with nfcapd:
        exporter = export(records, f"127.0.0.1:{port}:udp", tmp_path / "exporter")
        messages = exporter.metrics.registry.get_sample_value(
            "flowscope_ipfix_exporter_messages_total", {"instance": "ipfix"}
        )
        # every datagram read by nfcapd before it is stopped
        wait_until(lambda: receive_queue(port) == 0, 15, lambda: f"nfcapd to read its socket: {nfcapd.describe()}")
        status = nfcapd.stop(signal.SIGTERM, timeout=15)
    log = nfcapd.log()
    assert status == 0, nfcapd.describe()
    stats = re.search(r"Flows: (\d+), Packets: (\d+), Bytes: (\d+), Sequence Errors: (\d+), Bad Packets: (\d+)", log)
    assert stats, nfcapd.describe()
    flows_seen, packets, octets, sequence_errors, bad_packets = map(int, stats.groups())
    assert (flows_seen, sequence_errors, bad_packets) == (RECORDS, 0, 0), nfcapd.describe()
    # nfcapd's own totals count both directions
    assert packets == sum(r["packetDeltaCount"] + r["reversePacketDeltaCount"] for r in records)
    assert octets == sum(r["octetDeltaCount"] + r["reverseOctetDeltaCount"] for r in records)

    files = list(flows.glob("nfcapd.*"))
    assert files, f"nfcapd wrote no file in {flows}: {nfcapd.describe()}"
    listing = run(
        ["nfdump", "-R", str(flows), "-q", "-N", "-o", "fmt:%sa|%da|%sp|%dp|%pr|%ipkt|%ibyt|%opkt|%obyt"], timeout=60
    )
    rows = [[cell.strip() for cell in line.split("|")] for line in listing.splitlines() if line.strip()]
    assert len(rows) == RECORDS, f"nfdump lists {len(rows)} records; {messages:.0f} messages were sent"
    stored = {int(row[2]): row for row in rows}
    assert len(stored) == RECORDS  # one row per distinct source port, none doubled
    for r in records:
        row = stored[r["sourceTransportPort"]]
        assert row == [
            r["sourceIPv4Address"],
            r["destinationIPv4Address"],
            str(r["sourceTransportPort"]),
            "8080",
            "6",
            str(r["packetDeltaCount"]),
            str(r["octetDeltaCount"]),
            str(r["reversePacketDeltaCount"]),
            str(r["reverseOctetDeltaCount"]),
        ], row
    assert sum(int(row[6]) for row in rows) == sum(r["octetDeltaCount"] for r in records) == 237_467_500
    assert sum(int(row[5]) for row in rows) == sum(r["packetDeltaCount"] for r in records)
    print(
        f"nfcapd stored {len(rows)} records from {messages:.0f} messages: in {sum(int(x[5]) for x in rows)} packets "
        f"{sum(int(x[6]) for x in rows)} bytes, out {sum(int(x[7]) for x in rows)} packets "
        f"{sum(int(x[8]) for x in rows)} bytes; nfcapd totals {packets} packets {octets} bytes"
    )


POD_LABELS = {
    "app": "frontend",
    "app.kubernetes.io/name": "frontend",
    "app.kubernetes.io/instance": "shop-frontend",
    "app.kubernetes.io/version": "2.14.3",
    "app.kubernetes.io/component": "web",
    "app.kubernetes.io/part-of": "shop",
    "app.kubernetes.io/managed-by": "Helm",
    "helm.sh/chart": "frontend-2.14.3",
    "pod-template-hash": "7d9f8c6b5",
    "topology.kubernetes.io/zone": "eu-west-1a",
    "security.istio.io/tlsMode": "istio",
    "service.istio.io/canonical-name": "frontend",
    "service.istio.io/canonical-revision": "v2",
    "team.example.com/owner": "storefront",
}


@pytest.mark.slow
def test_nfcapd_receives_records_with_pod_labels(tmp_path):
    """Flow Aggregator records with pod labels (about 1.3 kB each) fit the default 1472-byte UDP message.

    Each fits a message alone but not together with its 316-byte template: the template goes in a
    message of its own (this test failed while flowscope dropped such records as "too_large").
    """
    need("nfcapd", "nfdump", "ss")
    labels = json.dumps(POD_LABELS, separators=(",", ":"))
    records = [
        {**antrea_record(i), "sourcePodLabels": labels, "destinationPodLabels": labels.replace("frontend", "backend")}
        for i in range(1, 112)
        if i % 9  # without the 300-byte rule name: about 1.3 kB each
    ]
    writer = MessageWriter(ELEMENTS)
    template = writer.template_for(records[0])
    size = max(len(template.encode(r)) for r in records)
    assert 16 + 4 + size <= 1472 < 16 + 4 + 4 + len(template.wire) + size  # fits alone, not with its template
    flows = tmp_path / "flows"
    flows.mkdir()
    nfcapd, port = start_nfcapd(tmp_path, flows)
    with nfcapd:
        export(records, f"127.0.0.1:{port}:udp", tmp_path / "exporter")
        wait_until(lambda: receive_queue(port) == 0, 15, lambda: f"nfcapd to read its socket: {nfcapd.describe()}")
        nfcapd.stop(signal.SIGTERM, timeout=15)
    assert re.search(rf"Flows: {len(records)}, .* Sequence Errors: 0, Bad Packets: 0", nfcapd.log()), nfcapd.describe()
