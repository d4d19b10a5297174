"""``ipfix`` source: an IPFIX collecting process on UDP, TCP or TLS.

Templates are scoped per (transport session, observation domain) (RFC 7011 §8). On UDP they expire
after ``templateLifetime`` unless refreshed, and are persisted to ``<dataDir>/ipfix-templates/``
so a restarted collector decodes at once. Every problem is counted in
``flowscope_ipfix_decode_errors_total{reason=...}`` and logged (at most every 10 s per exporter and
reason); a UDP collector carries on, a TCP session whose framing breaks is closed.
"""

from __future__ import annotations

import contextlib
import select
import socket
import ssl
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from pydantic import Field

from flowscope.core.certs import ensure_certificates
from flowscope.core.components import Emit, Record, Source
from flowscope.core.config import Address, Duration, OptionsModel, address_type
from flowscope.core.elements import ANTREA, ANTREA_SEED
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.hookspecs import hookimpl
from flowscope.core.ipfix.errors import FramingError, IPFIXError
from flowscope.core.ipfix.messages import HEADER, Decoder, DecodeResult, parse_header
from flowscope.core.ipfix.metrics import collector_metrics
from flowscope.core.ipfix.templates import TemplateStore
from flowscope.core.tlsconfig import server_context

MAX_DATAGRAM = 65535
MAX_TRACKED = 100_000  # sequence counters and log throttles kept at most


class IpfixSourceOptions(OptionsModel):
    address: address_type(protocols=("udp", "tcp", "tls"), default_proto="tcp", allow_port_zero=True) = Field(  # type: ignore[valid-type]
        description='where to listen, "<host>:<port>[:udp|tcp|tls]"; an empty host listens on every interface'
    )
    tlsCert: str | None = Field(None, description="server certificate (PEM); tls only")
    tlsKey: str | None = Field(None, description="server key (PEM); tls only")
    clientCA: str | None = Field(None, description="require client certificates signed by this CA (PEM)")
    tlsHosts: list[str] = Field(
        default_factory=list, description="names the generated server certificate is also valid for"
    )
    templateLifetime: Duration = Field("30m", description="UDP: a template not refreshed for this long expires")
    persistTemplates: bool = Field(True, description="UDP: keep templates across restarts in dataDir")
    enterpriseAliases: dict[int, int] = Field(
        default_factory=lambda: {ANTREA_SEED: ANTREA}, description="enterprise numbers read as another"
    )
    batchSize: int = Field(1000, gt=0, description="records per batch handed to the pipeline")
    batchInterval: Duration = Field("100ms", description="a partial batch waits at most this long")
    maxSessions: int = Field(1000, gt=0, description="TCP/TLS sessions at once; more are refused")
    receiveBuffer: int = Field(4 << 20, gt=0, description="UDP socket receive buffer in bytes")
    exporterFields: bool = Field(
        False, description="add originalExporterIPv4/IPv6Address and originalObservationDomainId to each record"
    )


