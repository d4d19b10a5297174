"""``kafka`` sink: each record as one Kafka message, with kafka-python.

The value is the record's Antrea JSON line without its newline, made by the ``json`` sink's encoder
(:func:`flowscope.plugins.sinks.json.encode_line`): ``{"@timestamp":"<RFC 3339>","ipfix":{...}}``.
The key is the connection's 5-tuple with its two endpoints in a fixed order (:func:`message_key`),
so both halves of a connection, and the records of one connection over time, land in one partition.

A batch counts as written once every message of it is acknowledged (``acks``). When any is not
(brokers down, a leader election, a timeout), ``write`` raises ``RetryableError``: the batch stays
in the sink's buffer and is sent again after the backoff, without the messages of it that did
arrive. A message larger than ``maxMessageSize`` is dropped alone, counted (reason ``oversized``).
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field

from flowscope.core import speedups
from flowscope.core.components import Batch, Record, Sink
from flowscope.core.config import Duration
from flowscope.core.errors import ConfigIssue, FlowscopeError, RetryableError
from flowscope.core.hookspecs import hookimpl
from flowscope.plugins import kafkaclient
from flowscope.plugins.sinks.json import EXTENSION, encode_line, rfc3339_now

_CODECS = {"gzip": "has_gzip", "lz4": "has_lz4", "snappy": "has_snappy", "zstd": "has_zstd"}
_CODEC_PACKAGES = {"lz4": "lz4", "snappy": "python-snappy", "zstd": "zstandard"}
FLUSH_MARGIN = 5.0  # seconds a flush may take beyond the delivery timeout before the batch is retried
_KEEP = 16 << 20  # the most encoding buffer a sink keeps between batches


class KafkaSinkOptions(kafkaclient.KafkaClientOptions):
    topic: kafkaclient.Topic = Field(description="the topic every record goes to")
    acks: Literal[0, 1, "all"] = Field(
        "all", description="acknowledgements a message needs: 0 none, 1 the leader, all every in-sync replica"
    )
    compression: Literal["none", "gzip", "lz4", "snappy", "zstd"] = Field(
        "none", description="compression of message batches; lz4, snappy and zstd need their Python package"
    )
    linger: Duration = Field("5ms", description="how long the producer waits to fill a message batch")
    batchBytes: int = Field(16384, gt=0, description="bytes per message batch and partition at most")
    maxMessageSize: int = Field(
        1048576, gt=0, description="largest message in bytes; a larger one is dropped (reason oversized)"
    )
    timeout: Duration = Field("30s", description="how long a message may take to be acknowledged before a retry")


def message_key(record: Record) -> bytes | None:
    """``<protocol> <endpoint> <endpoint>``, the endpoints ``<ip>:<port>`` (``[<ip>]:<port>`` for IPv6)
    in ascending (address text, port) order, so that a connection's two directions get one key;
    ``None`` for a record without addresses."""
    get = record.get
    source = str(get("sourceIPv4Address") or get("sourceIPv6Address") or "")
    destination = str(get("destinationIPv4Address") or get("destinationIPv6Address") or "")
    if not source and not destination:
        return None
    source_port = int(get("sourceTransportPort") or 0)
    destination_port = int(get("destinationTransportPort") or 0)
    if (destination, destination_port) < (source, source_port):
        source, source_port, destination, destination_port = destination, destination_port, source, source_port
    one = f"[{source}]:{source_port}" if ":" in source else f"{source}:{source_port}"
    two = f"[{destination}]:{destination_port}" if ":" in destination else f"{destination}:{destination_port}"
    return f"{int(get('protocolIdentifier') or 0)} {one} {two}".encode()


class KafkaSink(Sink):
    """Produces records to one Kafka topic as Antrea JSON messages."""

    Options = KafkaSinkOptions

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        self.topic: str = options["topic"]
        self.log = context.logger
        self._producer: Any = None
        # records of a failed batch that were delivered or dropped, by id (holding them keeps the ids
        # unique), so that its retry sends only the rest
        self._delivered: dict[int, Record] = {}
        self._dropped: dict[int, Record] = {}
        self._encoder = EXTENSION.LineEncoder() if speedups.wanted(EXTENSION) else None
        self._buffer = bytearray()  # kept from batch to batch, as the json sink keeps its own

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[ConfigIssue]:
        """kafka-python is there, and the library for the compression codec."""
        issues = kafkaclient.preflight(options)
        codec = options["compression"]
        if codec in _CODECS and not issues:
            from kafka import codec as codecs

            if not getattr(codecs, _CODECS[codec])():
                issues.append(
                    ConfigIssue("compression", f"{codec!r} needs the Python package {_CODEC_PACKAGES[codec]}")
                )
        return issues

    def open(self) -> None:
        kafkaclient.check_crc32c(self.log)
        self._producer = self._connect()
        self.log.info("producing to topic %r on %s", self.topic, ", ".join(kafkaclient.bootstrap_servers(self.options)))

    def _connect(self) -> Any:
        kafka = kafkaclient.kafka_module()
        options = self.options
        timeout_ms = int(options["timeout"] * 1000)
        linger_ms = int(options["linger"] * 1000)
        acks = options["acks"]
        try:
            return kafka.KafkaProducer(
                **kafkaclient.client_settings(options, self.log),
                acks=acks,
                enable_idempotence=acks == "all",  # Kafka's default; it needs acks=all
                compression_type=None if options["compression"] == "none" else options["compression"],
                linger_ms=linger_ms,
                batch_size=options["batchBytes"],
                max_request_size=options["maxMessageSize"],
                request_timeout_ms=timeout_ms,
                delivery_timeout_ms=timeout_ms + linger_ms,
                max_block_ms=timeout_ms,
            )
        except kafka.errors.KafkaError as exc:
            if getattr(exc, "retriable", False):
                raise RetryableError(kafkaclient.unreachable(options, exc)) from None
            raise FlowscopeError(f"Kafka brokers refused the sink: {exc}; check the TLS and SASL keys") from None

    def write(self, records: Batch) -> int:
        if self._producer is None:
            try:
                self._producer = self._connect()
            except RetryableError:
                raise
            except FlowscopeError as exc:  # a file changed since the start, say: keep the records meanwhile
                raise RetryableError(str(exc)) from None
        kafka = kafkaclient.kafka_module()
        self._forget_others(records)
        producer, topic, delivered, dropped = self._producer, self.topic, self._delivered, self._dropped
        settled = bool(delivered or dropped)  # a retry: skip what the failed write delivered or dropped
        send, too_large = producer.send, kafka.errors.MessageSizeTooLargeError
        sent = []
        failure: Exception | None = None
        for record, value in zip(records, self._values(records, rfc3339_now()), strict=True):
            if settled and (delivered.get(id(record)) is record or dropped.get(id(record)) is record):
                continue
            try:
                sent.append((record, send(topic, value, message_key(record))))
            except too_large as exc:
                self._drop_oversized(record, exc)
            except kafka.errors.KafkaError as exc:  # no metadata for the topic in time, or a producer in error
                failure = exc
                break
        try:  # every message of the batch sent: one wait for all of them
            producer.flush(self.options["timeout"] + self.options["linger"] + FLUSH_MARGIN)
        except kafka.errors.KafkaError as exc:
            failure = failure or exc
        for record, future in sent:
            if future.succeeded():
                continue
            if isinstance(future.exception, too_large):
                self._drop_oversized(record, future.exception)
            else:
                failure = failure or future.exception or kafka.errors.KafkaTimeoutError("no answer")
        if failure is not None:
            for record, future in sent:
                if future.succeeded():
                    delivered[id(record)] = record
            unsettled = any(not future.is_done for _, future in sent)
            self._failed(failure, len(records) - len(delivered) - len(dropped), len(records), unsettled)
        written = len(records)
        if dropped:
            written -= sum(1 for record in records if dropped.get(id(record)) is record)
        delivered.clear()
        dropped.clear()
        return written

    def _values(self, records: Batch, timestamp: str) -> list[bytes]:
        """The records' Antrea JSON lines without their newlines; made by the json sink's C encoder
        in one buffer (the lines hold no newline of their own) when it is there."""
        if self._encoder is None or type(records) is not list:
            return [encode_line(record, timestamp)[:-1] for record in records]
        end = self._encoder.fill(self._buffer, records, timestamp, encode_line)
        with memoryview(self._buffer)[:end] as text:
            values = bytes(text).split(b"\n")
        if len(self._buffer) > _KEEP:
            self._buffer = bytearray()
        values.pop()  # after the last newline
        return values

    def _forget_others(self, records: Batch) -> None:
        """Keep what the last failed write settled only for the records that came back."""
        if self._delivered or self._dropped:
            ids = {id(record) for record in records}
            self._delivered = {key: r for key, r in self._delivered.items() if key in ids}
            self._dropped = {key: r for key, r in self._dropped.items() if key in ids}

    def _drop_oversized(self, record: Record, exc: Exception) -> None:
        self._dropped[id(record)] = record
        self.context.counters.dropped(1, "oversized")
        self.log.warning(
            "record dropped: larger than maxMessageSize (%d bytes) or the broker's limit, key %s: %s",
            self.options["maxMessageSize"],
            (message_key(record) or b"-").decode(),
            exc,
        )

    def _failed(self, failure: Exception, missing: int, total: int, unsettled: bool) -> None:
        """Raise RetryableError. A producer left in an error state (not a transient one), or with
        messages still under way (which the retry would repeat), is closed and replaced."""
        if unsettled or not getattr(failure, "retriable", False):
            self._close(0)
        hint = "; does the topic exist?" if "metadata" in str(failure) else ""
        raise RetryableError(
            f"{missing} of {total} messages not acknowledged by topic {self.topic!r} on "
            f"{', '.join(kafkaclient.bootstrap_servers(self.options))}: {kafkaclient.describe(failure)}{hint}"
        )

    def close(self) -> None:
        self._close(self.options["timeout"])

    def _close(self, timeout: float) -> None:
        if self._producer is not None:
            producer, self._producer = self._producer, None
            producer.close(timeout=timeout)


@hookimpl
def register_sinks(register):
    register("kafka", KafkaSink)
