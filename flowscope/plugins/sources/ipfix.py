"""``ipfix`` source: an IPFIX collecting process on UDP, TCP or TLS.

Templates are scoped per (transport session, observation domain) (RFC 7011 §8). On UDP they expire
after ``templateLifetime`` unless refreshed, and are persisted to ``<dataDir>/ipfix-templates/``
within a second of a change, so a restarted collector decodes at once. Every problem is counted in
``flowscope_ipfix_decode_errors_total{reason=...}`` and logged (at most every 10 s per exporter and
reason); a UDP collector carries on, a TCP session whose framing breaks is closed.

Against senders that misbehave: each exporter (source address) may hold ``maxTemplatesPerExporter``
templates and ``maxSessionsPerExporter`` sessions; a template has at most ``maxTemplateFields``
fields; a message begun on TCP/TLS must arrive whole within ``messageTimeout``; with TLS, clients
must present a certificate from the expected CA (``clientAuth``).
"""

from __future__ import annotations

import contextlib
import logging
import select
import socket
import ssl
import struct
import threading
import time
from collections.abc import Callable, Hashable
from pathlib import Path
from typing import Any

from pydantic import Field

from flowscope.core import preflight, speedups
from flowscope.core.certs import ensure_certificates
from flowscope.core.components import Emit, Record, Source
from flowscope.core.config import Address, Duration, OptionsModel, address_type
from flowscope.core.elements import ANTREA, ANTREA_SEED
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.hookspecs import hookimpl
from flowscope.core.ipfix.errors import FramingError, IPFIXError
from flowscope.core.ipfix.messages import HEADER, Decoder, parse_header
from flowscope.core.ipfix.metrics import collector_metrics
from flowscope.core.ipfix.templates import TemplateStore
from flowscope.core.tlsconfig import server_context

MAX_DATAGRAM = 65535
MAX_TRACKED = 100_000  # sequence counters and log throttles kept at most
MAX_SEQUENCE_JUMP = 1_000_000
"""Records a sequence number may run ahead (lost) or behind (reordered); a longer jump is a restart."""
SO_MEMINFO = 55  # Linux: the socket's memory figures, the 9th of which counts the datagrams dropped
SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
SAVE_DELAY = 1.0  # seconds a changed UDP template may wait before it is written to disk
PURGE_INTERVAL = 10.0  # seconds between sweeps for expired UDP templates
UDP_EXTENSION = speedups.built("flowscope.plugins.sources._ipfixudp")
"""The UDP receive loop in C, used with the C decoder unless ``FLOWSCOPE_PURE_PYTHON`` is set or
``exporterFields`` is on."""