class IpfixSource(Source):
    """Collects IPFIX messages from any number of exporters and emits their data records."""

    Options = IpfixSourceOptions

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.address: Address = options["address"]
        self.proto = self.address.proto or "tcp"
        self.batch_size: int = options["batchSize"]
        self.batch_interval: float = options["batchInterval"]
        self.max_sessions: int = options["maxSessions"]
        self.exporter_fields: bool = options["exporterFields"]
        self.metrics = collector_metrics(context.metrics)
        self.log = context.logger
        persist = None
        if self.proto == "udp" and options["persistTemplates"]:
            persist = Path(context.data_dir) / "ipfix-templates" / f"{context.name}.json"
        self.store = TemplateStore(persist)
        self.decoder = Decoder(
            context.elements,
            self.store,
            aliases=options["enterpriseAliases"],
            template_lifetime=options["templateLifetime"] if self.proto == "udp" else None,
        )
        restored = self.store.load(self.decoder.compile)
        if restored:
            self.log.info("restored %d UDP template(s) from %s", restored, persist)
        self._tls = self._tls_context(options) if self.proto == "tls" else None
        self._stopped = threading.Event()
        self._sessions: set[socket.socket] = set()
        self._lock = threading.Lock()
        self._expected: dict[tuple[Hashable, int], int] = {}
        self._last_log: dict[tuple[str, str], tuple[float, int]] = {}
        self._sock = self._bind()
        self.port: int = self._sock.getsockname()[1]
        self.log.info("listening for IPFIX on %s (%s)", _display(self.address.host, self.port), self.proto)

    # -- set-up --------------------------------------------------------------------------------

    def _bind(self) -> socket.socket:
        host = self.address.host
        family = socket.AF_INET6 if ":" in host or host == "" else socket.AF_INET
        kind = socket.SOCK_DGRAM if self.proto == "udp" else socket.SOCK_STREAM
        sock = socket.socket(family, kind)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            if family == socket.AF_INET6:
                sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if self.proto == "udp":
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.options["receiveBuffer"])
            sock.bind((host or "::", self.address.port))
            if self.proto != "udp":
                sock.listen(128)
        except OSError as exc:
            sock.close()
            raise ConfigError(
                ConfigIssue("address", f"cannot listen on {self.address}: {exc.strerror or exc}")
            ) from None
        sock.settimeout(self.batch_interval)
        return sock

    def _tls_context(self, options: dict[str, Any]) -> ssl.SSLContext:
        cert, key = options["tlsCert"], options["tlsKey"]
        if cert is None and key is None:
            directory = Path(self.context.data_dir) / "certs"
            hosts = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *options["tlsHosts"]]
            paths = ensure_certificates(directory, list(dict.fromkeys(hosts)))
            cert, key = paths.server_cert, paths.server_key
            self.log.info("tls: no tlsCert given, serving %s (CA: %s)", cert, paths.ca_cert)
        elif cert is None or key is None:
            missing = "tlsCert" if cert is None else "tlsKey"
            raise ConfigError(ConfigIssue(missing, "tlsCert and tlsKey go together; give both, or neither"))
        return server_context(cert, key, options["clientCA"], key_prefix="tlsCert")

    # -- running -------------------------------------------------------------------------------

    def stop(self) -> None:
        self._stopped.set()

    def run(self, emit: Emit) -> None:
        try:
            if self.proto == "udp":
                self._run_udp(emit)
            else:
                self._run_stream(emit)
        finally:
            self._sock.close()
            self.store.save()

    def _run_udp(self, emit: Emit) -> None:
        batch = _Batch(emit, self.batch_size, self.batch_interval, self._report)
        sock, stopped = self._sock, self._stopped
        sock.setblocking(False)  # wait with select, then drain every queued datagram: one syscall each
        last_save = time.monotonic()
        while not stopped.is_set():
            readable, _, _ = select.select([sock], [], [], self.batch_interval)
            if not readable:
                batch.flush()
                continue
            while True:
                try:
                    data, peer = sock.recvfrom(MAX_DATAGRAM)
                except BlockingIOError:
                    break
                except OSError as exc:
                    if not stopped.is_set():
                        self.log.warning("UDP receive failed: %s", exc)
                    break
                self._decode(data, ("udp", peer[0], peer[1]), peer[0], batch)
            batch.flush_if_due()
            if time.monotonic() - last_save > 5:
                self.store.save()
                last_save = time.monotonic()
        batch.flush()

    def _run_stream(self, emit: Emit) -> None:
        threads: list[threading.Thread] = []
        while not self._stopped.is_set():
            try:
                conn, peer = self._sock.accept()
            except TimeoutError:
                continue
            except OSError as exc:
                if self._stopped.is_set():
                    break
                self.log.warning("accept failed: %s", exc)
                continue
            with self._lock:
                if len(self._sessions) >= self.max_sessions:
                    self.log.warning("refusing %s: already %d sessions (maxSessions)", _peer(peer), self.max_sessions)
                    conn.close()
                    continue
                self._sessions.add(conn)
            thread = threading.Thread(
                target=self._serve, args=(conn, peer, emit), name=f"ipfix-{_peer(peer)}", daemon=True
            )
            thread.start()
            threads = [t for t in threads if t.is_alive()] + [thread]
        with self._lock:
            for conn in self._sessions:
                _shutdown(conn)
        for thread in threads:
            thread.join(2.0)

    def _serve(self, conn: socket.socket, peer: tuple, emit: Emit) -> None:
        exporter = peer[0]
        session = _Session(_peer(peer))
        batch = _Batch(emit, self.batch_size, self.batch_interval, self._report)
        messages = records = 0
        why = "closed by the exporter"
        self.metrics.sessions.labels(self.context.name).inc()
        try:
            conn.settimeout(self.batch_interval)
            if self._tls is not None:
                conn = self._handshake(conn)
            self.log.info("IPFIX session opened: %s %s", self.proto, session.peer)
            reader = _StreamReader(conn, self._stopped, batch)
            while not self._stopped.is_set():
                header = reader.read(HEADER.size)
                if header is None:
                    break
                length = parse_header(header).length
                body = reader.read(length - HEADER.size)
                if body is None:
                    why = "closed by the exporter in the middle of a message"
                    self._count_error(exporter, IPFIXError(why, "truncated"))
                    break
                result = self._decode(header + body, session, exporter, batch)
                messages += 1
                records += len(result.records) if result else 0
                batch.flush_if_due()
            else:
                why = "collector stopping"
        except FramingError as exc:
            why = f"broken framing: {exc}"
            self._count_error(exporter, exc)
        except (ssl.SSLError, OSError) as exc:
            why = f"{type(exc).__name__}: {exc}"
            if isinstance(exc, ssl.SSLError):
                self._count_error(exporter, IPFIXError(why, "tls_error"))
        finally:
            batch.flush()
            _shutdown(conn)
            with self._lock:
                self._sessions.discard(conn)
            self.store.drop_session(session)
            self.metrics.sessions.labels(self.context.name).dec()
            self.log.info(
                "IPFIX session closed: %s %s (%s) after %d messages, %d records",
                self.proto,
                session.peer,
                why,
                messages,
                records,
            )

    def _handshake(self, conn: socket.socket) -> ssl.SSLSocket:
        assert self._tls is not None
        conn.settimeout(10)
        tls = self._tls.wrap_socket(conn, server_side=True)
        tls.settimeout(self.batch_interval)
        with self._lock:
            self._sessions.discard(conn)
            self._sessions.add(tls)
        return tls

    # -- decoding ------------------------------------------------------------------------------

    def _decode(self, data: bytes, session: Hashable, exporter: str, batch: _Batch) -> DecodeResult | None:
        name = self.context.name
        try:
            result = self.decoder.decode(data, session)
        except FramingError as exc:
            if not isinstance(session, tuple):  # TCP/TLS: the stream cannot be trusted any more
                raise
            self._count_error(exporter, exc)
            return None
        metrics = self.metrics
        tally = batch.tally.get(exporter)
        if tally is None:
            tally = batch.tally[exporter] = [0, 0]
        tally[0] += 1
        for error in result.errors:
            self._count_error(exporter, error)
        header = result.header
        assert header is not None
        count = len(result.records) + len(result.options)
        self._check_sequence(session, header.odid, header.sequence, count, exporter)
        if result.records:
            tally[1] += len(result.records)
            if self.exporter_fields:
                _mark_exporter(result.records, exporter, header.odid)
            batch.add(result.records)
        if result.options:
            metrics.options.labels(name, exporter).inc(len(result.options))
        if result.unknown_element_records:
            metrics.unknown.labels(name, exporter).inc(result.unknown_element_records)
        if result.templates or result.withdrawals:
            metrics.templates.labels(name).set(self.store.count())
        return result

    def _report(self, tally: dict[str, list[int]]) -> None:
        name, total = self.context.name, 0
        for exporter, (messages, records) in tally.items():
            message_counter, record_counter = self.metrics.per_message(name, exporter)
            message_counter.inc(messages)
            if records:
                record_counter.inc(records)
                total += records
        if total:
            self.context.counters.received(total)

    def _check_sequence(self, session: Hashable, odid: int, sequence: int, count: int, exporter: str) -> None:
        key = (session, odid)
        expected = self._expected.get(key)
        if expected is None and len(self._expected) >= MAX_TRACKED:  # bound memory against spoofed sources
            self._expected.clear()
        if expected is not None and sequence != expected:
            missing = (sequence - expected) & 0xFFFFFFFF
            if missing < 0x80000000:  # ahead: records were lost; behind: a late, reordered datagram
                self.metrics.gaps.labels(self.context.name, exporter).inc()
                self.metrics.lost.labels(self.context.name, exporter).inc(missing)
                self._log_limited(
                    exporter, "sequence_gap", f"sequence jumped from {expected} to {sequence}: {missing} records lost"
                )
            else:
                return
        self._expected[key] = (sequence + count) & 0xFFFFFFFF

    def _count_error(self, exporter: str, error: IPFIXError) -> None:
        self.metrics.errors.labels(self.context.name, exporter, error.reason).inc()
        self.context.counters.error()
        self._log_limited(exporter, error.reason, str(error))

    def _log_limited(self, exporter: str, reason: str, message: str) -> None:
        """At most one line per exporter and reason every 10 s, saying how many were suppressed."""
        now = time.monotonic()
        if len(self._last_log) >= MAX_TRACKED:
            self._last_log.clear()
        last, suppressed = self._last_log.get((exporter, reason), (0.0, 0))
        if now - last < 10:
            self._last_log[(exporter, reason)] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        self.log.warning("IPFIX from %s: %s [%s]%s", exporter, message, reason, more)
        self._last_log[(exporter, reason)] = (now, 0)


