"""Benchmark: polling and diffing 10k and 100k conntrack entries, next to ``conntrack -L``.

Entries are created over netlink in a network namespace of the benchmark's own (root needed). For
each table size, one poll is measured: the ctnetlink dump, the records, and the connection store's
update of every connection (the second poll of an unchanged table, the steady state). The peer is
``conntrack -L`` listing the same table, measured in the same run.

    .venv/bin/python tests/bench/bench_conntrack.py [--sizes 10000,100000]
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

from flowscope.core.flowtable import FlowTable
from flowscope.entrypoints.exporter.connstore import ConnectionStore
from flowscope.plugins.sources.conntrack import POLL_COMPLETE, to_record
from flowscope.plugins.sources.ctnetlink import dump, open_socket

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


def measure_flowscope(sock: socket.socket, table: FlowTable, poll: int) -> tuple[float, int]:
    started = time.process_time()
    conns = dump(sock)
    now = time.time()
    records = [to_record(conn, poll, now) for conn in conns]
    records.append({POLL_COMPLETE: poll})
    table.offer(records, now, [])
    return time.process_time() - started, len(conns)


def measure_conntrack_cli() -> tuple[float, int]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    result = subprocess.run(["ip", "netns", "exec", NAMESPACE, "conntrack", "-L"], capture_output=True, text=True)
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return cpu, result.stdout.count("\n")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", default="10000,100000")
    args = parser.parse_args()
    if os.geteuid() != 0 or shutil.which("conntrack") is None:
        print("needs root and conntrack-tools (apt-get install conntrack)")
        return 2
    sizes = [int(s) for s in args.sizes.split(",")]
    subprocess.run(["ip", "netns", "add", NAMESPACE], check=True)
    try:
        writer, reader = open_socket(NAMESPACE), open_socket(NAMESPACE)
        table = FlowTable(ConnectionStore(60, 15))
        created, poll = 0, 0
        print(f"{'entries':>8} {'flowscope CPU s':>16} {'conntrack -L CPU s':>19} {'ratio':>6}")
        for size in sizes:
            fill(writer, size - created, created)
            created = size
            poll += 1
            measure_flowscope(reader, table, poll)  # first poll: every connection is new
            poll += 1
            ours, seen = measure_flowscope(reader, table, poll)  # steady state: every connection updated
            theirs, listed = measure_conntrack_cli()
            print(f"{seen:>8} {ours:>16.3f} {theirs:>19.3f} {ours / theirs:>6.2f}   (conntrack -L listed {listed})")
    finally:
        subprocess.run(["ip", "netns", "del", NAMESPACE])
    return 0


if __name__ == "__main__":
    sys.exit(main())
