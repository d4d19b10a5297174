"""Helpers for the interop tests: peer processes, network namespaces, flowscope pipelines, records.

Every wait is bounded; every process started here is stopped by its own pid.
"""

from __future__ import annotations

import contextlib
import ctypes
import ipaddress
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import flowscope
from flowscope.core.ipfix.antrea import EXPORTER_IPV4, EXPORTER_IPV6
from flowscope.core.pipeline import Pipeline
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins
from flowscope.testing import builtin_elements
from tests import helpers

ANTREA_PEN = 56506
ELEMENTS = builtin_elements()


# -- skipping -------------------------------------------------------------------------------------


def need(*binaries: str) -> None:
    """Skip the test unless every binary is on PATH."""
    missing = [b for b in binaries if shutil.which(b) is None]
    if missing:
        pytest.skip(f"interop peer not installed: {', '.join(missing)} (make system-packages installs it)")


def need_root(why: str) -> None:
    if os.geteuid() != 0:
        pytest.skip(f"needs root: {why}")


# -- waiting --------------------------------------------------------------------------------------


def wait_until(predicate: Callable[[], Any], timeout: float, what: str | Callable[[], str], interval: float = 0.05):
    """``predicate()`` once it is truthy; fails with ``what`` (a text, or a function giving one) after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() >= deadline:
            detail = what() if callable(what) else what
            pytest.fail(f"timed out after {timeout}s waiting for {detail}")
        time.sleep(interval)


# -- peer processes -------------------------------------------------------------------------------


class Peer:
    """A peer daemon run in the foreground, optionally inside a network namespace.

    Its stdout and stderr go to ``log_path``. ``ip netns exec`` execs the command, so the pid is
    the peer's own and signals reach it directly. Use as a context manager: leaving kills it.
    """

    def __init__(self, name: str, argv: list[str], log_path: Path, netns: str | None = None):
        self.name = name
        self.argv = (["ip", "netns", "exec", netns] if netns else []) + argv
        self.log_path = log_path
        self._log_file = open(log_path, "wb")  # noqa: SIM115 - closed in stop()
        env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
        self.proc = subprocess.Popen(
            self.argv, stdin=subprocess.DEVNULL, stdout=self._log_file, stderr=subprocess.STDOUT, env=env
        )

    def __enter__(self) -> Peer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop(signal.SIGKILL, timeout=5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def describe(self) -> str:
        state = "running" if self.proc.poll() is None else f"exited with {self.proc.returncode}"
        return f"{self.name} ({state}; {' '.join(self.argv)}) said:\n{self.log()[-4000:]}"

    def wait_for_log(self, pattern: str, timeout: float) -> re.Match:
        """Wait until the log matches ``pattern``; fail at once if the peer exits first."""

        def check():
            found = re.search(pattern, self.log(), re.MULTILINE)
            if found is None and self.proc.poll() is not None:
                found = re.search(pattern, self.log(), re.MULTILINE)
                if found is None:
                    pytest.fail(f"{self.name} exited before printing {pattern!r}: {self.describe()}")
            return found

        return wait_until(check, timeout, lambda: f"{pattern!r} from {self.describe()}")

    def wait(self, timeout: float) -> int:
        """Wait for the peer to exit by itself; fail (and kill it) after ``timeout``."""
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.stop(signal.SIGKILL)
            pytest.fail(f"{self.name} did not exit within {timeout}s: {self.describe()}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 10) -> int:
        """Send ``sig`` and wait for the exit (SIGKILL after ``timeout``); the exit status."""
        if self.proc.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log_file.close()
        return self.proc.returncode


def run(argv: list[str], timeout: float = 30, netns: str | None = None, check: bool = True) -> str:
    """Run a command to completion; its stdout (failing with its stderr when ``check``)."""
    argv = (["ip", "netns", "exec", netns] if netns else []) + argv
    env = {**os.environ, "LC_ALL": "C", "TZ": "UTC"}
    result = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env)
    if check and result.returncode != 0:
        pytest.fail(f"{' '.join(argv)} failed with {result.returncode}:\n{result.stderr[-4000:]}")
    return result.stdout


# -- network namespaces ---------------------------------------------------------------------------

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def in_netns(netns: str, fn: Callable[..., Any], *args: Any, timeout: float = 30) -> Any:
    """Call ``fn(*args)`` in a short-lived thread that has entered ``netns``; return its result.

    Only that thread changes namespace (setns(2) is per thread). Sockets it creates stay in
    ``netns`` and can be used from any thread afterwards.
    """
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            fd = os.open(f"/run/netns/{netns}", os.O_RDONLY)
            try:
                if _libc.setns(fd, CLONE_NEWNET) != 0:
                    err = ctypes.get_errno()
                    raise OSError(err, f"setns({netns}): {os.strerror(err)}")
            finally:
                os.close(fd)
            outcome["value"] = fn(*args)
        except BaseException as exc:
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"netns-{netns}", daemon=True)
    thread.start()
    thread.join(timeout)
    if thread.is_alive():
        pytest.fail(f"{fn!r} in namespace {netns} did not return within {timeout}s")
    if "error" in outcome:
        raise outcome["error"]
    return outcome["value"]


class VethPair:
    """Two network namespaces joined by a veth pair, with IPv4 and IPv6 addresses on each end."""

    def __init__(self, tag: str):
        self.ns_a, self.ns_b = f"fsi{tag}a", f"fsi{tag}b"
        self.if_a, self.if_b = f"fva{tag}", f"fvb{tag}"
        self.v4_a, self.v4_b = "10.231.7.1", "10.231.7.2"
        self.v6_a, self.v6_b = "fd00:231:7::1", "fd00:231:7::2"
        self.created: list[str] = []

    def setup(self) -> None:
        a, b, ia, ib = self.ns_a, self.ns_b, self.if_a, self.if_b
        for ns in (a, b):
            run(["ip", "netns", "add", ns])
            self.created.append(ns)
        run(["ip", "link", "add", ia, "netns", a, "type", "veth", "peer", "name", ib, "netns", b])
        for ns, iface, v4, v6 in ((a, ia, self.v4_a, self.v6_a), (b, ib, self.v4_b, self.v6_b)):
            run(["ip", "-n", ns, "link", "set", "lo", "up"])
            run(["ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", iface])
            run(["ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", iface, "nodad"])
            run(["ip", "-n", ns, "link", "set", iface, "up"])

    def teardown(self) -> None:
        for ns in self.created:
            run(["ip", "netns", "del", ns], check=False)
        self.created.clear()


# -- traffic --------------------------------------------------------------------------------------


def _family(address: str) -> int:
    return socket.AF_INET6 if ":" in address else socket.AF_INET


def tcp_transfer(client_ns: str, client_addr: str, server_ns: str, server_addr: str, port: int, size: int) -> dict:
    """Send ``size`` bytes over TCP from ``client_ns`` to a server in ``server_ns``, which answers "ok".

    Returns the client port and the payload bytes each way.
    """
    family = _family(server_addr)

    def listen() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((server_addr, port))
        sock.listen(1)
        sock.settimeout(10)
        return sock

    server = in_netns(server_ns, listen)
    got: dict[str, Any] = {}

    def serve() -> None:
        try:
            conn, _ = server.accept()
            with conn:
                conn.settimeout(10)
                total = 0
                while chunk := conn.recv(1 << 16):
                    total += len(chunk)
                got["bytes"] = total
                conn.sendall(b"ok")
                got["retransmissions"] = tcp_retransmissions(conn)
        except OSError as exc:
            got["error"] = exc
        finally:
            server.close()

    thread = threading.Thread(target=serve, name="tcp-server", daemon=True)
    thread.start()

    def connect() -> socket.socket:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.settimeout(10)
        sock.bind((client_addr, 0))
        sock.connect((server_addr, port))
        return sock

    client = in_netns(client_ns, connect)
    with client:
        client_port = client.getsockname()[1]
        client.sendall(b"\x5a" * size)
        client.shutdown(socket.SHUT_WR)
        answer = b""
        while chunk := client.recv(16):
            answer += chunk
        retransmissions = tcp_retransmissions(client)
    thread.join(10)
    assert not thread.is_alive(), "TCP server did not finish within 10s"
    assert got.get("bytes") == size and answer == b"ok", f"TCP transfer incomplete: {got}, answer {answer!r}"
    return {
        "client_port": client_port,
        "forward_payload": size,
        "reverse_payload": len(answer),
        "retransmissions": retransmissions + got["retransmissions"],
    }


def tcp_retransmissions(sock: socket.socket) -> int:
    """``tcpi_total_retrans`` of a Linux TCP socket (struct tcp_info, offset 100)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return int.from_bytes(info[100:104], sys.byteorder)