class _Session:
    """Identity of one TCP/TLS connection, for template scope."""

    __slots__ = ("peer",)

    def __init__(self, peer: str):
        self.peer = peer


class _Batch:
    """Accumulates records and emits them by size or age; per-exporter message and record counts
    are tallied here and reported to Prometheus once per batch, not once per message."""

    def __init__(self, emit: Emit, size: int, interval: float, report: Callable[[dict[str, list[int]]], None]):
        self.emit, self.size, self.interval, self.report = emit, size, interval, report
        self.records: list[Record] = []
        self.tally: dict[str, list[int]] = {}  # exporter -> [messages, records]
        self.since = 0.0

    def add(self, records: list[Record]) -> None:
        if not self.records:
            self.since = time.monotonic()
        self.records.extend(records)
        if len(self.records) >= self.size:
            self.flush()

    def flush_if_due(self) -> None:
        if (self.records or self.tally) and time.monotonic() - self.since >= self.interval:
            self.flush()

    def flush(self) -> None:
        if self.tally:
            tally, self.tally = self.tally, {}
            self.report(tally)
        if self.records:
            records, self.records = self.records, []
            self.emit(records)
        self.since = time.monotonic()


class _StreamReader:
    """Reads exact byte counts from a stream socket, flushing the batch while it waits."""

    def __init__(self, conn: socket.socket, stopped: threading.Event, batch: _Batch):
        self.conn, self.stopped, self.batch = conn, stopped, batch
        self.buffer = bytearray()

    def read(self, n: int) -> bytes | None:
        """``n`` bytes, or ``None`` at end of stream (or stop)."""
        buffer = self.buffer
        while len(buffer) < n:
            if self.stopped.is_set():
                return None
            try:
                chunk = self.conn.recv(max(65536, n - len(buffer)))
            except TimeoutError:
                self.batch.flush()
                continue
            except ssl.SSLWantReadError:
                select.select([self.conn], [], [], 0.1)
                continue
            if not chunk:
                return None
            buffer += chunk
        data = bytes(buffer[:n])
        del buffer[:n]
        return data


def _mark_exporter(records: list[Record], exporter: str, odid: int) -> None:
    """Where each record came from, as Antrea's Flow Aggregator adds in proxy mode."""
    exporter = exporter.removeprefix("::ffff:")
    v6 = ":" in exporter
    for record in records:
        record["originalObservationDomainId"] = odid
        record["originalExporterIPv4Address"] = "0.0.0.0" if v6 else exporter
        record["originalExporterIPv6Address"] = exporter if v6 else "::"


def _peer(peer: tuple) -> str:
    return _display(peer[0], peer[1])


def _display(host: str, port: int) -> str:
    host = host.removeprefix("::ffff:")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def _shutdown(conn: socket.socket) -> None:
    with contextlib.suppress(OSError):
        conn.shutdown(socket.SHUT_RDWR)
    conn.close()


@hookimpl
def register_sources(register):
    register("ipfix", IpfixSource)
