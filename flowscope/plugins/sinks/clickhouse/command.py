"""``flowscope clickhouse``: print the schema, create or upgrade it, and query the database."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from flowscope.core.apiclient import ApiClient
from flowscope.core.config import read_config_file
from flowscope.core.errors import ConfigError, ConfigIssue, FlowscopeError
from flowscope.core.output import print_table
from flowscope.core.pipelineconfig import validate_config
from flowscope.plugins.sinks.clickhouse import connection, database, schema
from flowscope.plugins.sinks.clickhouse.sink import ClickHouseOptions, as_config, settings, tls_options


@click.group("clickhouse")
def clickhouse_group() -> None:
    """The ClickHouse database of the clickhouse sink (Antrea's flows table and views)."""


def _layout_options(command: Any) -> Any:
    command = click.option(
        "--ttl",
        default=None,
        help='Row lifetime, e.g. "12h": new tables get it (default 1h), existing ones are changed to it.',
    )(command)
    return click.option("--cluster", default=None, help="ClickHouse cluster name: the replicated layout.")(command)


def _connection_options(command: Any) -> Any:
    """Where the database is: a config's clickhouse sink, or flags (flags win)."""
    for option in reversed(
        [
            click.option(
                "-c",
                "--config",
                "config_path",
                type=click.Path(dir_okay=False),
                help="Take the clickhouse sink's settings from this config.",
            ),
            click.option("--sink", "sink_name", default=None, help="Which clickhouse sink of the config."),
            click.option("--url", "databaseURL", default=None, help="e.g. http://clickhouse:8123 or chdb://./data."),
            click.option("--database", default=None, help="Database name (default 'default')."),
            click.option("--username", default=None, help="User (default $CH_USERNAME, else 'default')."),
            click.option("--password-file", "passwordFile", default=None, help="Password file ($CH_PASSWORD)."),
        ]
    ):
        command = option(command)
    return command


@clickhouse_group.command("schema")
@_layout_options
def schema_command(ttl: str | None, cluster: str | None) -> None:
    """Print the SQL that creates the latest schema."""
    options = _options({"ttl": ttl, "cluster": cluster})
    _, _, layout = settings(options, Path("."))
    for statement in schema.ddl(layout):
        click.echo(statement + ";\n")


@clickhouse_group.command("migrate")
@_connection_options
@_layout_options
@click.option("--dry-run", is_flag=True, help="Print the statements that would run; change nothing.")
@click.pass_obj
def migrate_command(state: Any, dry_run: bool, **given: Any) -> None:
    """Create the flows table and its views, or upgrade an older schema in place.

    Migrations are recorded in the flowscope_migrations table; running this again does nothing.
    """
    options, client, target, layout = _open(state, given)
    where = f"{target} database {options['database']!r}"
    try:
        version = database.applied_version(client, layout, create=not dry_run)
        todo = list(schema.pending(version))
        if dry_run:
            for migration in todo:
                click.echo(f"-- migration {migration.version}: {migration.description}")
                for statement in migration.statements(layout):
                    click.echo(statement + ";\n")
            if not todo:
                click.echo(f"-- {where} is at version {version}: nothing to do")
            return
        for migration in database.migrate(client, layout):
            click.echo(f"applied migration {migration.version}: {migration.description}")
        if options["ttl"] is not None:  # asked for: existing tables take it; else they keep theirs
            database.set_ttl(client, layout)
        database.check_columns(client, layout)
        click.echo(f"{where}: schema version {schema.LATEST}, up to date")
    except database.SchemaError as exc:
        raise FlowscopeError(str(exc)) from None
    finally:
        client.close()


@clickhouse_group.command("query")
@_connection_options
@click.option("-o", "--output", type=click.Choice(["table", "json"]), default="table", help="Output format.")
@click.argument("sql")
@click.pass_obj
def query_command(state: Any, sql: str, output: str, **given: Any) -> None:
    """Run one SQL query and print its rows, e.g. against the embedded (chdb://) database.

    An embedded database can be open in one process only: while a flowscope process that holds it
    runs, a query given with -c goes through that process's API (read-only: one SELECT or WITH).
    """
    config_path, sink_name = given["config_path"], given["sink_name"]
    options, data_dir = _resolve(state, {**given, "ttl": None, "cluster": None})
    target = settings(options, data_dir)[0]
    if connection.held_elsewhere(target):
        if config_path is None:
            raise FlowscopeError(
                f"{target} is open in another process, and an embedded database serves one process at a time; "
                "give that process's config with -c to ask it through its API, or stop it"
            )
        names, rows = _query_running(state, config_path, sink_name, sql, str(target))
    else:
        client, target, _ = _connect(options, data_dir)
        try:
            result = client.query(sql)
        except Exception as exc:
            raise FlowscopeError(connection.explain(exc, target, "", "")) from None
        finally:
            client.close()
        names, rows = list(result.column_names), result.result_rows
    if output == "json":
        for row in rows:
            click.echo(json.dumps(dict(zip(names, row, strict=True)), default=str))
    else:
        print_table([tuple(names), *(tuple(str(v) for v in row) for row in rows)])


def _query_running(
    state: Any, config_path: str, sink_name: str | None, sql: str, where: str
) -> tuple[list[str], list[list[Any]]]:
    """Ask the running process that holds the database, through its API, as the config describes it."""
    data = read_config_file(config_path)
    config = validate_config(data, state.for_config(data, config_path), config_path)
    settings_ = config.settings
    if settings_.apiAddress is None:
        raise FlowscopeError(
            f"{where} is open in another process, and its config has no apiAddress to ask it through; stop that "
            "process, or give it an apiAddress"
        )
    client = ApiClient.local(settings_.apiAddress, settings_.apiTLS, settings_.dataDir, settings_.apiTokenFile)
    client.what = "the process that holds the database"
    click.echo(f"{where} is open in another process: asking it through its API at {client.server}", err=True)
    query = {"sink": sink_name} if sink_name else {}
    answer = client.post("/clickhouse/query", sql.encode(), query)
    return answer["columns"], answer["rows"]


def _resolve(state: Any, given: dict[str, Any]) -> tuple[dict[str, Any], Path]:
    """The sink options of a command's flags and config (flags win), and the data folder."""
    config_path, sink_name = given.pop("config_path"), given.pop("sink_name")
    base, data_dir = _from_config(state, config_path, sink_name) if config_path else ({}, Path("flowscope-data"))
    return _options({**base, **{k: v for k, v in given.items() if v is not None}}), data_dir


def _open(state: Any, given: dict[str, Any]) -> tuple[dict[str, Any], Any, connection.Target, schema.Layout]:
    options, data_dir = _resolve(state, given)
    return (options, *_connect(options, data_dir))


def _connect(options: dict[str, Any], data_dir: Path) -> tuple[Any, connection.Target, schema.Layout]:
    target, credentials, layout = settings(options, data_dir)
    try:
        client = connection.connect(target, options["database"], credentials, options["compress"], tls_options(options))
    except Exception as exc:
        raise FlowscopeError(str(exc)) from None
    return client, target, layout


def _options(raw: dict[str, Any]) -> dict[str, Any]:
    validated = ClickHouseOptions.from_config({k: v for k, v in raw.items() if v is not None})
    return {name: getattr(validated, name) for name in ClickHouseOptions.model_fields}


def _from_config(state: Any, path: str, sink_name: str | None) -> tuple[dict[str, Any], Path]:
    data = read_config_file(path)
    config = validate_config(data, state.for_config(data, path), path)
    found = [s for s in config.sinks if s.type == "clickhouse" and sink_name in (None, s.name)]
    if len(found) != 1:
        names = ", ".join(s.name for s in config.sinks if s.type == "clickhouse") or "none"
        what = f"no clickhouse sink named {sink_name!r}" if sink_name else f"{len(found)} clickhouse sinks"
        raise ConfigError(ConfigIssue("sinks", f"{what} (clickhouse sinks: {names}); choose one with --sink"), path)
    return as_config(found[0].options), config.settings.dataDir
