"""``kafka`` source: records from Kafka topics, as a member of a consumer group, with kafka-python.

Each message is one JSON object, decoded as the ``jsonl`` source decodes a line
(:func:`flowscope.plugins.sources.jsonl.decode_record`): an Antrea JSON message (the ``kafka`` and
``json`` sinks' ``{"@timestamp": ..., "ipfix": {...}}``) becomes its ``ipfix`` record, with the
byte strings the encoder wrote in base64 (octetArray elements) made bytes again. A message that is
not a JSON object is dropped, counted (reason ``malformed``) and logged.

At least once: offsets are committed by hand, only after ``emit`` has taken the records of a poll,
and with ``commitLag`` only once they were emitted that long ago: a replica that holds records
(the aggregator's flows waiting for their peer) and fails leaves them to the partition's next owner,
which reads them again.
A rebalance happens inside ``poll``, when everything polled before has been emitted, and the
listener commits what is still uncommitted before the partitions are given up. Records emitted
while the source is stopping are not committed (the pipeline may no longer take them): the group
reads them again, so a stop may repeat records, never lose them.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import threading
import time
from collections import deque
from typing import Any, Literal

from pydantic import Field

from flowscope.core.components import Batch, Emit, Record, Source
from flowscope.core.config import Duration
from flowscope.core.errors import ConfigIssue, FlowscopeError
from flowscope.core.hookspecs import hookimpl
from flowscope.plugins import kafkaclient
from flowscope.plugins.sources.jsonl import NotARecord, decode_record

RECONNECT_MAX = 30.0  # seconds between two attempts to reach the brokers at most
UUID_BASE64 = 24  # the length of a 16-byte UUID in base64


class KafkaSourceOptions(kafkaclient.KafkaClientOptions):
    topics: list[kafkaclient.Topic] = Field(min_length=1, description="topics to read")
    groupId: str = Field("flowscope", min_length=1, description="consumer group; replicas with one groupId share work")
    autoOffsetReset: Literal["earliest", "latest"] = Field(
        "earliest", description="where a group without committed offsets starts: the oldest or the next message"
    )
    batchSize: int = Field(1000, gt=0, description="messages per poll, and so records per emitted batch, at most")
    pollTimeout: Duration = Field("500ms", description="longest wait for messages in one poll")
    sessionTimeout: Duration = Field(
        "45s", description="a replica silent this long leaves the group and its partitions move to the others"
    )
    commitLag: Duration = Field(
        "0s", description="commit offsets only once their records were emitted this long ago (re-read after a failure)"
    )


class KafkaSource(Source):
    """Consumes Antrea JSON messages as one member of a consumer group."""

    Options = KafkaSourceOptions

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        self.log = context.logger
        self.assigned: frozenset[tuple[str, int]] = frozenset()  # (topic, partition) pairs this replica reads
        self._stopped = threading.Event()
        self._lock = threading.Lock()
        self._uncommitted: dict[Any, Any] = {}  # TopicPartition -> OffsetAndMetadata emitted, not yet committed
        self._lagging: deque[tuple[float, dict[Any, Any]]] = deque()  # (emitted at, offsets) within commitLag
        self._octets = {e.name: e.uuid for e in context.elements if e.type == "octetArray"}

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[ConfigIssue]:
        return kafkaclient.preflight(options)

    def stop(self) -> None:
        self._stopped.set()

    def run(self, emit: Emit) -> None:
        kafka = kafkaclient.kafka_module()
        kafkaclient.check_crc32c(self.log)
        consumer = self._connect(kafka)
        if consumer is None:
            return
        try:
            self._consume(kafka, consumer, emit)
        finally:
            # leaving the group revokes the partitions: the listener commits
            consumer.close(autocommit=False, timeout_ms=int(self.options["connectTimeout"] * 1000))

    def _connect(self, kafka: Any) -> Any:
        """A subscribed consumer, trying until the brokers answer; ``None`` if stopped first."""
        options = self.options
        session_ms = int(options["sessionTimeout"] * 1000)
        delay = 1.0
        while not self._stopped.is_set():
            try:
                consumer = kafka.KafkaConsumer(
                    **kafkaclient.client_settings(options, self.log),
                    group_id=options["groupId"],
                    enable_auto_commit=False,
                    auto_offset_reset=options["autoOffsetReset"],
                    max_poll_records=options["batchSize"],
                    session_timeout_ms=session_ms,
                    heartbeat_interval_ms=min(3000, session_ms // 3),
                )
            except kafka.errors.KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    problem = f"Kafka brokers refused the source: {exc}; check the TLS and SASL keys"
                    raise FlowscopeError(problem) from None
                self.log.warning("%s; trying again in %.0fs", kafkaclient.unreachable(options, exc), delay)
                if self._stopped.wait(delay):
                    return None
                delay = min(delay * 2, RECONNECT_MAX)
                continue
            consumer.subscribe(options["topics"], listener=_listener(kafka, self, consumer))
            self.log.info(
                "reading %s as group %r from %s",
                ", ".join(options["topics"]),
                options["groupId"],
                ", ".join(kafkaclient.bootstrap_servers(options)),
            )
            return consumer
        return None

    def _consume(self, kafka: Any, consumer: Any, emit: Emit) -> None:
        timeout_ms = int(self.options["pollTimeout"] * 1000)
        batch_size = self.options["batchSize"]
        while not self._stopped.is_set():
            try:
                polled = consumer.poll(timeout_ms=timeout_ms, max_records=batch_size)
            except kafka.errors.KafkaError as exc:
                if not getattr(exc, "retriable", False):
                    raise
                self.log.warning("poll failed, trying again: %s", kafkaclient.describe(exc))
                self._stopped.wait(1.0)
                continue
            if polled:
                batch, offsets = self._decode(kafka, polled)
                emit(batch)
                if self._stopped.is_set():
                    break  # the pipeline may have refused them: read again by the group, not committed
                with self._lock:
                    self._lagging.append((time.monotonic(), offsets))
            self._release_due()
            self._commit(kafka, consumer)

    def _release_due(self) -> None:
        """Offsets emitted at least ``commitLag`` ago become ready to commit."""
        due = time.monotonic() - self.options["commitLag"]
        with self._lock:
            while self._lagging and self._lagging[0][0] <= due:
                self._uncommitted.update(self._lagging.popleft()[1])

    def _decode(self, kafka: Any, polled: dict[Any, list[Any]]) -> tuple[Batch, dict[Any, Any]]:
        """The records of a poll, and the offsets to commit once they are emitted."""
        batch: Batch = []
        offsets = {}
        bad = 0
        problem = ""
        for partition, messages in polled.items():
            for message in messages:
                try:
                    if message.value is None:
                        raise NotARecord("no value (a tombstone)")
                    record = decode_record(message.value)
                except NotARecord as exc:
                    bad += 1
                    problem = problem or f"{partition.topic}[{partition.partition}] offset {message.offset}: {exc}"
                    continue
                self._restore_octets(record)
                batch.append(record)
            last = messages[-1]
            epoch = last.leader_epoch if last.leader_epoch is not None else -1
            offsets[partition] = kafka.structs.OffsetAndMetadata(last.offset + 1, "", epoch)
        counters = self.context.counters
        counters.received(len(batch) + bad)
        if bad:
            counters.dropped(bad, "malformed")
            more = f" (and {bad - 1} more in this poll)" if bad > 1 else ""
            self.log.warning("message skipped, not a JSON object: %s%s", problem, more)
        return batch, offsets

    def _restore_octets(self, record: Record) -> None:
        """octetArray values back to bytes from the base64 the JSON encoder made of them; a UUID
        element keeps its UUID text (only the base64 of 16 bytes is decoded there)."""
        octets = self._octets
        for name in record.keys() & octets.keys():  # only the octetArray elements the record has
            value = record[name]
            if type(value) is not str or not value or (octets[name] and len(value) != UUID_BASE64):
                continue
            with contextlib.suppress(binascii.Error):
                record[name] = base64.b64decode(value, validate=True)

    def _commit(self, kafka: Any, consumer: Any) -> None:
        with self._lock:
            offsets = dict(self._uncommitted)
        if not offsets:
            return
        try:
            consumer.commit(offsets)
        except kafka.errors.KafkaError as exc:
            assigned = consumer.assignment()
            with self._lock:  # kept for the next commit, for the partitions still read here
                self._uncommitted = {tp: o for tp, o in self._uncommitted.items() if tp in assigned}
            self.log.warning("offsets not committed, their messages may be read again: %s", exc)
            return
        with self._lock:
            for partition, offset in offsets.items():
                if self._uncommitted.get(partition) is offset:
                    del self._uncommitted[partition]

    def take_uncommitted(self, partitions: set[Any]) -> dict[Any, Any]:
        """The offsets of ``partitions`` ready to commit, forgotten here with those still within
        ``commitLag``, whose records the partitions' next owner reads again (for the rebalance listener)."""
        self._release_due()
        with self._lock:
            for _, offsets in self._lagging:
                for tp in partitions:
                    offsets.pop(tp, None)
            return {tp: self._uncommitted.pop(tp) for tp in partitions if tp in self._uncommitted}

    def set_assigned(self, partitions: set[Any], revoked: bool = False) -> None:
        """Record the partitions this replica reads now (``revoked``: those it no longer reads)."""
        pairs = frozenset((tp.topic, tp.partition) for tp in partitions)
        self.assigned = self.assigned - pairs if revoked else self.assigned | pairs


