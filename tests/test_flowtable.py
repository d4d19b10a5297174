"""The flow table: keyed state, active/idle deadlines, size bound with counted eviction.

Every test runs against the C table and its Python twin."""

from __future__ import annotations

import random
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowscope.core import flowtable
from flowscope.core.flowtable import INFINITY, Flow, FlowTable

IMPLEMENTATIONS = {"python": (flowtable.PyFlow, flowtable.PyFlowTable)}
if flowtable.EXTENSION is not None:
    IMPLEMENTATIONS["c"] = (flowtable.EXTENSION.Flow, flowtable.EXTENSION.FlowTable)


@pytest.fixture(params=sorted(IMPLEMENTATIONS), autouse=True)
def implementation(request, monkeypatch):
    """``Flow`` and ``FlowTable`` in this module are those of one implementation."""
    flow, table = IMPLEMENTATIONS[request.param]
    monkeypatch.setattr(sys.modules[__name__], "Flow", flow)
    monkeypatch.setattr(sys.modules[__name__], "FlowTable", table)
    return request.param


class SumPolicy:
    """Sums ``octets`` per ``key``; exports every ``active`` seconds, removes after ``idle`` idle."""

    def __init__(self, active=10.0, idle=4.0):
        self.active, self.idle = active, idle

    def key(self, record):
        return record.get("key")

    def start(self, flow: Flow, record, now, out):
        flow.state = {"key": flow.key, "octets": record["octets"], "records": 1}
        flow.active_deadline = now + self.active
        flow.idle_deadline = now + self.idle

    def merge(self, flow, record, now, out):
        flow.state["octets"] += record["octets"]
        flow.state["records"] += 1
        flow.idle_deadline = now + self.idle
        if record.get("urgent"):
            flow.active_deadline = now  # export at the next expiry pass

    def expire(self, flow, now, out):
        reason = "idle" if flow.idle_deadline <= now else "active"
        out.append({**flow.state, "reason": reason, "at": now})
        if reason == "idle":
            return False
        flow.active_deadline = now + self.active
        return True

    def evict(self, flow, now, out):
        out.append({**flow.state, "reason": "evicted", "at": now})

    def flush(self, flow, now, out):
        out.append({**flow.state, "reason": "flush", "at": now})


def test_records_merge_by_key_and_unkeyed_records_pass_through():
    table = FlowTable(SumPolicy())
    out = []
    table.offer(
        [{"key": "a", "octets": 10}, {"key": "b", "octets": 1}, {"octets": 7}, {"key": "a", "octets": 5}], 0.0, out
    )
    assert out == [{"octets": 7}]
    assert len(table) == 2
    assert table.get("a").state == {"key": "a", "octets": 15, "records": 2}


def test_idle_flow_expires_at_its_idle_deadline_and_is_removed():
    table = FlowTable(SumPolicy(active=10, idle=4))
    out = []
    table.offer([{"key": "a", "octets": 10}], 0.0, out)
    table.expire(3.9, out)
    assert out == []
    table.expire(4.0, out)
    assert out == [{"key": "a", "octets": 10, "records": 1, "reason": "idle", "at": 4.0}]
    assert len(table) == 0 and table.next_deadline() == INFINITY


def test_activity_postpones_idle_expiry_and_active_timeout_exports_periodically():
    table = FlowTable(SumPolicy(active=10, idle=4))
    out = []
    for t in range(0, 25, 2):  # a record every 2 s keeps the flow from going idle
        table.offer([{"key": "a", "octets": 1}], float(t), out)
        table.expire(float(t) + 1, out)
    assert [(r["reason"], r["at"]) for r in out] == [("active", 11.0), ("active", 21.0)]
    assert table.next_deadline() == 28.0  # idle: last record at 24 + 4
    table.expire(28.0, out)
    assert [(r["reason"], r["octets"]) for r in out][-1] == ("idle", 13)


def test_bringing_a_deadline_forward_is_honoured():
    table = FlowTable(SumPolicy(active=60, idle=30))
    out = []
    table.offer([{"key": "a", "octets": 1}], 0.0, out)
    assert table.next_deadline() == 30.0
    table.offer([{"key": "a", "octets": 1, "urgent": True}], 1.0, out)
    assert table.next_deadline() == 1.0
    table.expire(1.0, out)
    assert [(r["reason"], r["octets"]) for r in out] == [("active", 2)]


def test_full_table_evicts_the_flow_due_soonest_and_counts_it():
    evicted = []
    table = FlowTable(SumPolicy(active=100, idle=50), max_flows=3, on_evict=lambda: evicted.append(1))
    out = []
    for t, key in enumerate("abc"):
        table.offer([{"key": key, "octets": 1}], float(t), out)
    table.offer([{"key": "a", "octets": 1}], 5.0, out)  # a is now due last
    table.offer([{"key": "d", "octets": 1}], 6.0, out)
    assert out == [{"key": "b", "octets": 1, "records": 1, "reason": "evicted", "at": 6.0}]
    assert sorted(table.flows) == ["a", "c", "d"]
    assert table.evictions == 1 and evicted == [1]


