"""The gRPC transport (Antrea's FlowExportService): the grpc sink and source over mutual TLS on loopback, a
client generated from Antrea's own .proto files, bad input, and aggregation fed over gRPC."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import textwrap
import threading
import uuid
from importlib import resources
from pathlib import Path

import grpc
import pytest
from google.protobuf import descriptor_pb2
from google.protobuf.descriptor_pb2 import ServiceDescriptorProto

from flowscope.core.certs import ensure_certificates
from flowscope.core.config import parse_config_text
from flowscope.core.ipfix.antrea import EXPORTER_IPV4, EXPORTER_IPV6
from flowscope.plugins.grpcflow import flow_pb2
from flowscope.plugins.grpcflow.flow_pb2 import ExportRequest, Flow
from flowscope.plugins.grpcflow.source import SERVICE
from tests.helpers import COLLECTED, build, free_port, wait_for

ANTREA_PROTO = Path(__file__).parent / "data" / "antrea-proto"
AGGREGATOR_NAME = "flow-aggregator.flow-aggregator.svc"
EXPORT = f"/{SERVICE}/Export"
SCHEMA = Path(flow_pb2.__file__).with_name("flow.proto")
STREAM_SERVICE = ["FlowStreamService", "FlowFilter", "GetFlowsRequest", "GetFlowsResponse"]
"""What Antrea's service.proto defines beyond the transport: the aggregator's flow stream on 14740."""


def uid(n: int) -> bytes:
    return uuid.UUID(f"{n:08x}-1d2c-4b3a-8f9e-{n:012x}").bytes


EXPORTER_RECORD = {  # what flowscope's exporter sends: the agent's 43-element IPv4 record, every value set
    "flowStartSeconds": 1767225600,
    "flowEndSeconds": 1767225660,
    "flowEndReason": 2,
    "sourceTransportPort": 41000,
    "destinationTransportPort": 8080,
    "protocolIdentifier": 6,
    "packetTotalCount": 120,
    "octetTotalCount": 96000,
    "packetDeltaCount": 20,
    "octetDeltaCount": 16000,
    "sourceIPv4Address": "10.244.1.5",
    "destinationIPv4Address": "10.244.2.9",
    "reversePacketTotalCount": 110,
    "reverseOctetTotalCount": 880000,
    "reversePacketDeltaCount": 10,
    "reverseOctetDeltaCount": 8000,
    "sourcePodName": "web-7d9c5b8f6-x2x9p",
    "sourcePodNamespace": "shop",
    "sourceNodeName": "k8s-worker-1",
    "destinationPodName": "cart-5f6b4c9d8-q8wfz",
    "destinationPodNamespace": "shop",
    "destinationNodeName": "k8s-worker-2",
    "destinationServicePort": 8080,
    "destinationServicePortName": "shop/cart:http",
    "ingressNetworkPolicyName": "allow-web",
    "ingressNetworkPolicyNamespace": "shop",
    "ingressNetworkPolicyType": 1,
    "ingressNetworkPolicyRuleName": "ingress-0",
    "ingressNetworkPolicyRuleAction": 1,
    "egressNetworkPolicyName": "limit-egress",
    "egressNetworkPolicyNamespace": "shop",
    "egressNetworkPolicyType": 3,
    "egressNetworkPolicyRuleName": "rule-1",
    "egressNetworkPolicyRuleAction": 1,
    "tcpState": "ESTABLISHED",
    "flowType": 2,
    "egressName": "egress-shop",
    "egressIP": "172.18.0.50",
    "egressNodeName": "k8s-worker-3",
    "proxySnatPort": 31000,
    "destinationClusterIPv4": "10.96.12.34",
    "proxySnatIPv4": "172.18.0.2",
    "destinationServiceIPv4": "10.96.12.34",
}
assert list(EXPORTER_RECORD) == EXPORTER_IPV4

EVERYTHING_IPV6 = {  # every element a Flow carries, IPv6
    **{name.replace("IPv4", "IPv6"): value for name, value in EXPORTER_RECORD.items()},
    "sourceIPv6Address": "fd00:10:244:1::5",
    "destinationIPv6Address": "fd00:10:244:2::9",
    "egressIP": "fd00:172:18::50",
    "destinationClusterIPv6": "fd00:10:96::1234",
    "proxySnatIPv6": "fd00:172:18::2",
    "destinationServiceIPv6": "fd00:10:96::1234",
    "tcpState": "TIME_WAIT",
    "flowEndReason": 3,
    **{
        name: uid(i)
        for i, name in enumerate(
            [
                "sourcePodUUID",
                "sourceNodeUUID",
                "destinationPodUUID",
                "destinationNodeUUID",
                "destinationServiceUUID",
                "ingressNetworkPolicyUUID",
                "egressNetworkPolicyUUID",
                "egressUUID",
                "egressNodeUUID",
            ],
            start=1,
        )
    },
    "sourcePodLabels": '{"app":"web","team":"r\\u0026d"}',
    "destinationPodLabels": "{}",
    "flowDirection": 1,
    "appProtocolName": "http",
    "httpVals": '{"0":"GET /cart"}',
    "flowEndSecondsFromSourceNode": 1767225659,
    "flowEndSecondsFromDestinationNode": 1767225660,
    **{
        f"{metric}From{side}Node": 1000 * i + j
        for i, metric in enumerate(
            [
                "packetTotalCount",
                "packetDeltaCount",
                "octetTotalCount",
                "octetDeltaCount",
                "reversePacketTotalCount",
                "reversePacketDeltaCount",
                "reverseOctetTotalCount",
                "reverseOctetDeltaCount",
            ],
            start=1,
        )
        for j, side in enumerate(["Source", "Destination"], start=1)
    },
    "throughput": 2133,
    "throughputFromSourceNode": 2100,
    "throughputFromDestinationNode": 2133,
    "reverseThroughput": 1066,
    "reverseThroughputFromSourceNode": 1050,
    "reverseThroughputFromDestinationNode": 1066,
}
assert set(EXPORTER_IPV6) <= set(EVERYTHING_IPV6)


def receiver(data_dir: Path, name: str = "collect", **options) -> tuple:
    """A running pipeline: the grpc source on a free loopback port → a collecting sink."""
    pipeline = build(
        {
            "sources": [{"type": "grpc", "address": "127.0.0.1:0", "batchInterval": "20ms", **options}],
            "sinks": [{"type": "collect", "name": name, "flushInterval": "20ms"}],
            "shutdownTimeout": "2s",
            "dataDir": str(data_dir),
        }
    )
    pipeline.start()
    return pipeline, pipeline.sources[0][1].port


def exporter(records: list[dict], port: int, data_dir: Path, **options):
    """A pipeline sending ``records`` through the grpc sink; certificates from ``data_dir/certs``."""
    return build(
        {
            "sources": [{"type": "memory", "records": records, "batch": 500}],
            "sinks": [
                {
                    "type": "grpc",
                    "address": f"127.0.0.1:{port}",
                    "retryBackoff": "20ms",
                    "retryMaxBackoff": "100ms",
                    **options,
                }
            ],
            "shutdownTimeout": "1s",
            "dataDir": str(data_dir),
        }
    )


def stop(*pipelines) -> None:
    for pipeline in pipelines:
        pipeline.stop()
        assert pipeline.wait(15), "pipeline did not stop"


def sample(pipeline, metric: str, **labels) -> float:
    return pipeline.metrics.registry.get_sample_value(metric, {"instance": "grpc", **labels}) or 0.0


def client_channel(port: int, data_dir: Path, **certificates) -> grpc.Channel:
    """A raw gRPC channel with the client certificate made in ``data_dir/certs``."""
    certs = data_dir / "certs"
    credentials = grpc.ssl_channel_credentials(
        root_certificates=(certs / "ca.crt").read_bytes(),
        private_key=certificates.get("key", certs / "client.key").read_bytes(),
        certificate_chain=certificates.get("cert", certs / "client.crt").read_bytes(),
    )
    return grpc.secure_channel(f"127.0.0.1:{port}", credentials, [("grpc.ssl_target_name_override", "localhost")])


# -- flowscope sink → flowscope source ----------------------------------------------------------


@pytest.mark.parametrize("record", [EXPORTER_RECORD, EVERYTHING_IPV6], ids=["exporter-ipv4", "everything-ipv6"])
def test_every_field_arrives_exactly_over_mutual_tls(tmp_path, record):
    source, port = receiver(tmp_path, tlsHosts=[AGGREGATOR_NAME])
    try:
        # beside the aggregator, with the same data folder: its CA and client certificate, Antrea's server name
        sender = exporter([record], port, tmp_path, serverName=AGGREGATOR_NAME, observationDomainId=7)
        assert sender.run() == 0
        wait_for(lambda: len(COLLECTED["collect"]) == 1, what="the record over gRPC")
        assert COLLECTED["collect"] == [record]
        assert {k: type(v) for k, v in COLLECTED["collect"][0].items()} == {k: type(v) for k, v in record.items()}
        assert sample(source, "flowscope_grpc_messages_total") == 1
        assert sample(sender, "flowscope_grpc_exporter_connections_total") == 1
    finally:
        stop(source)


def test_many_records_in_several_messages_keep_their_order(tmp_path):
    records = [dict(EXPORTER_RECORD, sourceTransportPort=10000 + i, octetDeltaCount=i) for i in range(2500)]
    source, port = receiver(tmp_path)
    try:
        sender = exporter(records, port, tmp_path, flowsPerMessage=300)
        assert sender.run() == 0
        wait_for(lambda: len(COLLECTED["collect"]) == 2500, what="2500 records")
        assert COLLECTED["collect"] == records
        assert sample(sender, "flowscope_grpc_exporter_messages_total") >= 9  # at most 300 flows a message
        assert source.metrics.counters("source", "grpc").value("received") == 2500
    finally:
        stop(source)


def test_clients_without_a_certificate_from_another_ca_or_for_another_name_are_refused(tmp_path, caplog):
    aggregator = tmp_path / "aggregator"
    source, port = receiver(aggregator)  # CA, server and client certificates made there
    server_ca = str(aggregator / "certs" / "ca.crt")
    stranger = ensure_certificates(tmp_path / "stranger", ["127.0.0.1"])

    def sent(data_dir: Path, **options) -> float:
        sender = exporter([EXPORTER_RECORD] * 5, port, data_dir, **options)
        sender.run()
        return sender.metrics.counters("sink", "grpc").value("emitted")

    try:
        assert sent(aggregator) == 5
        wait_for(lambda: len(COLLECTED["collect"]) == 5, what="the records of the exporter with a certificate")
        assert sent(tmp_path / "anonymous", caCert=server_ca) == 0
        foreign = {"clientCert": str(stranger.client_cert), "clientKey": str(stranger.client_key)}
        assert sent(tmp_path / "foreign", caCert=server_ca, **foreign) == 0
        assert sent(aggregator, serverName="elsewhere.example") == 0  # the certificate is not for that name
        assert "cannot connect to 127.0.0.1:" in caplog.text and "UNAVAILABLE" in caplog.text
        assert len(COLLECTED["collect"]) == 5
        assert sample(source, "flowscope_grpc_messages_total") == 1
    finally:
        stop(source)


def test_the_exporter_buffers_until_the_aggregator_is_there_and_across_a_restart(tmp_path):
    port = free_port()
    records = [dict(EXPORTER_RECORD, sourceTransportPort=20000 + i) for i in range(600)]
    ensure_certificates(tmp_path / "certs", ["localhost", "127.0.0.1"])  # both ends' files, before either runs
    sender = build(
        {
            "sources": [{"type": "memory", "records": records[:200], "batch": 100, "hold": True}],
            "sinks": [
                {
                    "type": "grpc",
                    "address": f"127.0.0.1:{port}",
                    "retryBackoff": "20ms",
                    "retryMaxBackoff": "100ms",
                    "flushInterval": "20ms",
                }
            ],
            "shutdownTimeout": "10s",
            "dataDir": str(tmp_path),
        }
    )
    sender.start()  # nothing listens yet: open() fails, records wait in the buffer
    first = None
    try:
        wait_for(lambda: sender.metrics.counters("sink", "grpc").value("retried") >= 2, what="failed attempts")
        first, _ = receiver(tmp_path, address=f"127.0.0.1:{port}")
        wait_for(lambda: len(COLLECTED["collect"]) == 200, what="buffered records once the aggregator listens")
        stop(first)
        sink = sender.sinks[0]
        sink.put(records[200:400])  # while no aggregator listens: kept and retried
        wait_for(lambda: sender.metrics.counters("sink", "grpc").value("retried") >= 4, what="retries")
        first, _ = receiver(tmp_path, name="second", address=f"127.0.0.1:{port}")
        sink.put(records[400:600])
        wait_for(lambda: len(COLLECTED.get("second", [])) >= 400, what="records across the restart")
        assert COLLECTED["collect"] + COLLECTED["second"] == records  # each batch is acknowledged: no repeats here
        assert sample(sender, "flowscope_grpc_exporter_connections_total") == 2
    finally:
        stop(sender, *([first] if first else []))


def test_records_a_flow_cannot_hold_are_counted_and_the_rest_sent(tmp_path, caplog):
    source, port = receiver(tmp_path)
    try:
        bad = [
            dict(EXPORTER_RECORD, sourceTransportPort="http"),  # not a number
            {k: v for k, v in EXPORTER_RECORD.items() if k != "destinationIPv4Address"},
            dict(EXPORTER_RECORD, sourcePodLabels="app=web"),  # labels are JSON
        ]
        sender = exporter([*bad, dict(EXPORTER_RECORD, clusterId="c1")], port, tmp_path)
        assert sender.run() == 0
        wait_for(lambda: len(COLLECTED["collect"]) == 1, what="the good record")
        assert COLLECTED["collect"] == [EXPORTER_RECORD]
        assert sender.metrics.counters("sink", "grpc").value("dropped", "unencodable") == 3
        assert "3 record(s) not exported" in caplog.text
        assert "not carried by Antrea's Flow message, left out: clusterId" in caplog.text
    finally:
        stop(source)


# -- an exporter built from Antrea's own .proto files --------------------------------------------

ANTREA_CLIENT = textwrap.dedent(
    """
    import sys

    import grpc
    from google.protobuf.timestamp_pb2 import Timestamp

    from pkg.apis.flow.v1alpha1 import flow_pb2 as pb, service_pb2, service_pb2_grpc

    port, certs = sys.argv[1], sys.argv[2]
    uid = "0d1e2f3a-4b5c-4d6e-8f90-{:012x}".format
    flow = pb.Flow(
        id="flow-1",
        ipfix=pb.IPFIX(export_time=Timestamp(seconds=1767225661, nanos=5), sequence_number=9,
                       observation_domain_id=4242, exporter_ip="192.0.2.1"),
        start_ts=Timestamp(seconds=1767225600, nanos=123), end_ts=Timestamp(seconds=1767225660),
        end_reason=pb.FLOW_END_REASON_END_OF_FLOW,
        ip=pb.IP(version=pb.IP_VERSION_4, source=bytes([10, 244, 1, 5]), destination=bytes([10, 244, 2, 9])),
        transport=pb.Transport(protocol_number=6, source_port=41000, destination_port=8080,
                               TCP=pb.TCP(state_name="TIME_WAIT")),
        k8s=pb.Kubernetes(
            flow_type=pb.FLOW_TYPE_INTER_NODE,
            source_pod_namespace="shop", source_pod_name="web-1", source_pod_uid=uid(1),
            source_pod_labels=pb.Labels(labels={"app": "web", "tier": "<front>"}),
            source_node_name="node-1", source_node_uid=uid(2),
            destination_pod_namespace="shop", destination_pod_name="cart-1", destination_pod_uid=uid(3),
            destination_pod_labels=pb.Labels(labels={"app": "cart"}),
            destination_node_name="node-2", destination_node_uid=uid(4),
            destination_cluster_ip=bytes([10, 96, 0, 10]), destination_service_port=8080,
            destination_service_port_name="shop/cart:http", destination_service_uid=uid(5),
            ingress_network_policy_type=pb.NETWORK_POLICY_TYPE_K8S, ingress_network_policy_namespace="shop",
            ingress_network_policy_name="allow-web", ingress_network_policy_uid=uid(6),
            ingress_network_policy_rule_name="ingress-0",
            ingress_network_policy_rule_action=pb.NETWORK_POLICY_RULE_ACTION_ALLOW,
            egress_network_policy_type=pb.NETWORK_POLICY_TYPE_ACNP, egress_network_policy_namespace="kube-system",
            egress_network_policy_name="acnp-egress", egress_network_policy_uid=uid(7),
            egress_network_policy_rule_name="rule-2",
            egress_network_policy_rule_action=pb.NETWORK_POLICY_RULE_ACTION_REJECT,
            egress_name="egress-shop", egress_ip=bytes([172, 18, 0, 50]), egress_node_name="node-3",
            egress_node_uid=uid(8), egress_uid=uid(9), destination_service_ip=bytes([10, 96, 0, 11]),
        ),
        stats=pb.Stats(packet_total_count=120, packet_delta_count=20, octet_total_count=96000,
                       octet_delta_count=16000),
        reverse_stats=pb.Stats(packet_total_count=110, packet_delta_count=10, octet_total_count=880000,
                               octet_delta_count=8000),
        app=pb.App(protocol_name="http", http_vals=b'{"0":"GET /"}'),
        flow_direction=pb.FLOW_DIRECTION_EGRESS,
        aggregation=pb.Aggregation(
            end_ts_from_source=Timestamp(seconds=1767225659), end_ts_from_destination=Timestamp(seconds=1767225660),
            stats_from_source=pb.Stats(packet_total_count=1, packet_delta_count=2, octet_total_count=3,
                                       octet_delta_count=4),
            reverse_stats_from_source=pb.Stats(packet_total_count=5, packet_delta_count=6, octet_total_count=7,
                                               octet_delta_count=8),
            stats_from_destination=pb.Stats(packet_total_count=9, packet_delta_count=10, octet_total_count=11,
                                            octet_delta_count=12),
            reverse_stats_from_destination=pb.Stats(packet_total_count=13, packet_delta_count=14,
                                                    octet_total_count=15, octet_delta_count=16),
            throughput_from_source=17, reverse_throughput_from_source=18, throughput_from_destination=19,
            reverse_throughput_from_destination=20, throughput=21, reverse_throughput=22,
        ),
        proxy_snat_ip=bytes([172, 18, 0, 2]), proxy_snat_port=31000,
    )


    def unset(message, path=""):
        for field in message.DESCRIPTOR.fields:
            where, value = path + field.name, getattr(message, field.name)
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                if not value:
                    yield where
            elif field.message_type is not None:
                if not message.HasField(field.name):
                    yield where
                elif field.message_type.full_name != "google.protobuf.Timestamp":
                    yield from unset(value, where + ".")
            elif value == field.default_value:
                yield where


    missing = list(unset(flow))
    assert not missing, f"fields left unset: {missing}"
    with open(f"{certs}/ca.crt", "rb") as ca, open(f"{certs}/client.key", "rb") as key, \\
            open(f"{certs}/client.crt", "rb") as cert:
        credentials = grpc.ssl_channel_credentials(ca.read(), key.read(), cert.read())
    name = [("grpc.ssl_target_name_override", "flow-aggregator.flow-aggregator.svc")]  # Antrea's ServerName
    with grpc.secure_channel(f"127.0.0.1:{port}", credentials, name) as channel:
        stub = service_pb2_grpc.FlowExportServiceStub(channel)
        stub.Export(iter([service_pb2.ExportRequest(flows=[flow])]), timeout=20)
    print("exported")
    """
)


def antrea_uid(n: int) -> bytes:
    return uuid.UUID(f"0d1e2f3a-4b5c-4d6e-8f90-{n:012x}").bytes


FROM_ANTREA_CLIENT = {
    "flowStartSeconds": 1767225600,
    "flowEndSeconds": 1767225660,
    "flowEndReason": 3,
    "sourceTransportPort": 41000,
    "destinationTransportPort": 8080,
    "protocolIdentifier": 6,
    "packetTotalCount": 120,
    "octetTotalCount": 96000,
    "packetDeltaCount": 20,
    "octetDeltaCount": 16000,
    "sourceIPv4Address": "10.244.1.5",
    "destinationIPv4Address": "10.244.2.9",
    "reversePacketTotalCount": 110,
    "reverseOctetTotalCount": 880000,
    "reversePacketDeltaCount": 10,
    "reverseOctetDeltaCount": 8000,
    "sourcePodName": "web-1",
    "sourcePodNamespace": "shop",
    "sourceNodeName": "node-1",
    "destinationPodName": "cart-1",
    "destinationPodNamespace": "shop",
    "destinationNodeName": "node-2",
    "destinationServicePort": 8080,
    "destinationServicePortName": "shop/cart:http",
    "ingressNetworkPolicyName": "allow-web",
    "ingressNetworkPolicyNamespace": "shop",
    "ingressNetworkPolicyType": 1,
    "ingressNetworkPolicyRuleName": "ingress-0",
    "ingressNetworkPolicyRuleAction": 1,
    "egressNetworkPolicyName": "acnp-egress",
    "egressNetworkPolicyNamespace": "kube-system",
    "egressNetworkPolicyType": 3,
    "egressNetworkPolicyRuleName": "rule-2",
    "egressNetworkPolicyRuleAction": 3,
    "tcpState": "TIME_WAIT",
    "flowType": 2,
    "egressName": "egress-shop",
    "egressIP": "172.18.0.50",
    "egressNodeName": "node-3",
    "proxySnatPort": 31000,
    "destinationClusterIPv4": "10.96.0.10",
    "proxySnatIPv4": "172.18.0.2",
    "destinationServiceIPv4": "10.96.0.11",
    "sourcePodUUID": antrea_uid(1),
    "sourceNodeUUID": antrea_uid(2),
    "destinationPodUUID": antrea_uid(3),
    "destinationNodeUUID": antrea_uid(4),
    "destinationServiceUUID": antrea_uid(5),
    "ingressNetworkPolicyUUID": antrea_uid(6),
    "egressNetworkPolicyUUID": antrea_uid(7),
    "egressNodeUUID": antrea_uid(8),
    "egressUUID": antrea_uid(9),
    "sourcePodLabels": '{"app":"web","tier":"\\u003cfront\\u003e"}',  # as Go's encoding/json writes it
    "destinationPodLabels": '{"app":"cart"}',
    "flowDirection": 1,
    "appProtocolName": "http",
    "httpVals": '{"0":"GET /"}',
    "flowEndSecondsFromSourceNode": 1767225659,
    "flowEndSecondsFromDestinationNode": 1767225660,
    "packetTotalCountFromSourceNode": 1,
    "packetDeltaCountFromSourceNode": 2,
    "octetTotalCountFromSourceNode": 3,
    "octetDeltaCountFromSourceNode": 4,
    "reversePacketTotalCountFromSourceNode": 5,
    "reversePacketDeltaCountFromSourceNode": 6,
    "reverseOctetTotalCountFromSourceNode": 7,
    "reverseOctetDeltaCountFromSourceNode": 8,
    "packetTotalCountFromDestinationNode": 9,
    "packetDeltaCountFromDestinationNode": 10,
    "octetTotalCountFromDestinationNode": 11,
    "octetDeltaCountFromDestinationNode": 12,
    "reversePacketTotalCountFromDestinationNode": 13,
    "reversePacketDeltaCountFromDestinationNode": 14,
    "reverseOctetTotalCountFromDestinationNode": 15,
    "reverseOctetDeltaCountFromDestinationNode": 16,
    "throughputFromSourceNode": 17,
    "reverseThroughputFromSourceNode": 18,
    "throughputFromDestinationNode": 19,
    "reverseThroughputFromDestinationNode": 20,
    "throughput": 21,
    "reverseThroughput": 22,
    # exporterFields: the observation domain the exporter sent, and the address it came from
    "originalObservationDomainId": 4242,
    "originalExporterIPv4Address": "127.0.0.1",
    "originalExporterIPv6Address": "::",
}


def test_a_client_generated_from_antreas_proto_files_is_understood(tmp_path):
    generated = tmp_path / "generated"
    generated.mkdir()
    protos = [str(p.relative_to(ANTREA_PROTO)) for p in sorted(ANTREA_PROTO.rglob("*.proto"))]
    well_known = resources.files("grpc_tools") / "_proto"
    protoc = [sys.executable, "-m", "grpc_tools.protoc", f"-I{ANTREA_PROTO}", f"-I{well_known}"]
    made = subprocess.run(
        [*protoc, f"--python_out={generated}", f"--grpc_python_out={generated}", *protos],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert made.returncode == 0, made.stderr
    (tmp_path / "client.py").write_text(ANTREA_CLIENT)
    source, port = receiver(tmp_path / "aggregator", tlsHosts=[AGGREGATOR_NAME], exporterFields=True)
    try:
        # in a process of its own: Antrea's schema defines the same message names as flowscope's copy
        client = subprocess.run(
            [sys.executable, str(tmp_path / "client.py"), str(port), str(tmp_path / "aggregator" / "certs")],
            capture_output=True,
            text=True,
            timeout=60,
            env={**os.environ, "PYTHONPATH": str(generated)},
        )
        assert client.returncode == 0, client.stderr
        wait_for(lambda: len(COLLECTED["collect"]) == 1, what="the flow from the Antrea-generated client")
        [record] = COLLECTED["collect"]
        assert record == FROM_ANTREA_CLIENT
        assert set(EXPORTER_IPV4) <= set(record)
    finally:
        stop(source)


# -- bad input ------------------------------------------------------------------------------------


def test_garbage_malformed_messages_and_cut_streams_are_counted_and_the_server_keeps_serving(tmp_path, caplog):
    source, port = receiver(tmp_path)
    channel = client_channel(port, tmp_path)
    try:
        # garbage on the port: not TLS, not HTTP/2; gRPC drops the connection
        for garbage in (b"\x00\xff" * 500, b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as raw:
                raw.sendall(garbage)
        # bytes that are not an ExportRequest, on a valid stream: the stream ends with INVALID_ARGUMENT
        raw_export = channel.stream_unary(EXPORT)  # no serializers: the bytes go as they are
        with pytest.raises(grpc.RpcError) as refused:
            raw_export(iter([b"\x0a\xff\xff\xff\xff"]), timeout=10)
        assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert sample(source, "flowscope_grpc_errors_total", reason="malformed_message") == 1
        # a flow no IPFIX record could carry is dropped; the rest of its message is kept
        good = Flow()
        good.ip.version, good.ip.source, good.ip.destination = 4, bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
        good.transport.source_port, good.transport.destination_port, good.transport.protocol_number = 1, 2, 17
        short = Flow()
        short.CopyFrom(good)
        short.ip.source = bytes([10, 0, 0, 1, 7])
        huge_port = Flow()
        huge_port.CopyFrom(good)
        huge_port.transport.source_port = 70000
        export = channel.stream_unary(EXPORT, ExportRequest.SerializeToString, lambda data: data)
        export(iter([ExportRequest(flows=[short, good, huge_port])]), timeout=10)
        wait_for(lambda: len(COLLECTED["collect"]) == 1, what="the good flow of the message")
        assert COLLECTED["collect"][0]["sourceIPv4Address"] == "10.0.0.1"
        assert source.metrics.counters("source", "grpc").value("dropped", "malformed") == 2
        assert sample(source, "flowscope_grpc_errors_total", reason="malformed_flow") == 2
        assert "ip.source has 5 bytes; an IPv4 flow needs 4" in caplog.text or "source_port is 70000" in caplog.text
        # an exporter that goes away mid-stream: what it sent is kept, the cut is counted
        release = threading.Event()

        def one_then_wait():
            yield ExportRequest(flows=[good])
            release.wait(10)

        call = export.future(one_then_wait(), timeout=30)
        wait_for(lambda: len(COLLECTED["collect"]) == 2, what="the flow sent before the cut")
        call.cancel()
        release.set()
        wait_for(
            lambda: sample(source, "flowscope_grpc_errors_total", reason="disconnected") == 1,
            what="the cut stream to be counted",
        )
        wait_for(lambda: sample(source, "flowscope_grpc_streams") == 0, what="no stream left open")
        assert "stream cut off after 1 messages, 1 flows" in caplog.text
        # still serving
        export(iter([ExportRequest(flows=[good])]), timeout=10)
        wait_for(lambda: len(COLLECTED["collect"]) == 3, what="a flow after all that")
    finally:
        channel.close()
        stop(source)


def test_plaintext_for_tests_and_a_taken_port_is_a_clear_error(tmp_path):
    source, port = receiver(tmp_path, tls=False)
    try:
        with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
            export = channel.stream_unary(EXPORT, ExportRequest.SerializeToString, lambda data: data)
            flow = Flow()
            flow.ip.source, flow.ip.destination = bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2])
            export(iter([ExportRequest(flows=[flow])]), timeout=10)
        wait_for(lambda: len(COLLECTED["collect"]) == 1, what="the plaintext flow")
        assert not (tmp_path / "certs").exists()
        with pytest.raises(Exception, match=f"cannot listen on 127.0.0.1:{port}"):
            build(
                {
                    "sources": [{"type": "grpc", "address": f"127.0.0.1:{port}", "tls": False}],
                    "sinks": [{"type": "blackhole"}],
                }
            )
    finally:
        stop(source)


# -- aggregation of records that came over gRPC -----------------------------------------------------


def half(source_node: bool, octets: int, packets: int) -> dict:
    """One node's record of an inter-node connection, as an exporter sends it (all 43 elements)."""
    record = {name: 0 if not name.endswith(("Name", "Namespace", "State", "IP")) else "" for name in EXPORTER_IPV4}
    record |= {
        "flowStartSeconds": 1767225600,
        "flowEndSeconds": 1767225601,
        "flowEndReason": 2,
        "sourceTransportPort": 1234,
        "destinationTransportPort": 5678,
        "protocolIdentifier": 6,
        "sourceIPv4Address": "10.0.0.1",
        "destinationIPv4Address": "10.0.0.2",
        "tcpState": "ESTABLISHED",
        "flowType": 2,
        "destinationClusterIPv4": "0.0.0.0",
        "proxySnatIPv4": "0.0.0.0",
        "destinationServiceIPv4": "0.0.0.0",
    }
    for counter, value in (("PacketTotalCount", packets), ("OctetTotalCount", octets)):
        record[counter[0].lower() + counter[1:]] = record["reverse" + counter] = value
    if source_node:
        record |= {"sourcePodName": "pod1", "sourcePodNamespace": "ns1", "sourceNodeName": "node1"}
        record |= {"destinationServicePort": 4739, "destinationClusterIPv4": "192.168.0.1"}
        record |= {"destinationServiceIPv4": "192.168.0.1", "destinationServicePortName": "ns2/svc:ipfix"}
    else:
        record |= {"destinationPodName": "pod2", "destinationPodNamespace": "ns2", "destinationNodeName": "node2"}
    return record


