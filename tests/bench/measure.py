"""How every benchmark measures: CPU and memory of whole processes, rounds, and the summary table's rows.

- CPU time is user + system from ``/proc/PID/stat`` (another process) or ``getrusage`` (this one); both
  include threads that have ended.
- Memory is the whole process's resident set (``/proc/PID/statm``).
- Each figure is the median of several rounds, reported with the range of the rounds. ``report`` prints
  one row and appends it to the results file that ``summary.py`` turns into ``make bench``'s table.
"""

from __future__ import annotations

import json
import os
import resource
import statistics
from dataclasses import asdict, dataclass
from pathlib import Path

RESULTS = Path(os.environ.get("FLOWSCOPE_BENCH_RESULTS", Path(__file__).resolve().parents[2] / ".bench-results.jsonl"))


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process, all its threads, ended ones too (/proc/PID/stat)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def own_cpu_seconds() -> float:
    """User and system CPU time of this process, all its threads, ended ones too (getrusage)."""
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def rss_bytes(pid: int | None = None) -> int:
    """Resident memory of a whole process (this one by default)."""
    pages = int(Path(f"/proc/{pid or 'self'}/statm").read_text().split()[1])
    return pages * os.sysconf("SC_PAGE_SIZE")


@dataclass(frozen=True)
class Spread:
    """The median of a benchmark's rounds and their range."""

    median: float
    low: float
    high: float
    rounds: int

    @classmethod
    def of(cls, values: list[float]) -> Spread:
        if not values:
            raise ValueError("no rounds measured")
        return cls(statistics.median(values), min(values), max(values), len(values))

    def text(self, digits: int | None = None) -> str:
        if digits is None:
            digits = 0 if self.median >= 100 else 2 if self.median >= 1 else 3
        return f"{self.median:,.{digits}f} ({self.low:,.{digits}f} to {self.high:,.{digits}f})"


@dataclass(frozen=True)
class Row:
    """One line of the summary table: flowscope's figure, a peer's, their ratio, and the target."""

    stage: str
    unit: str
    ours: Spread
    peer_name: str = ""
    peer: Spread | None = None
    ratio: Spread | None = None
    target: str = ""
    met: bool | None = None


def ratios(ours: list[float], peer: list[float]) -> list[float]:
    """Round-by-round ratios: each round of flowscope divided by the same round of the peer."""
    return [a / b for a, b in zip(ours, peer, strict=True) if b]


def report(row: Row) -> Row:
    """Print a row and add it to the results file read by summary.py."""
    line = f"{row.stage}: {row.ours.text()} {row.unit}"
    if row.peer is not None:
        line += f"; {row.peer_name} {row.peer.text()}"
    if row.ratio is not None:
        line += f"; ratio {row.ratio.text(2)}"
    if row.target:
        line += f"; target {row.target}: {'met' if row.met else 'NOT met'}"
    print(line, flush=True)
    with RESULTS.open("a") as out:
        out.write(json.dumps(asdict(row)) + "\n")
    return row