def check_tcp_octets(name: str, payload: int, packets: int, octets: int, retransmissions: int) -> None:
    """IP bytes of one direction of a TCP connection on Linux: the payload plus 52 header bytes a
    packet (IPv4 20, TCP 20 + 12 of timestamps) and 8 more for the SYN or SYN-ACK options (Linux
    defaults in a new namespace). Exact unless segments were retransmitted, or acknowledged out of
    order: an ACK with one SACK block carries 12 more option bytes (two NOPs, kind, length, 8)."""
    expected = payload + 52 * packets + 8
    if retransmissions:
        assert octets >= expected, (name, packets, octets, expected, f"{retransmissions} retransmissions")
    else:
        sacks, rest = divmod(octets - expected, 12)
        assert rest == 0 and 0 <= sacks <= packets, (name, packets, octets, expected)


def udp_burst(src_ns: str, src: tuple[str, int], dst_ns: str, dst: tuple[str, int], count: int, size: int) -> None:
    """``count`` datagrams of ``size`` payload bytes, each received by a socket in ``dst_ns``."""
    family = _family(dst[0])

    def bind(address: tuple[str, int]) -> socket.socket:
        sock = socket.socket(family, socket.SOCK_DGRAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind(address)
        sock.settimeout(5)
        return sock

    receiver = in_netns(dst_ns, bind, dst)
    sender = in_netns(src_ns, bind, src)
    with receiver, sender:
        for _ in range(count):
            sender.sendto(b"\xa5" * size, dst)
            receiver.recv(65536)


TCP_BYTES = 1_000_000
UDP4 = (10, 1000)  # datagrams, payload bytes
UDP6 = (5, 500)


def mixed_traffic(net: Any) -> tuple[dict, dict[str, tuple]]:
    """A TCP transfer and UDP bursts over IPv4 and IPv6 from namespace A to B.

    Returns the TCP transfer's facts and the 5-tuples (src, dst, sport, dport, proto) of the flows.
    """
    tcp = tcp_transfer(net.ns_a, net.v4_a, net.ns_b, net.v4_b, 8000, TCP_BYTES)
    udp_burst(net.ns_a, (net.v4_a, 5555), net.ns_b, (net.v4_b, 9999), *UDP4)
    udp_burst(net.ns_a, (net.v6_a, 5556), net.ns_b, (net.v6_b, 9999), *UDP6)
    flows = {
        "tcp forward": (net.v4_a, net.v4_b, tcp["client_port"], 8000, 6),
        "tcp reverse": (net.v4_b, net.v4_a, 8000, tcp["client_port"], 6),
        "udp ipv4": (net.v4_a, net.v4_b, 5555, 9999, 17),
        "udp ipv6": (net.v6_a, net.v6_b, 5556, 9999, 17),
    }
    return tcp, flows


# -- flowscope pipelines --------------------------------------------------------------------------


class PacedSource(flowscope.Source):
    """Emits ``options['records']`` in batches of ``batch``, ``pause`` seconds apart.

    Keeps a burst of thousands of UDP messages from overflowing a peer's socket buffer.
    """

    def __init__(self, options: dict, context: flowscope.Context):
        super().__init__(options, context)
        self.stopped = threading.Event()

    def run(self, emit):
        records, size, pause = self.options["records"], self.options.get("batch", 100), self.options.get("pause", 0.01)
        for start in range(0, len(records), size):
            if self.stopped.is_set():
                return
            emit([dict(r) for r in records[start : start + size]])
            self.stopped.wait(pause)

    def stop(self):
        self.stopped.set()


@flowscope.hookimpl
def register_sources(register):
    register("paced", PacedSource)


def build(spec: dict[str, Any]) -> Pipeline:
    """A pipeline over the installed plugins, the test plugins and ``paced``."""
    import tests.interop.support as module

    plugins = load_plugins(extra=[helpers, module])
    return Pipeline(validate_config(spec, plugins), plugins)


def export(records: list[dict], address: str, data_dir: Path, *, batch: int = 100, pause: float = 0.01) -> Pipeline:
    """Send ``records`` with flowscope's ipfix sink to ``address`` and wait until it is done."""
    spec = {
        "sources": [{"type": "paced", "records": records, "batch": batch, "pause": pause}],
        "sinks": [{"type": "ipfix", "address": address, "batchSize": batch, "flushInterval": "50ms"}],
        "dataDir": str(data_dir),
        "shutdownTimeout": "10s",
    }
    pipeline = build(spec)
    pipeline.start()
    if not pipeline.wait(60):
        pipeline.stop()
        pytest.fail("the exporting pipeline did not finish within 60s")
    counters = pipeline.metrics.counters("sink", "ipfix")
    assert counters.value("dropped") == 0, f"the ipfix sink dropped {counters.value('dropped')} records"
    assert counters.value("emitted") == len(records), f"the ipfix sink wrote {counters.value('emitted')} records"
    return pipeline


class Collector:
    """flowscope's ipfix source (optionally inside a network namespace) feeding a ``collect`` sink."""

    def __init__(self, address: str, data_dir: Path, netns: str | None = None, name: str = "collected"):
        self.name = name
        spec = {
            "sources": [{"type": "ipfix", "name": "peer", "address": address, "batchInterval": "50ms"}],
            "sinks": [{"type": "collect", "name": name, "flushInterval": "50ms"}],
            "dataDir": str(data_dir),
            "shutdownTimeout": "5s",
        }
        self.pipeline = in_netns(netns, build, spec) if netns else build(spec)
        self.port: int = self.pipeline.sources[0][1].port
        self.pipeline.start()
        self._stopped = False

    @property
    def records(self) -> list[dict]:
        return list(helpers.COLLECTED.get(self.name, []))

    def metric(self, sample: str, **labels: str) -> float:
        """Sum of the samples named ``sample`` whose labels include ``labels``."""
        total = 0.0
        for family in self.pipeline.metrics.registry.collect():
            for s in family.samples:
                if s.name == sample and all(s.labels.get(k) == v for k, v in labels.items()):
                    total += s.value
        return total

    def problems(self) -> dict[str, float]:
        """Decode errors by reason, sequence gaps and the source's error count: all should be zero."""
        found: dict[str, float] = {}
        for family in self.pipeline.metrics.registry.collect():
            for s in family.samples:
                if s.name == "flowscope_ipfix_decode_errors_total" and s.value:
                    key = f"decode_error:{s.labels.get('reason')}"
                    found[key] = found.get(key, 0) + s.value
        gaps = self.metric("flowscope_ipfix_sequence_gaps_total")
        if gaps:
            found["sequence_gaps"] = gaps
        errors = self.pipeline.metrics.counters("source", "peer").value("errors")
        if errors:
            found["source_errors"] = errors
        return found

    def stop(self) -> None:
        if not self._stopped:
            self._stopped = True
            self.pipeline.stop()
            self.pipeline.wait(10)


def flow_key(record: dict) -> tuple:
    """(source, destination, source port, destination port, protocol) of a decoded record."""
    src = record.get("sourceIPv4Address") or record.get("sourceIPv6Address")
    dst = record.get("destinationIPv4Address") or record.get("destinationIPv6Address")
    return (
        src,
        dst,
        record.get("sourceTransportPort", 0),
        record.get("destinationTransportPort", 0),
        record.get("protocolIdentifier"),
    )


def totals_by_flow(records: list[dict]) -> dict[tuple, tuple[int, int]]:
    """(packets, octets) summed over the records of each 5-tuple, one way.

    The reverse counters of a biflow record (RFC 5103) count for the opposite 5-tuple.
    """
    sums: dict[tuple, tuple[int, int]] = {}

    def add(key: tuple, packets: int, octets: int) -> None:
        old = sums.get(key, (0, 0))
        sums[key] = (old[0] + packets, old[1] + octets)

    for record in records:
        src, dst, sport, dport, proto = key = flow_key(record)
        add(key, record.get("packetDeltaCount", 0), record.get("octetDeltaCount", 0))
        if record.get("reversePacketDeltaCount"):
            add((dst, src, dport, sport, proto), record["reversePacketDeltaCount"], record["reverseOctetDeltaCount"])
    return sums


def tcp_fin_senders(records: list[dict]) -> set[int]:
    """Source ports of the TCP flow directions whose FIN has been exported (biflows included)."""
    ports = set()
    for r in records:
        if r.get("protocolIdentifier") == 6:
            if r.get("tcpControlBits", 0) & 0x01:
                ports.add(r["sourceTransportPort"])
            if r.get("reverseTcpControlBits", 0) & 0x01:
                ports.add(r["destinationTransportPort"])
    return ports


# -- Antrea-shaped records ------------------------------------------------------------------------

START = 1767225600  # 2026-01-01T00:00:00Z
LONG_RULE = "allow-" + "x" * 294  # 300 bytes: the 3-byte variable-length form (RFC 7011 §7)


def antrea_record(i: int, family: str = "ipv4") -> dict:
    """Record ``i`` of an Antrea flow exporter's shape: a pod-to-service TCP connection."""
    v6 = family == "ipv6"
    antrea_policy = i % 3 == 0
    egress = i % 4 == 0
    values = {
        "flowStartSeconds": START + i,
        "flowEndSeconds": START + i + 30 + i % 60,
        "flowEndReason": 3 if i % 5 == 0 else 2,
        "sourceTransportPort": 20000 + i,
        "destinationTransportPort": 8080,
        "protocolIdentifier": 6,
        "packetTotalCount": 100 + 3 * i,
        "octetTotalCount": 150_000 + 1_447 * i,
        "packetDeltaCount": 10 + i % 7,
        "octetDeltaCount": 15_000 + 13 * i,
        "sourceIPv4Address": f"10.10.{i // 250}.{i % 250 + 1}",
        "destinationIPv4Address": "10.10.200.7",
        "reversePacketTotalCount": 90 + 2 * i,
        "reverseOctetTotalCount": 9_000 + 101 * i,
        "reversePacketDeltaCount": 9 + i % 5,
        "reverseOctetDeltaCount": 900 + 7 * i,
        "sourcePodName": f"frontend-7d9f8c6b5-{i:05d}",
        "sourcePodNamespace": "shop",
        "sourceNodeName": f"k8s-node-{1 + i % 3}",
        "destinationPodName": "backend-5c4b9d7f8-x2k9q",
        "destinationPodNamespace": "shop",
        "destinationNodeName": "k8s-node-2",
        "destinationServicePort": 8080,
        "destinationServicePortName": "shop/backend:http",
        "ingressNetworkPolicyName": "allow-frontend" if not antrea_policy else "acnp-shop-ingress",
        "ingressNetworkPolicyNamespace": "shop" if not antrea_policy else "",
        "ingressNetworkPolicyType": 1 if not antrea_policy else 3,
        "ingressNetworkPolicyRuleName": "" if not antrea_policy else (LONG_RULE if i % 9 == 0 else "ingress-rule-0"),
        "ingressNetworkPolicyRuleAction": 0 if not antrea_policy else 1,
        "egressNetworkPolicyName": "" if i % 2 else "default-deny-egress",
        "egressNetworkPolicyNamespace": "" if i % 2 else "shop",
        "egressNetworkPolicyType": 0 if i % 2 else 1,
        "egressNetworkPolicyRuleName": "",
        "egressNetworkPolicyRuleAction": 0,
        "tcpState": "ESTABLISHED" if i % 5 else "TIME_WAIT",
        "flowType": 2 if i % 2 else 1,
        "egressName": "egress-prod" if egress else "",
        "egressIP": "172.18.0.100" if egress else "",
        "egressNodeName": "k8s-node-3" if egress else "",
        "proxySnatPort": 0,
        "destinationClusterIPv4": "10.96.0.12",
        "proxySnatIPv4": "0.0.0.0",
        "destinationServiceIPv4": "10.96.0.12",
    }
    if v6:
        values.update(
            sourceIPv6Address=f"fd00:10:244:{i // 250}::{i % 250 + 1:x}",
            destinationIPv6Address="fd00:10:244:c8::7",
            destinationClusterIPv6="fd00:10:96::c",
            proxySnatIPv6="::",
            destinationServiceIPv6="fd00:10:96::c",
        )
    keys = EXPORTER_IPV6 if v6 else EXPORTER_IPV4
    return {key: values[key] for key in keys}


def encode_value(name: str, value: Any) -> bytes:
    """The bytes an element's value takes on the wire (without a variable-length prefix)."""
    element = ELEMENTS[name]
    kind = element.type
    if kind == "string":
        return value.encode()
    if kind == "ipv4Address":
        return ipaddress.IPv4Address(value).packed
    if kind == "ipv6Address":
        return ipaddress.IPv6Address(value).packed
    if kind.startswith("unsigned") or kind.startswith("dateTime"):
        return int(value).to_bytes(element.length, "big")
    raise AssertionError(f"no test encoding for {name} ({kind})")
