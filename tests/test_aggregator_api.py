"""The aggregator's API and `flowscope get`, against a running aggregator bundle."""

from __future__ import annotations

import json
import ssl
import subprocess
import sys
import time
import urllib.request

import pytest

from tests.helpers import build


def held_record(sport: int, pod: str) -> dict:
    """The source node's half of an inter-node flow: the aggregator holds it for correlation."""
    return {
        "flowStartSeconds": 1767225600,
        "flowEndSeconds": 1767225610,
        "flowEndReason": 2,
        "sourceTransportPort": sport,
        "destinationTransportPort": 80,
        "protocolIdentifier": 6,
        "packetTotalCount": 10,
        "octetTotalCount": 1000,
        "packetDeltaCount": 10,
        "octetDeltaCount": 1000,
        "sourceIPv4Address": "10.244.1.5",
        "destinationIPv4Address": "10.244.2.9",
        "sourcePodName": pod,
        "sourcePodNamespace": "shop",
        "sourceNodeName": "node-1",
        "flowType": 2,
        "destinationServicePortName": "shop/cart:http",
    }


@pytest.fixture(scope="module")
def aggregator(tmp_path_factory):
    data = tmp_path_factory.mktemp("aggregator")
    pipeline = build(
        {
            "bundle": "aggregator",
            "aggregatorTransportProtocol": "tcp",
            "listenAddress": "127.0.0.1:0",
            "grpcListenAddress": "127.0.0.1:0",
            "apiAddress": "127.0.0.1:0",
            "sinks": [{"type": "collect", "name": "out"}],
            "dataDir": str(data),
        }
    )
    pipeline.start()
    port = pipeline.sources[0][1].port
    exporter = build(
        {
            "sources": [{"type": "memory", "records": [held_record(40001, "web-1"), held_record(40002, "web-2")]}],
            "sinks": [{"type": "ipfix", "address": f"127.0.0.1:{port}:tcp"}],
        }
    )
    assert exporter.run() == 0
    deadline = time.monotonic() + 10
    while len(pipeline.table) < 2:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield pipeline, data
    pipeline.stop()
    pipeline.wait(10)


def get(pipeline, path: str, data) -> tuple[int, bytes]:
    context = ssl.create_default_context(cafile=str(data / "certs" / "ca.crt"))
    token = (data / "api-token").read_text().strip()
    url = f"https://127.0.0.1:{pipeline.api.port}{path}"
    try:
        with urllib.request.urlopen(
            urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"}), context=context, timeout=5
        ) as r:
            return r.status, r.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_flow_records_with_filters(aggregator):
    pipeline, data = aggregator
    status, body = get(pipeline, "/flowrecords", data)
    assert status == 200
    assert sorted(r["sourcePodName"] for r in json.loads(body)) == ["web-1", "web-2"]
    _, body = get(pipeline, "/flowrecords?srcport=40002&proto=6", data)
    [record] = json.loads(body)
    assert (record["sourcePodName"], record["destinationServicePortName"], record["octetTotalCount"]) == (
        "web-2",
        "shop/cart:http",
        1000,
    )
    _, body = get(pipeline, "/flowrecords?srcip=10.244.1.5&dstip=10.244.2.9&proto=6&srcport=40001&dstport=80", data)
    assert [r["sourcePodName"] for r in json.loads(body)] == ["web-1"]
    assert get(pipeline, "/flowrecords?proto=tcp", data) == (
        404,
        b'Error when parsing protocol: strconv.ParseUint: parsing "tcp": invalid syntax\n',
    )
    assert get(pipeline, "/flowrecords?srcport=70000", data) == (
        404,
        b'Error when parsing source port: strconv.ParseUint: parsing "70000": value out of range\n',
    )


def test_record_metrics_health_and_prometheus(aggregator):
    pipeline, data = aggregator
    status, body = get(pipeline, "/recordmetrics", data)
    metrics = json.loads(body)
    assert (status, metrics["numRecordsReceived"], metrics["numFlows"], metrics.get("withLogExporter")) == (
        200,
        2,
        2,
        None,
    )
    assert "numRecordsExported" not in metrics  # omitempty: nothing exported yet, both wait for their peer
    assert get(pipeline, "/healthz", data) == (200, b"ok")
    status, body = get(pipeline, "/metrics", data)
    assert status == 200 and b"flowscope_ipfix_records_total" in body


