"""Benchmark: the ``kafka`` sink and source next to bare kafka-python clients, same broker, same run.

A Tansu broker (tests/kafka_support.py) holds every topic, each of 4 partitions. N Antrea-shaped
records (the agent's 43 elements) are:

1. Produced by the ``kafka`` sink (its ``write`` called with batches of ``--batch`` records, as the
   runtime's sink thread calls it) and by a bare ``KafkaProducer`` sending the same keys and values,
   the values made beforehand by the ``json`` sink's ``encode_line`` so that only sending is
   compared, then one ``flush`` for all of them (the sink waits once per ``write``, for that batch's
   acknowledgements, as its contract requires). Both use acks=all (idempotent), linger 5 ms, 16 KiB
   batches, no compression; each round writes to topics of its own.
2. Read from one topic by the ``kafka`` source (``run`` with an ``emit`` that counts) and by a bare
   ``KafkaConsumer`` in a consumer group of its own polling as many records at a time and decoding
   each value with orjson. The clock starts at the first records read, so that joining the group
   (which Tansu holds for half the session timeout) is not counted; the records of that first poll
   are not counted either.

kafka-python checksums every message batch (CRC-32C) when it writes it, and when it reads it: in C
with the ``crc32c`` package, else in pure Python at about 2 ms per 16 KiB; the first line says which.

Measured: records per second (wall) and per client CPU-second (``getrusage``: this process,
every thread, the clients' I/O threads included; the broker is another process and not counted).
Each is the median of ``--rounds`` rounds, with the range; the ratio flowscope/bare is printed per
round and summarised (target at least 0.8).

    .venv/bin/python tests/bench/bench_kafka.py [--records N] [--batch N] [--rounds N]
"""

from __future__ import annotations

import argparse
import importlib.util
import logging
import os
import platform
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from pathlib import Path

import kafka
import orjson
from measure import Row, Spread, own_cpu_seconds, ratios, report  # tests/bench/measure.py
from records import antrea_records  # tests/bench/records.py

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from flowscope.plugins.sinks.json import encode_line, rfc3339_now  # noqa: E402
from flowscope.plugins.sinks.kafka import KafkaSink, message_key  # noqa: E402
from flowscope.plugins.sources.kafka import KafkaSource  # noqa: E402
from flowscope.testing import make_context  # noqa: E402
from tests.kafka_support import Tansu  # noqa: E402

PARTITIONS = 4
SESSION = 6.0  # seconds; Tansu holds a group's first join for half of it
PRODUCER = {"acks": "all", "enable_idempotence": True, "linger_ms": 5, "batch_size": 16384, "compression_type": None}


class Sample:
    """Records per wall second and per CPU-second of one run."""

    def __init__(self, records: int, wall: float, cpu: float):
        self.rate, self.per_cpu = records / wall, records / cpu


def measure(work: Callable[[], int]) -> Sample:
    started, cpu = time.perf_counter(), own_cpu_seconds()
    records = work()
    return Sample(records, time.perf_counter() - started, own_cpu_seconds() - cpu)


def sink_round(broker: str, topic: str, records: list[dict], batch: int) -> Sample:
    options = {"brokers": [broker], "topic": topic, "acks": "all", "linger": "5ms", "batchBytes": 16384}
    sink = KafkaSink(dict(KafkaSink.Options.model_validate(options)), make_context("kafka"))
    sink.open()
    sink.write(records[:1])  # metadata for the topic, as a running sink has it

    def work() -> int:
        for start in range(1, len(records), batch):
            assert sink.write(records[start : start + batch]) == len(records[start : start + batch])
        return len(records) - 1

    try:
        return measure(work)
    finally:
        sink.close()


