"""The ``clickhouse`` sink, its live query route ``/clickhouse/query``, and the ``flowscope clickhouse``
commands."""

from __future__ import annotations

from flowscope.core.hookspecs import hookimpl


@hookimpl
def register_sinks(register):
    from flowscope.plugins.sinks.clickhouse.sink import ClickHouseSink

    register("clickhouse", ClickHouseSink)


@hookimpl
def register_commands(cli):
    from flowscope.plugins.sinks.clickhouse.command import clickhouse_group

    cli.add_command(clickhouse_group)


@hookimpl
def register_routes(register):
    from flowscope.plugins.sinks.clickhouse.api import query

    register("/clickhouse/query", query, ("GET", "POST"))
