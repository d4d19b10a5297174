"""The HTTP API of a running pipeline, as Antrea's Flow Aggregator serves it (reference §6).

``GET /flowrecords?srcip=&dstip=&proto=&srcport=&dstport=`` lists the flows held by the flow table,
``GET /recordmetrics`` the record counts, ``/metrics`` the Prometheus metrics. ``/healthz``
answers 200 while the pipeline runs, with ``ok`` or ``degraded: <which sinks are not ready>``;
``/readyz`` answers 503 instead of 200 when a sink is not ready. HTTPS with the certificate in
``<dataDir>/certs`` by default.
"""

from __future__ import annotations

import json
import logging
import ssl
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from flowscope.core.certs import ensure_certificates
from flowscope.core.tlsconfig import server_context

if TYPE_CHECKING:
    from flowscope.core.pipeline import Pipeline

log = logging.getLogger("flowscope.api")

FLOW_FIELDS = (
    "sourceIPv4Address",
    "destinationIPv4Address",
    "sourceIPv6Address",
    "destinationIPv6Address",
    "sourceTransportPort",
    "destinationTransportPort",
    "protocolIdentifier",
    "flowStartSeconds",
    "flowEndSeconds",
    "flowEndReason",
    "flowType",
    "sourcePodName",
    "sourcePodNamespace",
    "sourceNodeName",
    "destinationPodName",
    "destinationPodNamespace",
    "destinationNodeName",
    "destinationClusterIPv4",
    "destinationClusterIPv6",
    "destinationServicePort",
    "destinationServicePortName",
    "ingressNetworkPolicyName",
    "ingressNetworkPolicyNamespace",
    "ingressNetworkPolicyRuleName",
    "ingressNetworkPolicyRuleAction",
    "ingressNetworkPolicyType",
    "egressNetworkPolicyName",
    "egressNetworkPolicyNamespace",
    "egressNetworkPolicyRuleName",
    "egressNetworkPolicyRuleAction",
    "egressNetworkPolicyType",
    "egressName",
    "egressIP",
    "egressNodeName",
    "tcpState",
    "packetTotalCount",
    "octetTotalCount",
    "packetDeltaCount",
    "octetDeltaCount",
    "reversePacketTotalCount",
    "reverseOctetTotalCount",
    "reversePacketDeltaCount",
    "reverseOctetDeltaCount",
    "throughput",
    "reverseThroughput",
)
FILTERS = ("srcip", "dstip", "proto", "srcport", "dstport")


class ApiServer:
    """Serves the API of one pipeline from a thread."""

    def __init__(self, pipeline: Pipeline, host: str, port: int, tls: bool = True):
        self.pipeline = pipeline
        handler = type("Handler", (_Handler,), {"api": self})
        self.server = ThreadingHTTPServer((host or "0.0.0.0", port), handler)
        self.server.daemon_threads = True
        self.tls = tls
        if tls:
            paths = ensure_certificates(
                Path(pipeline.config.settings.dataDir) / "certs", ["localhost", "127.0.0.1", "::1"]
            )
            context: ssl.SSLContext = server_context(paths.server_cert, paths.server_key, key_prefix="apiAddress")
            self.server.socket = context.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name="api", daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("API on %s://%s:%d", "https" if self.tls else "http", self.server.server_address[0], self.port)

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    # -- content -------------------------------------------------------------------------------

    def flow_records(self, query: dict[str, str]) -> list[dict[str, Any]]:
        table = self.pipeline.table
        if table is None:
            return []
        wanted = _filters(query)
        fields = table.policy.fields
        records = []
        for flow in list(table.flows.values()):
            record = fields(flow)
            if record is None:
                continue
            if _matches(record, wanted):
                records.append({name: record[name] for name in FLOW_FIELDS if name in record})
        return records

    def record_metrics(self) -> dict[str, Any]:
        pipeline = self.pipeline
        sample = pipeline.metrics.registry.get_sample_value
        received = sum(pipeline.metrics.counters("source", name).value("received") for name, _ in pipeline.sources)
        dropped = (
            sum(pipeline.metrics.counters("sink", runner.name).value("dropped") for runner in pipeline.sinks)
            + sum(getattr(pipeline.table.policy, "counters", {}).values())
            if pipeline.table
            else 0
        )
        types = [c.type for c in pipeline.config.sinks]
        metrics = {
            "numRecordsExported": int(pipeline.metrics.counters("table", pipeline.config.table.mode).value("emitted")),
            "numRecordsReceived": int(received),
            "numRecordsDropped": int(dropped),
            "numFlows": len(pipeline.table) if pipeline.table is not None else 0,
            "numConnToCollector": int(
                sum(sample("flowscope_ipfix_sessions", {"instance": name}) or 0 for name, _ in pipeline.sources)
            ),
            "withClickHouseExporter": "clickhouse" in types,
            "withS3Exporter": False,
            "withLogExporter": "json" in types,
            "withIPFIXExporter": "ipfix" in types,
        }
        return {k: v for k, v in metrics.items() if v}  # omitempty, as Antrea's JSON

    def health(self) -> list[str]:
        """What keeps the pipeline from delivering: one line per sink that is not ready."""
        return [
            f"sink {runner.name!r} is not ready ({runner.buffered} records buffered)"
            for runner in self.pipeline.sinks
            if not runner.ready
        ]


class _Handler(BaseHTTPRequestHandler):
    api: ApiServer

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def do_GET(self) -> None:
        url = urlparse(self.path)
        query = {k: v[-1] for k, v in parse_qs(url.query).items()}
        try:
            if url.path == "/flowrecords":
                self._send(200, json.dumps(self.api.flow_records(query)).encode(), "application/json")
            elif url.path == "/recordmetrics":
                self._send(200, json.dumps(self.api.record_metrics()).encode(), "application/json")
            elif url.path == "/metrics":
                self._send(200, generate_latest(self.api.pipeline.metrics.registry), CONTENT_TYPE_LATEST)
            elif url.path in ("/healthz", "/readyz"):
                problems = self.api.health()
                code = 503 if problems and url.path == "/readyz" else 200
                self._send(code, ("degraded: " + "; ".join(problems) if problems else "ok").encode(), "text/plain")
            else:
                paths = "/flowrecords, /recordmetrics, /metrics, /healthz, /readyz"
                self._send(404, f"no such path {url.path!r}; try {paths}".encode(), "text/plain")
        except ValueError as exc:  # a bad filter: Antrea answers 404 with the reason
            self._send(404, str(exc).encode(), "text/plain")

    def _send(self, code: int, body: bytes, content_type: str) -> None:
        self.send_response(code)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def _filters(query: dict[str, str]) -> dict[str, Any]:
    wanted: dict[str, Any] = {}
    for name in FILTERS:
        value = query.get(name)
        if not value:
            continue
        if name in ("proto", "srcport", "dstport"):
            if not value.isdigit():
                raise ValueError(f"{name}: {value!r} is not a number")
            wanted[name] = int(value)
        else:
            wanted[name] = value
    return wanted


def _matches(values: dict[str, Any], wanted: dict[str, Any]) -> bool:
    checks = {
        "srcip": values.get("sourceIPv4Address") or values.get("sourceIPv6Address"),
        "dstip": values.get("destinationIPv4Address") or values.get("destinationIPv6Address"),
        "proto": values.get("protocolIdentifier"),
        "srcport": values.get("sourceTransportPort"),
        "dstport": values.get("destinationTransportPort"),
    }
    return all(checks[name] == value for name, value in wanted.items() if value)
