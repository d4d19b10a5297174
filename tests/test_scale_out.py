"""Scaling past one aggregator on Kafka, with a real broker (Tansu) and aggregator replicas as
separate `flowscope aggregator` processes: the exporters' records, keyed by connection, go to a
topic of several partitions; each replica of one consumer group correlates its share; one sink
(a JSON-lines collector over TCP) gets every connection once, correlated. A replica killed with
SIGKILL loses nothing: its partitions move, and the next owner reads the records it held again."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
import urllib.request
from pathlib import Path

import pytest

from tests.helpers import CLI, build, free_port, wait_for

pytestmark = pytest.mark.slow

CONNECTIONS = 40
PARTITIONS = 4


def halves(i: int) -> tuple[dict, dict]:
    """The source node's and the destination node's records of inter-node connection ``i``."""
    common = {
        "flowStartSeconds": 1_767_225_600,
        "flowEndSeconds": 1_767_225_610,
        "flowEndReason": 2,
        "sourceIPv4Address": f"10.244.1.{i % 200 + 10}",
        "destinationIPv4Address": "10.244.2.9",
        "sourceTransportPort": 40_000 + i,
        "destinationTransportPort": 80,
        "protocolIdentifier": 6,
        "packetTotalCount": 10,
        "octetTotalCount": 1000 + i,
        "packetDeltaCount": 10,
        "octetDeltaCount": 1000 + i,
        "flowType": 2,
        "tcpState": "ESTABLISHED",
    }
    source = {**common, "sourcePodName": f"client-{i}", "sourcePodNamespace": "shop", "sourceNodeName": "node-a"}
    destination = {**common, "destinationPodName": "web-0", "destinationPodNamespace": "shop"}
    destination["destinationNodeName"] = "node-b"
    return source, destination


class Collector:
    """The one sink every replica writes to: JSON lines over TCP, each line remembered with the
    connection (so the replica) it came on."""

    def __init__(self):
        self.lines: list[tuple[int, dict]] = []
        self.server = socket.create_server(("127.0.0.1", 0))
        self.port = self.server.getsockname()[1]
        self._connections = 0
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self._connections += 1
            threading.Thread(target=self._read, args=(conn, self._connections), daemon=True).start()

    def _read(self, conn: socket.socket, number: int) -> None:
        pending = b""
        with conn:
            while data := conn.recv(65536):
                *lines, pending = (pending + data).split(b"\n")
                self.lines += [(number, json.loads(line)["ipfix"]) for line in lines]

    def correlated(self) -> list[tuple[int, dict]]:
        return [
            (n, r)
            for n, r in self.lines
            if r["octetTotalCountFromSourceNode"] and r["octetTotalCountFromDestinationNode"]
        ]


class Replica:
    """``flowscope aggregator`` reading its share of the topic."""

    def __init__(self, tmp_path: Path, name: str, broker: str, collector: Collector):
        self.metrics = free_port()
        self.log = tmp_path / f"{name}.log"
        config = tmp_path / f"{name}.yaml"
        kafka = {"brokers": [broker], "topics": ["flows"], "sessionTimeout": "6s", "pollTimeout": "200ms"}
        config.write_text(
            json.dumps(
                {
                    "dataDir": str(tmp_path / name),
                    "aggregatorTransportProtocol": "none",
                    "grpcListenAddress": "none",
                    "apiServer": {"apiPort": free_port()},
                    "metricsAddress": f"127.0.0.1:{self.metrics}",
                    "activeFlowRecordTimeout": "2s",
                    "inactiveFlowRecordTimeout": "4s",
                    "correlationTimeout": "60s",
                    "clusterID": "scale-out",
                    "kafka": kafka,
                    "sinks": [{"type": "json", "name": "collector", "address": f"127.0.0.1:{collector.port}:tcp"}],
                }
            )
        )
        with open(self.log, "wb") as log:
            self.process = subprocess.Popen([*CLI, "aggregator", "-c", str(config)], stdout=log, stderr=log)

    def received(self) -> float:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{self.metrics}/metrics", timeout=2) as response:
                text = response.read().decode()
        except OSError:
            return -1
        lines = [line for line in text.splitlines() if line.startswith("flowscope_records_received_total{")]
        return sum(float(line.rsplit(" ", 1)[1]) for line in lines if 'stage="source"' in line)

    def assigned(self) -> bool:
        return any("partitions assigned: flows[" in line for line in self.log.read_text().splitlines())

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.process.poll() is None:
            self.process.send_signal(sig)
        return self.process.wait(60)


def export(broker: str, records: list[dict], tmp_path: Path, node: str) -> None:
    """One node's exporter side: its records to the topic, keyed by connection."""
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": records}],
            "sinks": [{"type": "kafka", "brokers": [broker], "topic": "flows", "timeout": "5s"}],
            "dataDir": str(tmp_path / node),
        }
    )
    assert pipeline.run() == 0