def test_flowscope_get_commands(aggregator):
    pipeline, data = aggregator
    server = ["--server", f"https://127.0.0.1:{pipeline.api.port}", "--ca-cert", str(data / "certs" / "ca.crt")]
    server += ["--token-file", str(data / "api-token")]
    result = subprocess.run(
        [sys.executable, "-m", "flowscope.entrypoints.cli", "get", "flowrecords", *server, "--srcport", "40001"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    header, row = result.stdout.splitlines()
    assert header.split() == [
        "SRC_IP",
        "DST_IP",
        "SPORT",
        "DPORT",
        "PROTO",
        "SRC_POD",
        "DST_POD",
        "SRC_NS",
        "DST_NS",
        "SERVICE",
    ]
    assert row.split() == ["10.244.1.5", "10.244.2.9", "40001", "80", "6", "web-1", "shop", "shop/cart:http"]
    result = subprocess.run(
        [sys.executable, "-m", "flowscope.entrypoints.cli", "get", "recordmetrics", *server, "-o", "json"],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert json.loads(result.stdout)["numFlows"] == 2
    result = subprocess.run(
        [sys.executable, "-m", "flowscope.entrypoints.cli", "get", "recordmetrics", *server],
        capture_output=True,
        text=True,
        timeout=30,
    )
    header, row = result.stdout.splitlines()
    assert header.split()[-4:] == ["CLICKHOUSE-EXPORTER", "S3-EXPORTER", "LOG-EXPORTER", "IPFIX-EXPORTER"]
    assert row.split() == ["0", "2", "0", "2", "0", "false", "false", "false", "false"]  # as antctl prints them
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "flowscope.entrypoints.cli",
            "get",
            "recordmetrics",
            "--server",
            "https://127.0.0.1:1",
            "--insecure",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 1
    assert result.stderr.startswith("error: cannot reach the aggregator API at https://127.0.0.1:1:")


def test_proxy_mode_forwards_each_record_with_its_exporter_and_direction(tmp_path):
    from tests.helpers import COLLECTED

    proxy = build(
        {
            "bundle": "aggregator",
            "mode": "Proxy",
            "aggregatorTransportProtocol": "tcp",
            "listenAddress": "127.0.0.1:0",
            "grpcListenAddress": "127.0.0.1:0",
            "apiAddress": "127.0.0.1:0",
            "sinks": [{"type": "collect", "name": "forwarded", "flushInterval": "20ms"}],
            "dataDir": str(tmp_path),
        }
    )
    proxy.start()
    try:
        port = proxy.sources[0][1].port
        destination_half = {**held_record(40003, ""), "destinationPodName": "cart-0", "sourcePodName": ""}
        exporter = build(
            {
                "sources": [{"type": "memory", "records": [held_record(40003, "web-3"), destination_half]}],
                "sinks": [{"type": "ipfix", "address": f"127.0.0.1:{port}:tcp", "observationDomainId": 77}],
            }
        )
        assert exporter.run() == 0
        deadline = time.monotonic() + 10
        while len(COLLECTED.get("forwarded", [])) < 2:
            assert time.monotonic() < deadline
            time.sleep(0.05)
    finally:
        proxy.stop()
        proxy.wait(10)
    egress, ingress = COLLECTED["forwarded"]
    assert (egress["flowDirection"], ingress["flowDirection"]) == (1, 0)
    assert (egress["originalExporterIPv4Address"], egress["originalObservationDomainId"]) == ("127.0.0.1", 77)
    assert "octetTotalCountFromSourceNode" not in egress  # no aggregation in proxy mode
    assert proxy.table is None


def test_flow_records_carry_antreas_fixed_keys_and_srcip_matches_the_flow_key(tmp_path):
    """A FromExternal flow's source-node half is keyed on its proxy SNAT address, as Antrea's, and
    /flowrecords finds it by that address; every record has Antrea's keys, zeros and "" included. A
    JSON flow collector counts as the IPFIX exporter in /recordmetrics, as in Antrea."""
    pipeline = build(
        {
            "bundle": "aggregator",
            "aggregatorTransportProtocol": "tcp",
            "listenAddress": "127.0.0.1:0",
            "grpcListenAddress": "127.0.0.1:0",
            "apiAddress": "127.0.0.1:0",
            "flowCollector": {"enable": True, "address": "127.0.0.1:9:udp", "recordFormat": "JSON"},
            "dataDir": str(tmp_path),
        }
    )
    pipeline.start()
    try:
        external = {
            **held_record(40004, ""),
            "sourceIPv4Address": "203.0.113.5",
            "flowType": 4,  # FromExternal
            "proxySnatIPv4": "10.244.1.1",
            "proxySnatPort": 61000,
            "destinationServicePortName": "",
        }
        port = pipeline.sources[0][1].port
        exporter = build(
            {
                "sources": [{"type": "memory", "records": [external]}],
                "sinks": [{"type": "ipfix", "address": f"127.0.0.1:{port}:tcp"}],
            }
        )
        assert exporter.run() == 0
        deadline = time.monotonic() + 10
        while len(pipeline.table) < 1:
            assert time.monotonic() < deadline
            time.sleep(0.05)
        _, body = get(pipeline, "/flowrecords?srcip=10.244.1.1&srcport=61000", tmp_path)
        [record] = json.loads(body)
        assert json.loads(get(pipeline, "/flowrecords?srcip=203.0.113.5", tmp_path)[1]) == []
        _, body = get(pipeline, "/recordmetrics", tmp_path)
        metrics = json.loads(body)
    finally:
        pipeline.stop()
        pipeline.wait(10)
    assert list(record) == sorted(record)  # Go writes a map's keys sorted
    assert len(record) == 43  # Antrea's flowToMap: 39 keys, and 4 of the IP family
    assert {k: record[k] for k in ("sourceIPv4Address", "sourceTransportPort", "flowType")} == {
        "sourceIPv4Address": "203.0.113.5",
        "sourceTransportPort": 40004,
        "flowType": 4,
    }
    unset = {k for k, v in record.items() if v in ("", 0)}
    assert {
        "destinationPodName",
        "destinationClusterIPv4",
        "destinationServiceIPv4",
        "egressIP",
        "tcpState",
        "egressNetworkPolicyRuleAction",
        "reverseOctetTotalCount",
    } <= unset
    assert "sourceIPv6Address" not in record and "proxySnatIPv4" not in record
    assert record["flowEndSecondsFromSourceNode"] == 1767225610
    assert metrics["withIPFIXExporter"] is True and "withLogExporter" not in metrics