class IpfixSourceOptions(OptionsModel):
    address: address_type(protocols=("udp", "tcp", "tls"), default_proto="tcp", allow_port_zero=True) = Field(  # type: ignore[valid-type]
        description='where to listen, "<host>:<port>[:udp|tcp|tls]"; an empty host listens on every interface'
    )
    tlsCert: str | None = Field(None, description="server certificate (PEM); tls only")
    tlsKey: str | None = Field(None, description="server key (PEM); tls only")
    clientCA: str | None = Field(
        None, description="CA of the exporters' client certificates (PEM); default: the generated CA"
    )
    clientAuth: bool = Field(True, description="tls: require a client certificate signed by clientCA (mutual TLS)")
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
    maxSessionsPerExporter: int = Field(64, gt=0, description="TCP/TLS sessions one source address may hold")
    messageTimeout: Duration = Field("10s", description="TCP/TLS: a message begun must arrive whole within this")
    idleTimeout: Duration = Field("0s", description="TCP/TLS: close a session silent for this long (0s: never)")
    maxTemplates: int = Field(100_000, gt=0, description="templates held at most, over every exporter")
    maxTemplatesPerExporter: int = Field(1000, gt=0, description="templates one source address may hold")
    maxTemplateFields: int = Field(512, gt=0, le=65535, description="fields a template may have")
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
        self.store = TemplateStore(persist, options["maxTemplates"], options["maxTemplatesPerExporter"])
        lifetime = options["templateLifetime"] if self.proto == "udp" else None
        self.decoder = Decoder(
            context.elements,
            self.store,
            aliases=options["enterpriseAliases"],
            template_lifetime=lifetime,
            max_template_fields=options["maxTemplateFields"],
        )
        restored = self.store.load(self.decoder.compile, lifetime)
        if restored:
            self.log.info("restored %d UDP template(s) from %s", restored, persist)
        self._templates = self.metrics.templates.labels(context.name)
        self._templates.set(self.store.count())
        self._tls = self._tls_context(options) if self.proto == "tls" else None
        self._stopped = threading.Event()
        self._sessions: set[socket.socket] = set()
        self._per_exporter: dict[str, int] = {}  # open sessions by source address
        self._lock = threading.Lock()
        self._expected: dict[tuple[Hashable, int], int] = {}
        self._peers: dict[bytes, tuple[tuple[str, str, int], str]] = {}  # UDP senders by raw address, in C
        self._last_log: dict[tuple[str, str], tuple[float, int]] = {}
        self._sock = self._bind()
        self.port: int = self._sock.getsockname()[1]
        self.log.info("listening for IPFIX on %s (%s)", _display(self.address.host, self.port), self.proto)

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[ConfigIssue]:
        """The certificate files load; the port is free (a warning: it may be by the time of ``run``)."""
        address = options["address"]
        proto = address.proto or "tcp"
        issues = preflight.port_in_use("address", address.host, address.port, "udp" if proto == "udp" else "tcp")
        if proto == "tls" and options["tlsCert"] is not None and options["tlsKey"] is not None:
            client_ca = options["clientCA"] if options["clientAuth"] else None
            try:
                server_context(options["tlsCert"], options["tlsKey"], client_ca, key_prefix="tlsCert")
            except ConfigError as exc:
                issues += exc.issues
        return issues

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
                self._size_receive_buffer(sock)
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

    def _size_receive_buffer(self, sock: socket.socket) -> None:
        """Ask for ``receiveBuffer`` bytes; as root beyond ``net.core.rmem_max``, else say it is capped."""
        wanted = self.options["receiveBuffer"]
        try:
            sock.setsockopt(socket.SOL_SOCKET, SO_RCVBUFFORCE, wanted)
        except OSError:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, wanted)
        granted = sock.getsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF) // 2  # Linux reports double
        if granted < wanted:
            self.log.warning(
                "receiveBuffer: asked for %d bytes, the kernel gave %d; raise net.core.rmem_max "
                "(sysctl -w net.core.rmem_max=%d) or run as root",
                wanted,
                granted,
                wanted,
            )

    def _tls_context(self, options: dict[str, Any]) -> ssl.SSLContext:
        cert, key, client_ca = options["tlsCert"], options["tlsKey"], options["clientCA"]
        if cert is None and key is None:
            directory = Path(self.context.data_dir) / "certs"
            hosts = ["localhost", "127.0.0.1", "::1", socket.gethostname(), *options["tlsHosts"]]
            paths = ensure_certificates(directory, list(dict.fromkeys(hosts)))
            cert, key = paths.server_cert, paths.server_key
            client_ca = client_ca or paths.ca_cert
            self.log.info("tls: no tlsCert given, serving %s (CA: %s)", cert, paths.ca_cert)
        elif cert is None or key is None:
            missing = "tlsCert" if cert is None else "tlsKey"
            raise ConfigError(ConfigIssue(missing, "tlsCert and tlsKey go together; give both, or neither"))
        if not options["clientAuth"]:
            client_ca = None
            self.log.warning("tls: clientAuth is false: any client may send records")
        elif client_ca is None:
            raise ConfigError(
                ConfigIssue(
                    "clientCA",
                    "required for mutual TLS (clientAuth: true, the default): give the CA that signed the "
                    "exporters' client certificates, or set clientAuth: false to accept any client",
                )
            )
        return server_context(cert, key, client_ca, key_prefix="tlsCert")

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
        sock, stopped, store = self._sock, self._stopped, self.store
        sock.setblocking(False)  # wait with select, then drain every queued datagram: one syscall each
        drops = _DropCounter(sock, self.metrics.receive_drops.labels(self.context.name))
        last_purge = time.monotonic()
        drain = self._udp_drain()
        while not stopped.is_set():
            readable, _, _ = select.select([sock], [], [], self.batch_interval)
            if readable:
                try:
                    drain(batch)
                except OSError as exc:
                    if not stopped.is_set():
                        self.log.warning("UDP receive failed: %s", exc)
            else:
                batch.flush()
            drops.update()
            batch.flush_if_due()
            now = time.monotonic()
            if now - last_purge >= PURGE_INTERVAL:
                last_purge = now
                if store.purge_expired(time.time()):
                    self._templates.set(store.count())
            if store.dirty_since is not None and now - store.dirty_since >= SAVE_DELAY:
                store.save()
        batch.flush()

    def _udp_drain(self) -> Callable[[_Batch], None]:
        """The loop that decodes the datagrams waiting: in C, or its Python twin, which alone marks where
        records came from (``exporterFields``)."""
        in_c = speedups.wanted(UDP_EXTENSION) and self.decoder.native_decode_data is not None
        return self._drain_in_c if in_c and not self.exporter_fields else self._drain

    def _drain(self, batch: _Batch) -> None:
        """Decode every datagram waiting on the socket (the Python twin of :data:`UDP_EXTENSION`'s drain)."""
        recvfrom, decode = self._sock.recvfrom, self._decode
        while True:
            try:
                data, peer = recvfrom(MAX_DATAGRAM)
            except BlockingIOError:
                return
            decode(data, ("udp", peer[0], peer[1]), peer[0], batch)

    def _drain_in_c(self, batch: _Batch) -> None:
        """Decode every datagram waiting on the socket in C, taking here the turns it leaves to Python: a
        message that is not the common case, and a sequence number that is not the expected one."""
        fd, decode_data, domains = self._sock.fileno(), self.decoder.native_decode_data, self.store.by_key
        now = time.time()
        if len(self._peers) >= MAX_TRACKED:  # bound memory against spoofed sources
            self._peers.clear()
        while True:
            if not batch.records:
                batch.since = time.monotonic()
            status, detail = UDP_EXTENSION.drain(
                fd, decode_data, domains, now, self._peers, self._expected, batch.tally, batch.records, batch.size
            )
            if status == UDP_EXTENSION.DRAINED:
                return
            if status == UDP_EXTENSION.FULL:
                batch.flush()
            elif status == UDP_EXTENSION.OTHER:
                self._decode_all(*detail, batch)
            else:  # SEQUENCE
                self._check_sequence(*detail)

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
            refusal = self._admit(conn, peer[0])
            if refusal is not None:
                self.metrics.refused.labels(self.context.name, refusal).inc()
                self._log_limited(peer[0], f"refused_{refusal}", f"connection refused: {_REFUSALS[refusal]}")
                _shutdown(conn)
                continue
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

    def _admit(self, conn: socket.socket, exporter: str) -> str | None:
        """Take a new session in, or say why not (a key of :data:`_REFUSALS`)."""
        with self._lock:
            if len(self._sessions) >= self.max_sessions:
                return "max_sessions"
            if self._per_exporter.get(exporter, 0) >= self.options["maxSessionsPerExporter"]:
                return "per_exporter"
            self._sessions.add(conn)
            self._per_exporter[exporter] = self._per_exporter.get(exporter, 0) + 1
            return None

    def _serve(self, conn: socket.socket, peer: tuple, emit: Emit) -> None:
        exporter = peer[0]
        session = _Session(_peer(peer), exporter)
        batch = _Batch(emit, self.batch_size, self.batch_interval, self._report)
        messages = records = 0
        why = "closed by the exporter"
        self.metrics.sessions.labels(self.context.name).inc()
        try:
            conn.settimeout(self.batch_interval)
            if self._tls is not None:
                conn = self._handshake(conn)
            self.log.info("IPFIX session opened: %s %s", self.proto, session.peer)
            reader = _StreamReader(
                conn, self._stopped, batch, self.options["messageTimeout"], self.options["idleTimeout"]
            )
            while not self._stopped.is_set():
                header = reader.read(HEADER.size)
                if header is None:
                    why = reader.why or why
                    break
                length = parse_header(header).length
                body = reader.read(length - HEADER.size)
                if body is None:
                    why = reader.why or "closed by the exporter in the middle of a message"
                    if reader.why is None:
                        self._count_error(exporter, IPFIXError(why, "truncated"))
                    break
                reader.message_done()
                records += self._decode(header + body, session, exporter, batch)
                messages += 1
                batch.flush_if_due()
            else:
                why = "collector stopping"
        except FramingError as exc:
            why = f"broken framing: {exc}"
            self._count_error(exporter, exc)
        except IPFIXError as exc:  # a message that does not arrive in time
            why = str(exc)
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
                left = self._per_exporter[exporter] - 1
                if left:
                    self._per_exporter[exporter] = left
                else:
                    del self._per_exporter[exporter]
            self.store.drop_session(session)
            self._templates.set(self.store.count())
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

    def _decode(self, data: bytes, session: Hashable, exporter: str, batch: _Batch) -> int:
        """Decode one message into the batch; returns how many data records it held."""
        decoded = self.decoder.decode_data(data, session, time.time())
        if decoded is None:  # not the common case of data sets only: the full decoder says what is in it
            return self._decode_all(data, session, exporter, batch)
        odid, sequence, records = decoded
        tally = batch.tally.get(exporter)
        if tally is None:
            tally = batch.tally[exporter] = [0, 0]
        tally[0] += 1
        count = len(records)
        key = (session, odid)
        if self._expected.get(key) == sequence:  # in order: the common case, inline
            self._expected[key] = (sequence + count) & 0xFFFFFFFF
        else:
            self._check_sequence(session, odid, sequence, count, exporter)
        tally[1] += count
        if self.exporter_fields:
            _mark_exporter(records, exporter, odid)
        batch.add(records)
        return count

    def _decode_all(self, data: bytes, session: Hashable, exporter: str, batch: _Batch) -> int:
        """Decode any message, counting and logging every problem in it."""
        name = self.context.name
        try:
            result = self.decoder.decode(data, session)
        except FramingError as exc:
            if not isinstance(session, tuple):  # TCP/TLS: the stream cannot be trusted any more
                raise
            self._count_error(exporter, exc)
            return 0
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
        for template_id, names in result.unknown_elements:
            shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
            self._log_limited(
                exporter,
                "unknown_elements",
                f"template {template_id} has {len(names)} elements unknown to the registry ({shown}); "
                "their values are kept as raw bytes",
                logging.INFO,
            )
        if result.templates or result.withdrawals:
            self._templates.set(self.store.count())
        return len(result.records)

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
            ahead = (sequence - expected) & 0xFFFFFFFF
            behind = (expected - sequence) & 0xFFFFFFFF
            if ahead <= MAX_SEQUENCE_JUMP:  # records were lost
                self.metrics.gaps.labels(self.context.name, exporter).inc()
                self.metrics.lost.labels(self.context.name, exporter).inc(ahead)
                self._log_limited(
                    exporter, "sequence_gap", f"sequence jumped from {expected} to {sequence}: {ahead} records lost"
                )
            elif behind <= MAX_SEQUENCE_JUMP:  # a late, reordered message
                return
            else:  # too far either way to be loss or reordering: the exporter restarted, or lies
                self.metrics.resets.labels(self.context.name, exporter).inc()
                self._log_limited(
                    exporter,
                    "sequence_reset",
                    f"sequence number {sequence} is far from the expected {expected}: counted as a restart, not loss",
                    logging.INFO,
                )
        self._expected[key] = (sequence + count) & 0xFFFFFFFF

    def _count_error(self, exporter: str, error: IPFIXError) -> None:
        self.metrics.errors.labels(self.context.name, exporter, error.reason).inc()
        self.context.counters.error()
        self._log_limited(exporter, error.reason, str(error))

    def _log_limited(self, exporter: str, reason: str, message: str, level: int = logging.WARNING) -> None:
        """At most one line per exporter and reason every 10 s, saying how many were suppressed."""
        now = time.monotonic()
        if len(self._last_log) >= MAX_TRACKED:
            self._last_log.clear()
        last, suppressed = self._last_log.get((exporter, reason), (0.0, 0))
        if now - last < 10:
            self._last_log[(exporter, reason)] = (last, suppressed + 1)
            return
        more = f" ({suppressed} more since the last report)" if suppressed else ""
        self.log.log(level, "IPFIX from %s: %s [%s]%s", exporter, message, reason, more)
        self._last_log[(exporter, reason)] = (now, 0)


