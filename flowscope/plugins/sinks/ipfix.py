"""``ipfix`` sink: an IPFIX exporting process over TCP, UDP or TLS.

One template per record shape (the record's keys that the IE registry knows, in order), sent at the
start of every session before the first data, and again every ``templateRefreshTimeout`` on UDP.
Messages never exceed ``maxIPFIXMsgSize``. When the collector is unreachable, ``write`` raises
``RetryableError``: the batch stays in the sink's buffer, the connection is re-established with
exponential backoff, the templates are sent again, then the batch.
"""

from __future__ import annotations

import socket
import ssl
import time
from pathlib import Path
from typing import Literal

from prometheus_client import Gauge
from pydantic import Field, model_validator

from flowscope.core.certs import CertificatePaths
from flowscope.core.components import Batch, Sink
from flowscope.core.config import Address, Duration, OptionsModel, address_type
from flowscope.core.elements import ANTREA
from flowscope.core.errors import ConfigError, ConfigIssue, RetryableError
from flowscope.core.hookspecs import hookimpl
from flowscope.core.ipfix.antrea import aggregator_elements
from flowscope.core.ipfix.messages import MessageWriter
from flowscope.core.ipfix.metrics import exporter_metrics
from flowscope.core.tlsconfig import client_context
from flowscope.plugins.sinks.streams import check_open

SETTLE = 0.2
"""Seconds a new TCP/TLS session is watched after its first messages, for a collector that refuses it."""
UDP_IPV4_PAYLOAD = 1500 - 20 - 8  # fits a 1500-byte MTU
UDP_IPV6_PAYLOAD = 1500 - 40 - 8


class IpfixSinkOptions(OptionsModel):
    address: address_type(protocols=("tcp", "udp", "tls"), default_proto="tcp") = Field(  # type: ignore[valid-type]
        description='the collector, "<host>:<port>[:tcp|udp|tls]"'
    )
    observationDomainId: int = Field(0, ge=0, le=0xFFFFFFFF, description="observation domain id in every header")
    templateRefreshTimeout: Duration = Field("600s", description="UDP: send the templates again this often")
    maxIPFIXMsgSize: int | None = Field(
        None, ge=64, le=65535, description="largest message in bytes; default 1472 (UDP over IPv4), 1452 (IPv6), 65535"
    )
    antreaEnterpriseId: int = Field(ANTREA, ge=1, le=0xFFFFFFFF, description="enterprise number of Antrea elements")
    caCert: str | None = Field(None, description="tls: CA that signed the collector's certificate (PEM)")
    clientCert: str | None = Field(None, description="tls: client certificate for mutual TLS (PEM)")
    clientKey: str | None = Field(None, description="tls: client key for mutual TLS (PEM)")
    serverName: str | None = Field(None, description="tls: name to verify the certificate against; default the host")
    tlsVerify: bool = Field(True, description="tls: verify the collector's certificate")
    tlsMinVersion: Literal["1.2", "1.3"] = Field("1.2", description="tls: the oldest TLS version to use")
    connectTimeout: Duration = Field("5s", description="how long a connection attempt may take")
    antreaMetrics: bool = Field(
        False, description="also count connections as antrea_agent_flow_collector_reconnection_count"
    )
    antreaTemplate: Literal["aggregate", "proxy"] | None = Field(
        None, description="send every record with the Flow Aggregator's template of this mode, as Antrea's"
    )
    includeK8sNames: bool = Field(True, description="antreaTemplate: with the Kubernetes names, as Antrea's")
    includeK8sUIDs: bool = Field(False, description="antreaTemplate: with the Kubernetes UIDs, as Antrea's")
    clusterId: str = Field("", description="antreaTemplate: the clusterId of records that carry none")

    @model_validator(mode="after")
    def _template_keys(self) -> IpfixSinkOptions:
        if self.antreaTemplate is None and (not self.includeK8sNames or self.includeK8sUIDs):
            key = "includeK8sUIDs" if self.includeK8sUIDs else "includeK8sNames"
            raise ValueError(f"{key} shapes Antrea's template: set antreaTemplate (aggregate or proxy) too")
        return self


