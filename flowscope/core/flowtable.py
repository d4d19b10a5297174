"""Keyed flow state with an expiry priority queue.

Both bundles use one table with different merge policies: the exporter's connection store
(conntrack totals → deltas, active/idle export) and the aggregator's correlation of source- and
destination-node records. The table owns keys, deadlines and the size bound; the policy owns what
a flow's state is and what is emitted when.

Deadlines are absolute times (seconds, same clock as ``now``). A flow is due when
``min(active_deadline, idle_deadline) <= now``. Postponing a deadline costs nothing: the flow's
entry is checked lazily when it comes up. Bringing one forward files a new entry.

Entries are kept in a calendar: each distinct deadline once in a heap, with the entries filed for
it in the order they were filed. Flows come up in the order of one heap of ``(deadline, token)``
(tokens only grow), but only deadlines are compared, and flows filed in one batch share theirs.

``Flow`` and ``FlowTable`` are those of the C extension ``_flowtable.c`` when it was built and
``FLOWSCOPE_PURE_PYTHON`` is unset; :class:`PyFlow` and :class:`PyFlowTable` are their
Python twins, which behave the same (``tests/test_flowtable.py`` runs against both).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable, Hashable
from typing import Any, Protocol

from pydantic import Field

from flowscope.core import speedups
from flowscope.core.components import Record
from flowscope.core.config import Duration, OptionsModel

EXTENSION = speedups.built("flowscope.core._flowtable")
"""The C flow table (``_flowtable.c``), or ``None`` when it was not built."""
INFINITY = float("inf")
CONTROL = object() if EXTENSION is None else EXTENSION.CONTROL
"""Returned by ``MergePolicy.key`` for a control record (e.g. "a poll is complete"): the table hands
it to ``MergePolicy.control`` and passes nothing on."""


class TableConfig(OptionsModel):
    """``table:``, the keys every mode has. A mode with keys of its own (see the
    ``register_table_modes`` hook) validates them with a subclass, its policy's ``Options``."""

    mode: str = "none"
    activeTimeout: Duration = "60s"
    inactiveTimeout: Duration = "90s"
    maxFlows: int = Field(1_000_000, gt=0)
    tick: Duration = "1s"


class PyFlow:
    """One tracked flow: its key, the policy's state and its two deadlines.

    Policies set ``state``, ``active_deadline`` and ``idle_deadline`` (numbers: the C ``Flow``
    keeps them as floats) and nothing else."""

    __slots__ = ("active_deadline", "idle_deadline", "key", "state", "token")

    def __init__(self, key: Hashable):
        self.key = key
        self.state: Any = None
        self.active_deadline = INFINITY
        self.idle_deadline = INFINITY
        self.token = 0

    @property
    def deadline(self) -> float:
        return min(self.active_deadline, self.idle_deadline)


class MergePolicy(Protocol):
    """How records become flow state and flow state becomes records.

    A table mode (the ``register_table_modes`` hook) is a class with this protocol, built by its
    ``from_config(options)`` class method from the validated ``table:`` keys (its ``Options``, a
    :class:`TableConfig`). Every method appends the records it wants emitted to ``out``.
    """

    @classmethod
    def from_config(cls, options: TableConfig) -> MergePolicy:
        """The policy for a pipeline's ``table:`` keys."""

    def key(self, record: Record) -> Hashable | None:
        """The flow key of a record, ``None`` to pass the record through untracked, or ``CONTROL``."""

    def control(self, table: FlowTable, record: Record, now: float, out: list[Record]) -> None:
        """Act on a control record; may use ``table.remove`` and ``table.reschedule``."""

    def start(self, flow: Flow, record: Record, now: float, out: list[Record]) -> None:
        """Initialise ``flow.state`` and both deadlines from the first record of a flow."""

    def merge(self, flow: Flow, record: Record, now: float, out: list[Record]) -> None:
        """Fold a further record into ``flow``; may move deadlines."""

    def expire(self, flow: Flow, now: float, out: list[Record]) -> bool:
        """The flow is due: emit what is due, set new deadlines and return ``True`` to keep the
        flow, or return ``False`` to remove it."""

    def evict(self, flow: Flow, now: float, out: list[Record]) -> None:
        """The table is full and this flow (the one due soonest) must go: emit what it holds."""

    def flush(self, flow: Flow, now: float, out: list[Record]) -> None:
        """Shutdown: emit what the flow holds before the table is dropped."""

    def fields(self, flow: Flow) -> Record | None:
        """The fields the flow holds now, for the API's ``/flowrecords``; ``None`` to leave it out."""


