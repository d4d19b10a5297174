"""``/clickhouse/query``: read-only SQL over the API of the process that holds the database.

``GET /clickhouse/query?sql=SELECT...`` or ``POST`` with the SQL as the body; ``sink=`` chooses among
several clickhouse sinks, ``timeout=`` (seconds, at most 300) and ``maxRows=`` (at most 1,000,000)
lower or raise the limits. The answer is ``{"columns": [...], "rows": [[...], ...]}``, or a 400 with
``{"error": ...}`` saying why the query was refused or failed.
"""

from __future__ import annotations

from typing import Any

from flowscope.core.errors import RetryableError
from flowscope.core.http import Request, Response
from flowscope.plugins.sinks.clickhouse.readonly import MAX_ROWS, TIMEOUT, QueryFailed, QueryRefused
from flowscope.plugins.sinks.clickhouse.sink import ClickHouseSink

LIMITS = {"timeout": (TIMEOUT, 300), "maxRows": (MAX_ROWS, 1_000_000)}


def query(request: Request) -> Response:
    sql = request.body.decode("utf-8", "replace") if request.method == "POST" else request.query.get("sql", "")
    try:
        timeout, max_rows = (_limit(request.query, name) for name in LIMITS)
        sink = _sink(request.pipeline, request.query.get("sink"))
    except ValueError as exc:
        return Response.json({"error": str(exc)}, 400)
    try:
        columns, rows = sink.query(sql, {}, timeout, max_rows)
    except QueryRefused as exc:
        return Response.json({"error": str(exc)}, 400)
    except (QueryFailed, RetryableError) as exc:
        return Response.json({"error": str(exc)}, 503)
    return Response.json({"columns": columns, "rows": rows})


def _limit(query: dict[str, str], name: str) -> Any:
    default, most = LIMITS[name]
    text = query.get(name)
    if text is None:
        return default
    if not text.isdigit() or not 1 <= int(text) <= most:
        raise ValueError(f"{name}: {text!r} must be a whole number from 1 to {most}")
    return int(text)


def _sink(pipeline: Any, name: str | None) -> ClickHouseSink:
    sinks = {runner.name: runner.sink for runner in pipeline.sinks if isinstance(runner.sink, ClickHouseSink)}
    if not sinks:
        raise ValueError("this pipeline has no clickhouse sink to query")
    if name is None and len(sinks) == 1:
        return next(iter(sinks.values()))
    if name not in sinks:
        raise ValueError(f"sink: choose one of {', '.join(sorted(sinks))} with ?sink=")
    return sinks[name]
