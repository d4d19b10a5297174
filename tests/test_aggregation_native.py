"""The C aggregation core gives exactly what the Python core gives: records, counters, what the API
shows of each flow, and the same errors, whatever the values."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowscope.core import flowtable
from flowscope.core.flowtable import FlowTable, PyFlowTable
from flowscope.core.ipfix.antrea import EXPORTER_IPV4, EXPORTER_IPV6
from flowscope.entrypoints.aggregator import correlate
from flowscope.entrypoints.aggregator.aggregation import Aggregation

pytestmark = pytest.mark.skipif(
    correlate.EXTENSION is None or flowtable.EXTENSION is None, reason="the C core is not built (no compiler?)"
)

ODD = st.sampled_from([None, 1.5, -1, 2**70, True, "x", 0.0, [], ("a",), b"", float("nan")])


def value(name: str) -> st.SearchStrategy:
    if name.endswith(("IPv4", "IPv4Address")):
        return st.sampled_from(["10.0.0.1", "10.0.0.2", "0.0.0.0", ""])
    if name.endswith(("IPv6", "IPv6Address")):
        return st.sampled_from(["fd00::1", "fd00::2", "::", ""])
    if name == "flowType":
        return st.sampled_from([1, 2, 2, 3, 4])
    if name.endswith("RuleAction"):
        return st.sampled_from([0, 1, 2, 3])
    if name in ("flowStartSeconds", "flowEndSeconds"):
        return st.sampled_from([0, 1, 2, 5, 9, 10, 11])
    if name == "tcpState":
        return st.sampled_from(["", "ESTABLISHED", "TIME_WAIT"])
    if name.endswith(("Name", "Namespace", "IP")):
        return st.sampled_from(["", "a", "b"])
    return st.sampled_from([0, 1, 2, 3, 5, 1000])


@st.composite
def record(draw) -> dict:
    names = [n for n in draw(st.sampled_from([EXPORTER_IPV4, EXPORTER_IPV6])) if draw(st.integers(0, 9))]
    names += draw(st.lists(st.sampled_from(["ie_1_2", "clusterId", "throughputFromSourceNode"]), max_size=2))
    odd = draw(st.integers(0, 5)) == 0
    r = {n: draw(ODD if odd and draw(st.integers(0, 6)) == 0 else value(n)) for n in names}
    side = draw(st.sampled_from(["source", "destination", "external", "as drawn"]))
    if side != "as drawn" and draw(st.integers(0, 3)):  # mostly an inter-node flow that was allowed
        r.update(flowType=2, egressNetworkPolicyRuleAction=0, ingressNetworkPolicyRuleAction=0)
    if side == "source":
        r.update(sourcePodName="p1", destinationPodName="")
    elif side == "destination":
        r.update(sourcePodName="", destinationPodName="p2")
    elif side == "external":
        r.update(flowType=4, destinationPodName="", proxySnatIPv4="10.0.0.9", proxySnatPort=7)
    return r


CONNECTIONS = [
    {"sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.2", "sourceTransportPort": 1000},
    {"sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.2", "sourceTransportPort": 1001},
    {"sourceIPv6Address": "fd00::1", "destinationIPv6Address": "fd00::2", "sourceTransportPort": 1000},
    {"sourceIPv4Address": "10.0.0.9", "destinationIPv4Address": "10.0.0.2", "sourceTransportPort": 7},  # SNAT
]


@st.composite
def scenario(draw) -> list:
    steps = []
    for _ in range(draw(st.integers(1, 12))):
        r = draw(record())
        if draw(st.integers(0, 3)):  # mostly a few connections, reported by either node, again and again
            for name in ("sourceIPv4Address", "destinationIPv4Address", "sourceIPv6Address", "destinationIPv6Address"):
                r.pop(name, None)
            r.update(draw(st.sampled_from(CONNECTIONS)), protocolIdentifier=6, destinationTransportPort=80)
            r.setdefault("flowEndSeconds", 1)
        steps.append(("offer", r, draw(st.sampled_from([0.0, 1.0, 5.0, 20.0]))))
        if draw(st.booleans()):
            steps.append(("expire", None, draw(st.sampled_from([1.0, 10.0, 30.0, 61.0, 100.0]))))
    return steps


def run(native: bool, steps: list, cluster_id: str, partial: str, table_class: type = FlowTable) -> tuple:
    counters: dict[str, int] = {}
    policy = Aggregation(10, 30, partial=partial, cluster_id=cluster_id, counters=counters, native=native)
    table, log, now = table_class(policy, max_flows=4), [], 0.0
    for kind, r, wait in steps:
        now += wait
        out: list[dict] = []
        try:
            table.offer([dict(r)], now, out) if kind == "offer" else table.expire(now, out)
        except Exception as exc:
            log.append((type(exc).__name__, str(exc)))
            break
        log.append([list(x.items()) for x in out])
        shown = [policy.fields(flow) for flow in table.flows.values()]
        log.append([list(f.items()) for f in shown])
    else:
        out = []
        table.flush(now + 1000, out)
        log.append([list(x.items()) for x in out])
    return repr(log), counters, table.evictions  # repr: NaN is equal to itself


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(scenario(), st.sampled_from(["", "cluster"]), st.sampled_from(["export", "drop"]))
def test_native_and_python_cores_agree(steps, cluster_id, partial):
    """The C core in the C table (as flowscope runs) and in the Python one agree with the Python core
    in the Python table."""
    python = run(False, steps, cluster_id, partial, PyFlowTable)
    assert run(True, steps, cluster_id, partial, flowtable.EXTENSION.FlowTable) == python
    assert run(True, steps, cluster_id, partial, PyFlowTable) == python


def test_records_that_are_not_dicts_go_to_the_python_core():
    class Record(dict):
        pass

    stamped = Record(flowStartSeconds=1, flowEndSeconds=5, sourceIPv4Address="a", destinationIPv4Address="b")
    outs = []
    for native in (True, False):
        table, out = FlowTable(Aggregation(10, 30, native=native)), []
        table.offer([stamped], 0, out)
        table.expire(1, out)
        outs.append(out)
    assert outs[0] == outs[1] and len(outs[0]) == 1


def test_many_flows_of_the_same_shapes_agree():
    """The C core remembers the shape of the previous first record and where each correlation puts
    its fields; flows that share shapes (as a template's records do) give what Python gives."""
    records = []
    for i in range(60):
        base = {name: 0 if not name.endswith(("Name", "Namespace", "IPv4", "State")) else "" for name in EXPORTER_IPV4}
        base.update(
            flowStartSeconds=10,
            flowEndSeconds=20 + i % 3,
            sourceIPv4Address=f"10.0.0.{i}",
            destinationIPv4Address="10.0.1.1",
            sourceTransportPort=1000 + i,
            destinationTransportPort=80,
            protocolIdentifier=6,
            flowType=2,
            octetTotalCount=100 * i,
            destinationClusterIPv4="0.0.0.0",
        )
        source = {**base, "sourcePodName": f"client-{i}", "sourcePodNamespace": "ns", "sourceNodeName": "n1"}
        destination = {**base, "destinationPodName": "server", "destinationNodeName": "n2"}
        if i % 4 == 0:  # a second shape: the destination node also knows the policy
            destination["ingressNetworkPolicyName"] = "allow-web"
        records += [source, destination] if i % 2 else [destination, source]
    outs = []
    for native, table_class in ((True, flowtable.EXTENSION.FlowTable), (False, PyFlowTable)):
        table, out = table_class(Aggregation(10, 30, native=native)), []
        table.offer([dict(r) for r in records], 0.0, out)
        table.expire(1.0, out)
        outs.append(out)
    assert outs[0] == outs[1] and len(outs[0]) == 60
    assert {r["ingressNetworkPolicyName"] for r in outs[0]} == {"", "allow-web"}
    assert all(r["sourcePodName"].startswith("client-") and r["destinationPodName"] == "server" for r in outs[0])


def test_a_first_record_named_like_the_previous_ones_values_gets_its_own_shape():
    """The second record's non-empty names are the first's without its figure (octetTotalCount): its
    shape is not the first's, or port 7 would be read as 7 octets."""
    first = {"flowStartSeconds": 1, "sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.2"}
    first |= {"octetTotalCount": 5, "sourceTransportPort": 1}
    second = {"flowStartSeconds": 1, "sourceIPv4Address": "10.0.0.3", "destinationIPv4Address": "10.0.0.2"}
    second |= {"sourceTransportPort": 7}
    outs = []
    for native, table_class in ((True, flowtable.EXTENSION.FlowTable), (False, PyFlowTable)):
        table, out = table_class(Aggregation(10, 30, native=native)), []
        table.offer([dict(first), dict(second)], 0.0, out)
        table.expire(1.0, out)
        outs.append(sorted((r["sourceTransportPort"], r["octetTotalCount"]) for r in out))
    assert outs[0] == outs[1] == [(1, 5), (7, 0)]


def test_long_random_traffic_of_few_shapes_agrees():
    """Thousands of records of a few templates in one table, most of them with the same empty fields,
    some with others: what the C core remembers between records (layouts, shapes, correlations)
    never changes what comes out."""
    import random

    rng = random.Random(6)
    text = ("Name", "Namespace", "IPv4", "IPv6", "State", "IP")
    patterns = [
        {name: rng.choice(["", "a"]) if name.endswith(text) else rng.choice([0, 3]) for name in names}
        for names in (EXPORTER_IPV4, EXPORTER_IPV4[:30], EXPORTER_IPV6)
    ]
    records = []
    for _ in range(3000):
        r = dict(rng.choice(patterns))
        for name in rng.sample(sorted(r), 2):  # now and then another field is empty, or not
            r[name] = rng.choice(["", "b"]) if name.endswith(text) else rng.choice([0, 7])
        v6 = "sourceIPv6Address" in r
        r.update(
            {"sourceIPv6Address" if v6 else "sourceIPv4Address": rng.choice(["10.0.0.1", "10.0.0.2"])},
            **{"destinationIPv6Address" if v6 else "destinationIPv4Address": "10.0.1.1"},
            flowType=rng.choice([1, 2, 2, 2, 4]),
            flowStartSeconds=5,
            flowEndSeconds=rng.choice([5, 6, 9, 12]),
            sourceTransportPort=rng.randrange(20),
            sourcePodName=rng.choice(["", "client"]),
            destinationPodName=rng.choice(["", "server"]),
        )
        records.append(r)
    outs = []
    for native, table_class in ((True, flowtable.EXTENSION.FlowTable), (False, PyFlowTable)):
        table, log, now = table_class(Aggregation(10, 30, native=native), max_flows=32), [], 0.0
        for start in range(0, len(records), 50):
            out: list[dict] = []
            table.offer([dict(r) for r in records[start : start + 50]], now, out)
            now += 3.0
            table.expire(now, out)
            log.append([list(x.items()) for x in out])
        outs.append(repr(log))
    assert outs[0] == outs[1] and outs[0].count("sourcePodName") > 1000
