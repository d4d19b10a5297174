"""Print ``make bench``'s summary: every benchmark's rows, as a Markdown table of medians, ranges and ratios.

.venv/bin/python tests/bench/summary.py [RESULTS_FILE]
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

from measure import RESULTS, Row, Spread  # tests/bench/measure.py


def load(path: Path) -> list[Row]:
    rows = []
    for line in path.read_text().splitlines():
        data = json.loads(line)
        for key in ("ours", "peer", "ratio"):
            if data[key] is not None:
                data[key] = Spread(**data[key])
        rows.append(Row(**data))
    return rows


def table(rows: list[Row]) -> str:
    lines = [
        "| stage | flowscope, median (range) | peer, median (range) | ratio, median (range) | target | met |",
        "|---|---|---|---|---|---|",
    ]
    for row in rows:
        ours = f"{row.ours.text()} {row.unit}"
        peer = f"{row.peer_name} {row.peer.text()}" if row.peer else "—"
        ratio = row.ratio.text(2) if row.ratio else "—"
        met = "—" if row.met is None else "yes" if row.met else "**no**"
        lines.append(f"| {row.stage} | {ours} | {peer} | {ratio} | {row.target or '—'} | {met} |")
    return "\n".join(lines)


def main() -> int:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS
    if not path.exists():
        print(f"no benchmark results in {path}: run `make bench`", file=sys.stderr)
        return 1
    rows = load(path)
    print(
        f"\n## make bench summary ({len(rows)} rows; rounds per figure: "
        f"{min(r.ours.rounds for r in rows)} to {max(r.ours.rounds for r in rows)})\n"
    )
    print(table(rows))
    missed = [row.stage for row in rows if row.met is False]
    print(f"\ntargets not met: {', '.join(missed)}" if missed else "\nevery target met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
