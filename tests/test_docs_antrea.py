"""docs/antrea.md names every key of Antrea's Flow Aggregator chart (``values.yaml``) and of the
``flow-aggregator.conf`` it renders, and no other."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
ANTREA = ROOT / "tests" / "data" / "antrea"
SOURCES = [ANTREA / "flow-aggregator-values.yaml", ANTREA / "flow-aggregator.conf"]
DOC = (ROOT / "docs" / "antrea.md").read_text()
AGGREGATOR = DOC.split("## Flow Aggregator")[1].split("\n## ")[0]


def leaf_keys(node: object, prefix: str = "") -> list[str]:
    if isinstance(node, dict) and node:
        return [key for name, value in node.items() for key in leaf_keys(value, f"{prefix}{name}.")]
    return [prefix.rstrip(".")]


def chart_keys() -> list[str]:
    return sorted({key for path in SOURCES for key in leaf_keys(yaml.safe_load(path.read_text()))})


def documented() -> dict[str, str]:
    """Each key the aggregator table names, with its status."""
    rows = {}
    for line in AGGREGATOR.splitlines():
        cells = [cell.strip() for cell in line.replace("\\|", "/").strip("|").split("|")]
        if len(cells) == 3 and cells[1] in ("supported", "accepted", "refused / accepted"):
            for key in re.findall(r"`([^`]+)`", cells[0]):
                rows[key] = cells[1]
    return rows


def test_every_chart_key_is_in_the_table():
    rows = documented()
    keys = chart_keys()
    assert len(keys) > 60
    missing = [
        key for key in keys if not any(key == row or key.startswith(row + ".") for row in rows)
    ]  # a section's row covers its keys
    assert missing == []


def test_the_table_names_no_key_the_chart_lacks():
    keys = chart_keys()
    unknown = [row for row in documented() if not any(k == row or k.startswith(row + ".") for k in keys)]
    assert unknown == []


def test_every_flow_exporter_key_of_the_agent_file_is_in_the_exporter_table():
    agent = yaml.safe_load((ANTREA / "antrea-agent.conf").read_text())
    keys = [f"flowExporter.{key}" for key in agent["flowExporter"]] + ["featureGates.FlowExporter", "podCIDRs"]
    table = DOC.split("## Flow Exporter")[1].split("\n## ")[0]
    rows = {
        key
        for line in table.splitlines()
        if line.startswith("| ")
        for key in re.findall(r"`([^`]+)`", line.split("|")[1])
    }
    assert len(keys) == 8
    assert [key for key in keys if key not in rows] == []
