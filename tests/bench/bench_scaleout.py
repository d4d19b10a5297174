"""Benchmark: aggregator replicas reading Kafka, with one replica and with two, in the same run.

The two halves (source node, destination node) of N inter-node connections are produced to a
topic of 4 partitions on a Tansu broker, keyed by connection, by flowscope's `kafka` sink. Then R
replicas (`flowscope aggregator` with `kafka:`, one new consumer group per round) read the whole
topic and correlate it. Printed per round: the wall time from the replicas' start to the last
record read, the records per second over all replicas, and each replica's records per CPU-second
(/proc/PID/stat: user + system, every thread, ended ones included). The broker's own CPU is not
counted; on this machine it shares the cores with the replicas.

    .venv/bin/python tests/bench/bench_scaleout.py [--connections N]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from measure import cpu_seconds  # noqa: E402  (tests/bench/measure.py)

from tests.helpers import CLI, build, free_port  # noqa: E402
from tests.kafka_support import Tansu  # noqa: E402
from tests.test_scale_out import halves  # noqa: E402


def received(port: int) -> float:
    try:
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    except OSError:
        return 0.0
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in body.splitlines()
        if line.startswith("flowscope_records_received_total{") and 'stage="source"' in line
    )


def produce(broker: str, connections: int, work: Path) -> float:
    records = [half for i in range(connections) for half in halves(i)]
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": records, "batch": 1000}],
            "sinks": [{"type": "kafka", "brokers": [broker], "topic": "flows", "batchSize": 1000}],
            "dataDir": str(work / "producer"),
            "shutdownTimeout": "300s",
        }
    )
    started = time.monotonic()
    assert pipeline.run() == 0
    return len(records) / (time.monotonic() - started)


def replicas_round(broker: str, replicas: int, records: int, work: Path, group: str) -> tuple[float, list[float]]:
    """Wall seconds until every record was read, and each replica's records per CPU-second."""
    processes = []
    for n in range(replicas):
        metrics = free_port()
        config = work / f"{group}-{n}.yaml"
        config.write_text(
            json.dumps(
                {
                    "dataDir": str(work / f"{group}-{n}"),
                    "aggregatorTransportProtocol": "none",
                    "grpcListenAddress": "none",
                    "apiServer": {"apiPort": free_port()},
                    "metricsAddress": f"127.0.0.1:{metrics}",
                    "activeFlowRecordTimeout": "600s",
                    "inactiveFlowRecordTimeout": "900s",
                    "kafka": {
                        "brokers": [broker],
                        "topics": ["flows"],
                        "groupId": group,
                        "sessionTimeout": "6s",
                        "batchSize": 5000,
                    },
                }
            )
        )
        log = open(work / f"{group}-{n}.log", "wb")  # noqa: SIM115 (closed with the process)
        processes.append(
            (subprocess.Popen([*CLI, "aggregator", "-c", str(config)], stdout=log, stderr=log), metrics, log)
        )
    started = time.monotonic()
    try:
        deadline = started + 600
        while sum(received(m) for _, m, _ in processes) < records:
            assert time.monotonic() < deadline, "the replicas did not read the topic"
            time.sleep(0.2)
        wall = time.monotonic() - started
        rates = [received(m) / cpu_seconds(p.pid) for p, m, _ in processes]
    finally:
        for process, _, log in processes:
            process.terminate()
            process.wait(60)
            log.close()
    return wall, rates


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--connections", type=int, default=50_000)
    args = parser.parse_args()
    print(f"machine: {platform.machine()}, {os.cpu_count()} cores, Python {platform.python_version()}")
    with tempfile.TemporaryDirectory() as folder:
        work = Path(folder)
        broker = Tansu(work / "tansu.log")
        broker.start()
        try:
            broker.create_topic("flows", 4)
            records = 2 * args.connections
            print(f"producing {records:,} records ({args.connections:,} connections) to 4 partitions ...")
            rate = produce(broker.address, args.connections, work)
            print(f"kafka sink: {rate:,.0f} records/s")
            print("replicas  wall s  records/s  records/CPU-s per replica")
            for count in (1, 2):
                wall, rates = replicas_round(broker.address, count, records, work, f"round-{count}")
                per = ", ".join(f"{r:,.0f}" for r in rates)
                print(f"{count:>8}  {wall:>6.1f}  {records / wall:>9,.0f}  {per}")
        finally:
            broker.stop()
    print("records per second include the replicas' start (joining the group, first fetch)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
