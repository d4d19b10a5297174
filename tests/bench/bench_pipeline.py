"""Benchmark: JSON lines → Antrea JSON through ``flowscope run``, next to jq doing the same job.

Both read the same file of Antrea-like records and write ``{"@timestamp": ..., "ipfix": {...}}``
lines with sorted keys; CPU seconds (user + system, every thread) of each child process are compared.
The two take turns, for ``--rounds`` rounds; the median and range of the rounds are reported.

    .venv/bin/python tests/bench/bench_pipeline.py [--records N] [--rounds N]
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from measure import Row, Spread, ratios, report  # tests/bench/measure.py
from records import antrea_records  # tests/bench/records.py

FLOWSCOPE = [sys.executable, "-m", "flowscope.entrypoints.cli", "--log-level", "warning"]


def make_records(path: Path, count: int) -> None:
    with path.open("w") as out:
        for record in antrea_records(count):
            out.write(json.dumps(record) + "\n")


def cpu_of(command: list[str], stdout_path: Path) -> tuple[float, float]:
    """Run a command; return (CPU seconds of the child, wall seconds)."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    with stdout_path.open("w") as out:
        subprocess.run(command, stdout=out, check=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime), wall


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    jq = shutil.which("jq")
    if jq is None:
        print("jq is not installed (apt-get install jq); it is the peer this benchmark compares against")
        return 2
    n = args.records
    ours: list[float] = []
    theirs: list[float] = []
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "in.jsonl"
        print(f"generating {n:,} records ...", flush=True)
        make_records(source, n)
        print(f"{'round':>5} {'flowscope CPU s':>16} {'wall s':>7} {'jq CPU s':>9} {'wall s':>7}", flush=True)
        for round_ in range(args.rounds):
            output = work / "flowscope.jsonl"
            output.unlink(missing_ok=True)
            config = work / "bench.yaml"
            config.write_text(
                f"sources: [{{type: jsonl, path: {source}, batchSize: 2000}}]\n"
                f"sinks: [{{type: json, path: {output}, batchSize: 5000, onFull: block}}]\n"
            )
            cpu, wall = cpu_of([*FLOWSCOPE, "run", "-c", str(config)], work / "flowscope.out")
            jq_cpu, jq_wall = cpu_of(
                [jq, "-c", "-S", '{"@timestamp": (now | todate), "ipfix": .}', str(source)], work / "jq.jsonl"
            )
            lines = sum(1 for _ in output.open())
            assert lines == n, f"flowscope wrote {lines} of {n} records"
            assert sum(1 for _ in (work / "jq.jsonl").open()) == n
            print(f"{round_ + 1:>5} {cpu:>16.2f} {wall:>7.2f} {jq_cpu:>9.2f} {jq_wall:>7.2f}", flush=True)
            ours.append(n / cpu)
            theirs.append(n / jq_cpu)
    report(
        Row(
            stage="JSON lines → json sink, `flowscope run` (process start included)",
            unit="records/CPU-s",
            ours=Spread.of(ours),
            peer_name="jq",
            peer=Spread.of(theirs),
            ratio=Spread.of(ratios(ours, theirs)),
        )
    )
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
