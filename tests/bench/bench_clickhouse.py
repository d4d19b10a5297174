"""Benchmark: the clickhouse sink's insert rate next to a bare clickhouse-connect insert of the
same rows, in the same run and the same embedded ClickHouse (chDB); then rows per second end to
end (JSON lines → ``flowscope run`` → ClickHouse).

The bare insert gets its rows ready-made, in the flows table's column order, and is timed both
row-oriented and column-oriented; the faster one is the peer. The sink is timed from records
(dicts) to committed rows, its row mapping included.

    .venv/bin/python tests/bench/bench_clickhouse.py [--records N] [--batch N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import logging
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import clickhouse_connect
from measure import Row, Spread, own_cpu_seconds, ratios, report  # tests/bench/measure.py
from prometheus_client import CollectorRegistry
from records import antrea_records  # tests/bench/records.py

from flowscope.core.components import Context
from flowscope.core.elements import ElementRegistry
from flowscope.core.metrics import PipelineMetrics
from flowscope.plugins.sinks.clickhouse import database, rows, schema
from flowscope.plugins.sinks.clickhouse.sink import ClickHouseOptions, ClickHouseSink


def aggregated_records(count: int) -> list[dict]:
    """Exporter records with what the aggregator adds: per-node times and throughputs."""
    records = antrea_records(count)
    for r in records:
        r.update(
            flowEndSecondsFromSourceNode=r["flowEndSeconds"],
            flowEndSecondsFromDestinationNode=r["flowEndSeconds"] - 1,
            throughput=r["octetDeltaCount"] * 8 // 60,
            reverseThroughput=r["reverseOctetDeltaCount"] * 8 // 60,
            throughputFromSourceNode=r["octetDeltaCount"] * 8 // 60,
            throughputFromDestinationNode=r["octetDeltaCount"] * 8 // 61,
            reverseThroughputFromSourceNode=r["reverseOctetDeltaCount"] * 8 // 60,
            reverseThroughputFromDestinationNode=r["reverseOctetDeltaCount"] * 8 // 61,
            sourcePodLabels='{"app":"frontend"}',
            destinationPodLabels='{"app":"cart"}',
            clusterId="5ec7d1f6-6e9f-4a3b-9f2e-0c1a2b3c4d5e",
        )
    return records


def timed(step) -> tuple[float, float]:
    """(CPU seconds of this process, all threads, chDB's included; wall seconds) of ``step()``."""
    cpu, wall = own_cpu_seconds(), time.perf_counter()
    step()
    return own_cpu_seconds() - cpu, time.perf_counter() - wall


def fresh_database(path: Path, name: str):
    keeper = clickhouse_connect.get_client(interface="chdb", path=str(path))
    keeper.command(f"DROP DATABASE IF EXISTS {name}")
    keeper.command(f"CREATE DATABASE {name}")
    client = clickhouse_connect.get_client(interface="chdb", path=str(path), database=name)
    database.migrate(client, schema.Layout())
    return keeper, client


def batches(items: list, size: int) -> list[list]:
    return [items[i : i + size] for i in range(0, len(items), size)]


def bare_insert(path: Path, records: list[dict], size: int, column_oriented: bool) -> tuple[float, float]:
    keeper, client = fresh_database(path, "bench_bare")
    parts = []
    for part in batches(records, size):
        columns = rows.to_columns(part, "")
        parts.append(columns if column_oriented else [list(row) for row in zip(*columns, strict=True)])
    names = list(schema.INSERT_COLUMNS)

    def run() -> None:
        for data in parts:
            client.insert("flows", data, column_names=names, column_oriented=column_oriented)

    result = timed(run)
    assert client.command("SELECT count() FROM flows") == len(records)
    client.close()
    keeper.close()
    return result


def sink_insert(path: Path, records: list[dict], size: int) -> tuple[float, float]:
    keeper, _ = fresh_database(path, "bench_sink")
    options = ClickHouseOptions.from_config({"databaseURL": f"chdb://{path}", "database": "bench_sink"})
    metrics = PipelineMetrics(CollectorRegistry())
    context = Context(
        name="clickhouse",
        elements=ElementRegistry(),
        logger=logging.getLogger("flowscope.sink.clickhouse"),
        metrics=metrics.registry,
        counters=metrics.counters("sink", "clickhouse"),
        data_dir=path,
    )
    sink = ClickHouseSink({name: getattr(options, name) for name in ClickHouseOptions.model_fields}, context)
    sink.open()
    parts = batches(records, size)

    def run() -> None:
        for part in parts:
            sink.write(part)

    result = timed(run)
    assert sink._client.command("SELECT count() FROM flows") == len(records)
    sink.close()
    keeper.close()
    return result


def end_to_end(work: Path, records: list[dict]) -> tuple[float, float]:
    """``flowscope run``: jsonl → clickhouse, in a child process; its CPU and wall seconds."""
    source = work / "records.jsonl"
    source.write_text("".join(json.dumps(r) + "\n" for r in records))
    config = work / "e2e.yaml"
    config.write_text(
        f"dataDir: {work / 'e2e-data'}\n"
        f"sources: [{{type: jsonl, path: {source}}}]\n"
        "sinks: [{type: clickhouse, commitInterval: 1s}]\n"
    )
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    command = [sys.executable, "-m", "flowscope.entrypoints.cli", "--log-level", "warning", "run", "-c", str(config)]
    subprocess.run(command, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    count = subprocess.run(
        [*command[:-3], "clickhouse", "query", "-c", str(config), "SELECT count() FROM flows"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.split()[-1]
    assert int(count) == len(records), count
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def measure_one(kind: str, count: int, size: int) -> None:
    """One measurement in this process, on an engine of its own; prints CPU and wall seconds as JSON."""
    records = aggregated_records(count)
    with tempfile.TemporaryDirectory() as tmp:
        engine = Path(tmp)
        if kind == "sink":
            sink_insert(engine, records[:5000], 1000)  # warm-up: the engine's first inserts cost more
            cpu, wall = sink_insert(engine, records, size)
        else:
            bare_insert(engine, records[:5000], 1000, column_oriented=kind == "column")
            cpu, wall = bare_insert(engine, records, size, column_oriented=kind == "column")
    print(json.dumps({"cpu": cpu, "wall": wall}))


def measured(kinds: tuple[str, ...], count: int, size: int, repeat: int) -> dict[str, list[dict]]:
    """CPU and wall seconds of each kind in each of ``repeat`` rounds. Each measurement runs in a
    fresh process, so that no engine's background merges of another measurement's rows are
    counted; the kinds take turns within a round, so that drift in the machine's load hits all."""
    runs: dict[str, list[dict]] = {kind: [] for kind in kinds}
    for _ in range(repeat):
        for kind in kinds:
            command = [sys.executable, __file__, "--records", str(count), "--batch", str(size), "--one", kind]
            runs[kind].append(json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout))
    return runs


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--batch", type=int, default=50_000, help="records per commit")
    parser.add_argument("--repeat", type=int, default=5, help="measurements per variant (the median is shown)")
    parser.add_argument("--one", choices=("row", "column", "sink"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    n = args.records
    if args.one:
        measure_one(args.one, n, args.batch)
        return 0
    print(
        f"{n:,} records, commits of {args.batch:,}, embedded ClickHouse (chDB); "
        f"median of {args.repeat} runs, each in its own process",
        flush=True,
    )
    results = measured(("row", "column", "sink"), n, args.batch, args.repeat)
    rates = {kind: [n / r["cpu"] for r in found] for kind, found in results.items()}
    # the peer is the orientation that is faster over the rounds (by median), round by round: taking the
    # better of the two in each round would pick whichever one the machine's noise favoured
    faster = max(("row", "column"), key=lambda kind: Spread.of(rates[kind]).median)
    bare = rates[faster]
    print(f"{'':35} {'rows/CPU-s, median (range)':>30}")
    print(f"{'clickhouse-connect, row-oriented':35} {Spread.of(rates['row']).text():>30}")
    print(f"{'clickhouse-connect, column-oriented':35} {Spread.of(rates['column']).text():>30}")
    print(f"{'flowscope clickhouse sink':35} {Spread.of(rates['sink']).text():>30}", flush=True)
    ratio = Spread.of(ratios(rates["sink"], bare))
    report(
        Row(
            stage="ClickHouse sink insert (chDB)",
            unit="rows/CPU-s",
            ours=Spread.of(rates["sink"]),
            peer_name=f"bare clickhouse-connect ({faster}-oriented, the faster)",
            peer=Spread.of(bare),
            ratio=ratio,
            target="≥ 0.8x bare",
            met=ratio.median >= 0.8,
        )
    )
    with tempfile.TemporaryDirectory() as tmp:
        e2e_cpu, e2e_wall = end_to_end(Path(tmp), aggregated_records(n))
    print(
        f"end to end, jsonl -> flowscope run -> ClickHouse: {n / e2e_wall:,.0f} rows/s "
        f"({e2e_wall:.2f} s wall, {n / e2e_cpu:,.0f} rows/CPU-s, process start included)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