class IpfixSink(Sink):
    """Sends records as IPFIX data records."""

    Options = IpfixSinkOptions

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.address: Address = options["address"]
        self.proto = self.address.proto or "tcp"
        self.refresh: float = options["templateRefreshTimeout"]
        self.connect_timeout: float = options["connectTimeout"]
        max_size = options["maxIPFIXMsgSize"]
        if max_size is None:
            ipv6 = ":" in self.address.host
            max_size = (UDP_IPV6_PAYLOAD if ipv6 else UDP_IPV4_PAYLOAD) if self.proto == "udp" else 65535
        self.writer = MessageWriter(
            context.elements,
            odid=options["observationDomainId"],
            max_size=max_size,
            antrea_enterprise_id=options["antreaEnterpriseId"],
        )
        self.metrics = exporter_metrics(context.metrics)
        self._layouts: tuple[tuple[str, ...], tuple[str, ...]] | None = None
        self._cluster_id: str = options["clusterId"]
        if options["antreaTemplate"] is not None:
            self._layouts = tuple(  # type: ignore[assignment]
                tuple(
                    aggregator_elements(
                        ipv6, options["antreaTemplate"], options["includeK8sNames"], options["includeK8sUIDs"]
                    )
                )
                for ipv6 in (False, True)
            )
        self._antrea_connections = None
        if options["antreaMetrics"]:
            self._antrea_connections = Gauge(
                "antrea_agent_flow_collector_reconnection_count",
                "Successful connections to the flow collector, the first included.",
                registry=context.metrics,
            )
        self._tls: ssl.SSLContext | None = None
        if self.proto == "tls":
            self._tls = client_context(*self._tls_files(options), options["tlsVerify"], key_prefix="caCert")
            if options["tlsMinVersion"] == "1.3":
                self._tls.minimum_version = ssl.TLSVersion.TLSv1_3
        self._sock: socket.socket | None = None
        self._fresh = False
        self._templates_sent_at = 0.0

    @classmethod
    def preflight(cls, options: dict) -> list[ConfigIssue]:
        """The certificate files given load."""
        if options["address"].proto != "tls":
            return []
        try:
            client_context(
                options["caCert"],
                options["clientCert"],
                options["clientKey"],
                options["tlsVerify"],
                key_prefix="caCert",
            )
        except ConfigError as exc:
            return exc.issues
        return []

    def _tls_files(self, options: dict) -> tuple[str | None, str | None, str | None]:
        """caCert, clientCert and clientKey; those not given come from ``<dataDir>/certs`` when there
        (where ``flowscope certs`` and a local aggregator put them)."""
        ca, cert, key = options["caCert"], options["clientCert"], options["clientKey"]
        local = CertificatePaths.in_directory(Path(self.context.data_dir) / "certs")
        if ca is None and local.ca_cert.is_file():
            ca = str(local.ca_cert)
        if cert is None and key is None and local.client_cert.is_file() and local.client_key.is_file():
            cert, key = str(local.client_cert), str(local.client_key)
            self.context.logger.info("tls: presenting the client certificate %s", cert)
        return ca, cert, key

    def open(self) -> None:
        self._connect()

    def write(self, records: Batch) -> None:
        if self._sock is None:
            self._connect()
        now = time.time()
        messages: list[bytes] = []
        if self.proto == "udp" and now - self._templates_sent_at >= self.refresh:
            messages += self._template_messages(now)
        if self._layouts is not None:
            records = [self._in_antrea_layout(record) for record in records]
        data, dropped = self.writer.encode(records, int(now))
        messages += data
        for reason, count in dropped.items():
            self.context.counters.dropped(count, reason)
            self.context.logger.warning("%d record(s) not exported: %s", count, reason.replace("_", " "))
        self._send(messages)

    def _in_antrea_layout(self, record: dict) -> dict:
        """The record as Antrea's template of its IP family holds it: those elements, in that order,
        zeros for the ones it lacks; its other fields left out."""
        assert self._layouts is not None
        v4, v6 = self._layouts
        names = v6 if "sourceIPv6Address" in record and "sourceIPv4Address" not in record else v4
        get = record.get
        shaped = {name: get(name) for name in names}
        if not shaped["clusterId"]:
            shaped["clusterId"] = self._cluster_id
        return shaped

    def close(self) -> None:
        self._disconnect()

    # -- transport -----------------------------------------------------------------------------

    def _connect(self) -> None:
        address = (self.address.host or "localhost", self.address.port)
        kind = socket.SOCK_DGRAM if self.proto == "udp" else socket.SOCK_STREAM
        try:
            family, _, _, _, sockaddr = socket.getaddrinfo(*address, type=kind)[0]
            sock = socket.socket(family, kind)
            sock.settimeout(self.connect_timeout)
            sock.connect(sockaddr)
            if self._tls is not None:
                sock = self._tls.wrap_socket(sock, server_hostname=self.options["serverName"] or address[0])
            sock.settimeout(None if self.proto == "udp" else 30.0)
        except (OSError, ssl.SSLError) as exc:
            raise RetryableError(f"cannot connect to {self.address}: {exc}") from exc
        self._sock = sock
        self._fresh = True  # nothing sent on it yet: the first messages are watched for a refusal
        self.writer.new_session()
        self.metrics.connections.labels(self.context.name).inc()
        if self._antrea_connections is not None:
            self._antrea_connections.inc()
        self.context.logger.info("connected to IPFIX collector %s (%s)", self.address, self.proto)
        self._send(self._template_messages(time.time()))

    def _template_messages(self, now: float) -> list[bytes]:
        """The messages carrying every template, counted as sent."""
        messages = self.writer.template_messages(int(now))
        self._templates_sent_at = now
        self.metrics.templates.labels(self.context.name).inc(len(messages))
        return messages

    def _send(self, messages: list[bytes]) -> None:
        """Send messages; then make sure the collector has not closed the session meanwhile.

        A collector never sends IPFIX data back, so anything readable is an end of stream or a TLS
        alert (TLS 1.3 reports a refused client certificate only after the handshake): the batch
        is then retried on a new session instead of being lost. The first messages of a session
        are watched for :data:`SETTLE` seconds, time for a collector that refuses them to say so
        (a TLS port answering plain TCP, a refused certificate).
        """
        sock = self._sock
        assert sock is not None
        try:
            if self.proto != "udp":
                check_open(sock)  # closed while the session was quiet
            for message in messages:
                if self.proto == "udp":
                    sock.send(message)
                else:
                    sock.sendall(message)
            if self.proto != "udp" and messages:
                check_open(sock, SETTLE if self._fresh else 0.0)
                self._fresh = False
        except (OSError, ssl.SSLError) as exc:
            self._disconnect()
            raise RetryableError(f"sending to {self.address} failed: {exc}") from exc
        self.metrics.messages.labels(self.context.name).inc(len(messages))

    def _disconnect(self) -> None:
        """Close the session; TLS says close_notify first, so data in flight is not reset away."""
        sock, self._sock = self._sock, None
        if sock is None:
            return
        try:
            if isinstance(sock, ssl.SSLSocket):
                sock.settimeout(2.0)
                sock.unwrap()
            elif self.proto != "udp":
                sock.shutdown(socket.SHUT_WR)
        except (OSError, ssl.SSLError):
            pass
        finally:
            sock.close()


@hookimpl
def register_sinks(register):
    register("ipfix", IpfixSink)
