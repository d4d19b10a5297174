"""The aggregator's correlation and aggregation (reference §3), including its worked example (§3.8)."""

from __future__ import annotations

from flowscope.core.flowtable import FlowTable
from flowscope.core.ipfix.antrea import AGGREGATOR_IPV4
from flowscope.entrypoints.aggregator.aggregation import Aggregation

KEY = {
    "sourceIPv4Address": "10.0.0.1",
    "destinationIPv4Address": "10.0.0.2",
    "sourceTransportPort": 1234,
    "destinationTransportPort": 5678,
    "protocolIdentifier": 6,
    "flowType": 2,
    "flowStartSeconds": 0,
}


def side(end, packets, octets, packets_delta, octets_delta, reason, state, src: bool) -> dict:
    counters = {
        "packetTotalCount": packets,
        "octetTotalCount": octets,
        "packetDeltaCount": packets_delta,
        "octetDeltaCount": octets_delta,
    }
    record = {
        **KEY,
        "flowEndSeconds": end,
        **counters,
        **{"reverse" + k[0].upper() + k[1:]: v for k, v in counters.items()},
        "flowEndReason": reason,
        "tcpState": state,
    }
    if src:
        record |= {
            "sourcePodName": "pod1",
            "sourcePodNamespace": "ns1",
            "sourceNodeName": "node1",
            "destinationServicePort": 4739,
            "destinationClusterIPv4": "192.168.0.1",
            "destinationServiceIPv4": "192.168.0.1",
        }
    else:
        record |= {
            "destinationPodName": "pod2",
            "destinationPodNamespace": "ns2",
            "destinationNodeName": "node2",
            "destinationServicePort": 0,
            "destinationClusterIPv4": "0.0.0.0",
        }
    return record


def table(active=60.0, inactive=90.0, **kwargs) -> FlowTable:
    return FlowTable(Aggregation(active, inactive, **kwargs))


def test_worked_example_gives_888_and_915():
    flows = table()
    out: list[dict] = []
    flows.offer(
        [
            side(1, 500, 1000, 0, 0, 2, "ESTABLISHED", src=True),
            side(1, 502, 1020, 0, 0, 2, "ESTABLISHED", src=False),
            side(10, 1000, 2000, 500, 1000, 3, "TIME_WAIT", src=True),
            side(10, 1005, 2050, 503, 1030, 3, "TIME_WAIT", src=False),
        ],
        100.0,
        out,
    )
    assert out == []
    flows.expire(100.0, out)
    [record] = out
    assert list(record) == AGGREGATOR_IPV4
    assert (record["throughputFromSourceNode"], record["throughputFromDestinationNode"]) == (888, 915)
    assert (record["throughput"], record["reverseThroughput"]) == (915, 915)
    assert (
        record["packetTotalCount"],
        record["packetDeltaCount"],
        record["octetTotalCount"],
        record["octetDeltaCount"],
    ) == (1005, 503, 2050, 1030)
    assert (
        record["packetTotalCountFromSourceNode"],
        record["packetDeltaCountFromSourceNode"],
        record["octetTotalCountFromSourceNode"],
        record["octetDeltaCountFromSourceNode"],
    ) == (1000, 500, 2000, 1000)
    assert (record["packetTotalCountFromDestinationNode"], record["octetDeltaCountFromDestinationNode"]) == (1005, 1030)
    assert (record["tcpState"], record["flowEndReason"], record["flowEndSeconds"]) == ("TIME_WAIT", 3, 10)
    assert (record["flowEndSecondsFromSourceNode"], record["flowEndSecondsFromDestinationNode"]) == (10, 10)
    assert (record["destinationServicePort"], record["destinationClusterIPv4"], record["destinationServiceIPv4"]) == (
        4739,
        "192.168.0.1",
        "192.168.0.1",
    )
    assert (record["sourcePodName"], record["destinationPodName"], record["destinationNodeName"]) == (
        "pod1",
        "pod2",
        "node2",
    )


def test_first_correlated_export_and_reset_of_deltas_and_throughputs():
    flows, out = table(), []
    flows.offer([side(1, 500, 1000, 0, 0, 2, "ESTABLISHED", src=True)], 0.0, out)
    flows.expire(1.0, out)
    assert out == []  # waiting for the destination node
    flows.offer([side(1, 502, 1020, 0, 0, 2, "ESTABLISHED", src=False)], 2.0, out)
    flows.expire(2.0, out)  # exported at the next tick once correlated
    assert [(r["throughputFromSourceNode"], r["throughputFromDestinationNode"], r["throughput"]) for r in out] == [
        (8000, 8160, 8160)
    ]
    out.clear()
    flows.expire(30.0, out)
    assert out == []  # no new data: not exported again
    flows.offer([side(10, 1000, 2000, 500, 1000, 2, "ESTABLISHED", src=True)], 31.0, out)
    flows.expire(62.0, out)  # the active timeout
    [again] = out
    assert (again["octetDeltaCountFromDestinationNode"], again["throughputFromDestinationNode"]) == (0, 0)
    assert again["octetDeltaCountFromSourceNode"] == 1000


