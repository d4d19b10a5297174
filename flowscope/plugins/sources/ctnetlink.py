"""A lean reader of the kernel's conntrack table over netlink (ctnetlink).

pyroute2 enters network namespaces and names the protocol numbers; the dump itself is parsed
here, reading only the attributes flow export needs: a generic netlink decoder spends most of its
time building objects for attributes nobody reads. :func:`dump` gives the entries as :class:`Conn`;
:func:`poll_records` gives the conntrack source's records straight from the messages (in C, no
``Conn`` in between), each received into one reused buffer.
"""

from __future__ import annotations

import os
import socket
import struct
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass

from flowscope.core import speedups
from flowscope.core.components import Record

EXTENSION = speedups.built("flowscope.plugins.sources._ctnetlink")
"""The C dump parser (``_ctnetlink.c``), or ``None`` when it was not built."""

NETLINK_NETFILTER = 12
NLM_F_REQUEST, NLM_F_DUMP = 0x1, 0x300
NLMSG_ERROR, NLMSG_DONE = 2, 3
NLA_TYPE_MASK = 0x3FFF  # without the nested and byte-order flags

# ctnetlink attribute numbers (linux/netfilter/nfnetlink_conntrack.h)
CTA_TUPLE_ORIG, CTA_TUPLE_REPLY, CTA_STATUS, CTA_PROTOINFO = 1, 2, 3, 4
CTA_MARK, CTA_COUNTERS_ORIG, CTA_COUNTERS_REPLY, CTA_ZONE, CTA_TIMESTAMP, CTA_LABELS = 8, 9, 10, 18, 20, 22
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP_V4_SRC, CTA_IP_V4_DST, CTA_IP_V6_SRC, CTA_IP_V6_DST = 1, 2, 3, 4
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
CTA_COUNTERS_PACKETS, CTA_COUNTERS_BYTES = 1, 2
CTA_PROTOINFO_TCP, CTA_PROTOINFO_TCP_STATE = 1, 1
CTA_TIMESTAMP_START, CTA_TIMESTAMP_STOP = 1, 2
IPS_DYING = 1 << 9
RECEIVE_BUFFER = 1 << 20  # more than the kernel puts in one recv() of a dump (32 KiB)
POLL = "_poll"
"""A record's poll number (see :func:`to_record`)."""

TCP_STATES = (
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
)

_NLMSG = struct.Struct("=IHHII")
_NLA = struct.Struct("=HH")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


@dataclass(slots=True)
class Conn:
    """One conntrack entry, as far as flow export needs it."""

    proto: int
    src: str  # original source
    dst: str  # original destination (before DNAT)
    sport: int
    dport: int
    reply_src: str  # reply source: the post-DNAT destination
    reply_dst: str  # reply destination: the post-SNAT source
    reply_sport: int
    reply_dport: int
    packets: int = 0
    octets: int = 0
    reverse_packets: int = 0
    reverse_octets: int = 0
    start_ns: int = 0
    stop_ns: int = 0
    status: int = 0
    mark: int = 0
    zone: int = 0
    tcp_state: str = ""
    labels: bytes = b""

    @property
    def dying(self) -> bool:
        return bool(self.status & IPS_DYING)


@dataclass(frozen=True, slots=True)
class Filter:
    """Which entries become records: in ``zones``, with ``mark & mark_mask == mark``, of ``protocols``
    (``None``: any)."""

    zones: frozenset[int] | None = None
    mark: int | None = None
    mark_mask: int = 0xFFFFFFFF
    protocols: frozenset[int] | None = None

    def wants(self, conn: Conn) -> bool:
        if self.zones is not None and conn.zone not in self.zones:
            return False
        if self.mark is not None and conn.mark & self.mark_mask != self.mark:
            return False
        return self.protocols is None or conn.proto in self.protocols


def to_record(conn: Conn, poll: int, now: float) -> Record:
    """A conntrack entry as a record keyed by IE name (plus ``_poll`` and ``_ctStatus``)."""
    v6 = ":" in conn.src
    record: Record = {
        POLL: poll,
        "_ctStatus": conn.status,
        "protocolIdentifier": conn.proto,
        "sourceIPv6Address" if v6 else "sourceIPv4Address": conn.src,
        "destinationIPv6Address" if v6 else "destinationIPv4Address": conn.reply_src,
        "sourceTransportPort": conn.sport,
        "destinationTransportPort": conn.reply_sport,
        "packetTotalCount": conn.packets,
        "octetTotalCount": conn.octets,
        "reversePacketTotalCount": conn.reverse_packets,
        "reverseOctetTotalCount": conn.reverse_octets,
        "flowStartSeconds": conn.start_ns // 1_000_000_000,
        "flowEndSeconds": conn.stop_ns // 1_000_000_000 if conn.dying and conn.stop_ns else int(now),
        "tcpState": conn.tcp_state,
    }
    if conn.dst != conn.reply_src or conn.dport != conn.reply_sport:  # DNAT: a Service's original destination
        suffix = "IPv6" if v6 else "IPv4"
        record["destinationService" + suffix] = conn.dst
        record["destinationCluster" + suffix] = conn.dst
        record["destinationServicePort"] = conn.dport
    if conn.reply_dst != conn.src or conn.reply_dport != conn.sport:  # SNAT on the way out
        record["proxySnatIPv6" if v6 else "proxySnatIPv4"] = conn.reply_dst
        record["proxySnatPort"] = conn.reply_dport
    return record


