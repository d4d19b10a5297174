"""``grpc`` source: the Flow Aggregator's gRPC collector (Antrea's ``FlowExportService`` on 14739).

Exporters open ``Export`` client streams and send ``ExportRequest`` messages of ``Flow``\\ s; each flow
becomes the record the IPFIX path would give (:mod:`flowscope.plugins.grpcflow.convert`). When a
stream ends, the records it brought are handed to the pipeline before the exporter gets its
``ExportResponse``. Mutual TLS with ``<dataDir>/certs`` by default, as Antrea's collector.

Bad input is counted in ``flowscope_grpc_errors_total{reason}`` and logged (at most every 10 s per
exporter and reason): bytes that are not an ``ExportRequest`` end their stream with
``INVALID_ARGUMENT``; a flow that no IPFIX record could carry is dropped (``malformed``), the rest
of its message kept; an exporter that goes away mid-stream keeps what it sent. What is not gRPC at
all (garbage, a failed TLS handshake) is refused by gRPC before it reaches this code.
"""

from __future__ import annotations

import logging
import threading
import time
import urllib.parse
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import grpc
from google.protobuf.message import DecodeError
from pydantic import Field

from flowscope.core import preflight
from flowscope.core.components import Batch, Emit, Source
from flowscope.core.config import Address, Duration, OptionsModel, address_type
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.hookspecs import hookimpl
from flowscope.core.metrics import shared
from flowscope.plugins.grpcflow.convert import MalformedFlow, mark_exporter, to_record
from flowscope.plugins.grpcflow.credentials import server_credentials, server_files
from flowscope.plugins.grpcflow.flow_pb2 import DESCRIPTOR, ExportRequest
from flowscope.plugins.grpcflow.metrics import ReceiverMetrics

SERVICE = DESCRIPTOR.services_by_name["FlowExportService"].full_name
STOP_GRACE = 1.0  # seconds streams under way may take to finish when the source stops
LOG_EVERY = 10.0  # seconds between two log lines of one exporter and reason
MAX_TRACKED = 100_000  # log throttles kept at most


class GrpcSourceOptions(OptionsModel):
    address: address_type(protocols=(), default_port=14739, allow_port_zero=True) = Field(  # type: ignore[valid-type]
        ":14739", description='where to listen, "<host>[:<port>]"; an empty host listens on every interface'
    )
    tls: bool = Field(True, description="TLS, as Antrea's collector; false serves plaintext (tests, trusted networks)")
    tlsCert: str | None = Field(None, description="server certificate (PEM); default: the one in dataDir/certs")
    tlsKey: str | None = Field(None, description="server key (PEM)")
    clientCA: str | None = Field(
        None, description="CA of the exporters' client certificates (PEM); default: the generated CA"
    )
    clientAuth: bool = Field(True, description="require a client certificate signed by clientCA (mutual TLS)")
    tlsHosts: list[str] = Field(
        default_factory=list, description="names the generated server certificate is also valid for"
    )
    batchSize: int = Field(1000, gt=0, description="records per batch handed to the pipeline")
    batchInterval: Duration = Field("100ms", description="a partial batch waits at most this long")
    maxSessions: int = Field(1000, gt=0, description="Export streams at once; more are refused")
    maxMessageSize: int = Field(4 << 20, gt=0, description="largest ExportRequest in bytes; larger ones are refused")
    exporterFields: bool = Field(
        False, description="add originalExporterIPv4/IPv6Address and originalObservationDomainId to each record"
    )


