"""``grpc`` sink: a Flow Exporter's gRPC client (Antrea's ``FlowExportService``, port 14739).

Records become Antrea ``Flow`` messages (:mod:`flowscope.plugins.grpcflow.convert`). Each batch goes
out as one ``Export`` stream on a long-lived channel: its ``ExportRequest`` messages, then the end
of the stream, then the aggregator's ``ExportResponse``, which it sends only once it has read every
message: a batch is written when that response has come. Any failure (unreachable, refused
certificate, deadline) raises ``RetryableError``: the batch stays in the sink's buffer, the channel is
closed, and the runtime tries again on a new one with backoff. A batch whose response was lost may
thus arrive twice, never not at all. Mutual TLS with ``<dataDir>/certs`` by default, as Antrea's
exporter.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
from prometheus_client import Gauge
from pydantic import Field

from flowscope.core.components import Batch, Sink
from flowscope.core.config import Address, Duration, OptionsModel, address_type
from flowscope.core.errors import ConfigError, ConfigIssue, RetryableError
from flowscope.core.hookspecs import hookimpl
from flowscope.core.metrics import shared
from flowscope.plugins.grpcflow.convert import fill_flow, uncarried
from flowscope.plugins.grpcflow.credentials import channel_credentials, client_files
from flowscope.plugins.grpcflow.flow_pb2 import ExportRequest
from flowscope.plugins.grpcflow.flow_pb2_grpc import FlowExportServiceStub
from flowscope.plugins.grpcflow.metrics import SenderMetrics


class GrpcSinkOptions(OptionsModel):
    address: address_type(protocols=(), default_port=14739) = Field(  # type: ignore[valid-type]
        description='the aggregator, "<host>[:<port>]" (port 14739 by default)'
    )
    tls: bool = Field(True, description="mutual TLS, as Antrea's exporter; false sends plaintext (tests only)")
    caCert: str | None = Field(None, description="CA that signed the aggregator's certificate (PEM)")
    clientCert: str | None = Field(None, description="client certificate for mutual TLS (PEM)")
    clientKey: str | None = Field(None, description="client key for mutual TLS (PEM)")
    serverName: str | None = Field(None, description="name to verify the certificate against; default the host")
    observationDomainId: int = Field(0, ge=0, le=0xFFFFFFFF, description="ipfix.observation_domain_id of every flow")
    flowsPerMessage: int = Field(500, gt=0, description="flows per ExportRequest message")
    timeout: Duration = Field("30s", description="one batch's Export call must be answered within this")
    connectTimeout: Duration = Field("5s", description="how long a connection attempt may take")
    antreaMetrics: bool = Field(
        False, description="also count connections as antrea_agent_flow_collector_reconnection_count"
    )


class GrpcSink(Sink):
    """Sends records as Antrea ``Flow`` messages over gRPC."""

    Options = GrpcSinkOptions

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        self.address: Address = options["address"]
        host = self.address.host or "localhost"
        self.target = f"[{host}]:{self.address.port}" if ":" in host else f"{host}:{self.address.port}"
        self.odid: int = options["observationDomainId"]
        self.per_message: int = options["flowsPerMessage"]
        self.timeout: float = options["timeout"]
        self.connect_timeout: float = options["connectTimeout"]
        self.credentials: grpc.ChannelCredentials | None = None
        if options["tls"]:
            files = client_files(options, Path(context.data_dir), context.logger)
            self.credentials = channel_credentials(files)
        metrics = shared(context.metrics, SenderMetrics)
        self._connections = metrics.connections.labels(context.name)
        self._messages = metrics.messages.labels(context.name)
        self._antrea_connections = None
        if options["antreaMetrics"]:
            self._antrea_connections = Gauge(
                "antrea_agent_flow_collector_reconnection_count",
                "Successful connections to the flow collector, the first included.",
                registry=context.metrics,
            )
        self._channel: grpc.Channel | None = None
        self._export: Any = None
        self._reported: set[str] = set()  # elements already reported as not carried

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[ConfigIssue]:
        """The certificate files given load."""
        if not options["tls"]:
            return []
        try:
            channel_credentials((options["caCert"], options["clientCert"], options["clientKey"]))
        except ConfigError as exc:
            return exc.issues
        return []

    def open(self) -> None:
        self._connect()

    def write(self, records: Batch) -> int:
        if self._export is None:
            self._connect()
        requests, sent = self._requests(records)
        if requests:
            self._call(iter(requests), self.timeout, "sending to")
            self._messages.inc(len(requests))
        return sent

    def close(self) -> None:
        self._disconnect()

    # -- records → messages --------------------------------------------------------------------

    def _requests(self, records: Batch) -> tuple[list[ExportRequest], int]:
        """The batch as ExportRequest messages, and how many records they hold; records that cannot be
        sent are counted (``unencodable``) and logged."""
        now = int(time.time())
        requests: list[ExportRequest] = []
        request = ExportRequest()
        sent = bad = 0
        problem = ""
        for record in records:
            if len(request.flows) == self.per_message:
                requests.append(request)
                request = ExportRequest()
            try:
                fill_flow(request.flows.add(), record, self.odid, now)
            except (KeyError, ValueError, TypeError, OSError) as exc:
                del request.flows[-1]
                bad += 1
                problem = f"missing {exc}" if isinstance(exc, KeyError) else str(exc)
                continue
            sent += 1
            extra = uncarried(record) - self._reported
            if extra:
                self._reported |= extra
                self.context.logger.warning(
                    "not carried by Antrea's Flow message, left out: %s", ", ".join(sorted(extra))
                )
        if request.flows:
            requests.append(request)
        if bad:
            self.context.counters.dropped(bad, "unencodable")
            self.context.logger.warning("%d record(s) not exported: %s", bad, problem)
        return requests, sent

    # -- transport -----------------------------------------------------------------------------

    def _connect(self) -> None:
        options = [("grpc.use_local_subchannel_pool", 1)]  # a new channel starts afresh, not in an old backoff
        if self.options["serverName"]:
            options.append(("grpc.ssl_target_name_override", self.options["serverName"]))
        if self.credentials is None:
            self._channel = grpc.insecure_channel(self.target, options)
        else:
            self._channel = grpc.secure_channel(self.target, self.credentials, options)
        self._export = FlowExportServiceStub(self._channel).Export
        # an empty stream: the aggregator answers once TLS, the client certificate and the service are right
        self._call(iter(()), self.connect_timeout, "cannot connect to")
        self._connections.inc()
        if self._antrea_connections is not None:
            self._antrea_connections.inc()
        self.context.logger.info("connected to gRPC flow collector %s", self.target)

    def _call(self, requests: Iterator[ExportRequest], timeout: float, what: str) -> None:
        try:
            self._export(requests, timeout=timeout)
        except grpc.RpcError as exc:
            self._disconnect()
            code = exc.code() if isinstance(exc, grpc.Call) else None
            details = exc.details() if isinstance(exc, grpc.Call) else str(exc)
            name = code.name if code is not None else "error"
            raise RetryableError(f"{what} {self.target} (gRPC): {name}: {details}") from None

    def _disconnect(self) -> None:
        channel, self._channel, self._export = self._channel, None, None
        if channel is not None:
            channel.close()


@hookimpl
def register_sinks(register):
    register("grpc", GrpcSink)
