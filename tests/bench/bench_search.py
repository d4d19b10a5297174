"""Benchmark: the opensearch sink's records per second next to opensearch-py's own ``helpers.bulk``
sending the same documents to the same indices of the same osmem-server (in-memory OpenSearch API),
in the same run.

Each variant indexes into a fresh clone of the server's empty base cluster, with the sink's index
template installed first, so the server does the same work for both. The peer gets its documents
as ``{"_index": ..., "_source": {"@timestamp": ..., "ipfix": record}}`` actions, its bulk requests
``--batch`` documents each; the sink is timed from records (dicts) through ``write`` (encoding,
index names, the bulk request and the reading of its answer) in batches of the same size. The
variants take turns, ``--repeat`` times, and the median is shown. osmem indexes a few hundred such
documents a second, so the server's time dominates both; the CPU this process spends per record
(encoding and reading answers) is shown too.

    .venv/bin/python tests/bench/bench_search.py [--records N] [--batch N] [--repeat N]
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path

from opensearchpy import OpenSearch, helpers
from osmem_server import OsmemServer
from prometheus_client import CollectorRegistry
from records import antrea_records  # tests/bench/records.py

from flowscope.core.components import Context
from flowscope.core.metrics import PipelineMetrics
from flowscope.core.plugins import load_plugins
from flowscope.plugins.sinks.json import rfc3339_now
from flowscope.plugins.sinks.search import template
from flowscope.plugins.sinks.search.options import SearchOptions
from flowscope.plugins.sinks.search.sink import OpenSearchSink

ELEMENTS = load_plugins(entry_points=True).elements
PATTERN = "flows-%Y.%m.%d"


def timed(step: Callable[[], None]) -> tuple[float, float]:
    """(CPU seconds of this process, wall seconds) of ``step()``."""
    cpu, wall = time.process_time(), time.perf_counter()
    step()
    return time.process_time() - cpu, time.perf_counter() - wall


def count(url: str) -> int:
    urllib.request.urlopen(urllib.request.Request(f"{url}/flows-*/_refresh", method="POST")).read()
    with urllib.request.urlopen(f"{url}/flows-*/_count") as answer:
        return int(json.loads(answer.read())["count"])


def bare(url: str, records: list[dict], size: int) -> tuple[float, float]:
    client = OpenSearch(hosts=[url], max_retries=0, timeout=120)
    client.indices.put_index_template(name="flowscope-flows", body=template.index_template(PATTERN, ELEMENTS))
    names = template.IndexNames(PATTERN)

    def run() -> None:
        timestamp, now = rfc3339_now(), int(time.time())
        actions = (
            {"_index": names(r.get("flowEndSeconds"), now), "_source": {"@timestamp": timestamp, "ipfix": r}}
            for r in records
        )
        ok, errors = helpers.bulk(client, actions, chunk_size=size, max_chunk_bytes=1 << 30, stats_only=True)
        assert (ok, errors) == (len(records), 0), (ok, errors)

    result = timed(run)
    client.close()
    return result


def sink(url: str, records: list[dict], size: int, data: Path) -> tuple[float, float]:
    options = SearchOptions.from_config({"hosts": [url], "timeout": "120s"})
    metrics = PipelineMetrics(CollectorRegistry())
    context = Context(
        name="opensearch",
        elements=ELEMENTS,
        logger=logging.getLogger("flowscope.sink.opensearch"),
        metrics=metrics.registry,
        counters=metrics.counters("sink", "opensearch"),
        data_dir=data,
    )
    search = OpenSearchSink({name: getattr(options, name) for name in SearchOptions.model_fields}, context)
    search.open()  # installs the template
    parts = [records[i : i + size] for i in range(0, len(records), size)]

    def run() -> None:
        for part in parts:
            assert search.write(part) == len(part)

    result = timed(run)
    search.close()
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=1000, help="documents per bulk request (the sink's batchSize)")
    parser.add_argument("--repeat", type=int, default=3, help="measurements per variant (the median is shown)")
    args = parser.parse_args()
    n, size = args.records, args.batch
    records = antrea_records(n)
    runs: dict[str, list[tuple[float, float]]] = {"bare": [], "sink": []}
    print(f"{n:,} records, bulk requests of {size:,}, osmem-server; median of {args.repeat} runs", flush=True)
    with OsmemServer.start(japanese=False) as server, tempfile.TemporaryDirectory() as tmp:
        print(f"osmem-server {server.version}", flush=True)
        for _ in range(args.repeat):
            for kind in ("bare", "sink"):
                clone = server.clone()
                try:
                    if kind == "bare":
                        runs[kind].append(bare(clone.url, records, size))
                    else:
                        runs[kind].append(sink(clone.url, records, size, Path(tmp)))
                    assert count(clone.url) == n
                finally:
                    clone.close()
    (bare_cpu, bare_wall), (sink_cpu, sink_wall) = (
        (statistics.median(c for c, _ in runs[k]), statistics.median(w for _, w in runs[k])) for k in ("bare", "sink")
    )
    print(f"{'':38} {'wall s':>7} {'records/s':>10} {'client CPU s':>13}")
    print(f"{'opensearch-py helpers.bulk':38} {bare_wall:7.2f} {n / bare_wall:10,.0f} {bare_cpu:13.2f}")
    print(f"{'flowscope opensearch sink':38} {sink_wall:7.2f} {n / sink_wall:10,.0f} {sink_cpu:13.2f}")
    print(f"ratio sink / helpers.bulk, records per second: {bare_wall / sink_wall:.2f} (target >= 0.8)")
    print(f"client CPU per record, helpers.bulk / sink: {bare_cpu / sink_cpu:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
