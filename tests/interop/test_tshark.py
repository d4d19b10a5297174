"""Wireshark's IPFIX dissector (tshark) decodes what flowscope's ipfix sink exports.

flowscope exports Antrea-shaped records (the exact 43-element template of Antrea's flow exporter,
IPv4 and IPv6) over UDP and TCP on loopback while tshark captures; the capture is then dissected
with ``-d <proto>.port==PORT,cflow``. Wireshark checks framing, set lengths, variable-length
fields and the sequence numbers of every message (RFC 7011 §3.1), and knows Antrea's enterprise
number 56506 as "Project Antrea".
"""

from __future__ import annotations

import ipaddress
import re
import signal
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowscope.core.elements import ANTREA
from tests.interop.support import (
    ANTREA_PEN,
    ELEMENTS,
    Collector,
    Peer,
    antrea_record,
    encode_value,
    export,
    need,
    need_root,
    run,
    wait_until,
)

RECORDS = 400
CAPTURE_SETTLE = 1.0  # seconds: four times dumpcap's packet-buffer timeout
PI_WARN = 0x00600000  # Wireshark's expert severity "Warning"; errors are 0x00800000
TCP_ONLY_EVENT = "(tcp.analysis.flags && tcp.len == 0)"  # a TCP event (a D-SACK...) on a packet without payload

FIELD = re.compile(
    r"Field \((?P<pos>\d+)/(?P<count>\d+)\): (?P<label>.*)\n"
    r"\s+[01.]{4} [01.]{4} [01.]{4} [01.]{4} = Pen provided: (?P<pen>Yes|No)\n"
    r"\s+(?P<bits>[01.]{4} [01.]{4} [01.]{4} [01.]{4}) = Type: .*\n"
    r"\s+Length: (?P<length>\d+).*"
    r"(?:\n\s+PEN: (?P<pen_name>.*) \((?P<pen_number>\d+)\))?"
)


def tshark_read(pcap: Path, decode_as: str, *args: str) -> str:
    return run(["tshark", "-n", "-r", str(pcap), "-d", decode_as, *args], timeout=60)


def template_fields(verbose: str, template_id: int) -> list[dict]:
    """The fields of the first definition of ``template_id`` in tshark's ``-V`` output."""
    start = re.search(rf"Template \(Id = {template_id}, Count = (\d+)\)", verbose)
    assert start, f"tshark shows no template {template_id}:\n{verbose[:3000]}"
    count = int(start.group(1))
    fields = []
    for match in FIELD.finditer(verbose, start.end()):
        fields.append(
            {
                "id": int(match["bits"].replace(" ", "").replace(".", ""), 2),
                "length": int(match["length"]),
                "pen": int(match["pen_number"]) if match["pen_number"] else None,
                "pen_name": match["pen_name"],
                "label": match["label"].strip(),
            }
        )
        if len(fields) == count:
            break
    return fields


def field_values(pcap: Path, decode_as: str, names: list[str]) -> dict[str, list[str]]:
    """Every occurrence of each tshark field, in capture order, over all frames."""
    args = ["-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|", "-E", "separator=\t"]
    for name in names:
        args += ["-e", name]
    values: dict[str, list[str]] = {name: [] for name in names}
    for line in tshark_read(pcap, decode_as, *args).splitlines():
        for name, cell in zip(names, line.split("\t"), strict=False):
            values[name] += [v for v in cell.split("|") if v != ""]
    return values


def tshark_time(seconds: int) -> str:
    dt = datetime.fromtimestamp(seconds, UTC)
    return f"{dt:%b} {dt.day:2d}, {dt.year} {dt:%H:%M:%S}.000000000 UTC"


