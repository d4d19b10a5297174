"""The pipeline runtime: fan-out, buffers, batching, retries, errors and shutdown."""

from __future__ import annotations

import gc
import threading
import time
import weakref

import pytest

from flowscope.core.pipeline import GC_YOUNG_THRESHOLD
from tests import helpers
from tests.helpers import COLLECTED, EVENTS, build, run


def records(n, **extra):
    return [{"seq": i, **extra} for i in range(n)]


def counter(pipeline, stage, name, what, reason=None):
    return pipeline.metrics.counters(stage, name).value(what, reason)


def test_finite_source_drains_every_record_to_every_sink_then_exits_0():
    spec = {
        "sources": [{"type": "memory", "records": records(25), "batch": 7}],
        "sinks": [{"type": "collect", "name": "a"}, {"type": "collect", "name": "b", "batchSize": 4}],
    }
    pipeline = build(spec)
    assert pipeline.run() == 0
    assert [r["seq"] for r in COLLECTED["a"]] == list(range(25))
    assert [r["seq"] for r in COLLECTED["b"]] == list(range(25))
    assert counter(pipeline, "source", "memory", "emitted") == 25
    assert counter(pipeline, "sink", "a", "received") == 25
    assert counter(pipeline, "sink", "b", "emitted") == 25
    assert counter(pipeline, "sink", "b", "dropped") == 0
    # every sink is flushed and closed exactly once, after it was opened
    for name in ("a", "b"):
        mine = [event for sink, event in EVENTS if sink == name]
        assert mine[0] == "open" and mine[-2:] == ["flush", "close"] and mine.count("close") == 1


def test_sink_gets_batches_by_size_and_the_rest_on_interval():
    spec = {
        "sources": [{"type": "memory", "records": records(10), "batch": 10, "hold": True}],
        "sinks": [{"type": "collect", "batchSize": 4, "flushInterval": "200ms"}],
    }
    sizes = []
    pipeline = build(spec)
    sink = pipeline.sinks[0].sink
    original = sink.write
    sink.write = lambda batch: (sizes.append(len(batch)), original(batch))
    pipeline.start()
    deadline = time.monotonic() + 5
    while len(COLLECTED.get("collect", [])) < 10 and time.monotonic() < deadline:
        time.sleep(0.01)
    pipeline.stop()
    assert pipeline.wait(5)
    # two full batches right away; the remaining two records only after the flush interval
    assert sizes == [4, 4, 2]


def test_enrichers_add_fields_and_drops_are_counted():
    spec = {
        "sources": [{"type": "memory", "records": [{"seq": 0}, {"seq": 1, "drop": True}, {"seq": 2}]}],
        "enrichers": [{"type": "tag", "tag": "blue"}],
        "sinks": [{"type": "collect"}],
    }
    pipeline = run(spec)
    assert COLLECTED["collect"] == [{"seq": 0, "tag": "blue"}, {"seq": 2, "tag": "blue"}]
    assert counter(pipeline, "enricher", "tag", "dropped", "filtered") == 1
    assert counter(pipeline, "enricher", "tag", "emitted") == 2


def test_enricher_that_raises_passes_the_batch_on_and_is_counted(caplog):
    spec = {
        "sources": [{"type": "memory", "records": records(3)}],
        "enrichers": [{"type": "raising"}],
        "sinks": [{"type": "collect"}],
    }
    pipeline = run(spec)
    assert [r["seq"] for r in COLLECTED["collect"]] == [0, 1, 2]
    assert counter(pipeline, "enricher", "raising", "errors") == 1
    assert "enricher 'raising' raised KeyError" in caplog.text


def test_retryable_write_is_retried_with_backoff_and_nothing_is_lost(caplog):
    spec = {
        "sources": [{"type": "memory", "records": records(5)}],
        "sinks": [{"type": "flaky", "failures": 3, "retryBackoff": "10ms", "retryMaxBackoff": "40ms"}],
    }
    started = time.monotonic()
    pipeline = run(spec)
    elapsed = time.monotonic() - started
    assert [r["seq"] for r in COLLECTED["flaky"]] == [0, 1, 2, 3, 4]
    assert counter(pipeline, "sink", "flaky", "retried") == 3
    assert counter(pipeline, "sink", "flaky", "emitted") == 5
    assert counter(pipeline, "sink", "flaky", "dropped") == 0
    assert elapsed >= 0.01 + 0.02 + 0.04  # backoff doubled: 10ms, 20ms, 40ms
    assert "write of 5 records failed (attempt 1), retrying" in caplog.text


