"""The exporter's connection store: a flow-table policy over conntrack polls (reference §2.3 to §2.5).

Input: the ``conntrack`` source's records, one per connection per poll, each carrying ``_poll``
(the poll number), followed by a control record ``{"_pollComplete": N}`` at the end of each poll.
Output: Antrea flow records, keys in the order of the exporter template (``EXPORTER_IPV4`` or
``EXPORTER_IPV6``), with totals, deltas since the previous export and ``flowEndReason``.

Differences from Antrea, on purpose:
- everything due is exported at each tick (no cap of 64 per cycle);
- the previous counters are updated at every export, idle ones included, so deltas add up to the
  totals exactly (Antrea keeps them after an idle export and counts that traffic again later);
- a connection seen dying (TIME_WAIT, CLOSE, DYING, or gone from the table) is exported at the next
  tick instead of at its next active/idle deadline.
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Any

from flowscope.core.components import Record
from flowscope.core.flowtable import CONTROL, INFINITY, Flow, FlowTable
from flowscope.core.ipfix.antrea import EXPORTER_IPV4, EXPORTER_IPV6
from flowscope.plugins.sources.conntrack import POLL_COMPLETE
from flowscope.plugins.sources.ctnetlink import POLL

END_IDLE, END_ACTIVE, END_OF_FLOW = 1, 2, 3
DYING_STATES = ("TIME_WAIT", "CLOSE")
IPS_DYING = 1 << 9
_COUNTERS = ("packetTotalCount", "octetTotalCount", "reversePacketTotalCount", "reverseOctetTotalCount")
_DELTAS = ("packetDeltaCount", "octetDeltaCount", "reversePacketDeltaCount", "reverseOctetDeltaCount")


@dataclass(slots=True)
class Connection:
    """What the store keeps per connection."""

    record: Record  # the latest conntrack view
    prev: tuple[int, int, int, int] = (0, 0, 0, 0)  # counters at the last export
    poll: int = 0
    last_export: float = 0.0
    dying: bool = False
    ready_to_delete: bool = False
    idle: bool = False  # exported as idle, and nothing new since


def stale_timeout(active: float, idle: float) -> float:
    """5 minutes, or twice the longer timeout when either exceeds that (Antrea's rule)."""
    return 2 * max(active, idle) if max(active, idle) > 300 else 300.0


class ConnectionStore:
    """Flow-table policy turning conntrack polls into Antrea export records."""

    def __init__(self, active_timeout: float, idle_timeout: float):
        self.active = active_timeout
        self.idle = idle_timeout
        self.stale = stale_timeout(active_timeout, idle_timeout)

    @classmethod
    def from_config(cls, table: Any) -> ConnectionStore:
        return cls(table.activeTimeout, table.inactiveTimeout)

    def key(self, record: Record) -> Hashable | None:
        if POLL_COMPLETE in record:
            return CONTROL
        if POLL not in record:
            return None
        v4 = "sourceIPv4Address" in record
        return (
            record["sourceIPv4Address" if v4 else "sourceIPv6Address"],
            record["destinationIPv4Address" if v4 else "destinationIPv6Address"],
            record["protocolIdentifier"],
            record["sourceTransportPort"],
            record["destinationTransportPort"],
        )

    def start(self, flow: Flow, record: Record, now: float, out: list[Record]) -> None:
        if not record.get("flowStartSeconds"):
            record["flowStartSeconds"] = record["flowEndSeconds"] = int(now)
        conn = flow.state = Connection(record, poll=record[POLL], last_export=record["flowStartSeconds"])
        conn.dying = _dying(record)
        flow.active_deadline = now if conn.dying else now + self.active
        flow.idle_deadline = now + self.idle

    def merge(self, flow: Flow, record: Record, now: float, out: list[Record]) -> None:
        conn: Connection = flow.state
        conn.poll = record[POLL]
        if conn.dying:
            return  # statistics are frozen once the connection is dying
        previous = conn.record
        changed = (
            record.get("packetTotalCount", 0) > previous.get("packetTotalCount", 0)
            or record.get("reversePacketTotalCount", 0) > previous.get("reversePacketTotalCount", 0)
            or record.get("tcpState", "") != previous.get("tcpState", "")
        )
        conn.record = record
        conn.dying = _dying(record)
        if conn.dying:
            flow.active_deadline = now  # export at the next tick
        elif changed:
            if conn.idle:  # it had gone idle and left the queue
                conn.idle = False
                flow.active_deadline = now + self.active
            flow.idle_deadline = now + self.idle

    def control(self, table: FlowTable, record: Record, now: float, out: list[Record]) -> None:
        """A poll is complete: connections it did not see have ended."""
        poll = record[POLL_COMPLETE]
        for flow in list(table.flows.values()):
            conn: Connection = flow.state
            if conn.poll == poll:
                continue
            if conn.ready_to_delete or now - conn.last_export >= self.stale:
                table.remove(flow)
            elif not conn.dying:
                conn.dying = True
                flow.active_deadline = now
                table.reschedule(flow)

    def expire(self, flow: Flow, now: float, out: list[Record]) -> bool:
        conn: Connection = flow.state
        if conn.ready_to_delete:
            flow.active_deadline = flow.idle_deadline = INFINITY
            return True
        idle = flow.idle_deadline <= now
        out.append(self._export(conn, END_OF_FLOW if conn.dying else END_IDLE if idle else END_ACTIVE))
        conn.last_export = now
        conn.prev = tuple(conn.record.get(name, 0) for name in _COUNTERS)
        conn.ready_to_delete = conn.dying
        conn.idle = idle and not conn.dying
        if conn.dying or idle:
            flow.active_deadline = flow.idle_deadline = INFINITY  # kept until gone, out of the queue
        else:
            flow.active_deadline = now + self.active
        return True

    def evict(self, flow: Flow, now: float, out: list[Record]) -> None:
        out.append(self._export(flow.state, END_ACTIVE))

    def flush(self, flow: Flow, now: float, out: list[Record]) -> None:
        """Shutdown: export what was not exported yet; not again a connection exported as idle that had
        no new data since (Antrea does not export it again without new data)."""
        conn: Connection = flow.state
        if not conn.ready_to_delete and (conn.dying or not conn.idle):
            out.append(self._export(conn, END_OF_FLOW if conn.dying else END_ACTIVE))

    def fields(self, flow: Flow) -> Record:
        """The connection's latest conntrack view (the API lists it)."""
        return flow.state.record

    def _export(self, conn: Connection, reason: int) -> Record:
        """An Antrea exporter record: template order, deltas clamped at zero."""
        record = conn.record
        v6 = "sourceIPv6Address" in record
        values = dict(record)
        for name, delta, before in zip(_COUNTERS, _DELTAS, conn.prev, strict=True):
            values[delta] = max(0, values.get(name, 0) - before)
        values["flowEndReason"] = reason
        zero_ip = "::" if v6 else "0.0.0.0"
        return {name: values.get(name, _default(name, zero_ip)) for name in (EXPORTER_IPV6 if v6 else EXPORTER_IPV4)}


def _default(name: str, zero_ip: str) -> Any:
    if name.endswith(("IPv4", "IPv6")) and name != "egressIP":
        return zero_ip
    if name.endswith(("Name", "Namespace", "RuleName", "State", "IP")):
        return ""
    return 0


def _dying(record: Record) -> bool:
    state = record.get("tcpState", "")
    return state in DYING_STATES or (not state and bool(record.get("_ctStatus", 0) & IPS_DYING))
