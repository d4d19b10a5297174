"""Test plugins: an in-memory source and sinks whose behaviour the tests control."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import flowscope
from flowscope.core.pipeline import Pipeline
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins

COLLECTED: dict[str, list[dict]] = {}
EVENTS: list[tuple[str, str]] = []
GATE = threading.Event()
"""Held closed, it stops every ``gate`` sink's writes (and, with ``onFull: block``, the pipeline)."""


class MemorySource(flowscope.Source):
    """Emits ``options['records']`` in batches of ``batch``; with ``hold: true`` waits for stop()."""

    def __init__(self, options: dict, context: flowscope.Context):
        super().__init__(options, context)
        self.stopped = threading.Event()

    def run(self, emit):
        records = self.options.get("records", [])
        size = self.options.get("batch", 10)
        for start in range(0, len(records), size):
            emit([dict(r) for r in records[start : start + size]])
        if self.options.get("hold"):
            self.stopped.wait()

    def stop(self):
        self.stopped.set()


class CountingSource(flowscope.Source):
    """Emits ``count`` records ``{"seq": i}`` as fast as the pipeline takes them."""

    def run(self, emit):
        count, size = self.options["count"], self.options.get("batch", 100)
        for start in range(0, count, size):
            emit([{"seq": i} for i in range(start, min(count, start + size))])


class FailingSource(flowscope.Source):
    def run(self, emit):
        emit([{"seq": 0}])
        raise RuntimeError("disk on fire")


class CollectSink(flowscope.Sink):
    """Appends written records to ``COLLECTED[name]``; ``delay`` seconds per write."""

    def open(self):
        COLLECTED.setdefault(self.context.name, [])
        EVENTS.append((self.context.name, "open"))

    def write(self, records):
        if self.options.get("delay"):
            time.sleep(self.options["delay"])
        COLLECTED[self.context.name].extend(records)

    def flush(self):
        EVENTS.append((self.context.name, "flush"))

    def close(self):
        EVENTS.append((self.context.name, "close"))


class FlakySink(CollectSink):
    """Raises RetryableError for the first ``failures`` writes (or forever with -1)."""

    def __init__(self, options, context):
        super().__init__(options, context)
        self.failures = options.get("failures", 2)
        self.attempts = 0

    def write(self, records):
        self.attempts += 1
        if self.failures < 0 or self.attempts <= self.failures:
            raise flowscope.RetryableError(f"collector unreachable (attempt {self.attempts})")
        super().write(records)


class BrokenSink(CollectSink):
    """Raises a non-retryable error on every write whose first record has ``bad``."""

    def write(self, records):
        if any(r.get("bad") for r in records):
            raise ValueError("cannot encode record")
        super().write(records)


class UnreachableSink(CollectSink):
    """open() fails with RetryableError ``failures`` times before succeeding."""

    def __init__(self, options, context):
        super().__init__(options, context)
        self.open_attempts = 0

    def open(self):
        self.open_attempts += 1
        if self.open_attempts <= self.options.get("failures", 2):
            raise flowscope.RetryableError("connection refused")
        super().open()


class GateSink(CollectSink):
    """Writes only once :data:`GATE` is set."""

    def write(self, records):
        GATE.wait()
        super().write(records)


class SeqFileSink(flowscope.Sink):
    """Appends each record's ``seq`` to the file ``path``, one per line, ``delay`` seconds per write."""

    def write(self, records):
        if self.options.get("delay"):
            time.sleep(float(self.options["delay"]))
        with open(self.options["path"], "a") as out:
            out.write("".join(f"{record['seq']}\n" for record in records))


class TagEnricher(flowscope.Enricher):
    """Adds ``tag`` to each record and drops records with ``drop`` set."""

    def enrich(self, records):
        return [dict(r, tag=self.options.get("tag", "x")) for r in records if not r.get("drop")]


class RaisingEnricher(flowscope.Enricher):
    def enrich(self, records):
        raise KeyError("sourcePodName")


@flowscope.hookimpl
def register_sources(register):
    register("memory", MemorySource)
    register("counting", CountingSource)
    register("failing", FailingSource)


@flowscope.hookimpl
def register_enrichers(register):
    register("tag", TagEnricher)
    register("raising", RaisingEnricher)


@flowscope.hookimpl
def register_sinks(register):
    register("collect", CollectSink)
    register("flaky", FlakySink)
    register("broken", BrokenSink)
    register("unreachable", UnreachableSink)
    register("gate", GateSink)
    register("seqfile", SeqFileSink)


def build(spec: dict[str, Any], entry_points: bool = True) -> Pipeline:
    """A pipeline over the built-in plugins plus these test plugins."""
    import tests.helpers as module

    plugins = load_plugins(extra=[module], entry_points=entry_points)
    return Pipeline(validate_config(spec, plugins), plugins)


def run(spec: dict[str, Any], timeout: float = 30) -> Pipeline:
    pipeline = build(spec)
    pipeline.start()
    assert pipeline.wait(timeout), "pipeline did not finish"
    return pipeline


ROOT = Path(__file__).resolve().parents[1]
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
SCREENSHOTS = ROOT / "test-output" / "screenshots"


def screenshot(page: Any, name: str) -> None:
    """Save a picture of ``page`` to ``test-output/screenshots/<name>.png``; with
    ``FLOWSCOPE_SCREENSHOTS=docs`` also to ``docs/images`` for the README and the docs."""
    # plotly draws a sankey's links with a fade-in: the picture waits for it to end
    page.wait_for_function(
        "[...document.querySelectorAll('.sankey-link')].every(l => getComputedStyle(l).opacity == 1)"
    )
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(SCREENSHOTS / f"{name}.png"), full_page=True)
    if os.environ.get("FLOWSCOPE_SCREENSHOTS") == "docs":
        shutil.copy(SCREENSHOTS / f"{name}.png", ROOT / "docs" / "images" / f"{name}.png")


CLI = [sys.executable, "-m", "flowscope.entrypoints.cli"]


def run_cli(*args: str, timeout: float = 60, cwd: Path | None = None) -> subprocess.CompletedProcess:
    """The flowscope command as a user runs it, in a subprocess (in ``cwd`` when given)."""
    return subprocess.run([*CLI, *args], capture_output=True, text=True, timeout=timeout, cwd=cwd)


def antrea_json(path: Path) -> list[dict]:
    """The records of a file the json sink wrote."""
    return [json.loads(line)["ipfix"] for line in path.read_text().splitlines()]


def free_port(kind: int = socket.SOCK_STREAM, host: str = "127.0.0.1") -> int:
    """A port that was free a moment ago (for programs that cannot bind port 0 and report it)."""
    with socket.socket(socket.AF_INET, kind) as sock:
        sock.bind((host, 0))
        return sock.getsockname()[1]


def wait_for(predicate: Any, timeout: float = 10.0, what: str = "condition") -> None:
    """Poll ``predicate`` until it is true; fail naming ``what`` after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