def test_retries_give_up_after_max_retries_and_count_the_drop():
    spec = {
        "sources": [{"type": "memory", "records": records(4)}],
        "sinks": [{"type": "flaky", "failures": -1, "retryBackoff": "1ms", "maxRetries": 2}],
    }
    pipeline = run(spec)
    assert COLLECTED["flaky"] == []
    assert counter(pipeline, "sink", "flaky", "retried") == 3
    assert counter(pipeline, "sink", "flaky", "dropped", "retries_exhausted") == 4


def test_non_retryable_write_error_drops_only_that_batch(caplog):
    spec = {
        "sources": [{"type": "memory", "records": [{"seq": 0}, {"seq": 1, "bad": True}, {"seq": 2}], "batch": 1}],
        "sinks": [{"type": "broken", "batchSize": 1}],
    }
    pipeline = run(spec)
    assert [r["seq"] for r in COLLECTED["broken"]] == [0, 2]
    assert counter(pipeline, "sink", "broken", "dropped", "error") == 1
    assert counter(pipeline, "sink", "broken", "errors") == 1
    assert "dropped 1 records, write raised ValueError: cannot encode record" in caplog.text


def test_slow_sink_does_not_stall_a_fast_one_and_drops_oldest_when_full():
    total = 2000
    spec = {
        "sources": [{"type": "counting", "count": total, "batch": 100}],
        "sinks": [
            {"type": "collect", "name": "fast"},
            {"type": "collect", "name": "slow", "delay": 0.3, "bufferSize": 300, "batchSize": 100},
        ],
        "shutdownTimeout": "5s",
    }
    pipeline = build(spec)
    pipeline.start()
    deadline = time.monotonic() + 10
    while len(COLLECTED.get("fast", [])) < total and time.monotonic() < deadline:
        time.sleep(0.01)
    # the fast sink has everything while the slow one has written at most its first batch
    assert len(COLLECTED["fast"]) == total
    assert len(COLLECTED["slow"]) <= 100
    assert pipeline.wait(10)
    slow_written = len(COLLECTED["slow"])
    dropped = counter(pipeline, "sink", "slow", "dropped", "buffer_full")
    assert dropped > 0
    assert slow_written + dropped == total  # every record is either written or counted
    # what survives is the newest: the last record always makes it
    assert COLLECTED["slow"][-1]["seq"] == total - 1


def test_block_mode_loses_nothing_from_a_slow_sink():
    total = 600
    spec = {
        "sources": [{"type": "counting", "count": total, "batch": 50}],
        "sinks": [{"type": "collect", "delay": 0.02, "bufferSize": 100, "batchSize": 50, "onFull": "block"}],
    }
    pipeline = run(spec)
    assert [r["seq"] for r in COLLECTED["collect"]] == list(range(total))
    assert counter(pipeline, "sink", "collect", "dropped") == 0


def test_stop_drains_buffers_and_flushes_within_the_deadline():
    spec = {
        "sources": [{"type": "memory", "records": records(50), "hold": True}],
        "sinks": [{"type": "collect", "flushInterval": "1h", "batchSize": 1000}],
    }
    pipeline = build(spec)
    pipeline.start()
    time.sleep(0.2)
    assert COLLECTED["collect"] == []  # held back: neither batch size nor interval reached
    pipeline.stop()
    assert pipeline.wait(5)
    assert len(COLLECTED["collect"]) == 50
    assert EVENTS[-2:] == [("collect", "flush"), ("collect", "close")]


def test_shutdown_deadline_counts_what_could_not_be_delivered():
    spec = {
        "sources": [{"type": "memory", "records": records(30), "hold": True}],
        "sinks": [{"type": "flaky", "failures": -1, "retryBackoff": "50ms"}],
        "shutdownTimeout": "300ms",
    }
    pipeline = build(spec)
    pipeline.start()
    time.sleep(0.1)
    started = time.monotonic()
    pipeline.stop()
    assert pipeline.wait(5)
    assert time.monotonic() - started < 2.5
    assert counter(pipeline, "sink", "flaky", "dropped", "shutdown") == 30


def test_sink_unreachable_at_start_buffers_and_opens_later():
    spec = {
        "sources": [{"type": "memory", "records": records(5)}],
        "sinks": [{"type": "unreachable", "failures": 2, "retryBackoff": "10ms"}],
    }
    pipeline = run(spec)
    assert [r["seq"] for r in COLLECTED["unreachable"]] == [0, 1, 2, 3, 4]
    assert pipeline.sinks[0].sink.open_attempts == 3


def test_failing_source_is_reported_and_the_exit_code_is_1(caplog):
    spec = {"sources": [{"type": "failing"}], "sinks": [{"type": "collect"}]}
    pipeline = build(spec)
    assert pipeline.run() == 1
    assert COLLECTED["collect"] == [{"seq": 0}]  # what it emitted before failing is delivered
    assert "source 'failing' failed: RuntimeError: disk on fire" in caplog.text


