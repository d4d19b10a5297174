"""The benchmarks' measuring rules: whole-process CPU with ended threads, medians with ranges, the summary table."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "bench"))
from measure import Row, Spread, cpu_seconds, ratios, report  # tests/bench/measure.py
from summary import load, table  # tests/bench/summary.py

BURN_IN_A_THREAD = """
import sys, threading, time
def burn():
    while time.thread_time() < 0.5:
        pass
worker = threading.Thread(target=burn)
worker.start()
worker.join()
print("thread ended", flush=True)
sys.stdin.read()
"""


def test_cpu_seconds_counts_threads_that_have_ended():
    child = subprocess.Popen(
        [sys.executable, "-c", BURN_IN_A_THREAD], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert child.stdout.readline() == "thread ended\n"
        assert len(list(Path(f"/proc/{child.pid}/task").iterdir())) == 1
        assert cpu_seconds(child.pid) >= 0.49
    finally:
        child.communicate("")


def test_spread_is_the_median_and_range_of_the_rounds():
    spread = Spread.of([3.0, 1.0, 2.0, 10.0])
    assert (spread.median, spread.low, spread.high, spread.rounds) == (2.5, 1.0, 10.0, 4)
    assert Spread.of([125_000.4, 99_000.0, 130_999.6]).text() == "125,000 (99,000 to 131,000)"
    assert Spread.of([0.14, 0.12, 0.2]).text() == "0.140 (0.120 to 0.200)"
    with pytest.raises(ValueError, match="no rounds measured"):
        Spread.of([])


def test_ratios_pair_each_round_with_the_peers_same_round():
    assert ratios([10.0, 30.0, 20.0], [20.0, 30.0, 80.0]) == [0.5, 1.0, 0.25]
    with pytest.raises(ValueError):
        ratios([1.0, 2.0], [1.0])


def test_report_appends_rows_that_the_summary_prints_as_a_table(tmp_path, monkeypatch, capsys):
    results = tmp_path / "results.jsonl"
    monkeypatch.setattr("measure.RESULTS", results)
    ours, peer = [200_000.0, 180_000.0, 220_000.0], [1_000_000.0, 900_000.0, 1_100_000.0]
    report(
        Row(
            stage="IPFIX over UDP",
            unit="records/CPU-s",
            ours=Spread.of(ours),
            peer_name="nfcapd",
            peer=Spread.of(peer),
            ratio=Spread.of(ratios(ours, peer)),
            target="≥ 0.25x nfcapd",
            met=False,
        )
    )
    report(Row(stage="Pods and Services", unit="records/CPU-s", ours=Spread.of([310_000.0, 320_000.0, 305_000.0])))
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == (
        "IPFIX over UDP: 200,000 (180,000 to 220,000) records/CPU-s; nfcapd 1,000,000 (900,000 to 1,100,000); "
        "ratio 0.20 (0.20 to 0.20); target ≥ 0.25x nfcapd: NOT met"
    )
    assert len(results.read_text().splitlines()) == 2
    assert json.loads(results.read_text().splitlines()[1])["met"] is None
    assert table(load(results)).splitlines()[2:] == [
        "| IPFIX over UDP | 200,000 (180,000 to 220,000) records/CPU-s | nfcapd 1,000,000 (900,000 to 1,100,000) "
        "| 0.20 (0.20 to 0.20) | ≥ 0.25x nfcapd | **no** |",
        "| Pods and Services | 310,000 (305,000 to 320,000) records/CPU-s | — | — | — | — |",
    ]
