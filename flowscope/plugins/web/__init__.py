"""``web`` plugin: the built-in UI, Antrea's six dashboards over the pipeline's ClickHouse sink.

Served by the pipeline's HTTP server (``apiAddress``) through the ``register_routes`` hook:

- ``/ui/`` and ``/ui/static/<file>``: the page, its script and style, and plotly's ``plotly.min.js``
  from the plotly package (nothing is fetched from elsewhere); open to anyone, they hold no data;
- ``/ui/api/dashboards``: the dashboards and their panels;
- ``/ui/api/data/<dashboard>?from=&to=&filters=``: every panel's rows for a time range (epoch
  seconds) and dashboard-wide filters (a JSON object of column: value); these need the API's token.

The page asks for the token once (or takes it from ``#token=`` in its address) and keeps it for
the browser tab.
"""

from __future__ import annotations

import json
import time
from importlib import resources
from pathlib import Path
from typing import Any

from flowscope.core.hookspecs import hookimpl
from flowscope.core.http import Request, Response
from flowscope.plugins.sinks.clickhouse.readonly import QueryRefused
from flowscope.plugins.sinks.clickhouse.schema import COLUMN_TYPES, VIEWS
from flowscope.plugins.sinks.clickhouse.sink import ClickHouseSink
from flowscope.plugins.web.dashboards import BY_ID, DASHBOARDS, Panel, render

STATIC = {
    "app.js": "text/javascript; charset=utf-8",
    "style.css": "text/css; charset=utf-8",
    "plotly.min.js": "text/javascript; charset=utf-8",
}
MAX_RANGE = 366 * 86400
TABLE_COLUMNS = {"flows": set(COLUMN_TYPES), **{view.name: {*view.keys, *view.sums} for view in VIEWS}}


def page(request: Request) -> Response:
    return Response(200, _asset("index.html"), "text/html; charset=utf-8", {"Cache-Control": "no-cache"})


def static(request: Request) -> Response:
    name = request.params["name"]
    if name not in STATIC:
        return Response.text(f"no such file {name!r}", 404)
    return Response(200, _asset(name), STATIC[name], {"Cache-Control": "max-age=3600"})


def dashboards(request: Request) -> Response:
    return Response.json(
        {"dashboards": [dashboard.as_dict() for dashboard in DASHBOARDS], "columns": sorted(COLUMN_TYPES)}
    )


def data(request: Request) -> Response:
    """Every panel's rows; a bad range or filter is a 400 saying what is wrong, a panel's failure its own."""
    dashboard = BY_ID.get(request.params["dashboard"])
    if dashboard is None:
        return Response.json({"error": f"no dashboard {request.params['dashboard']!r}; try {', '.join(BY_ID)}"}, 404)
    try:
        start, end = _time_range(request.query)
        filters = _filters(request.query.get("filters", ""))
    except ValueError as exc:
        return Response.json({"error": str(exc)}, 400)
    sink = _clickhouse(request.pipeline)
    if sink is None:
        return Response.json({"error": "this pipeline has no clickhouse sink, so there is nothing to show"}, 503)
    panels = {}
    for panel in dashboard.panels:
        panels[panel.id] = _panel_data(sink, panel, start, end, filters)
    return Response.json({"from": start, "to": end, "filters": filters, "panels": panels})


def _panel_data(sink: ClickHouseSink, panel: Panel, start: int, end: int, filters: dict[str, str]) -> dict[str, Any]:
    applicable = {key: value for key, value in filters.items() if key in TABLE_COLUMNS[panel.table]}
    sql, parameters = render(panel, start, end, applicable)
    started = time.perf_counter()
    try:
        columns, rows = sink.query(sql, parameters)
    except QueryRefused as exc:  # a panel's own SQL never is; kept for what a query can say
        return {"error": str(exc)}
    except Exception as exc:
        return {"error": str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__}
    answer: dict[str, Any] = {"columns": columns, "rows": rows, "seconds": round(time.perf_counter() - started, 3)}
    ignored = sorted(set(filters) - set(applicable))
    if ignored:
        answer["ignored"] = ignored  # this panel's table has no such column
    return answer


def _time_range(query: dict[str, str]) -> tuple[int, int]:
    now = int(time.time())
    try:
        start = int(query.get("from") or now - 3600)
        end = int(query.get("to") or now)
    except ValueError:
        raise ValueError("time range: from and to are epoch seconds, e.g. from=1767225600&to=1767229200") from None
    if start >= end:
        raise ValueError(f"time range: from ({start}) must be before to ({end})")
    if end - start > MAX_RANGE:
        raise ValueError("time range: at most 366 days")
    if start < 0:
        raise ValueError("time range: from must not be before 1970")
    return start, end


def _filters(text: str) -> dict[str, str]:
    if not text:
        return {}
    try:
        filters = json.loads(text)
    except ValueError:
        raise ValueError('filters: a JSON object of column: value, e.g. {"sourcePodNamespace": "shop"}') from None
    if not isinstance(filters, dict):
        raise ValueError('filters: a JSON object of column: value, e.g. {"sourcePodNamespace": "shop"}')
    unknown = sorted(key for key in filters if key not in COLUMN_TYPES)
    if unknown:
        raise ValueError(f"filters: unknown column(s) {', '.join(unknown)}; filter on columns of the flows table")
    return {key: str(value) for key, value in filters.items()}


def _clickhouse(pipeline: Any) -> ClickHouseSink | None:
    return next((runner.sink for runner in pipeline.sinks if isinstance(runner.sink, ClickHouseSink)), None)


def _asset(name: str) -> bytes:
    if name == "plotly.min.js":
        import plotly

        return (Path(plotly.__file__).parent / "package_data" / "plotly.min.js").read_bytes()
    return resources.files(__package__).joinpath("static", name).read_bytes()


@hookimpl
def register_routes(register):
    register("/ui/", page, public=True, title="dashboards")
    register("/ui/static/{name}", static, public=True)
    register("/ui/api/dashboards", dashboards)
    register("/ui/api/data/{dashboard}", data)


@hookimpl
def register_commands(cli):
    import click

    from flowscope.plugins.web import grafana

    @cli.group("web")
    def web() -> None:
        """The dashboards of the web UI, for other tools."""

    @web.command("grafana")
    @click.option(
        "--out", type=click.Path(file_okay=False, path_type=Path), required=True, help="Directory to write to."
    )
    def write_grafana(out: Path) -> None:
        """Write the six dashboards as Grafana dashboards, with provisioning files for Grafana's ClickHouse
        data source (grafana-clickhouse-datasource) and the netsage Sankey panel."""
        for path in grafana.write(out):
            click.echo(f"wrote {path}")