def test_plugin_raising_in_init_names_the_instance():
    class Exploding(helpers.CollectSink):
        def __init__(self, options, context):
            raise OSError("permission denied: /var/lib/flows")

    from flowscope.core.errors import PluginError
    from flowscope.core.pipeline import Pipeline
    from flowscope.core.pipelineconfig import validate_config
    from flowscope.core.plugins import load_plugins

    plugins = load_plugins(extra=[helpers])
    plugins.components["sink"]["exploding"] = Exploding
    config = validate_config({"sources": [{"type": "memory"}], "sinks": [{"type": "exploding"}]}, plugins)
    with pytest.raises(PluginError) as err:
        Pipeline(config, plugins)
    assert str(err.value) == (
        "sink 'exploding' (type 'exploding') failed to start: OSError: permission denied: /var/lib/flows"
    )


def test_metrics_endpoint_serves_pipeline_counters():
    import socket
    import urllib.request

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    spec = {
        "sources": [{"type": "memory", "records": records(3), "hold": True}],
        "sinks": [{"type": "collect", "flushInterval": "10ms"}],
        "metricsAddress": f"127.0.0.1:{port}",
    }
    pipeline = build(spec)
    pipeline.start()
    try:
        deadline = time.monotonic() + 5
        while len(COLLECTED.get("collect", [])) < 3 and time.monotonic() < deadline:
            time.sleep(0.01)
        body = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5).read().decode()
    finally:
        pipeline.stop()
        pipeline.wait(5)
    assert 'flowscope_records_emitted_total{instance="collect",stage="sink"} 3.0' in body
    assert 'flowscope_records_emitted_total{instance="memory",stage="source"} 3.0' in body


def test_emit_blocks_when_the_processor_queue_is_full():
    """Backpressure: a source cannot run ahead of a blocked pipeline by more than the queue."""
    gate = threading.Event()

    class GatedSink(helpers.CollectSink):
        def write(self, records):
            gate.wait(5)
            super().write(records)

    from flowscope.core.pipeline import Pipeline
    from flowscope.core.pipelineconfig import validate_config
    from flowscope.core.plugins import load_plugins

    plugins = load_plugins(extra=[helpers])
    plugins.components["sink"]["gated"] = GatedSink
    spec = {
        "sources": [{"type": "counting", "count": 5000, "batch": 10}],
        "sinks": [{"type": "gated", "onFull": "block", "bufferSize": 20, "batchSize": 10}],
        "queueSize": 2,
    }
    pipeline = Pipeline(validate_config(spec, plugins), plugins)
    pipeline.start()
    time.sleep(0.3)
    emitted = counter(pipeline, "source", "counting", "emitted")
    assert emitted <= 10 * (2 + 2 + 1 + 1 + 1)  # queue + buffer + in-flight batches, far below 5000
    gate.set()
    assert pipeline.wait(20)
    assert len(COLLECTED["gated"]) == 5000


def test_a_sink_failing_to_open_closes_the_sinks_already_opened():
    class Refusing(helpers.CollectSink):
        def open(self):
            raise PermissionError("access denied for user 'flows'")

    from flowscope.core.errors import PluginError
    from flowscope.core.pipeline import Pipeline
    from flowscope.core.pipelineconfig import validate_config
    from flowscope.core.plugins import load_plugins

    plugins = load_plugins(extra=[helpers])
    plugins.components["sink"]["refusing"] = Refusing
    spec = {"sources": [{"type": "memory"}], "sinks": [{"type": "collect"}, {"type": "refusing", "name": "db"}]}
    pipeline = Pipeline(validate_config(spec, plugins), plugins)
    with pytest.raises(PluginError) as err:
        pipeline.start()
    assert str(err.value) == (
        "sink 'db' (type 'refusing') failed to open: PermissionError: access denied for user 'flows'"
    )
    assert EVENTS == [("collect", "open"), ("collect", "close")]


def test_metrics_address_in_use_is_a_clear_error():
    import socket

    from flowscope.core.errors import ConfigError

    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        spec = {
            "sources": [{"type": "memory"}],
            "sinks": [{"type": "collect"}],
            "metricsAddress": f"127.0.0.1:{port}",
        }
        pipeline = build(spec)
        with pytest.raises(ConfigError) as err:
            pipeline.start()
    assert str(err.value) == (
        f"invalid configuration: metricsAddress: cannot listen on 127.0.0.1:{port}: Address already in use"
    )


