"""The six dashboards as Grafana dashboards, for the ClickHouse data source, with provisioning files.

``flowscope web grafana --out DIR`` writes them; ``deploy/grafana`` holds a copy, kept equal to what
this module makes by a test. Sankey panels use the netsage Sankey panel plugin, as Antrea's own
Grafana dashboards do.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from flowscope.plugins.web.dashboards import DASHBOARDS, Dashboard, Panel, grafana_sql

DATASOURCE = {"type": "grafana-clickhouse-datasource", "uid": "${datasource}"}
PANEL_TYPES = {
    "stat": "stat",
    "table": "table",
    "sankey": "netsage-sankey-panel",
    "timeseries": "timeseries",
    "pie": "piechart",
}
UNITS = {"bytes": "decbytes", "bps": "bps", "": "short"}
FORMATS = {"timeseries": 0, "table": 1}  # the data source's time series and table formats

PROVISIONING_DATASOURCE = """\
# Grafana data source for flowscope's ClickHouse: fill in your server (the aggregator's databaseURL).
apiVersion: 1
datasources:
  - name: ClickHouse
    uid: clickhouse-flowscope
    type: grafana-clickhouse-datasource
    jsonData:
      host: clickhouse.example
      port: 8123
      protocol: http
      defaultDatabase: default
      username: default
    secureJsonData:
      password: ""
"""
PROVISIONING_DASHBOARDS = """\
# Grafana dashboard provider: the six flowscope dashboards, from /var/lib/grafana/dashboards/flowscope.
apiVersion: 1
providers:
  - name: flowscope
    folder: flowscope
    type: file
    options:
      path: /var/lib/grafana/dashboards/flowscope
"""


def panel(item: Panel, index: int) -> dict[str, Any]:
    """One Grafana panel: two to a row, tables and stats across."""
    wide = item.kind in ("table", "stat")
    row, column = divmod(index, 2)
    return {
        "id": index + 1,
        "title": item.title,
        "type": PANEL_TYPES[item.kind],
        "datasource": DATASOURCE,
        "gridPos": {
            "h": 4 if item.kind == "stat" else 10,
            "w": 24 if wide else 12,
            "x": 0 if wide else 12 * column,
            "y": 10 * row,
        },
        "fieldConfig": {"defaults": {"unit": UNITS.get(item.unit, "short")}, "overrides": []},
        "targets": [
            {
                "refId": "A",
                "datasource": DATASOURCE,
                "editorType": "sql",
                "format": FORMATS["timeseries" if item.kind == "timeseries" else "table"],
                "rawSql": grafana_sql(item),
            }
        ],
    }


def dashboard(item: Dashboard) -> dict[str, Any]:
    """One Grafana dashboard, with the data source as a variable and ad-hoc filters."""
    return {
        "uid": f"flowscope-{item.id.replace('_', '-')}",
        "title": f"flowscope: {item.title}",
        "description": item.description,
        "tags": ["flowscope", "antrea", "flows"],
        "timezone": "browser",
        "schemaVersion": 39,
        "time": {"from": "now-1h", "to": "now"},
        "refresh": "30s",
        "templating": {
            "list": [
                {"name": "datasource", "type": "datasource", "query": "grafana-clickhouse-datasource"},
                {"name": "filters", "type": "adhoc", "datasource": DATASOURCE},
            ]
        },
        "panels": [panel(element, index) for index, element in enumerate(item.panels)],
    }


def write(out: Path) -> list[Path]:
    """Write the dashboards and provisioning files under ``out``; the paths written."""
    written = []
    for item in DASHBOARDS:
        path = out / "dashboards" / f"{item.id}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(dashboard(item), indent=2) + "\n", encoding="utf-8")
        written.append(path)
    for name, text in (
        ("provisioning/datasources/clickhouse.yaml", PROVISIONING_DATASOURCE),
        ("provisioning/dashboards/flowscope.yaml", PROVISIONING_DASHBOARDS),
    ):
        path = out / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        written.append(path)
    return written