AGGREGATOR_CONFIG = """
sources: [{{type: {kind}, address: "127.0.0.1:0{proto}"}}]
table: {{mode: aggregate, activeTimeout: 60s, inactiveTimeout: 90s, tick: 100ms}}
sinks: [{{type: collect, name: {kind}-out, flushInterval: 20ms}}]
dataDir: {data}
shutdownTimeout: 2s
"""


def test_both_nodes_records_over_grpc_are_correlated_as_over_ipfix(tmp_path):
    halves = [half(True, octets=1000, packets=500), half(False, octets=1020, packets=502)]
    aggregators = {}
    try:
        for kind, proto in (("grpc", ""), ("ipfix", ":tcp")):
            config = parse_config_text(AGGREGATOR_CONFIG.format(kind=kind, proto=proto, data=tmp_path / kind))
            aggregators[kind] = pipeline = build(config)
            pipeline.start()
            port = pipeline.sources[0][1].port
            sink = {"type": kind, "address": f"127.0.0.1:{port}{proto}"}
            assert build({"sources": [{"type": "memory", "records": halves}], "sinks": [sink],
                          "dataDir": str(tmp_path / kind)}).run() == 0  # fmt: skip
            wait_for(lambda kind=kind: len(COLLECTED.get(f"{kind}-out", [])) == 1, what=f"the record over {kind}")
        [over_grpc], [over_ipfix] = COLLECTED["grpc-out"], COLLECTED["ipfix-out"]
        assert over_grpc == over_ipfix
        assert (over_grpc["sourcePodName"], over_grpc["destinationPodName"], over_grpc["destinationNodeName"]) == (
            "pod1",
            "pod2",
            "node2",
        )
        assert (over_grpc["destinationServicePortName"], over_grpc["destinationClusterIPv4"]) == (
            "ns2/svc:ipfix",
            "192.168.0.1",
        )
        assert (over_grpc["throughputFromSourceNode"], over_grpc["throughputFromDestinationNode"]) == (8000, 8160)
        assert (over_grpc["octetTotalCountFromSourceNode"], over_grpc["octetTotalCountFromDestinationNode"]) == (
            1000,
            1020,
        )
        assert over_grpc["throughput"] == 8160
    finally:
        stop(*aggregators.values())