def _listener(kafka: Any, source: KafkaSource, consumer: Any) -> Any:
    """A rebalance listener: commit before partitions are given up, log what this replica reads."""

    class Rebalance(kafka.AsyncConsumerRebalanceListener):
        # on the consumer's IO loop: commit_async's future is awaited, not waited for
        async def on_partitions_revoked(self, revoked: set[Any]) -> None:
            offsets = source.take_uncommitted(revoked)
            if offsets:
                try:
                    await consumer.commit_async(offsets)
                except kafka.errors.KafkaError as exc:
                    source.log.warning("offsets not committed at a rebalance, may be read again: %s", exc)
            if revoked:
                source.log.info("partitions given up: %s", _names(revoked))
            source.set_assigned(revoked, revoked=True)

        async def on_partitions_assigned(self, assigned: set[Any]) -> None:
            source.set_assigned(assigned)
            source.log.info("partitions assigned: %s", _names(assigned) or "none")

        async def on_partitions_lost(self, lost: set[Any]) -> None:
            source.take_uncommitted(lost)  # no longer ours to commit: the new owner reads them again
            source.log.warning("partitions lost (the group went on without this replica): %s", _names(lost))
            source.set_assigned(lost, revoked=True)

    return Rebalance()


def _names(partitions: set[Any]) -> str:
    return ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(partitions))


@hookimpl
def register_sources(register):
    register("kafka", KafkaSource)