class PyFlowTable:
    """Flows by key, with a calendar of deadlines and a bound on their number.

    Not thread-safe: the pipeline drives it from one thread.
    """

    def __init__(self, policy: MergePolicy, max_flows: int = 1_000_000, on_evict: Callable[[], None] | None = None):
        if max_flows < 1:
            raise ValueError("max_flows must be at least 1")
        self.policy = policy
        self.max_flows = max_flows
        self.flows: dict[Hashable, Flow] = {}
        self.evictions = 0
        self._on_evict = on_evict
        # entries (token, key); one whose token is no longer its flow's is stale. Keys rather than
        # flows, so that the garbage collector stops tracking the entries.
        self._times: list[float] = []  # a heap of the deadlines that have entries
        self._due: dict[float, list] = {}  # deadline -> [index of its next entry, *entries]
        self._counter = itertools.count(1)

    def __len__(self) -> int:
        return len(self.flows)

    def get(self, key: Hashable) -> Flow | None:
        return self.flows.get(key)

    def offer(self, records: list[Record], now: float, out: list[Record]) -> None:
        """Feed a batch of records; whatever the policy emits is appended to ``out``."""
        policy, flows = self.policy, self.flows
        key_of, merge = policy.key, policy.merge
        for record in records:
            key = key_of(record)
            if key is None:
                out.append(record)
                continue
            if key is CONTROL:
                policy.control(self, record, now, out)
                continue
            flow = flows.get(key)
            if flow is not None:
                before = min(flow.active_deadline, flow.idle_deadline)
                merge(flow, record, now, out)
                if min(flow.active_deadline, flow.idle_deadline) < before:
                    self._schedule(flow)
                continue
            if len(flows) >= self.max_flows:
                self._evict_one(now, out)
            flow = PyFlow(key)
            policy.start(flow, record, now, out)
            flows[key] = flow
            self._schedule(flow)

    def expire(self, now: float, out: list[Record], limit: int | None = None) -> int:
        """Hand every due flow to the policy, or the first ``limit`` of them; how many were handed."""
        times = self._times
        handed = 0
        while times and times[0] <= now and handed != limit:
            flow = self._pop_soonest()
            if flow is None:
                break
            if flow.deadline > now:  # every due entry had been postponed
                self._schedule(flow)
                break
            handed += 1
            if self.policy.expire(flow, now, out):
                self._schedule(flow)
            else:
                self._remove(flow)
        return handed

    def next_deadline(self) -> float:
        """The earliest deadline in the table (``inf`` when empty). Cheap; may be early, never late."""
        times, due, flows = self._times, self._due, self.flows
        while times:
            entries = due[times[0]]
            token, key = entries[entries[0]]
            flow = flows.get(key)
            if flow is not None and flow.token == token:
                return times[0]
            self._take()
        return INFINITY

    def flush(self, now: float, out: list[Record]) -> None:
        """Emit every flow's records through the policy and empty the table."""
        for flow in list(self.flows.values()):
            self.policy.flush(flow, now, out)
            flow.token = -1
        self.flows.clear()
        self._times.clear()
        self._due.clear()

    def reschedule(self, flow: Flow) -> None:
        """File a flow again after its policy changed its deadlines outside merge/expire."""
        self._schedule(flow)

    def remove(self, flow: Flow) -> None:
        """Forget a flow at once."""
        self._remove(flow)

    def _schedule(self, flow: Flow) -> None:
        token = next(self._counter)
        flow.token = token
        deadline = min(flow.active_deadline, flow.idle_deadline)
        if deadline < INFINITY:
            entries = self._due.get(deadline)
            if entries is None:
                self._due[deadline] = [1, (token, flow.key)]
                heapq.heappush(self._times, deadline)
            else:
                entries.append((token, flow.key))

    def _take(self) -> tuple[float, int, Hashable]:
        """The earliest entry, taken out of the calendar (which has one): deadline, token, key."""
        deadline = self._times[0]
        entries = self._due[deadline]
        index = entries[0]
        token, key = entries[index]
        if index + 1 < len(entries):
            entries[0] = index + 1
            entries[index] = None
        else:
            del self._due[deadline]
            heapq.heappop(self._times)
        return deadline, token, key

    def _remove(self, flow: Flow) -> None:
        flow.token = -1
        self.flows.pop(flow.key, None)

    def _evict_one(self, now: float, out: list[Record]) -> None:
        """Push out the flow due soonest, letting the policy emit what it holds."""
        flow = self._pop_soonest()
        if flow is None:  # no flow has a finite deadline: take the oldest inserted
            flow = next(iter(self.flows.values()))
        self.policy.evict(flow, now, out)
        self._remove(flow)
        self.evictions += 1
        if self._on_evict is not None:
            self._on_evict()

    def _pop_soonest(self) -> Flow | None:
        """Pop the flow with the earliest current deadline, re-filing entries found postponed."""
        times, flows = self._times, self.flows
        while times:
            deadline, token, key = self._take()
            flow = flows.get(key)
            if flow is None or token != flow.token:
                continue
            if flow.deadline > deadline:
                self._schedule(flow)
                continue
            return flow
        return None


NATIVE = speedups.wanted(EXTENSION)
Flow: type = EXTENSION.Flow if NATIVE else PyFlow
FlowTable: type = EXTENSION.FlowTable if NATIVE else PyFlowTable