class _Session:
    """Identity of one TCP/TLS connection, for template scope."""

    __slots__ = ("exporter", "peer")

    def __init__(self, peer: str, exporter: str):
        self.peer = peer
        self.exporter = exporter


_REFUSALS = {
    "max_sessions": "as many sessions as maxSessions are open",
    "per_exporter": "this address holds as many sessions as maxSessionsPerExporter",
}


class _DropCounter:
    """Turns the kernel's running count of a socket's dropped datagrams into counter increments.

    The count is read with ``SO_MEMINFO`` each time the receive loop has drained the socket (one
    system call per pass, not per datagram); where the kernel does not offer it, nothing is counted.
    """

    def __init__(self, sock: socket.socket, counter: Any):
        self.sock, self.counter = sock, counter
        self.last = 0
        self.supported = True

    def update(self) -> None:
        if not self.supported:
            return
        try:
            data = self.sock.getsockopt(socket.SOL_SOCKET, SO_MEMINFO, 64)
        except OSError:
            self.supported = False
            return
        if len(data) < 36:
            self.supported = False
            return
        (total,) = struct.unpack_from("=I", data, 32)
        if total != self.last:
            self.counter.inc((total - self.last) & 0xFFFFFFFF)
            self.last = total


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
    """Reads exact byte counts from a stream socket, flushing the batch while it waits.

    A message whose first bytes have come must be complete within ``message_timeout`` seconds; with
    an ``idle_timeout``, a session that sends nothing for that long is closed. ``why`` says why
    ``read`` returned ``None``.
    """

    def __init__(
        self, conn: socket.socket, stopped: threading.Event, batch: _Batch, message_timeout: float, idle_timeout: float
    ):
        self.conn, self.stopped, self.batch = conn, stopped, batch
        self.message_timeout, self.idle_timeout = message_timeout, idle_timeout
        self.buffer = bytearray()
        self.started: float | None = None  # when the message being read began to arrive
        self.heard = time.monotonic()  # when the exporter last sent anything
        self.why: str | None = None

    def read(self, n: int) -> bytes | None:
        """``n`` bytes, or ``None`` at end of stream (or stop, or idle timeout)."""
        buffer = self.buffer
        while len(buffer) < n:
            if self.stopped.is_set():
                return None
            try:
                chunk = self.conn.recv(max(65536, n - len(buffer)))
            except TimeoutError:
                self.batch.flush()
                self._check_time()
                if self.why is not None:
                    return None
                continue
            except ssl.SSLWantReadError:
                select.select([self.conn], [], [], 0.1)
                continue
            if not chunk:
                return None
            self.heard = time.monotonic()
            if self.started is None:
                self.started = self.heard
            buffer += chunk
        data = bytes(buffer[:n])
        del buffer[:n]
        return data

    def message_done(self) -> None:
        """A whole message was read: what is left in the buffer began arriving no earlier than now."""
        self.started = time.monotonic() if self.buffer else None

    def _check_time(self) -> None:
        now = time.monotonic()
        if self.started is not None and now - self.started > self.message_timeout:
            raise IPFIXError(
                f"a message begun {now - self.started:.0f}s ago is still incomplete ({len(self.buffer)} bytes); "
                f"messages must arrive within messageTimeout ({self.message_timeout:g}s)",
                "message_timeout",
            )
        if self.idle_timeout and self.started is None and now - self.heard > self.idle_timeout:
            self.why = f"idle for {now - self.heard:.0f}s (idleTimeout)"


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
