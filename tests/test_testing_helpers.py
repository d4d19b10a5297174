"""flowscope.testing: the helpers offered to plugin authors."""

import json

import pytest

from flowscope.plugins.sinks.json import JsonSink
from flowscope.plugins.sources.jsonl import JsonlSource
from flowscope.testing import make_context, run_pipeline
from tests import helpers


def test_make_context_builds_a_component_by_hand(tmp_path):
    context = make_context("out", data_dir=tmp_path)
    assert context.elements.by_id(56506, 136).name == "tcpState"
    sink = JsonSink(JsonSink.Options(path=str(tmp_path / "o.jsonl")).model_dump(), context)
    sink.open()
    sink.write([{"a": 1}])
    sink.close()
    assert json.loads((tmp_path / "o.jsonl").read_text())["ipfix"] == {"a": 1}


def test_make_context_counters_are_readable(tmp_path):
    (tmp_path / "in.jsonl").write_text("{}\nnope\n")
    context = make_context("in", kind="source")
    source = JsonlSource(JsonlSource.Options(path=str(tmp_path / "in.jsonl")).model_dump(), context)
    batches = []
    source.run(batches.append)
    assert batches == [[{}]]
    assert context.counters.value("dropped", "malformed") == 1


def test_run_pipeline_runs_to_the_end(tmp_path):
    out = tmp_path / "out.jsonl"
    spec = {
        "sources": [{"type": "memory", "records": [{"x": 1}, {"x": 2}]}],
        "sinks": [{"type": "json", "path": str(out)}],
    }
    pipeline = run_pipeline(spec, [helpers])
    assert [json.loads(line)["ipfix"] for line in out.read_text().splitlines()] == [{"x": 1}, {"x": 2}]
    assert pipeline.metrics.counters("sink", "json").value("emitted") == 2


def test_run_pipeline_times_out_on_an_endless_source():
    spec = {"sources": [{"type": "memory", "hold": True}], "sinks": [{"type": "collect"}]}
    with pytest.raises(TimeoutError, match=r"did not finish within 0\.2s; are its sources finite"):
        run_pipeline(spec, [helpers], timeout=0.2)
