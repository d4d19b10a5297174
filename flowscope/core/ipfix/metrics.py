"""Prometheus metrics of IPFIX collectors and exporters, shared by every instance of a pipeline."""

from __future__ import annotations

from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge

from flowscope.core.metrics import shared


class CollectorMetrics:
    """Per-exporter counters of the ``ipfix`` source (label ``exporter`` = the exporter's IP)."""

    def __init__(self, registry: CollectorRegistry):
        labels = ["instance", "exporter"]
        self.messages = Counter("flowscope_ipfix_messages", "IPFIX messages received.", labels, registry=registry)
        self.records = Counter("flowscope_ipfix_records", "Data records decoded.", labels, registry=registry)
        self.options = Counter(
            "flowscope_ipfix_options_records", "Options data records decoded.", labels, registry=registry
        )
        self.errors = Counter(
            "flowscope_ipfix_decode_errors",
            "Messages or sets that could not be decoded, by reason.",
            [*labels, "reason"],
            registry=registry,
        )
        self.gaps = Counter(
            "flowscope_ipfix_sequence_gaps", "Sequence number jumps (lost messages).", labels, registry=registry
        )
        self.resets = Counter(
            "flowscope_ipfix_sequence_resets",
            "Sequence numbers that jumped too far to be loss or reordering: taken as a restarted exporter.",
            labels,
            registry=registry,
        )
        self.lost = Counter(
            "flowscope_ipfix_lost_records",
            "Data records the exporter sent that never arrived, from sequence numbers.",
            labels,
            registry=registry,
        )
        self.unknown = Counter(
            "flowscope_ipfix_unknown_element_records",
            "Records carrying elements unknown to the IE registry (kept as ie_<enterprise>_<id>).",
            labels,
            registry=registry,
        )
        self._hot: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.sessions = Gauge("flowscope_ipfix_sessions", "Open TCP/TLS sessions.", ["instance"], registry=registry)
        self.templates = Gauge("flowscope_ipfix_templates", "Templates held.", ["instance"], registry=registry)
        self.receive_drops = Counter(
            "flowscope_ipfix_receive_drops",
            "UDP datagrams the kernel dropped because the socket's receive buffer was full (SO_MEMINFO).",
            ["instance"],
            registry=registry,
        )
        self.refused = Counter(
            "flowscope_ipfix_sessions_refused",
            "TCP/TLS connections refused: max_sessions (maxSessions) or per_exporter (maxSessionsPerExporter).",
            ["instance", "reason"],
            registry=registry,
        )

    def per_message(self, instance: str, exporter: str) -> tuple[Any, Any]:
        """The (messages, records) counters of one exporter, resolved once: they tick per message."""
        key = (instance, exporter)
        found = self._hot.get(key)
        if found is None:
            if len(self._hot) > 10_000:
                self._hot.clear()
            found = self._hot[key] = (self.messages.labels(*key), self.records.labels(*key))
        return found


class ExporterMetrics:
    """Counters of the ``ipfix`` sink."""

    def __init__(self, registry: CollectorRegistry):
        self.connections = Counter(
            "flowscope_ipfix_exporter_connections",
            "Successful connections to the collector, the first included (Antrea's reconnection count).",
            ["instance"],
            registry=registry,
        )
        self.messages = Counter(
            "flowscope_ipfix_exporter_messages", "IPFIX messages sent.", ["instance"], registry=registry
        )
        self.templates = Counter(
            "flowscope_ipfix_exporter_template_sends",
            "Messages of templates sent (on each connection, and on each UDP refresh).",
            ["instance"],
            registry=registry,
        )


def collector_metrics(registry: CollectorRegistry) -> CollectorMetrics:
    return shared(registry, CollectorMetrics)


def exporter_metrics(registry: CollectorRegistry) -> ExporterMetrics:
    return shared(registry, ExporterMetrics)
