"""``conntrack`` source: polls the kernel's connection tracking table over netlink.

Every ``pollInterval`` the table is dumped (in the host, or in the network namespace ``netns``),
filtered by zone, mark and protocol, and emitted as one record per connection, followed by a
control record that marks the end of the poll (for the ``connections`` flow table). The
destination is the post-DNAT endpoint; a DNAT'ed connection (a Service) keeps its original
destination in ``destinationServiceIPv4/6`` and ``destinationServicePort``.
"""

from __future__ import annotations

import socket
import threading
import time
import weakref
from pathlib import Path
from typing import Annotated, Any

from prometheus_client import Gauge, Histogram
from pydantic import AfterValidator, Field

from flowscope.core.components import Emit, Source
from flowscope.core.config import OptionsModel, duration_at_least
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.hookspecs import hookimpl
from flowscope.plugins.sources.ctnetlink import Filter, dump, in_netns, open_socket, poll_records

PROTOCOLS = {"tcp": socket.IPPROTO_TCP, "udp": socket.IPPROTO_UDP, "sctp": 132, "icmp": 1, "icmpv6": 58}
SYSCTLS = ("nf_conntrack_acct", "nf_conntrack_timestamp")
POLL_INTERVAL = duration_at_least(1.0, ", as in Antrea")
POLL_COMPLETE = "_pollComplete"
"""A connection's record carries its poll's number under ``_poll`` (``ctnetlink.POLL``); ``{"_pollComplete": N}``
ends poll N."""
POLL_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


def _known_protocols(value: list[str] | None) -> list[str] | None:
    unknown = [p for p in value or [] if p.lower() not in PROTOCOLS]
    if unknown:
        raise ValueError(f"unknown protocol(s) {', '.join(unknown)}; use: {', '.join(PROTOCOLS)}")
    return value


ProtocolList = Annotated[list[str] | None, AfterValidator(_known_protocols)]
"""An option type: protocol names conntrack can filter on (tcp, udp, sctp, icmp, icmpv6)."""


class ConntrackOptions(OptionsModel):
    pollInterval: POLL_INTERVAL = Field("5s", description="how often the table is dumped (at least 1s)")  # type: ignore[valid-type]
    zones: list[int] | None = Field(None, description="only these conntrack zones (default: every zone)")
    mark: int | None = Field(None, ge=0, le=0xFFFFFFFF, description="only connections whose mark & markMask is this")
    markMask: int = Field(0xFFFFFFFF, ge=0, le=0xFFFFFFFF, description="bits of the mark that `mark` compares")
    protocols: ProtocolList = Field(None, description="only these protocols: tcp, udp, sctp, icmp, icmpv6")
    netns: str | None = Field(None, description="named network namespace (ip netns) to read instead of the host's")
    batchSize: int = Field(5000, gt=0, description="records per batch handed to the pipeline")
    antreaMetrics: bool = Field(False, description="also expose Antrea agent's conntrack gauges")