def test_intra_node_and_to_external_flows_are_not_held():
    flows, out = table(), []
    intra = {**side(5, 10, 100, 10, 100, 2, "ESTABLISHED", src=True), "destinationPodName": "pod2", "flowType": 1}
    external = {**side(5, 10, 100, 10, 100, 2, "ESTABLISHED", src=True), "sourceTransportPort": 999, "flowType": 3}
    flows.offer([intra, external], 0.0, out)
    flows.expire(0.0, out)
    assert sorted(r["flowType"] for r in out) == [1, 3]
    both = next(r for r in out if r["flowType"] == 1)
    assert both["octetTotalCountFromSourceNode"] == both["octetTotalCountFromDestinationNode"] == 100


def test_deny_cases_of_antrea():
    flows, out = table(), []
    egress_drop = {**side(5, 1, 60, 1, 60, 3, "", src=True), "egressNetworkPolicyRuleAction": 2}
    ingress_reject = {
        **side(5, 1, 60, 1, 60, 3, "", src=False),
        "sourceTransportPort": 2,
        "ingressNetworkPolicyRuleAction": 3,
    }
    flows.offer([egress_drop, ingress_reject], 0.0, out)
    flows.expire(0.0, out)
    assert len(out) == 2  # each ready alone, no correlation
    out.clear()
    ingress_drop = {
        **side(5, 1, 60, 1, 60, 3, "", src=False),
        "sourceTransportPort": 3,
        "ingressNetworkPolicyRuleAction": 2,
        "ingressNetworkPolicyName": "deny",
    }
    allowed_at_source = {**side(5, 2, 120, 2, 120, 2, "ESTABLISHED", src=True), "sourceTransportPort": 3}
    flows.offer([ingress_drop], 0.0, out)
    flows.expire(1.0, out)
    assert out == []  # an ingress Drop still waits for the source node's record
    flows.offer([allowed_at_source], 2.0, out)
    flows.expire(2.0, out)
    [record] = out
    assert (record["sourcePodName"], record["destinationPodName"], record["ingressNetworkPolicyName"]) == (
        "pod1",
        "pod2",
        "deny",
    )


def test_a_peer_that_never_comes_is_exported_partial_or_dropped_and_counted():
    counters: dict[str, int] = {}
    flows, out = FlowTable(Aggregation(10, 90, counters=counters)), []
    flows.offer([side(1, 5, 500, 5, 500, 2, "ESTABLISHED", src=True)], 0.0, out)
    for now in (10.0, 20.0):
        flows.expire(now, out)
    assert out == []
    flows.expire(30.0, out)  # 3 x the active timeout
    assert [(r["sourcePodName"], r["destinationPodName"]) for r in out] == [("pod1", "")]
    assert counters == {"exported_uncorrelated": 1}
    dropping = FlowTable(Aggregation(10, 90, partial="drop", counters=counters))
    dropping.offer([side(1, 5, 500, 5, 500, 2, "ESTABLISHED", src=True)], 0.0, out)
    dropping.expire(40.0, out)
    assert len(dropping) == 0 and counters["dropped_uncorrelated"] == 1


def test_inactive_flow_is_removed_and_no_division_by_zero():
    flows, out = table(active=60, inactive=90), []
    record = {**side(5, 10, 100, 10, 100, 2, "ESTABLISHED", src=True), "destinationPodName": "p", "flowType": 1}
    flows.offer([record, dict(record)], 0.0, out)  # same end time twice: ignored, not divided by zero
    flows.expire(0.0, out)
    assert len(out) == 1 and out[0]["throughput"] == 160
    flows.expire(90.0, out)
    assert len(flows) == 0


def test_records_without_timestamps_are_counted_not_kept():
    counters: dict[str, int] = {}
    flows, out = FlowTable(Aggregation(60, 90, counters=counters)), []
    flows.offer([{**KEY, "flowStartSeconds": 0}], 0.0, out)
    assert (len(flows), out, counters) == (0, [], {"dropped_no_timestamps": 1})
