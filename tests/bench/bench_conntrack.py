"""Benchmark: polling and diffing 10k and 100k conntrack entries, next to ``conntrack -L``.

Entries are created over netlink in a network namespace of the benchmark's own (root needed). For
each table size, a poll is measured in each round: the ctnetlink dump, the records, and the
connection store's update of every connection (polls of an unchanged table after the first: the
steady state), as CPU time of this process (user and system: the dump's recv is kernel time). The
peer is ``conntrack -L`` listing the same table in the same round, measured as child CPU time. At
the largest size, the pure-Python twins (parser and flow table) are measured too.

    .venv/bin/python tests/bench/bench_conntrack.py [--sizes 10000,100000] [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import resource
import shutil
import socket
import struct
import subprocess
import sys
import time
from dataclasses import dataclass

from measure import Row, Spread, own_cpu_seconds, ratios, report  # tests/bench/measure.py

from flowscope.core.flowtable import FlowTable, PyFlowTable
from flowscope.entrypoints.exporter.connstore import ConnectionStore
from flowscope.plugins.sources.conntrack import POLL_COMPLETE
from flowscope.plugins.sources.ctnetlink import open_socket, poll_records

NAMESPACE = f"fsbench{os.getpid()}"
IPCTNL_MSG_CT_NEW = 0
NLM_F_REQUEST, NLM_F_CREATE = 0x1, 0x400
NESTED = 0x8000


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * ((4 - length % 4) % 4)


def tuple_(src: bytes, dst: bytes, sport: int, dport: int) -> bytes:
    ip = attr(1 | NESTED, attr(1, src) + attr(2, dst))
    proto = attr(
        2 | NESTED,
        attr(1, bytes([socket.IPPROTO_UDP])) + attr(2, struct.pack(">H", sport)) + attr(3, struct.pack(">H", dport)),
    )
    return ip + proto


def new_entry(index: int, seq: int) -> bytes:
    src = bytes([10, 40, (index >> 8) & 0xFF, index & 0xFF])
    dst = bytes([10, 41, (index >> 16) & 0xFF, 1])
    sport, dport = 10000 + index % 50000, 53
    body = struct.pack("=BBH", socket.AF_INET, 0, 0)
    body += attr(1 | NESTED, tuple_(src, dst, sport, dport)) + attr(2 | NESTED, tuple_(dst, src, dport, sport))
    body += attr(7, struct.pack(">I", 3600))  # CTA_TIMEOUT
    header = struct.pack("=IHHII", 16 + len(body), (1 << 8) | IPCTNL_MSG_CT_NEW, NLM_F_REQUEST | NLM_F_CREATE, seq, 0)
    return header + body


def fill(sock: socket.socket, count: int, start: int) -> None:
    """Create entries start..start+count-1, many netlink messages per send."""
    chunk: list[bytes] = []
    for index in range(start, start + count):
        chunk.append(new_entry(index, index))
        if len(chunk) == 200:
            sock.send(b"".join(chunk))
            chunk = []
            drain(sock)
    if chunk:
        sock.send(b"".join(chunk))
    drain(sock)


def drain(sock: socket.socket) -> None:
    sock.setblocking(False)
    try:
        while sock.recv(1 << 16):
            pass
    except BlockingIOError:
        pass
    finally:
        sock.setblocking(True)


@dataclass
class Poller:
    """What one flowscope poll does: records of the dump, then the connection store's update."""

    sock: socket.socket
    table: FlowTable | PyFlowTable
    native: bool
    poll: int = 0

    def run(self) -> int:
        """One poll; how many entries it saw."""
        self.poll += 1
        records, seen = poll_records(self.sock, self.poll, native=self.native)
        records.append({POLL_COMPLETE: self.poll})
        self.table.offer(records, time.time(), [])
        return seen

    def measure(self) -> tuple[float, int]:
        """CPU seconds (user and system, all threads) of one poll, and the entries seen."""
        before = own_cpu_seconds()
        seen = self.run()
        return own_cpu_seconds() - before, seen


def measure_conntrack_cli() -> tuple[float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(["ip", "netns", "exec", NAMESPACE, "conntrack", "-L"], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, result.stdout.count("\n")


def compare(stage: str, poller: Poller, size: int, rounds: int, target: bool) -> None:
    """Rounds of one flowscope poll and one conntrack -L each; report their medians and ratio."""
    ours: list[float] = []
    peer: list[float] = []
    for _ in range(rounds):
        cpu, seen = poller.measure()
        theirs, listed = measure_conntrack_cli()
        if seen != size or listed != size:
            raise SystemExit(f"expected {size} entries; flowscope saw {seen}, conntrack -L listed {listed}")
        ours.append(cpu)
        peer.append(theirs)
    ratio = Spread.of(ratios(ours, peer))
    report(
        Row(
            stage=stage,
            unit="CPU-s",
            ours=Spread.of(ours),
            peer_name="conntrack -L",
            peer=Spread.of(peer),
            ratio=ratio,
            target="≤ 1.2x conntrack -L" if target else "",
            met=ratio.median <= 1.2 if target else None,
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("conntrack") is None:
        print("needs root and conntrack-tools (apt-get install conntrack)")
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    subprocess.run(["ip", "netns", "add", NAMESPACE], check=True)
    try:
        writer, reader = open_socket(NAMESPACE), open_socket(NAMESPACE)
        poller = Poller(reader, FlowTable(ConnectionStore(60, 15)), native=True)
        created = 0
        for size in sizes:
            fill(writer, size - created, created)
            created = size
            poller.run()  # every connection new to the store; the measured polls update them all
            largest = size == sizes[-1]
            compare(f"Conntrack poll, {size:,} entries", poller, size, args.rounds, target=largest)
        twin = Poller(reader, PyFlowTable(ConnectionStore(60, 15)), native=False)
        twin.run()
        compare(f"Conntrack poll, {created:,} entries, pure Python", twin, created, max(3, args.rounds // 2), False)
    finally:
        subprocess.run(["ip", "netns", "del", NAMESPACE])
    return 0


if __name__ == "__main__":
    sys.exit(main())