@pytest.mark.slow
@pytest.mark.parametrize("family", ["ipv4", "ipv6"])
@pytest.mark.parametrize("transport", ["udp", "tcp"])
def test_tshark_decodes_antrea_records_we_export(tmp_path, transport, family):
    need("tshark")
    need_root("tshark captures on the loopback interface")
    host = "127.0.0.1" if family == "ipv4" else "[::1]"
    records = [antrea_record(i, family) for i in range(RECORDS)]
    collector = Collector(f"{host}:0:{transport}", tmp_path / "collector")  # the listening end
    port = collector.port
    pcap = tmp_path / "export.pcapng"
    try:
        argv = ["tshark", "-n", "-i", "lo", "-f", f"{transport} port {port}", "-w", str(pcap)]
        with Peer("tshark", argv, tmp_path / "tshark.log") as tshark:
            # "Capturing on" comes when dumpcap is launched; "Capture started" once it has opened the
            # interface, set the filter and created the file
            tshark.wait_for_log(r"Capturing on", 20)
            tshark.wait_for_log(r"Capture started", 20)
            exporter = export(records, f"{host}:{port}:{transport}", tmp_path / "exporter")
            wait_until(
                lambda: len(collector.records) >= RECORDS,
                15,
                lambda: f"the collector to get {RECORDS} records (has {len(collector.records)})",
            )
            # dumpcap reads the kernel's capture ring with a 250 ms packet-buffer timeout: packets
            # that have not been handed over yet when it is told to stop are never written.
            time.sleep(CAPTURE_SETTLE)
            status = tshark.stop(signal.SIGINT, timeout=15)
            assert status == 0, tshark.describe()
            assert re.search(r"\b\d+ packets? captured", tshark.log()), tshark.describe()
    finally:
        collector.stop()
    assert len(collector.records) == RECORDS

    decode_as = f"{transport}.port=={port},cflow"

    # 1. No malformed packet, no expert warning or error (which includes Wireshark's per-domain
    #    sequence-number check of every IPFIX message). The kernel's own TCP events on a busy machine
    #    (the D-SACK of a spurious retransmission) are notes on acknowledgements without payload, which
    #    the decode-as rule still hands to the IPFIX dissector: not counted.
    experts = tshark_read(
        pcap,
        decode_as,
        "-Y",
        f"(_ws.malformed || _ws.expert.severity >= {PI_WARN}) && !{TCP_ONLY_EVENT}",
        "-T",
        "fields",
        "-e",
        "frame.number",
        "-e",
        "_ws.expert.message",
    )
    assert experts.strip() == "", f"tshark reports problems (frame, message):\n{experts}"
    verbose = tshark_read(pcap, decode_as, "-V", "-Y", f"!{TCP_ONLY_EVENT}")
    assert "Malformed" not in verbose
    assert "Expert Info (Error" not in verbose and "Expert Info (Warning" not in verbose

    # 2. Every data record is there.
    assert len(re.findall(r"^\s+Flow \d+$", verbose, re.MULTILINE)) == RECORDS
    assert "Cisco NetFlow/IPFIX\n    Version: 10" in verbose

    # 3. The template is Antrea's, element by element: ids, lengths and enterprise numbers;
    #    Antrea's elements show as "<id> [pen: Project Antrea]".
    keys = list(records[0])
    fields = template_fields(verbose, 256)
    expected = []
    for name in keys:
        element = ELEMENTS[name]
        enterprise = ANTREA_PEN if element.enterprise_id == ANTREA else (element.enterprise_id or None)
        expected.append({"id": element.element_id, "length": element.length, "pen": enterprise})
    assert [{k: f[k] for k in ("id", "length", "pen")} for f in fields] == expected
    antrea = [f for f in fields if f["pen"] == ANTREA_PEN]
    assert len(antrea) == 27
    assert all(f["label"] == f"{f['id']} [pen: Project Antrea]" for f in antrea), antrea
    assert {f["pen_name"] for f in antrea} == {"Project Antrea"}
    assert {100, 101, 102, 103, 104, 105} <= {f["id"] for f in antrea}  # pod namespaces, names and nodes
    assert [f["label"] for f in fields if f["pen"] == 29305] == [
        "PACKETS_TOTAL [Reverse]",
        "BYTES_TOTAL [Reverse]",
        "PKTS [Reverse]",
        "BYTES [Reverse]",
    ]

    # 4. Values, exactly, for every record, as Wireshark parses them.
    src, dst = ("cflow.srcaddr", "cflow.dstaddr") if family == "ipv4" else ("cflow.srcaddrv6", "cflow.dstaddrv6")
    names = [
        "cflow.srcport",
        "cflow.dstport",
        src,
        dst,
        "cflow.protocol",
        "cflow.flow_end_reason",
        "cflow.packets",
        "cflow.octets",
        "cflow.permanent_packets",
        "cflow.permanent_octets",
        "cflow.abstimestart",
        "cflow.abstimeend",
        "cflow.enterprise_private_entry",
        "cflow.len",
    ]
    got = field_values(pcap, decode_as, names)
    # every message the sink sent, none larger than the default maxIPFIXMsgSize
    sent = exporter.metrics.registry.get_sample_value("flowscope_ipfix_exporter_messages_total", {"instance": "ipfix"})
    lengths = [int(v) for v in got["cflow.len"]]
    assert len(lengths) == sent
    limit = {"udp": 1472 if family == "ipv4" else 1452, "tcp": 65535}[transport]
    assert max(lengths) <= limit
    src_key, dst_key = keys[10], keys[11]
    assert [int(v) for v in got["cflow.srcport"]] == [r["sourceTransportPort"] for r in records]
    assert [int(v) for v in got["cflow.dstport"]] == [8080] * RECORDS
    assert [ipaddress.ip_address(v) for v in got[src]] == [ipaddress.ip_address(r[src_key]) for r in records]
    assert [ipaddress.ip_address(v) for v in got[dst]] == [ipaddress.ip_address(r[dst_key]) for r in records]
    assert [int(v) for v in got["cflow.protocol"]] == [6] * RECORDS
    assert [int(v) for v in got["cflow.flow_end_reason"]] == [r["flowEndReason"] for r in records]
    # forward and reverse (PEN 29305) counters share a field name, in template order
    pairs = [("packetDeltaCount", "reversePacketDeltaCount"), ("octetDeltaCount", "reverseOctetDeltaCount")]
    for field, (forward, reverse) in zip(("cflow.packets", "cflow.octets"), pairs, strict=True):
        assert [int(v) for v in got[field]] == [x for r in records for x in (r[forward], r[reverse])], field
    pairs = [("packetTotalCount", "reversePacketTotalCount"), ("octetTotalCount", "reverseOctetTotalCount")]
    for field, (forward, reverse) in zip(("cflow.permanent_packets", "cflow.permanent_octets"), pairs, strict=True):
        assert [int(v) for v in got[field]] == [x for r in records for x in (r[forward], r[reverse])], field
    assert got["cflow.abstimestart"] == [tshark_time(r["flowStartSeconds"]) for r in records]
    assert got["cflow.abstimeend"] == [tshark_time(r["flowEndSeconds"]) for r in records]
    # Antrea's values as raw bytes (tshark omits the empty strings)
    expected_entries = [
        encode_value(name, r[name]).hex()
        for r in records
        for name in keys
        if ELEMENTS[name].enterprise_id == ANTREA and encode_value(name, r[name])
    ]
    assert len(got["cflow.enterprise_private_entry"]) == len(expected_entries)
    assert got["cflow.enterprise_private_entry"] == expected_entries
    assert bytes.fromhex(got["cflow.enterprise_private_entry"][0]).decode() == "frontend-7d9f8c6b5-00000"
    print(
        f"tshark decoded {len(got['cflow.srcport'])} records in {len(lengths)} {transport} messages "
        f"(largest {max(lengths)} bytes), {len(expected_entries)} Antrea values, "
        f"octetDeltaCount total {sum(int(v) for v in got['cflow.octets'][::2])}"
    )
