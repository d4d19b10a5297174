"""The exporter's connection store over synthetic conntrack polls."""

from __future__ import annotations

from flowscope.core.flowtable import FlowTable
from flowscope.core.ipfix.antrea import EXPORTER_IPV4, EXPORTER_IPV6
from flowscope.entrypoints.exporter.connstore import ConnectionStore, stale_timeout


class Polls:
    """Feeds polls into a table with a connection store and collects what it exports."""

    def __init__(self, active=60.0, idle=15.0):
        self.table = FlowTable(ConnectionStore(active, idle))
        self.poll = 0
        self.out: list[dict] = []

    def run(self, now: float, *conns: dict) -> list[dict]:
        self.poll += 1
        records = [{**c, "_poll": self.poll} for c in conns] + [{"_pollComplete": self.poll}]
        out: list[dict] = []
        self.table.offer(records, now, out)
        self.table.expire(now, out)
        self.out += out
        return out


def conn(packets=10, octets=1000, rpackets=5, roctets=500, state="ESTABLISHED", sport=40000, **extra):
    return {
        "protocolIdentifier": 6,
        "sourceIPv4Address": "10.0.0.1",
        "destinationIPv4Address": "10.0.0.2",
        "sourceTransportPort": sport,
        "destinationTransportPort": 80,
        "packetTotalCount": packets,
        "octetTotalCount": octets,
        "reversePacketTotalCount": rpackets,
        "reverseOctetTotalCount": roctets,
        "flowStartSeconds": 1000,
        "flowEndSeconds": 1000,
        "tcpState": state,
        **extra,
    }


def test_active_exports_carry_deltas_that_add_up_to_the_totals():
    polls = Polls(active=10, idle=100)
    polls.run(0, conn(packets=10, octets=1000))
    first = polls.run(10, conn(packets=20, octets=3000))
    polls.run(15, conn(packets=25, octets=3500))
    second = polls.run(20, conn(packets=30, octets=4000))
    assert [(r["octetTotalCount"], r["octetDeltaCount"], r["flowEndReason"]) for r in first + second] == [
        (3000, 3000, 2),
        (4000, 1000, 2),
    ]
    assert list(first[0]) == EXPORTER_IPV4
    assert first[0]["reverseOctetDeltaCount"] == 500 and second[0]["reverseOctetDeltaCount"] == 0


def test_idle_connection_is_exported_with_reason_1_once():
    polls = Polls(active=60, idle=5)
    polls.run(0, conn())
    assert polls.run(4, conn()) == []
    idle = polls.run(5, conn())
    assert [(r["flowEndReason"], r["octetDeltaCount"]) for r in idle] == [(1, 1000)]
    assert polls.run(30, conn()) == []  # no traffic: not exported again
    resumed = polls.run(31, conn(packets=11, octets=1100))
    assert resumed == []
    later = polls.run(91, conn(packets=11, octets=1100))
    assert [(r["flowEndReason"], r["octetDeltaCount"]) for r in later] == [(1, 100)]


def test_closed_tcp_connection_is_exported_once_with_reason_3_and_removed_when_gone():
    polls = Polls(active=60, idle=30)
    polls.run(0, conn())
    closed = polls.run(1, conn(packets=14, octets=1400, state="TIME_WAIT"))
    assert [(r["flowEndReason"], r["tcpState"], r["octetDeltaCount"]) for r in closed] == [(3, "TIME_WAIT", 1400)]
    assert polls.run(2, conn(packets=14, octets=1400, state="TIME_WAIT")) == []  # frozen, still listed
    assert len(polls.table) == 1
    polls.run(3)  # gone from conntrack
    assert len(polls.table) == 0


def test_connection_vanishing_from_conntrack_is_exported_with_reason_3():
    polls = Polls(active=60, idle=30)
    polls.run(0, {**conn(), "protocolIdentifier": 17, "tcpState": ""})
    out = polls.run(1)
    assert [(r["flowEndReason"], r["protocolIdentifier"]) for r in out] == [(3, 17)]
    polls.run(2)
    assert len(polls.table) == 0


def test_negative_deltas_are_clamped_to_zero():
    polls = Polls(active=1, idle=100)
    polls.run(0, conn(packets=10, octets=1000))
    polls.run(1, conn(packets=10, octets=1000))
    out = polls.run(2, conn(packets=12, octets=900))  # counters went back (zone reuse, counter reset)
    assert out[0]["octetDeltaCount"] == 0 and out[0]["packetDeltaCount"] == 2


def test_service_fields_and_ipv6_template():
    polls = Polls(active=1, idle=100)
    v6 = {k: v for k, v in conn().items() if "IPv4" not in k}
    v6 |= {
        "sourceIPv6Address": "fd00::1",
        "destinationIPv6Address": "fd00::2",
        "destinationServiceIPv6": "fd00::99",
        "destinationClusterIPv6": "fd00::99",
        "destinationServicePort": 8080,
    }
    polls.run(0, v6)
    [record] = polls.run(1, v6)
    assert list(record) == EXPORTER_IPV6
    assert (record["destinationServiceIPv6"], record["destinationServicePort"], record["proxySnatIPv6"]) == (
        "fd00::99",
        8080,
        "::",
    )
    assert (record["sourcePodName"], record["flowType"], record["egressIP"]) == ("", 0, "")


def test_stale_timeout_follows_antrea():
    assert stale_timeout(5, 15) == 300
    assert stale_timeout(600, 15) == 1200


def test_the_stop_exports_only_what_was_not_exported():
    """A UDP connection exported as idle (reason 1) and quiet since is not exported again at the stop
    (it was, with reason 2 and zero deltas); one with new data since is, with its delta."""
    polls = Polls(active=60, idle=5)
    udp = {"protocolIdentifier": 17, "tcpState": ""}
    polls.run(0, conn(**udp), conn(sport=40001, **udp))
    idle = polls.run(5, conn(**udp), conn(sport=40001, **udp))
    assert [(r["sourceTransportPort"], r["flowEndReason"]) for r in idle] == [(40000, 1), (40001, 1)]
    polls.run(6, conn(**udp), conn(sport=40001, packets=12, octets=1300, **udp))
    out: list[dict] = []
    polls.table.flush(7, out)
    assert [(r["sourceTransportPort"], r["flowEndReason"], r["octetDeltaCount"]) for r in out] == [(40001, 2, 300)]