class ConntrackSource(Source):
    """Dumps conntrack every poll interval and emits one record per connection."""

    Options = ConntrackOptions

    @classmethod
    def preflight(cls, options: dict) -> list[ConfigIssue]:
        """The network namespace exists."""
        netns = options["netns"]
        if netns is None or Path(f"/run/netns/{netns}").exists():
            return []
        known = sorted(p.name for p in Path("/run/netns").glob("*")) if Path("/run/netns").exists() else []
        return [ConfigIssue("netns", f"{netns!r} does not exist; existing: {', '.join(known) or 'none'}")]

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.interval: float = options["pollInterval"]
        protocols = options["protocols"]
        self.wanted = Filter(
            zones=frozenset(options["zones"]) if options["zones"] is not None else None,
            mark=options["mark"],
            mark_mask=options["markMask"],
            protocols=None if protocols is None else frozenset(PROTOCOLS[p.lower()] for p in protocols),
        )
        self.netns: str | None = options["netns"]
        self.batch_size: int = options["batchSize"]
        self.log = context.logger
        self._stopped = threading.Event()
        self._poll = 0
        self._enable_accounting()
        try:
            self._sock = open_socket(self.netns)
            dump(self._sock)  # fail now, clearly, rather than at every poll
        except PermissionError:
            raise ConfigError(
                "conntrack: reading the connection table needs root or CAP_NET_ADMIN (netlink permission denied)"
            ) from None
        except OSError as exc:
            raise ConfigError(f"conntrack: cannot read the connection table: {exc}") from None
        registry = context.metrics
        total, duration = _metrics(registry)
        self._total, self._duration = total.labels(context.name), duration.labels(context.name)
        self._antrea: dict[str, Any] = {}
        if options["antreaMetrics"]:
            try:
                self._antrea_metrics(registry)
            except ValueError:  # already registered by another instance
                raise ConfigError(ConfigIssue("antreaMetrics", "can be true on one conntrack source only")) from None

    def _antrea_metrics(self, registry: Any) -> None:
        """Antrea agent's gauges, with Antrea's names and meanings (reference §6)."""
        prefix = "antrea_agent_"
        self._antrea["total"] = Gauge(
            prefix + "conntrack_total_connection_count",
            "Entries dumped from conntrack in the polled zones.",
            registry=registry,
        )
        store = Gauge(
            prefix + "conntrack_antrea_connection_count", "Connections in the connection store.", registry=registry
        )
        store.set_function(lambda: float(len(self.context.services.get("flowtable") or ())))
        maximum = Gauge(prefix + "conntrack_max_connection_count", "net.netfilter.nf_conntrack_max.", registry=registry)
        maximum.set(self._read_sysctl("nf_conntrack_max") or 0)
        Gauge(
            prefix + "denied_connection_count",
            "Connections in the deny store (none without OVS packet-in).",
            registry=registry,
        ).set(0)
        self._antrea["duration"] = Histogram(
            prefix + "conntrack_poll_cycle_duration_seconds",
            "Time to poll conntrack.",
            buckets=POLL_BUCKETS,
            registry=registry,
        )

    # -- kernel settings -----------------------------------------------------------------------

    def _sysctl_path(self, name: str) -> Path:
        return Path("/proc/sys/net/netfilter") / name

    def _read_sysctl(self, name: str) -> int | None:
        def read() -> int | None:
            try:
                return int(self._sysctl_path(name).read_text())
            except (OSError, ValueError):
                return None

        return in_netns(self.netns, read) if self.netns else read()

    def _enable_accounting(self) -> None:
        """Byte/packet counters and start timestamps are off by default in the kernel."""

        def enable() -> list[str]:
            problems = []
            for name in SYSCTLS:
                path = self._sysctl_path(name)
                try:
                    if path.read_text().strip() != "1":
                        path.write_text("1")
                except OSError as exc:
                    problems.append(f"{name}: {exc.strerror or exc}")
            return problems

        problems = in_netns(self.netns, enable) if self.netns else enable()
        for problem in problems:
            self.log.warning(
                "cannot enable net.netfilter.%s; counters or start times will be zero (run as root, or set "
                "the sysctl yourself)",
                problem,
            )

    # -- polling -------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped.set()

    def run(self, emit: Emit) -> None:
        try:
            while not self._stopped.is_set():
                started = time.monotonic()
                try:
                    self.poll(emit)
                except OSError as exc:
                    self.context.counters.error()
                    self.log.warning("conntrack dump failed, retrying at the next poll: %s", exc)
                elapsed = time.monotonic() - started
                self._stopped.wait(max(0.0, self.interval - elapsed))
        finally:
            self._sock.close()

    def poll(self, emit: Emit) -> int:
        """Dump, filter and emit one poll; returns how many connections were emitted."""
        started = time.perf_counter()
        poll = self._poll + 1
        records, seen = poll_records(self._sock, poll, self.wanted)
        self._poll = poll
        emitted = len(records)
        records.append({POLL_COMPLETE: poll})
        self.context.counters.received(seen)
        for first in range(0, len(records), self.batch_size):
            emit(records[first : first + self.batch_size])
        elapsed = time.perf_counter() - started
        self._total.set(seen)
        self._duration.observe(elapsed)
        if self._antrea:
            self._antrea["total"].set(seen)
            self._antrea["duration"].observe(elapsed)
        return emitted


_registered: weakref.WeakKeyDictionary[Any, tuple[Gauge, Histogram]] = weakref.WeakKeyDictionary()


def _metrics(registry: Any) -> tuple[Gauge, Histogram]:
    """The source's own collectors, one set per registry, labelled by instance."""
    found = _registered.get(registry)
    if found is None:
        found = _registered[registry] = (
            Gauge(
                "flowscope_conntrack_connections",
                "Entries in the last conntrack dump (all zones).",
                ["instance"],
                registry=registry,
            ),
            Histogram(
                "flowscope_conntrack_poll_seconds",
                "Time to dump and convert the table.",
                ["instance"],
                buckets=POLL_BUCKETS,
                registry=registry,
            ),
        )
    return found


@hookimpl
def register_sources(register):
    register("conntrack", ConntrackSource)