def descriptors(
    include: Path, out: Path, *files: str
) -> dict[str, descriptor_pb2.DescriptorProto | ServiceDescriptorProto]:
    """Every message and service the .proto files define, by full name, as protoc reads them
    (through the descriptor set ``out``)."""
    well_known = resources.files("grpc_tools") / "_proto"
    made = subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", f"-I{include}", f"-I{well_known}", f"--descriptor_set_out={out}",
         *files],
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    found: dict[str, descriptor_pb2.DescriptorProto | ServiceDescriptorProto] = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes()).file:
        found |= {f"{file.package}.{m.name}": m for m in file.message_type}
        found |= {f"{file.package}.{s.name}": s for s in file.service}
    return found


def without_json_names(message: descriptor_pb2.DescriptorProto) -> descriptor_pb2.DescriptorProto:
    copy = descriptor_pb2.DescriptorProto()
    copy.CopyFrom(message)
    for nested in [copy, *copy.nested_type]:
        for field in nested.field:
            field.ClearField("json_name")
    return copy


def test_the_schema_is_antreas_on_the_wire_and_the_committed_code_is_made_from_it(tmp_path):
    (tmp_path / "ours").mkdir()
    (tmp_path / "ours" / "flow.proto").write_bytes(SCHEMA.read_bytes())
    ours = descriptors(tmp_path / "ours", tmp_path / "ours.pb", "flow.proto")
    theirs = descriptors(
        ANTREA_PROTO,
        tmp_path / "antrea.pb",
        "pkg/apis/flow/v1alpha1/flow.proto",
        "pkg/apis/flow/v1alpha1/service.proto",
    )
    for name, definition in ours.items():
        assert definition == theirs[name], name  # names, numbers, types, labels, oneofs, options
    assert set(theirs) - set(ours) == {f"{flow_pb2.DESCRIPTOR.package}.{n}" for n in STREAM_SERVICE}
    committed = descriptor_pb2.FileDescriptorProto.FromString(flow_pb2.DESCRIPTOR.serialized_pb)
    assert [m.name for m in committed.message_type] == [m.name for m in ours.values() if hasattr(m, "field")]
    for message in committed.message_type:  # the generated code keeps no json_name: compare without them
        assert message == without_json_names(ours[f"{committed.package}.{message.name}"]), message.name
    assert committed.service[0] == ours[SERVICE]