def _attributes(data: bytes, start: int, end: int) -> dict[int, tuple[int, int]]:
    """Top-level attributes of one nest: type → (payload start, payload end)."""
    found = {}
    unpack = _NLA.unpack_from
    while start + 4 <= end:
        length, kind = unpack(data, start)
        if length < 4:
            break
        found[kind & NLA_TYPE_MASK] = (start + 4, start + length)
        start += (length + 3) & ~3
    return found


def _tuple(data: bytes, start: int, end: int) -> tuple[str, str, int, int, int]:
    """(src, dst, proto, sport, dport) of a CTA_TUPLE_* nest."""
    nest = _attributes(data, start, end)
    src = dst = ""
    proto = sport = dport = 0
    ip = nest.get(CTA_TUPLE_IP)
    if ip is not None:
        addresses = _attributes(data, *ip)
        if CTA_IP_V4_SRC in addresses:
            a, b = addresses[CTA_IP_V4_SRC]
            src = socket.inet_ntoa(data[a:b])
            a, b = addresses[CTA_IP_V4_DST]
            dst = socket.inet_ntoa(data[a:b])
        elif CTA_IP_V6_SRC in addresses:
            a, b = addresses[CTA_IP_V6_SRC]
            src = socket.inet_ntop(socket.AF_INET6, data[a:b])
            a, b = addresses[CTA_IP_V6_DST]
            dst = socket.inet_ntop(socket.AF_INET6, data[a:b])
    protocol = nest.get(CTA_TUPLE_PROTO)
    if protocol is not None:
        fields = _attributes(data, *protocol)
        if CTA_PROTO_NUM in fields:
            proto = data[fields[CTA_PROTO_NUM][0]]
        if CTA_PROTO_SRC_PORT in fields:
            sport = _U16.unpack_from(data, fields[CTA_PROTO_SRC_PORT][0])[0]
            dport = _U16.unpack_from(data, fields[CTA_PROTO_DST_PORT][0])[0]
    return src, dst, proto, sport, dport


def _counters(data: bytes, start: int, end: int) -> tuple[int, int]:
    nest = _attributes(data, start, end)
    packets = nest.get(CTA_COUNTERS_PACKETS)
    octets = nest.get(CTA_COUNTERS_BYTES)
    return (
        _U64.unpack_from(data, packets[0])[0] if packets else 0,
        _U64.unpack_from(data, octets[0])[0] if octets else 0,
    )


def parse_entry(data: bytes, start: int, end: int) -> Conn | None:
    """One IPCTNL_MSG_CT_NEW message body (after the nfgenmsg header); ``None`` if it has no tuples."""
    top = _attributes(data, start, end)
    orig, reply = top.get(CTA_TUPLE_ORIG), top.get(CTA_TUPLE_REPLY)
    if orig is None or reply is None:
        return None
    src, dst, proto, sport, dport = _tuple(data, *orig)
    reply_src, reply_dst, _, reply_sport, reply_dport = _tuple(data, *reply)
    conn = Conn(proto, src, dst, sport, dport, reply_src, reply_dst, reply_sport, reply_dport)
    where = top.get(CTA_COUNTERS_ORIG)
    if where is not None:
        conn.packets, conn.octets = _counters(data, *where)
    where = top.get(CTA_COUNTERS_REPLY)
    if where is not None:
        conn.reverse_packets, conn.reverse_octets = _counters(data, *where)
    where = top.get(CTA_STATUS)
    if where is not None:
        conn.status = _U32.unpack_from(data, where[0])[0]
    where = top.get(CTA_MARK)
    if where is not None:
        conn.mark = _U32.unpack_from(data, where[0])[0]
    where = top.get(CTA_ZONE)
    if where is not None:
        conn.zone = _U16.unpack_from(data, where[0])[0]
    where = top.get(CTA_LABELS)
    if where is not None:
        conn.labels = data[where[0] : where[1]]
    where = top.get(CTA_TIMESTAMP)
    if where is not None:
        stamps = _attributes(data, *where)
        if CTA_TIMESTAMP_START in stamps:
            conn.start_ns = _U64.unpack_from(data, stamps[CTA_TIMESTAMP_START][0])[0]
        if CTA_TIMESTAMP_STOP in stamps:
            conn.stop_ns = _U64.unpack_from(data, stamps[CTA_TIMESTAMP_STOP][0])[0]
    where = top.get(CTA_PROTOINFO)
    if where is not None and proto == socket.IPPROTO_TCP:
        tcp = _attributes(data, *where).get(CTA_PROTOINFO_TCP)
        if tcp is not None:
            state = _attributes(data, *tcp).get(CTA_PROTOINFO_TCP_STATE)
            if state is not None:
                index = data[state[0]]
                conn.tcp_state = TCP_STATES[index] if index < len(TCP_STATES) else ""
    return conn