def bare_producer_round(broker: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> Sample:
    producer = kafka.KafkaProducer(bootstrap_servers=[broker], **PRODUCER)
    producer.send(topic, messages[0][1], messages[0][0]).get(30)

    def work() -> int:
        futures = [producer.send(topic, value, key) for key, value in messages[1:]]
        producer.flush(60)
        assert all(future.succeeded() for future in futures), "the bare producer lost messages"
        return len(futures)

    try:
        return measure(work)
    finally:
        producer.close(10)


class FirstToLast:
    """Counts records; measures from the first poll's end to the last record."""

    def __init__(self, total: int):
        self.total, self.seen, self.done = total, 0, threading.Event()
        self.counted = 0
        self.started = self.cpu = 0.0
        self.sample: Sample | None = None

    def add(self, count: int) -> None:
        if not self.seen:
            self.started, self.cpu, self.counted = time.perf_counter(), own_cpu_seconds(), -count
        self.seen += count
        if self.seen >= self.total and not self.done.is_set():
            wall, cpu = time.perf_counter() - self.started, own_cpu_seconds() - self.cpu
            self.sample = Sample(self.seen + self.counted, wall, cpu)
            self.done.set()


def source_round(broker: str, topic: str, group: str, total: int, batch: int) -> Sample:
    options = {"brokers": broker, "topics": [topic], "groupId": group, "batchSize": batch}
    options.update(sessionTimeout=f"{SESSION}s", pollTimeout="100ms")
    source = KafkaSource(dict(KafkaSource.Options.model_validate(options)), make_context("kafka", kind="source"))
    counter = FirstToLast(total)
    thread = threading.Thread(target=source.run, args=(lambda records: counter.add(len(records)),))
    thread.start()
    try:
        assert counter.done.wait(300), f"the source read {counter.seen} of {total} records"
    finally:
        source.stop()
        thread.join(60)
    assert counter.sample is not None
    return counter.sample


def bare_consumer_round(broker: str, topic: str, group: str, total: int, batch: int) -> Sample:
    session_ms = int(SESSION * 1000)
    consumer = kafka.KafkaConsumer(
        bootstrap_servers=[broker],
        group_id=group,
        enable_auto_commit=False,
        auto_offset_reset="earliest",
        max_poll_records=batch,
        session_timeout_ms=session_ms,
        heartbeat_interval_ms=min(3000, session_ms // 3),
    )
    consumer.subscribe([topic])
    counter = FirstToLast(total)
    try:
        deadline = time.monotonic() + 300
        while not counter.done.is_set():
            assert time.monotonic() < deadline, f"the bare consumer read {counter.seen} of {total} records"
            polled = consumer.poll(timeout_ms=100, max_records=batch)
            decoded = [orjson.loads(message.value) for messages in polled.values() for message in messages]
            if decoded:
                counter.add(len(decoded))
    finally:
        consumer.close(autocommit=False)
    assert counter.sample is not None
    return counter.sample


def produce(broker: str, topic: str, messages: list[tuple[bytes | None, bytes]]) -> None:
    producer = kafka.KafkaProducer(bootstrap_servers=[broker], **PRODUCER)
    try:
        futures = [producer.send(topic, value, key) for key, value in messages]
        producer.flush(120)
        assert all(future.succeeded() for future in futures)
    finally:
        producer.close(10)


def table(title: str, ours: list[Sample], bare: list[Sample]) -> None:
    """One summary row per figure: records per second and per CPU-second, flowscope against bare kafka-python."""
    for label, field in (("records/s", "rate"), ("records/CPU-s", "per_cpu")):
        a, b = [getattr(s, field) for s in ours], [getattr(s, field) for s in bare]
        ratio = Spread.of(ratios(a, b))
        report(
            Row(
                stage=title,
                unit=label,
                ours=Spread.of(a),
                peer_name="bare kafka-python",
                peer=Spread.of(b),
                ratio=ratio,
                target="≥ 0.8x bare",
                met=ratio.median >= 0.8,
            )
        )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=100_000)
    parser.add_argument("--batch", type=int, default=1000, help="records per sink write and per poll")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    crc = "C (crc32c)" if importlib.util.find_spec("crc32c") else "pure Python (no crc32c package)"
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}, "
          f"kafka-python {kafka.__version__}, CRC-32C in {crc}")  # fmt: skip
    print(f"building {args.records:,} Antrea-shaped records and their messages ...", flush=True)
    records = antrea_records(args.records)
    timestamp = rfc3339_now()
    messages = [(message_key(record), encode_line(record, timestamp)[:-1]) for record in records]
    sink: list[Sample] = []
    bare_producer: list[Sample] = []
    source: list[Sample] = []
    bare_consumer: list[Sample] = []
    with tempfile.TemporaryDirectory() as folder:
        broker = Tansu(Path(folder) / "tansu.log")
        broker.start()
        try:
            address = broker.address
            for topic in ("read", *(f"{kind}-{n}" for n in range(args.rounds) for kind in ("sink", "bare"))):
                broker.create_topic(topic, PARTITIONS)
            for n in range(args.rounds):  # alternating, so that both see the same broker state
                sink.append(sink_round(address, f"sink-{n}", records, args.batch))
                bare_producer.append(bare_producer_round(address, f"bare-{n}", messages))
                print(f"produce round {n + 1}: sink {sink[-1].rate:,.0f}/s, bare {bare_producer[-1].rate:,.0f}/s",
                      flush=True)  # fmt: skip
            produce(address, "read", messages)
            for n in range(args.rounds):
                source.append(source_round(address, "read", f"source-{n}", args.records, args.batch))
                bare_consumer.append(bare_consumer_round(address, "read", f"bare-{n}", args.records, args.batch))
                print(f"consume round {n + 1}: source {source[-1].rate:,.0f}/s, bare {bare_consumer[-1].rate:,.0f}/s",
                      flush=True)  # fmt: skip
        finally:
            broker.stop()
    print(f"median of {args.rounds} rounds (range); {PARTITIONS} partitions; batches of {args.batch} records")
    table("Kafka sink", sink, bare_producer)
    table("Kafka source (with JSON decoding)", source, bare_consumer)
    print("CPU: this process, every thread (the broker not counted); ratio = flowscope / bare, target >= 0.8")
    return 0


if __name__ == "__main__":
    sys.exit(main())
