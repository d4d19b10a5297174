"""Benchmark: JSON lines → Antrea JSON through ``flowscope run``, next to jq doing the same job.

Both read the same file of Antrea-like records and write ``{"@timestamp": ..., "ipfix": {...}}``
lines with sorted keys; CPU seconds (user + system) of each child process are compared.

    .venv/bin/python tests/bench/bench_pipeline.py [--records N]
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
    args = parser.parse_args()
    jq = shutil.which("jq")
    if jq is None:
        print("jq is not installed (apt-get install jq); it is the peer this benchmark compares against")
        return 2
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        source = work / "in.jsonl"
        print(f"generating {args.records} records ...", flush=True)
        make_records(source, args.records)
        config = work / "bench.yaml"
        config.write_text(
            f"sources: [{{type: jsonl, path: {source}, batchSize: 2000}}]\n"
            f"sinks: [{{type: json, path: {work / 'flowscope.jsonl'}, batchSize: 5000, onFull: block}}]\n"
        )
        print("running flowscope ...", flush=True)
        ours, ours_wall = cpu_of([*FLOWSCOPE, "run", "-c", str(config)], work / "flowscope.out")
        print("running jq ...", flush=True)
        theirs, theirs_wall = cpu_of(
            [jq, "-c", "-S", '{"@timestamp": (now | todate), "ipfix": .}', str(source)], work / "jq.jsonl"
        )
        lines = sum(1 for _ in (work / "flowscope.jsonl").open())
        assert lines == args.records, f"flowscope wrote {lines} of {args.records} records"
        assert sum(1 for _ in (work / "jq.jsonl").open()) == args.records
    n = args.records
    print()
    print(f"{'':10} {'CPU s':>8} {'wall s':>8} {'records/CPU-s':>14}")
    print(f"{'flowscope':10} {ours:8.2f} {ours_wall:8.2f} {n / ours:14,.0f}")
    print(f"{'jq 1.6':10} {theirs:8.2f} {theirs_wall:8.2f} {n / theirs:14,.0f}")
    print(f"ratio flowscope/jq (records per CPU-second): {theirs / ours:.2f}")
    return 0


if __name__ == "__main__":
    os.environ.setdefault("PYTHONHASHSEED", "0")
    sys.exit(main())