def test_stop_is_bounded_even_when_a_blocking_sink_never_succeeds():
    spec = {
        "sources": [{"type": "counting", "count": 100000, "batch": 100}],
        "sinks": [
            {"type": "flaky", "failures": -1, "onFull": "block", "bufferSize": 200, "retryBackoff": "10ms"},
            {"type": "collect", "name": "healthy"},
        ],
        "shutdownTimeout": "500ms",
    }
    pipeline = build(spec)
    pipeline.start()
    time.sleep(0.3)  # the pipeline is now stuck behind the flaky sink, as `block` asks
    started = time.monotonic()
    pipeline.stop()
    assert pipeline.wait(5), "stop() must not hang behind a blocking sink"
    assert time.monotonic() - started < 3
    flaky = pipeline.metrics.counters("sink", "flaky")
    assert flaky.value("emitted") == 0
    assert flaky.value("received") == flaky.value("dropped", "shutdown")  # every record it got is counted


def test_a_sink_that_fails_for_good_counts_what_it_can_no_longer_take(caplog):
    class GivesUp(helpers.CollectSink):
        attempts = 0

        def open(self):
            GivesUp.attempts += 1
            if GivesUp.attempts == 1:
                raise helpers.flowscope.RetryableError("connection refused")
            raise PermissionError("authentication failed for user 'flows'")

    from flowscope.core.pipeline import Pipeline
    from flowscope.core.pipelineconfig import validate_config
    from flowscope.core.plugins import load_plugins

    plugins = load_plugins(extra=[helpers])
    plugins.components["sink"]["givesup"] = GivesUp
    spec = {
        "sources": [{"type": "counting", "count": 3000, "batch": 100}],
        "sinks": [
            {"type": "givesup", "onFull": "block", "bufferSize": 100, "retryBackoff": "10ms"},
            {"type": "collect"},
        ],
    }
    pipeline = Pipeline(validate_config(spec, plugins), plugins)
    assert pipeline.run() == 0
    assert len(COLLECTED["collect"]) == 3000  # the healthy sink is not held up
    counters = pipeline.metrics.counters("sink", "givesup")
    assert counters.value("dropped", "sink_failed") == counters.value("received") == 3000
    assert "sink 'givesup' failed to open: PermissionError: authentication failed" in caplog.text


def test_a_burst_of_due_flows_reaches_the_sinks_in_slices(monkeypatch):
    """Exports due at one tick go to the sinks slice by slice, so a sink starts before all are made."""
    from flowscope.core import pipeline as pipeline_module

    monkeypatch.setattr(pipeline_module, "EXPIRY_SLICE", 10)
    intra_node = [
        {"flowStartSeconds": 1, "flowEndSeconds": 2, "sourceIPv4Address": "10.0.0.1", "sourceTransportPort": port}
        | {"destinationIPv4Address": "10.0.0.2", "protocolIdentifier": 6, "flowType": 1, "octetTotalCount": 1}
        for port in range(25)
    ]
    spec = {
        "sources": [{"type": "memory", "records": intra_node, "batch": 25, "hold": True}],
        "table": {"mode": "aggregate", "activeTimeout": "60s", "inactiveTimeout": "90s", "tick": "100ms"},
        "sinks": [{"type": "collect", "flushInterval": "50ms"}],
    }
    pipeline = build(spec)
    delivered = []
    original = pipeline._deliver
    monkeypatch.setattr(pipeline, "_deliver", lambda batch: (delivered.append(len(batch)), original(batch))[1])
    pipeline.start()
    helpers.wait_for(lambda: len(COLLECTED.get("collect", [])) == 25, what="25 exported flows")
    pipeline.stop()
    assert pipeline.wait(5)
    assert delivered[:3] == [10, 10, 5]
    assert sorted(r["sourceTransportPort"] for r in COLLECTED["collect"]) == list(range(25))


def test_the_garbage_collector_is_settled_at_start_and_every_record_still_arrives_in_order():
    pipeline = build(
        {"sources": [{"type": "memory", "records": records(30_000), "batch": 700}], "sinks": [{"type": "collect"}]}
    )
    assert pipeline.run() == 0
    assert [r["seq"] for r in COLLECTED["collect"]] == list(range(30_000))
    assert gc.get_freeze_count() > 0  # what start-up built is out of the collector's sight
    assert gc.get_threshold()[0] >= GC_YOUNG_THRESHOLD

    class Node:
        pass

    node = Node()
    node.self = node  # a cycle made after start is still collected, without asking
    gone = weakref.ref(node)
    del node
    garbage = [[] for _ in range(2 * GC_YOUNG_THRESHOLD)]
    assert gone() is None
    del garbage
