"""Bringing a live ClickHouse database to flowscope's schema: migrations, checks and the TTL."""

from __future__ import annotations

import re
from typing import Any

from flowscope.plugins.sinks.clickhouse.connection import quote_identifier
from flowscope.plugins.sinks.clickhouse.schema import (
    COLUMN_TYPES,
    FLOWS_COLUMNS,
    MIGRATIONS_TABLE,
    VIEWS,
    Layout,
    Migration,
    create_migrations_table,
    pending,
)

_WRAPPER = re.compile(r"^(LowCardinality|Nullable)\((.*)\)$")


class SchemaError(Exception):
    """The database holds a ``flows`` table flowscope cannot write to; the message says what to do."""


def applied_version(client: Any, layout: Layout, create: bool = True) -> int:
    """The last migration recorded in the database (0 for none); ``create`` makes the record table."""
    if create:
        client.command(create_migrations_table(layout))
    elif not client.command(
        f"SELECT count() FROM system.tables WHERE database = currentDatabase() AND name = '{MIGRATIONS_TABLE}'"
    ):
        return 0
    return int(client.command(f"SELECT max(version) FROM {MIGRATIONS_TABLE}") or 0)


def migrate(client: Any, layout: Layout) -> list[Migration]:
    """Apply the migrations the database has not recorded, in order; return those applied."""
    done = []
    for migration in pending(applied_version(client, layout)):
        for statement in migration.statements(layout):
            client.command(statement)
        client.command(
            f"INSERT INTO {MIGRATIONS_TABLE} (version, description) VALUES "
            f"({migration.version}, '{migration.description.replace(chr(39), chr(39) * 2)}')"
        )
        done.append(migration)
    return done


def set_ttl(client: Any, layout: Layout) -> list[str]:
    """Make the TTL of ``flows`` and the views the configured one; return the tables changed."""
    wanted = f"toIntervalSecond({layout.ttl_seconds})"
    tables = [layout.flows_target, *(f"{v.name}_local" if layout.cluster else v.name for v in VIEWS)]
    changed = []
    for table in tables:
        storage = _storage(client, table)
        if storage is not None and "TTL timeInserted" in storage[1] and wanted not in storage[1]:
            client.command(
                f"ALTER TABLE {quote_identifier(storage[0])}{layout.on_cluster} "
                f"MODIFY TTL timeInserted + INTERVAL {layout.ttl_seconds} SECOND"
            )
            changed.append(table)
    return changed


def _storage(client: Any, table: str) -> tuple[str, str] | None:
    """The table holding the rows of ``table`` (a materialized view's inner table) and its engine clause."""
    query = (
        "SELECT name, engine, engine_full, uuid FROM system.tables "
        "WHERE database = currentDatabase() AND name = {t:String}"
    )
    rows = client.query(query, parameters={"t": table}).result_rows
    if rows and rows[0][1] == "MaterializedView":
        rows = client.query(query, parameters={"t": f".inner_id.{rows[0][3]}"}).result_rows
    return (rows[0][0], rows[0][2]) if rows else None


def check_columns(client: Any, layout: Layout) -> None:
    """Raise :class:`SchemaError` if ``flows`` lacks a column or has one of an incompatible type."""
    table = layout.flows_target
    found = dict(
        client.query(
            "SELECT name, type FROM system.columns WHERE database = currentDatabase() AND table = {t:String}",
            parameters={"t": table},
        ).result_rows
    )
    if not found:
        raise SchemaError(
            f"table {table!r} does not exist (dropped or detached?): ATTACH it again, or run 'flowscope clickhouse "
            f"migrate' (after dropping {MIGRATIONS_TABLE} if the schema was recorded as created)"
        )
    problems = []
    for name, type_, _ in FLOWS_COLUMNS:
        if name not in found:
            problems.append(f"{table}.{name} is missing (flowscope writes {type_})")
        elif _base_type(found[name]) != COLUMN_TYPES[name]:
            problems.append(f"{table}.{name} is {found[name]}, but flowscope writes {type_}")
    if problems:
        raise SchemaError(
            "; ".join(problems) + ": run 'flowscope clickhouse migrate' to add missing columns; change a column's type "
            "with ALTER TABLE ... MODIFY COLUMN, or point the sink at another database"
        )


def _base_type(type_: str) -> str:
    while match := _WRAPPER.match(type_):
        type_ = match.group(2)
    return type_
