"""The aggregator's correlation and aggregation: a flow-table policy (reference §3.2 to §3.7).

Records of one connection from its source node and its destination node are correlated into one
record; per-node statistics, throughputs and the common counters are kept as Antrea's Flow
Aggregator keeps them, and a record is exported on a 1-second tick once it is ready, at most once
per active timeout without new data, and removed after the inactive timeout.

Unlike Antrea, a record whose peer never arrives is not deleted without trace: after
``correlationTimeout`` it is exported as it is (``partialRecords: export``, the default) or dropped
(``drop``), and either way counted.

The per-record work is in :mod:`flowscope.entrypoints.aggregator.correlate`; a flow's state is kept compactly, as
:mod:`flowscope.entrypoints.aggregator.aggregate` describes.
"""

from __future__ import annotations

from typing import Literal

from flowscope.core.components import Record
from flowscope.core.config import Duration
from flowscope.core.flowtable import Flow, FlowTable, TableConfig
from flowscope.entrypoints.aggregator.aggregate import FIRST_SEEN, READY, fields
from flowscope.entrypoints.aggregator.correlate import core


class AggregateTableConfig(TableConfig):
    """``table:`` in ``aggregate`` mode: the keys every mode has, and the aggregation's own."""

    correlationTimeout: Duration | None = None
    partialRecords: Literal["export", "drop"] = "export"
    clusterId: str = ""


class Aggregation:
    """Flow-table policy reproducing Antrea's Flow Aggregator (HEAD), with counted partial records:
    the ``aggregate`` table mode.

    ``key``, ``start`` and ``merge`` are those of the core
    (:func:`flowscope.entrypoints.aggregator.correlate.core`; ``native`` chooses it as there).
    """

    Options = AggregateTableConfig

    def __init__(
        self,
        active: float,
        inactive: float,
        correlation_timeout: float | None = None,
        partial: str = "export",
        cluster_id: str = "",
        counters: dict[str, int] | None = None,
        native: bool | None = None,
    ):
        self._core = core(active, inactive, cluster_id, native)
        self.key, self.start, self.merge = self._core.key, self._core.start, self._core.merge
        self.active = active
        self.inactive = inactive
        self.correlation_timeout = 3 * active if correlation_timeout is None else correlation_timeout
        self.partial = partial
        self.counters = counters if counters is not None else {}

    @classmethod
    def from_config(cls, table: AggregateTableConfig) -> Aggregation:
        return cls(
            table.activeTimeout, table.inactiveTimeout, table.correlationTimeout, table.partialRecords, table.clusterId
        )

    def _count(self, what: str, n: int = 1) -> None:
        self.counters[what] = self.counters.get(what, 0) + n

    # -- records -----------------------------------------------------------------------------

    def control(self, table: FlowTable, record: Record, now: float, out: list[Record]) -> None:
        self._count(
            "dropped_no_timestamps"
            if "flowEndSeconds" not in record or not record.get("flowEndSeconds")
            else "dropped_no_addresses"
        )

    # -- expiry --------------------------------------------------------------------------------

    def expire(self, flow: Flow, now: float, out: list[Record]) -> bool:
        state = flow.state
        if not state[READY]:
            if now - state[FIRST_SEEN] < self.correlation_timeout:  # still waiting for the other node
                flow.active_deadline = now + self.active
                flow.idle_deadline = now + self.inactive
                return True
            if self.partial == "drop":
                self._count("dropped_uncorrelated")
                return False
            self._count("exported_uncorrelated")
        record, flow.state = self._core.export(state)
        if record is not None:
            out.append(record)
        if flow.idle_deadline <= now:
            return False
        flow.active_deadline = now + self.active
        return True

    def evict(self, flow: Flow, now: float, out: list[Record]) -> None:
        record, _ = self._core.export(flow.state)
        if record is not None:
            out.append(record)

    def flush(self, flow: Flow, now: float, out: list[Record]) -> None:
        self.evict(flow, now, out)

    def fields(self, flow: Flow) -> Record:
        """The fields a flow's record holds now (the API lists them)."""
        return fields(flow.state)
