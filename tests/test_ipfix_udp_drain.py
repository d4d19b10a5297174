"""The ipfix source's UDP receive loop in C gives what its Python twin gives: the same records, message and
record counts, sequence checks and decode errors, from the same datagrams, over IPv4 and IPv6."""

from __future__ import annotations

import socket

import pytest

from flowscope.core.ipfix import Decoder, MessageWriter, codec
from flowscope.plugins.sources import ipfix
from flowscope.testing import builtin_elements
from tests.helpers import build

pytestmark = pytest.mark.skipif(
    ipfix.UDP_EXTENSION is None or codec.EXTENSION is None, reason="the C extensions are not built"
)


def exporter_datagrams() -> tuple[list[bytes], int]:
    """A template-and-data message, then data messages with one left out (a sequence gap), a datagram
    that is not IPFIX, and a late copy of a message whose template is unknown; and the records of the
    message left out."""
    records = [
        {
            "sourceIPv4Address": f"10.0.{i // 250}.{i % 250}",
            "destinationIPv4Address": "10.0.9.9",
            "sourcePodName": f"pod-{i % 40}",
            "octetDeltaCount": 1000 + i,
            "destinationTransportPort": 443,
        }
        for i in range(300)
    ]
    messages, _ = MessageWriter(builtin_elements(), max_size=512).encode(records)
    decoder = Decoder(builtin_elements())
    counts = [len(decoder.decode(m, "count").records) for m in messages]
    left_out = counts.pop(10)
    messages.pop(10)
    unknown = bytearray(messages[12])
    unknown[16:18] = (999).to_bytes(2, "big")  # its data set names a template never sent
    return [*messages, b"not an IPFIX message", bytes(unknown)], left_out


def drained(tmp_path, host: str, drain: str, datagrams: list[bytes], sender: socket.socket, **options) -> dict:
    pipeline = build(
        {
            "sources": [{"type": "ipfix", "address": f"{host}:0:udp", "persistTemplates": False, **options}],
            "sinks": [{"type": "collect"}],
            "dataDir": str(tmp_path / drain),
        }
    )
    source = pipeline.sources[0][1]
    try:
        source._sock.setblocking(False)
        target = source._sock.getsockname()[:2]
        for datagram in datagrams:  # loopback: each is queued on the source's socket before sendto returns
            sender.sendto(datagram, target)
        emitted: list[dict] = []
        batch = ipfix._Batch(emitted.extend, 7, 3600.0, source._report)  # 7: a full batch mid-drain
        getattr(source, drain)(batch)
        batch.flush()
    finally:
        source._sock.close()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in pipeline.metrics.registry.collect()
        if family.name.startswith("flowscope_ipfix")
        for sample in family.samples
        if sample.name.endswith("_total")
    }
    return {"records": emitted, "expected": dict(source._expected), "metrics": samples}


@pytest.mark.parametrize("host, family", [("127.0.0.1", socket.AF_INET), ("[::1]", socket.AF_INET6)])
def test_the_c_drain_gives_what_the_python_drain_gives(tmp_path, host, family):
    datagrams, left_out = exporter_datagrams()
    with socket.socket(family, socket.SOCK_DGRAM) as sender:
        sender.bind((host.strip("[]"), 0))
        python = drained(tmp_path, host, "_drain", datagrams, sender)
        native = drained(tmp_path, host, "_drain_in_c", datagrams, sender)
        exporter, port = sender.getsockname()[:2]
    assert native == python
    received = 300 - left_out
    assert [r["octetDeltaCount"] for r in native["records"]][:3] == [1000, 1001, 1002]
    assert len(native["records"]) == received
    assert list(native["expected"]) == [(("udp", exporter, port), 0)]
    counts = {name: value for (name, labels), value in native["metrics"].items() if ("exporter", exporter) in labels}
    assert counts["flowscope_ipfix_messages_total"] == len(datagrams) - 1  # all but the one that is not IPFIX
    assert counts["flowscope_ipfix_records_total"] == received
    assert counts["flowscope_ipfix_sequence_gaps_total"] == 1  # the late copy is late, not a gap
    assert counts["flowscope_ipfix_lost_records_total"] == left_out
    errors = {dict(labels)["reason"]: value for (name, labels), value in native["metrics"].items() if "errors" in name}
    assert errors == {"bad_version": 1.0, "unknown_template": 1.0}


def test_exporter_fields_keep_the_python_drain(tmp_path):
    """Marking where each record came from is the Python loop's: with exporterFields on, the C loop is not
    used, and the records say where they came from."""
    for fields, drain in ((True, "_drain"), (False, "_drain_in_c")):
        pipeline = build(
            {
                "sources": [{"type": "ipfix", "address": "127.0.0.1:0:udp", "exporterFields": fields}],
                "sinks": [{"type": "collect"}],
                "dataDir": str(tmp_path / str(fields)),
            }
        )
        source = pipeline.sources[0][1]
        source._sock.close()
        assert source._udp_drain() == getattr(source, drain)
    datagrams, _ = exporter_datagrams()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sender:
        emitted = drained(tmp_path, "127.0.0.1", "_drain", datagrams[:1], sender, exporterFields=True)["records"]
    assert emitted[0]["originalExporterIPv4Address"] == "127.0.0.1"
    assert emitted[0]["originalObservationDomainId"] == 0
