"""Freed memory handed back to the system: glibc's malloc_trim, and the pipeline calling it after a burst."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flowscope.core import memory
from flowscope.core.memory import Releaser
from tests import helpers
from tests.helpers import build

MIB = 1 << 20


def _rss() -> int:
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


@pytest.mark.skipif(memory._TRIM is None, reason="the C library has no malloc_trim (not glibc)")
def test_release_returns_memory_freed_between_live_blocks():
    """Blocks too big for Python's allocator, freed between ones that live on, stay in the process
    until released."""
    blocks = [bytes(4000) for _ in range(40_000)]  # 160 MB from malloc
    kept = blocks[::16]  # one in 16 lives on: no free page range reaches the top of the heap
    del blocks
    before = _rss()
    assert memory.release() is True
    assert before - _rss() > 64 * MIB
    assert len(kept) == 2500


def test_releaser_releases_once_enough_records_moved():
    calls = []
    releaser = Releaser(after=100, release=lambda: calls.append(1) or True)
    releaser.count(60)
    assert releaser.idle() is False
    releaser.count(40)
    assert releaser.idle() is True
    assert releaser.idle() is False  # nothing moved since
    assert (len(calls), releaser.releases, releaser.moved) == (1, 1, 0)


def test_a_quiet_tick_after_a_burst_releases_memory():
    """The processor releases at a tick with nothing queued and every sink's buffer empty, once
    RELEASE_AFTER records have moved: here the burst's records and the flows exported from them."""
    flows = memory.RELEASE_AFTER // 2
    burst = [
        {"flowStartSeconds": 1, "flowEndSeconds": 2, "sourceIPv4Address": "10.0.0.1", "sourceTransportPort": port}
        | {"destinationIPv4Address": "10.0.0.2", "protocolIdentifier": 6, "flowType": 1, "octetTotalCount": 1}
        for port in range(flows)
    ]
    spec = {
        "sources": [{"type": "memory", "records": burst, "batch": 1000, "hold": True}],
        "table": {"mode": "aggregate", "activeTimeout": "60s", "inactiveTimeout": "90s", "tick": "100ms"},
        "sinks": [{"type": "collect", "flushInterval": "50ms"}],
    }
    pipeline = build(spec)
    pipeline.start()
    try:
        helpers.wait_for(lambda: len(helpers.COLLECTED.get("collect", [])) == flows, what="the exported flows")
        helpers.wait_for(lambda: pipeline.releaser.releases == 1, what="a release after the burst")
        assert pipeline.releaser.moved == 0
    finally:
        pipeline.stop()
        assert pipeline.wait(5)
