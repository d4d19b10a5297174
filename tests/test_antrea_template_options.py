"""The Flow Aggregator's template toward the flow collector, as Antrea's: the proxy mode's 50
elements, ``includeK8sNames: false`` and ``includeK8sUIDs: true``, the UIDs from the inventory."""

from __future__ import annotations

import time

import pytest

from flowscope.core.ipfix.antrea import aggregator_elements
from flowscope.core.ipfix.codec import EXTENSION, compile_decoder, resolve_fields
from flowscope.core.ipfix.messages import MessageWriter
from flowscope.core.ipfix.templates import FieldSpec
from flowscope.testing import builtin_elements
from tests.helpers import COLLECTED, build

POD_UID = "1b4e28ba-2fa1-11d2-883f-0016d3cca427"
NODE_UID = "6fa459ea-ee8a-3ca4-894e-db77e160355e"
SERVICE_UID = "886313e1-3b8a-5372-9b90-0c9aee199e5d"
INVENTORY = f"""
kind: List
items:
  - {{kind: Namespace, metadata: {{name: shop}}}}
  - kind: Node
    metadata: {{name: node-1, uid: {NODE_UID}}}
    status: {{addresses: [{{type: InternalIP, address: 192.168.0.1}}]}}
  - kind: Pod
    metadata: {{name: web-1, namespace: shop, uid: {POD_UID}, creationTimestamp: "2020-01-01T00:00:00Z"}}
    spec: {{nodeName: node-1}}
    status: {{phase: Running, podIP: 10.244.1.5}}
  - kind: Service
    metadata: {{name: cart, namespace: shop, uid: {SERVICE_UID}}}
    spec: {{clusterIP: 10.96.0.20, ports: [{{name: http, port: 80, protocol: TCP}}]}}
"""
SOURCE_HALF = {
    "flowStartSeconds": 1767225600,
    "flowEndSeconds": 1767225610,
    "flowEndReason": 2,
    "sourceTransportPort": 40001,
    "destinationTransportPort": 8080,
    "protocolIdentifier": 6,
    "packetTotalCount": 10,
    "octetTotalCount": 1000,
    "packetDeltaCount": 10,
    "octetDeltaCount": 1000,
    "sourceIPv4Address": "10.244.1.5",
    "destinationIPv4Address": "10.244.2.9",
    "sourcePodName": "web-1",
    "sourcePodNamespace": "shop",
    "sourceNodeName": "node-1",
    "destinationClusterIPv4": "10.96.0.20",
    "destinationServicePort": 80,
    "destinationServicePortName": "shop/cart:http",
    "flowType": 2,
}
PROXY_TAIL = [
    "proxySnatPort",
    "proxySnatIPv4",
    "destinationClusterIPv4",
    "destinationServiceIPv4",
    "sourcePodLabels",
    "destinationPodLabels",
    "clusterId",
    "originalObservationDomainId",
    "originalExporterIPv4Address",
    "originalExporterIPv6Address",
    "flowDirection",
]


def forwarded(tmp_path, collector: dict) -> dict:
    """The record a Proxy-mode aggregator (inventory as above) forwards to a collector for SOURCE_HALF."""
    inventory = tmp_path / "inventory.yaml"
    inventory.write_text(INVENTORY)
    receiver = build(
        {
            "sources": [{"type": "ipfix", "address": "127.0.0.1:0:tcp", "batchInterval": "20ms"}],
            "sinks": [{"type": "collect", "name": "at-collector", "flushInterval": "20ms"}],
            "dataDir": str(tmp_path / "collector"),
        }
    )
    receiver.start()
    aggregator = build(
        {
            "bundle": "aggregator",
            "mode": "Proxy",
            "aggregatorTransportProtocol": "tcp",
            "listenAddress": "127.0.0.1:0",
            "grpcListenAddress": "127.0.0.1:0",
            "apiServer": {"apiPort": 0},
            "metricsAddress": "127.0.0.1:0",
            "clusterID": "east-1",
            "inventory": str(inventory),
            "flowCollector": {"enable": True, "address": f"127.0.0.1:{receiver.sources[0][1].port}:tcp", **collector},
            "dataDir": str(tmp_path / "aggregator"),
        }
    )
    aggregator.start()
    try:
        exporter = build(
            {
                "sources": [{"type": "memory", "records": [SOURCE_HALF]}],
                "sinks": [{"type": "ipfix", "address": f"127.0.0.1:{aggregator.sources[0][1].port}:tcp"}],
            }
        )
        assert exporter.run() == 0
        deadline = time.monotonic() + 15
        while not COLLECTED.get("at-collector"):
            assert time.monotonic() < deadline, "nothing reached the flow collector"
            time.sleep(0.05)
    finally:
        for pipeline in (aggregator, receiver):
            pipeline.stop()
            pipeline.wait(10)
    [record] = COLLECTED["at-collector"]
    return record


