"""Prometheus metrics of the gRPC transport; each set is made once per registry with
:func:`flowscope.core.metrics.shared`, so every instance of a pipeline shares it."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge


class ReceiverMetrics:
    """Counters of the ``grpc`` source."""

    def __init__(self, registry: CollectorRegistry):
        self.streams = Gauge("flowscope_grpc_streams", "Export streams open.", ["instance"], registry=registry)
        self.messages = Counter(
            "flowscope_grpc_messages", "ExportRequest messages received.", ["instance"], registry=registry
        )
        self.errors = Counter(
            "flowscope_grpc_errors",
            "Bad input, by reason: malformed_message, malformed_flow, disconnected.",
            ["instance", "reason"],
            registry=registry,
        )


class SenderMetrics:
    """Counters of the ``grpc`` sink."""

    def __init__(self, registry: CollectorRegistry):
        self.connections = Counter(
            "flowscope_grpc_exporter_connections",
            "Successful connections to the aggregator, the first included (Antrea's reconnection count).",
            ["instance"],
            registry=registry,
        )
        self.messages = Counter(
            "flowscope_grpc_exporter_messages", "ExportRequest messages sent.", ["instance"], registry=registry
        )