@pytest.fixture
def cluster(tansu, tmp_path):
    tansu.create_topic("flows", PARTITIONS)
    collector = Collector()
    replicas = [Replica(tmp_path, name, tansu.address, collector) for name in ("replica-1", "replica-2")]
    try:
        wait_for(lambda: all(r.assigned() for r in replicas), 60, "both replicas to be given partitions")
        yield tansu.address, collector, replicas
    finally:
        for replica in replicas:
            replica.stop(signal.SIGKILL)
        collector.server.close()


def test_every_connection_is_correlated_once_by_one_replica(cluster, tmp_path):
    broker, collector, replicas = cluster
    pairs = [halves(i) for i in range(CONNECTIONS)]
    export(broker, [source for source, _ in pairs], tmp_path, "node-a")
    export(broker, [destination for _, destination in pairs], tmp_path, "node-b")
    wait_for(lambda: len(collector.correlated()) >= CONNECTIONS, 60, "every connection correlated")
    for replica in replicas:
        assert replica.stop() == 0
    correlated = collector.correlated()
    assert sorted(r["sourceTransportPort"] for _, r in correlated) == [40_000 + i for i in range(CONNECTIONS)]
    assert len(collector.lines) == CONNECTIONS  # no partial record, no second export
    assert len({n for n, _ in correlated}) == 2  # both replicas did their share
    for _, record in correlated:
        i = record["sourceTransportPort"] - 40_000
        assert (record["sourcePodName"], record["destinationPodName"]) == (f"client-{i}", "web-0")
        assert record["octetTotalCountFromSourceNode"] == record["octetTotalCountFromDestinationNode"] == 1000 + i
        assert record["clusterId"] == "scale-out"


def test_a_replica_killed_mid_run_loses_nothing(cluster, tmp_path):
    broker, collector, replicas = cluster
    pairs = [halves(i) for i in range(CONNECTIONS)]
    export(broker, [source for source, _ in pairs], tmp_path, "node-a")
    # both replicas hold their share of the source halves, waiting for the other halves
    wait_for(lambda: sum(r.received() for r in replicas) == CONNECTIONS, 60, "the source halves read")
    assert all(r.received() > 0 for r in replicas)
    killed, survivor = replicas
    assert killed.stop(signal.SIGKILL) == -signal.SIGKILL
    export(broker, [destination for _, destination in pairs], tmp_path, "node-b")
    # the survivor is given the killed replica's partitions and reads its source halves again
    wait_for(lambda: len(collector.correlated()) >= CONNECTIONS, 90, "every connection correlated by the survivor")
    assert survivor.stop() == 0
    correlated = collector.correlated()
    assert sorted(r["sourceTransportPort"] for _, r in correlated) == [40_000 + i for i in range(CONNECTIONS)]
    assert len(collector.lines) == CONNECTIONS
    assert "partitions assigned: flows[" in survivor.log.read_text()
    assert os.path.getsize(killed.log) > 0


def test_the_replica_config_is_checked_like_any_other(tmp_path):
    config = tmp_path / "replica.yaml"
    config.write_text("kafka: {brokers: [], topics: [flows]}\ngrpcListenAddress: none\n")
    result = subprocess.run(
        [*CLI, "config", "check", "--bundle", "aggregator", str(config)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 2
    assert "sources[1].brokers" in result.stderr, result.stderr