def test_proxy_mode_sends_antreas_50_elements_in_heads_order(tmp_path):
    record = forwarded(tmp_path, {})
    assert list(record) == aggregator_elements(mode="proxy")
    assert len(record) == 50 and list(record)[-len(PROXY_TAIL) :] == PROXY_TAIL
    assert (record["sourcePodName"], record["destinationClusterIPv4"], record["flowDirection"]) == (
        "web-1",
        "10.96.0.20",
        1,
    )
    assert (record["originalExporterIPv4Address"], record["clusterId"]) == ("127.0.0.1", "east-1")
    assert (record["destinationPodName"], record["proxySnatIPv4"], record["egressName"]) == ("", "0.0.0.0", "")
    assert not any(name.endswith("UUID") for name in record)


def test_without_names_and_with_uids_from_the_inventory(tmp_path):
    record = forwarded(tmp_path, {"includeK8sNames": False, "includeK8sUIDs": True})
    names = aggregator_elements(mode="proxy", include_names=False, include_uids=True)
    assert list(record) == names and len(names) == 50 - 13 + 9  # rule names stay
    assert not {"sourcePodName", "sourceNodeName", "destinationServicePortName", "egressName"} & set(record)
    assert names[16:20] == ["sourcePodUUID", "sourceNodeUUID", "destinationPodUUID", "destinationNodeUUID"]
    assert (record["sourcePodUUID"], record["sourceNodeUUID"], record["destinationServiceUUID"]) == (
        POD_UID,
        NODE_UID,
        SERVICE_UID,
    )
    assert (record["destinationPodUUID"], record["egressNodeUUID"]) == ("", "")  # the nil UUID: unknown
    assert record["ingressNetworkPolicyRuleName"] == ""  # kept with UIDs, as Antrea


def test_name_options_need_antreas_template(tmp_path):
    from flowscope.core.errors import ConfigError

    with pytest.raises(ConfigError) as err:
        build(
            {
                "sources": [{"type": "memory", "records": []}],
                "sinks": [{"type": "ipfix", "address": "h:1", "includeK8sUIDs": True}],
            }
        )
    assert [str(i) for i in err.value.issues] == [
        "sinks[0]: includeK8sUIDs shapes Antrea's template: set antreaTemplate (aggregate or proxy) too"
    ]


@pytest.mark.parametrize("native", [False, True] if EXTENSION is not None else [False])
def test_uuids_go_out_as_16_bytes_and_come_back_as_text(native):
    elements = builtin_elements()
    writer = MessageWriter(elements)
    records = [
        {"sourcePodUUID": POD_UID, "destinationPodUUID": "", "sourceTransportPort": 1},
        {"sourcePodUUID": POD_UID.upper(), "destinationPodUUID": "not-a-uuid", "sourceTransportPort": 2},
    ]
    [message], dropped = writer.encode(records)
    assert dropped == {}
    template = writer.template_for(records[0])
    assert bytes.fromhex(POD_UID.replace("-", "")) in message
    specs = [FieldSpec(e.element_id, e.length, e.enterprise_id) for e in map(elements.by_name, template.names)]
    assert [s.length for s in specs] == [16, 16, 2]
    fields, _ = resolve_fields(specs, elements, {})
    decode, _ = compile_decoder(fields, native=native)
    body = message[-2 * (16 + 16 + 2) :]
    assert decode(body) == [
        {"sourcePodUUID": POD_UID, "destinationPodUUID": "", "sourceTransportPort": 1},
        {"sourcePodUUID": POD_UID, "destinationPodUUID": "", "sourceTransportPort": 2},
    ]