class GrpcSource(Source):
    """Receives Antrea ``Flow`` messages from any number of exporters and emits them as records."""

    Options = GrpcSourceOptions

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        self.address: Address = options["address"]
        self.log = context.logger
        self.exporter_fields: bool = options["exporterFields"]
        metrics = shared(context.metrics, ReceiverMetrics)
        self._streams = metrics.streams.labels(context.name)
        self._messages = metrics.messages.labels(context.name)
        self._errors = metrics.errors
        self._stopped = threading.Event()
        self._batch = _SharedBatch(options["batchSize"], options["batchInterval"])
        self._last_log: dict[tuple[str, str], tuple[float, int]] = {}
        self._log_lock = threading.Lock()
        credentials = None
        if options["tls"]:
            credentials = server_credentials(server_files(options, Path(context.data_dir), self.log))
        self._workers = ThreadPoolExecutor(options["maxSessions"], thread_name_prefix=f"grpc-{context.name}")
        handler = grpc.stream_unary_rpc_method_handler(self._export)  # no deserializer: bad bytes are ours to count
        self._server = grpc.server(
            self._workers,
            handlers=[grpc.method_handlers_generic_handler(SERVICE, {"Export": handler})],
            options=[("grpc.max_receive_message_length", options["maxMessageSize"]), ("grpc.so_reuseport", 0)],
            maximum_concurrent_rpcs=options["maxSessions"],
        )
        host = self.address.host
        target = f"[{host or '::'}]:{self.address.port}" if ":" in host or not host else f"{host}:{self.address.port}"
        try:
            if credentials is None:
                port = self._server.add_insecure_port(target)
            else:
                port = self._server.add_secure_port(target, credentials)
        except RuntimeError:
            port = 0
        if not port:
            raise ConfigError(
                ConfigIssue("address", f"cannot listen on {self.address}: the port is taken or the host is not local")
            )
        self.port: int = port
        self._mode = ("mutual TLS" if options["clientAuth"] else "TLS") if credentials else "plaintext"

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[ConfigIssue]:
        """The certificate files given load; the port is free (a warning: it may be by the time of ``run``)."""
        address = options["address"]
        issues = preflight.port_in_use("address", address.host, address.port, "tcp")
        if options["tls"] and options["tlsCert"] is not None and options["tlsKey"] is not None:
            client_ca = options["clientCA"] if options["clientAuth"] else None
            try:
                server_credentials((options["tlsCert"], options["tlsKey"], client_ca))
            except ConfigError as exc:
                issues += exc.issues
        return issues

    def stop(self) -> None:
        self._stopped.set()

    def run(self, emit: Emit) -> None:
        batch = self._batch
        batch.emit = emit
        self._server.start()
        host = self.address.host or "*"
        self.log.info("listening for gRPC flows on %s:%d (%s)", host, self.port, self._mode)
        try:
            while not self._stopped.wait(batch.interval):
                batch.flush_if_due()
        finally:
            self._server.stop(STOP_GRACE).wait()
            self._workers.shutdown(wait=True)  # streams that were cut off have handed over what they had
            batch.flush()

    # -- one Export stream ---------------------------------------------------------------------

    def _export(self, requests: Any, context: grpc.ServicerContext) -> bytes:
        exporter = _peer_address(context.peer())
        self._streams.inc()
        messages = flows = 0
        cut = False
        try:
            for data in requests:
                messages += 1
                self._messages.inc()
                try:
                    request = ExportRequest.FromString(data)
                except DecodeError as exc:
                    self._count(
                        "malformed_message", exporter, f"{len(data)} bytes that are not an ExportRequest: {exc}"
                    )
                    context.abort(grpc.StatusCode.INVALID_ARGUMENT, "the message is not an ExportRequest")
                flows += len(request.flows)
                self._take(request.flows, exporter)
        except grpc.RpcError:  # the exporter went away, or the source is stopping
            cut = True
        finally:
            self._streams.dec()
        if cut or not context.is_active():  # a cancelled stream may also just end: what it sent is kept
            if not self._stopped.is_set():
                self._count("disconnected", exporter, f"stream cut off after {messages} messages, {flows} flows")
            return b""
        self._batch.flush()  # in the pipeline before the exporter hears back
        self.log.debug("Export stream from %s ended: %d messages, %d flows", exporter, messages, flows)
        return b""  # an ExportResponse has no fields: its encoding is empty

    def _take(self, flows: Any, exporter: str) -> None:
        records: Batch = []
        bad = 0
        problem = ""
        for flow in flows:
            try:
                record = to_record(flow)
            except MalformedFlow as exc:
                bad += 1
                problem = str(exc)
                continue
            if self.exporter_fields:
                mark_exporter(record, exporter, flow.ipfix.observation_domain_id)
            records.append(record)
        self.context.counters.received(len(flows))
        if bad:
            self.context.counters.dropped(bad, "malformed")
            self._count("malformed_flow", exporter, f"{bad} flow(s) dropped: {problem}", bad)
        if records:
            self._batch.add(records)

    def _count(self, reason: str, exporter: str, message: str, n: int = 1) -> None:
        self._errors.labels(self.context.name, reason).inc(n)
        self.context.counters.error(n)
        now = time.monotonic()
        with self._log_lock:
            if len(self._last_log) >= MAX_TRACKED:
                self._last_log.clear()
            last, suppressed = self._last_log.get((exporter, reason), (0.0, 0))
            if now - last < LOG_EVERY:
                self._last_log[(exporter, reason)] = (last, suppressed + 1)
                return
            self._last_log[(exporter, reason)] = (now, 0)
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        self.log.log(logging.WARNING, "gRPC from %s: %s [%s]%s", exporter or "?", message, reason, more)


class _SharedBatch:
    """Records of every stream, emitted by size (by the stream that fills it) or age (by ``run``).

    Emitting holds ``_emitting``, so batches leave in the order their records came, and a pipeline
    that is behind slows the streams down (back-pressure up to the exporters, through gRPC's flow
    control) instead of growing memory.
    """

    def __init__(self, size: int, interval: float):
        self.size, self.interval = size, interval
        self.emit: Emit = lambda batch: None
        self._records: Batch = []
        self._since = 0.0
        self._lock = threading.Lock()
        self._emitting = threading.Lock()

    def add(self, records: Batch) -> None:
        with self._lock:
            if not self._records:
                self._since = time.monotonic()
            self._records.extend(records)
            full = len(self._records) >= self.size
        if full:
            self.flush()

    def flush_if_due(self) -> None:
        if self._records and time.monotonic() - self._since >= self.interval:
            self.flush()

    def flush(self) -> None:
        with self._emitting:
            with self._lock:
                records, self._records = self._records, []
            if records:
                self.emit(records)


def _peer_address(peer: str) -> str:
    """The IP address in a gRPC peer string (``ipv4:10.0.0.5:41234``, ``ipv6:[fd00::5]:41234``)."""
    kind, _, rest = peer.partition(":")
    if kind not in ("ipv4", "ipv6"):
        return ""
    return urllib.parse.unquote(rest.rpartition(":")[0]).strip("[]").removeprefix("::ffff:")


@hookimpl
def register_sources(register):
    register("grpc", GrpcSource)