class NetlinkError(OSError):
    """The kernel refused a conntrack request."""


def open_socket(netns: str | None = None) -> socket.socket:
    """A ctnetlink socket in the current network namespace, or in the named one."""
    if netns is None:
        return socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
    return in_netns(netns, lambda: socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER))


def in_netns(netns: str, work):
    """Run ``work()`` in a thread that has entered network namespace ``netns``; return its result.

    Sockets made there stay in that namespace; the calling thread's namespace is untouched.
    """
    from pyroute2 import netns as pyroute2_netns

    outcome: dict[str, object] = {}

    def enter() -> None:
        try:
            pyroute2_netns.setns(netns, flags=0)
            outcome["value"] = work()
        except BaseException as exc:  # handed to the caller
            outcome["error"] = exc

    thread = threading.Thread(target=enter, name=f"netns-{netns}")
    thread.start()
    thread.join()
    if "error" in outcome:
        raise outcome["error"]  # type: ignore[misc]
    return outcome["value"]


def dump(sock: socket.socket, family: int = socket.AF_UNSPEC, seq: int = 1, native: bool | None = None) -> list[Conn]:
    """Every conntrack entry of the socket's namespace (one family, or all).

    The messages are parsed in C when the extension is built (``native``), else in Python.
    """
    if native is None:
        native = speedups.wanted(EXTENSION)
    conns: list[Conn] = []
    parse = _parse_native if native else _parse_python
    _receive(sock, family, seq, lambda data: parse(data, conns))
    return conns


def poll_records(
    sock: socket.socket,
    poll: int,
    wanted: Filter = Filter(),
    native: bool | None = None,
    clock: Callable[[], float] = time.time,
) -> tuple[list[Record], int]:
    """The records (:func:`to_record`, ``now`` read from ``clock`` after the dump) of the wanted entries
    of every family, and how many entries there were.

    In C when the extension is built (``native``): records straight from the messages; else in Python.
    """
    if native is None:
        native = speedups.wanted(EXTENSION)
    records: list[Record] = []
    conns: list[Conn] = []
    seen = 0

    def parse(data: memoryview) -> tuple[bool, int]:
        nonlocal seen
        if not native:
            return _parse_python(data, conns)
        count, done, error = EXTENSION.parse_records(
            data, poll, None, TCP_STATES, wanted.zones, wanted.mark, wanted.mark_mask, wanted.protocols, records
        )
        seen += count
        return bool(done), error

    _receive(sock, socket.AF_UNSPEC, 1, parse)
    now = clock()
    if native:
        EXTENSION.end_records(records, int(now))
        return records, seen
    return [to_record(conn, poll, now) for conn in conns if wanted.wants(conn)], len(conns)


def _receive(sock: socket.socket, family: int, seq: int, parse: Callable[[memoryview], tuple[bool, int]]) -> None:
    """Ask for a dump and hand each recv() of it to ``parse`` (→ done, errno) until it is done."""
    # here, not at the top: importing pyroute2's netlink package takes a quarter of a second, which every
    # flowscope command would pay, since every command loads this plugin
    from pyroute2.netlink.nfnetlink import NFNL_SUBSYS_CTNETLINK
    from pyroute2.netlink.nfnetlink.nfctsocket import IPCTNL_MSG_CT_GET

    header = _NLMSG.pack(
        _NLMSG.size + 4, (NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, seq, 0
    )
    sock.send(header + struct.pack("=BBH", family, 0, 0))
    buffer = memoryview(bytearray(RECEIVE_BUFFER))
    while True:
        size = sock.recv_into(buffer)
        done, error = parse(buffer[:size])
        if error:
            raise NetlinkError(error, f"conntrack dump refused: {os.strerror(error)}")
        if done or not size:
            return


def _parse_native(data: memoryview, conns: list[Conn]) -> tuple[bool, int]:
    entries, done, error = EXTENSION.parse_conntrack(data)
    states = TCP_STATES
    for entry in entries:
        state = entry[18]
        conns.append(Conn(*entry[:18], states[state] if 0 <= state < len(states) else "", entry[19]))
    return bool(done), error


def _parse_python(view: memoryview, conns: list[Conn]) -> tuple[bool, int]:
    data = bytes(view)
    position, size = 0, len(data)
    while position + _NLMSG.size <= size:
        length, kind, _flags, _seq, _pid = _NLMSG.unpack_from(data, position)
        if length < _NLMSG.size or kind == NLMSG_DONE:
            return True, 0
        if kind == NLMSG_ERROR:
            code = -struct.unpack_from("=i", data, position + _NLMSG.size)[0]
            if code:
                return True, code
        else:
            conn = parse_entry(data, position + _NLMSG.size + 4, position + length)
            if conn is not None:
                conns.append(conn)
        position += (length + 3) & ~3
    return False, 0