def test_flush_emits_every_flow_and_empties_the_table():
    table = FlowTable(SumPolicy())
    out = []
    table.offer([{"key": k, "octets": 1} for k in "xyz"], 0.0, out)
    table.flush(1.0, out)
    assert sorted(r["key"] for r in out) == ["x", "y", "z"]
    assert {r["reason"] for r in out} == {"flush"}
    assert len(table) == 0
    table.expire(100.0, out)  # no ghost entries survive in the heap
    assert len(out) == 3


def test_expiry_order_matches_a_brute_force_model():
    """Random traffic: every idle expiry happens exactly at last-seen + idle, in time order."""
    rng = random.Random(42)
    policy = SumPolicy(active=1000, idle=5)
    table = FlowTable(policy)
    out = []
    last_seen = {}
    now = 0.0
    for _ in range(3000):
        now += rng.random() * 0.5
        table.expire(now, out)
        key = rng.randrange(200)
        table.offer([{"key": key, "octets": 1}], now, out)
        last_seen[key] = now
    table.expire(now + 10, out)
    idle = [r for r in out if r["reason"] == "idle"]
    assert [r["at"] for r in idle] == sorted(r["at"] for r in idle)
    assert sum(r["octets"] for r in idle) == 3000
    finals = {r["key"]: r for r in idle}
    assert set(finals) == set(last_seen)
    assert len(table) == 0


class OrderPolicy(SumPolicy):
    """Notes the deadline and filing token of every flow handed to expire()."""

    def __init__(self, active, idle):
        super().__init__(active, idle)
        self.handed = []

    def expire(self, flow, now, out):
        self.handed.append((flow.deadline, flow.token))
        return super().expire(flow, now, out)


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(
            st.lists(st.tuples(st.sampled_from("abcdef"), st.booleans()), max_size=4),
            st.sampled_from([0, 0.5, 1, 2, 3]),
        ),
        max_size=30,
    ),
    st.sampled_from([1, 2.5, 5]),
    st.sampled_from([1, 3, 4.0]),
)
def test_due_flows_come_up_by_deadline_then_in_the_order_they_were_filed(steps, active, idle):
    policy = OrderPolicy(active, idle)
    table, out, now = FlowTable(policy), [], 0.0
    for records, wait in steps:
        table.offer([{"key": key, "octets": 1, "urgent": urgent} for key, urgent in records], now, out)
        now += wait
        policy.handed.clear()
        table.expire(now, out)
        assert policy.handed == sorted(set(policy.handed))  # by deadline, ties by filing order, each once
        assert all(deadline <= now for deadline, _ in policy.handed)
        assert table.next_deadline() > now


class ControlPolicy(SumPolicy):
    """``{"control": ...}`` records are control records; ``{"boom": ...}`` makes a policy call fail."""

    def __init__(self):
        super().__init__(active=10, idle=4)
        self.controls = []

    def key(self, record):
        if "control" in record:
            return flowtable.CONTROL
        if record.get("boom") == "key":
            raise ValueError("no key")
        return record.get("key")

    def control(self, table, record, now, out):
        self.controls.append((record["control"], now, len(table)))

    def merge(self, flow, record, now, out):
        if record.get("boom") == "merge":
            raise ValueError("cannot merge")
        super().merge(flow, record, now, out)


def test_control_records_go_to_the_policy_and_are_not_passed_on():
    policy = ControlPolicy()
    table, out = FlowTable(policy), []
    table.offer([{"key": "a", "octets": 1}, {"control": "poll done"}, {"octets": 2}], 3.0, out)
    assert policy.controls == [("poll done", 3.0, 1)]
    assert out == [{"octets": 2}]


def test_a_policy_error_propagates_and_leaves_the_table_consistent():
    table, out = FlowTable(ControlPolicy()), []
    table.offer([{"key": "a", "octets": 1}], 0.0, out)
    with pytest.raises(ValueError, match="cannot merge"):
        table.offer([{"key": "b", "octets": 1}, {"key": "a", "boom": "merge"}, {"key": "c", "octets": 1}], 1.0, out)
    with pytest.raises(ValueError, match="no key"):
        table.offer([{"boom": "key"}], 1.0, out)
    assert sorted(table.flows) == ["a", "b"]  # what came before the failing record was taken
    table.expire(100.0, out)
    assert sorted((r["key"], r["reason"]) for r in out) == [("a", "idle"), ("b", "idle")]
    assert len(table) == 0


class GreedyPolicy(SumPolicy):
    """Removes every other flow of the table when the first one expires, and reschedules itself."""

    def expire(self, flow, now, out):
        out.append(flow.key)
        for other in list(self.table.flows.values()):
            if other is not flow:
                self.table.remove(other)
        flow.active_deadline, flow.idle_deadline = now + 1, INFINITY
        return True


def test_a_policy_may_change_the_table_while_it_expires_flows():
    policy = GreedyPolicy(active=5, idle=100)
    table, out = FlowTable(policy), []
    policy.table = table
    table.offer([{"key": k, "octets": 1} for k in "abc"], 0.0, out)
    table.expire(5.0, out)
    assert out == ["a"] and sorted(table.flows) == ["a"]
    assert table.next_deadline() == 6.0
    table.expire(6.0, out)
    assert out == ["a", "a"]


class ForeverPolicy(SumPolicy):
    """Flows that are never due (infinite or NaN deadlines)."""

    def start(self, flow, record, now, out):
        super().start(flow, record, now, out)
        flow.active_deadline = flow.idle_deadline = record.get("deadline", INFINITY)


def test_a_full_table_without_due_flows_evicts_the_oldest_and_never_files_nan():
    table, out = FlowTable(ForeverPolicy(), max_flows=2), []
    table.offer([{"key": "a", "octets": 1}, {"key": "b", "octets": 1, "deadline": float("nan")}], 0.0, out)
    assert table.next_deadline() == INFINITY
    table.offer([{"key": "c", "octets": 1}], 1.0, out)
    assert [r["key"] for r in out] == ["a"] and table.evictions == 1
    assert sorted(table.flows) == ["b", "c"]


def test_flows_held_in_a_cycle_are_collected():
    import gc
    import weakref

    class Holder:
        pass

    table = FlowTable(SumPolicy())
    table.offer([{"key": "a", "octets": 1}], 0.0, [])
    holder = Holder()
    holder.table = table
    table.get("a").state = holder  # table → flow → state → holder → table
    ref = weakref.ref(holder)
    del table, holder
    gc.collect()
    assert ref() is None


def test_max_flows_must_be_positive():
    with pytest.raises(ValueError, match="max_flows must be at least 1"):
        FlowTable(SumPolicy(), max_flows=0)


def test_expire_hands_at_most_limit_flows_and_says_how_many():
    table, out = FlowTable(SumPolicy(active=10, idle=4)), []
    table.offer([{"key": k, "octets": 1} for k in "abcde"], 0.0, out)
    assert table.expire(4.0, out, 2) == 2 and [r["key"] for r in out] == ["a", "b"]
    assert table.expire(4.0, out, 0) == 0 and len(out) == 2
    assert table.expire(4.0, out) == 3 and [r["key"] for r in out] == list("abcde")
    assert table.expire(4.0, out, 5) == 0 and len(table) == 0


class LoggingPolicy(SumPolicy):
    """SumPolicy that notes every call it gets, and evicts, keeps or removes as ``record`` says."""

    def __init__(self, log):
        super().__init__(active=3, idle=5)
        self.log = log

    def start(self, flow, record, now, out):
        self.log.append(("start", flow.key, now))
        super().start(flow, record, now, out)

    def merge(self, flow, record, now, out):
        self.log.append(("merge", flow.key, now))
        super().merge(flow, record, now, out)

    def expire(self, flow, now, out):
        self.log.append(("expire", flow.key, flow.deadline, now))
        return super().expire(flow, now, out)

    def evict(self, flow, now, out):
        self.log.append(("evict", flow.key, now))
        super().evict(flow, now, out)


OPERATION = st.one_of(
    st.tuples(st.just("offer"), st.lists(st.tuples(st.integers(0, 7), st.booleans()), max_size=6)),
    st.tuples(st.just("expire"), st.sampled_from([None, 0, 1, 2, 5])),
    st.tuples(st.just("remove"), st.integers(0, 7)),
    st.tuples(st.just("reschedule"), st.integers(0, 7), st.sampled_from([0.0, 1.0, 10.0, INFINITY])),
    st.tuples(st.just("wait"), st.sampled_from([0.0, 0.5, 1.0, 3.0, 7.0])),
)


def replay(flow_table: type, operations: list, max_flows: int) -> list:
    """What a table does with the operations: the policy's calls, the records and the table's state."""
    log: list = []
    table, now = flow_table(LoggingPolicy(log), max_flows=max_flows), 0.0
    for operation in operations:
        out: list = []
        kind = operation[0]
        if kind == "offer":
            table.offer([{"key": k, "octets": 1, "urgent": u} for k, u in operation[1]], now, out)
        elif kind == "expire":
            log.append(("handed", table.expire(now, out, operation[1])))
        elif kind == "wait":
            now += operation[1]
        elif table.get(operation[1]) is not None:
            flow = table.get(operation[1])
            if kind == "remove":
                table.remove(flow)
            else:
                flow.active_deadline = now + operation[2]
                table.reschedule(flow)
        log.append((out, len(table), table.next_deadline(), sorted(table.flows), table.evictions))
    out = []
    table.flush(now, out)
    log.append(out)
    return log


@pytest.mark.skipif(flowtable.EXTENSION is None, reason="the C table is not built (no compiler?)")
@settings(max_examples=300, deadline=None)
@given(st.lists(OPERATION, max_size=40), st.sampled_from([2, 4, 100]))
def test_the_c_table_does_what_the_python_table_does(operations, max_flows):
    assert replay(flowtable.EXTENSION.FlowTable, operations, max_flows) == replay(
        flowtable.PyFlowTable, operations, max_flows
    )
