"""``clickhouse`` sink: records into Antrea's ``flows`` table, as the Flow Aggregator writes them.

Batching follows Antrea's ClickHouse client and loses less: the sink's buffer holds at most
``maxQueueSize`` records (524,288) and drops the oldest when full, counted; everything buffered is
committed every ``commitInterval``; a failed commit goes back to the front of the buffer and is
retried with backoff; ``spool: true`` keeps what is undelivered at shutdown for the next start.
Opening never fails for want of a server: the sink buffers, retries, and reports readiness in
``flowscope_sink_ready`` and ``/healthz``. While it runs, the sink also answers read-only queries
(:meth:`ClickHouseSink.query`) for the live query API and the dashboards: an embedded database can
be opened by one process only, so they go through the process that holds it.
"""

from __future__ import annotations

import logging
import struct
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, Histogram
from pydantic import Field, SecretStr, field_validator

from flowscope.core.components import Batch, Sink
from flowscope.core.config import OptionsModel, duration_at_least, format_duration
from flowscope.core.errors import RetryableError
from flowscope.core.metrics import shared
from flowscope.plugins.sinks.clickhouse import connection, database, readonly, rows
from flowscope.plugins.sinks.clickhouse.schema import COLUMN_TYPES, DEFAULT_TTL, INSERT_COLUMNS, Layout

MAX_QUEUE_SIZE = 1 << 19  # Antrea's maxQueueSize
_DATA_ERRORS = (ValueError, TypeError, OverflowError, struct.error)


def _is_data_error(exc: BaseException) -> bool:
    """A value the column cannot store, found while serializing (clickhouse-connect's DataError)."""
    return isinstance(exc, _DATA_ERRORS) or type(exc).__name__ == "DataError"


def _commit_histogram(registry: CollectorRegistry) -> Histogram:
    return Histogram(
        "flowscope_clickhouse_commit_seconds", "Duration of one commit to ClickHouse.", ["instance"], registry=registry
    )


class ClickHouseOptions(OptionsModel):
    databaseURL: str | None = Field(
        None,
        description="http(s)://host[:port], chdb://PATH or tcp://host:9000 (mapped to HTTP 8123); "
        "default chdb://<dataDir>/clickhouse",
    )
    database: str = Field("default", min_length=1, description="database holding the flows table")
    username: str | None = Field(None, description="default: $CH_USERNAME, else 'default'")
    password: SecretStr | None = Field(None, description="default: passwordFile, else $CH_PASSWORD, else empty")
    passwordFile: str | None = Field(None, description="file holding the password (e.g. a mounted Secret)")
    compress: bool = Field(True, description="lz4-compress inserts (HTTP only)")
    caCert: str | None = Field(None, description="https: CA that signed the server's certificate (default: system CAs)")
    tlsVerify: bool = Field(True, description="https: verify the server's certificate")
    debug: bool = Field(False, description="log every commit and clickhouse-connect's own debug output")
    commitInterval: duration_at_least(1.0) = Field("8s", description="commit everything buffered this often")  # type: ignore[valid-type]
    maxQueueSize: int = Field(MAX_QUEUE_SIZE, gt=0, description="records buffered at most; the oldest are dropped")
    ttl: duration_at_least(1.0) | None = Field(  # type: ignore[valid-type]
        None,
        description="rows older than this are deleted; default 1h for new tables, and tables that exist keep theirs",
    )
    cluster: str = Field("", description="ClickHouse cluster name: flows_local (replicated) + Distributed flows")
    clusterUUID: str = Field("", description="the clusterUUID column of every row; default each record's clusterId")
    migrate: bool = Field(True, description="create and upgrade the schema when the sink opens")

    @field_validator("databaseURL")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is not None:
            connection.parse_database_url(value)
        return value


def as_config(options: Mapping[str, Any]) -> dict[str, Any]:
    """Validated options written back as config values (durations as text), unset ones left out,
    for another config (the aggregator bundle's ``clickHouse:``) or another validation to take."""
    values = {key: value for key, value in options.items() if value is not None}
    values["commitInterval"] = format_duration(options["commitInterval"])
    if options["ttl"] is not None:
        values["ttl"] = format_duration(options["ttl"])
    return values


def tls_options(options: Mapping[str, Any]) -> dict[str, Any]:
    """clickhouse-connect's TLS arguments for an https server."""
    return {"verify": options["tlsVerify"], "ca_cert": options["caCert"]}


def settings(options: dict[str, Any], data_dir: Path) -> tuple[connection.Target, connection.Credentials, Layout]:
    """Where to connect, as whom, and the schema layout, from validated options."""
    url = options["databaseURL"] or f"chdb://{data_dir / 'clickhouse'}"
    password = options["password"]
    credentials = connection.resolve_credentials(
        options["username"],
        password.get_secret_value() if password is not None else None,
        None if options["passwordFile"] is None else Path(options["passwordFile"]),
    )
    ttl = options["ttl"]
    layout = Layout(int(ttl) if ttl is not None else DEFAULT_TTL, options["cluster"])
    return connection.parse_database_url(url), credentials, layout


class ClickHouseSink(Sink):
    """Inserts records into ClickHouse's ``flows`` table (embedded chDB by default)."""

    Options = ClickHouseOptions

    @classmethod
    def runtime_defaults(cls, options: dict[str, Any]) -> dict[str, Any]:
        """One commit takes everything buffered, every ``commitInterval``."""
        return {
            "bufferSize": options["maxQueueSize"],
            "batchSize": options["maxQueueSize"],
            "flushInterval": format_duration(options["commitInterval"]),
            "onFull": "dropOldest",
        }

    def __init__(self, options: dict[str, Any], context):
        super().__init__(options, context)
        self.target, self.credentials, self.layout = settings(options, context.data_dir)
        self.database: str = options["database"]
        self.cluster_uuid: str = options["clusterUUID"]
        self.log = context.logger
        self._client: Any = None
        self._lock = threading.Lock()  # the client serves the sink's thread and queries from the API's
        self._checked = False  # the flows table was found writable since the last server error
        self._type_names = [COLUMN_TYPES[name] for name in INSERT_COLUMNS]
        self._commit_seconds = shared(context.metrics, _commit_histogram).labels(instance=context.name)
        if self.target.mapped_from:
            self.log.warning(
                "databaseURL %s uses ClickHouse's native protocol, which flowscope does not speak: using the same "
                "server's HTTP interface, %s (write http://host:port to choose the port)",
                self.target.mapped_from,
                self.target,
            )
        if options["debug"]:
            logging.getLogger("clickhouse_connect").setLevel(logging.DEBUG)
        else:  # a value that does not fit is reported once, by write(), without a traceback per column
            logging.getLogger("clickhouse_connect.driver.transform").setLevel(logging.CRITICAL)

    # -- connecting ----------------------------------------------------------------------------

    def open(self) -> None:
        with self._lock:
            self._client = connection.connect(
                self.target, self.database, self.credentials, self.options["compress"], tls_options(self.options)
            )
            self.log.info("connected to ClickHouse at %s, database %r", self.target, self.database)
            self._prepare()

    def _prepare(self) -> None:
        """Migrate (if enabled) and check the table; a problem is retried, as the server may be fixed."""
        try:
            if self.options["migrate"]:
                for migration in database.migrate(self._client, self.layout):
                    self.log.info("schema migration %d applied: %s", migration.version, migration.description)
                changed = database.set_ttl(self._client, self.layout) if self.options["ttl"] is not None else []
                if changed:
                    self.log.info("TTL set to %ds on %s", self.layout.ttl_seconds, ", ".join(changed))
            database.check_columns(self._client, self.layout)
        except database.SchemaError as exc:
            raise RetryableError(f"cannot write to {self.database!r} on {self.target}: {exc}") from None
        except Exception as exc:
            raise RetryableError(
                connection.explain(exc, self.target, self.database, self.credentials.username)
            ) from None
        self._checked = True

    # -- writing -------------------------------------------------------------------------------

    def write(self, records: Batch) -> int:
        if self._client is None:
            self.open()
        elif not self._checked:
            with self._lock:
                self._prepare()
        columns = rows.to_columns(records, self.cluster_uuid)
        written = len(records)
        try:
            self._insert(columns, written)
        except Exception as exc:
            if not _is_data_error(exc):
                raise
            # nulls become defaults; what still does not fit its column is dropped, alone
            columns = rows.to_columns(records, self.cluster_uuid, lenient=True)
            bad = rows.invalid_values(columns)
            if bad:
                self._report_invalid(bad, exc)
                written -= len(bad)
                columns = rows.without_rows(columns, bad)
            if written:
                self._insert(columns, written)
        return written

    def _insert(self, columns: list[list[Any]], count: int) -> None:
        started = time.perf_counter()
        try:
            with self._lock:
                self._client.insert(
                    "flows",
                    columns,
                    column_names=INSERT_COLUMNS,
                    column_type_names=self._type_names,
                    column_oriented=True,
                )
        except Exception as exc:
            if _is_data_error(exc):
                raise
            self._checked = False  # a dropped table or changed column shows in the next check
            raise RetryableError(
                f"commit of {count} records to {self.database}.flows failed, kept for retry: "
                + connection.explain(exc, self.target, self.database, self.credentials.username)
            ) from None
        elapsed = time.perf_counter() - started
        self._commit_seconds.observe(elapsed)
        if self.options["debug"]:
            self.log.info("committed %d records to %s.flows in %.3fs", count, self.database, elapsed)

    def _report_invalid(self, bad: dict[int, tuple[str, Any]], exc: BaseException) -> None:
        self.context.counters.dropped(len(bad), "invalid")
        column, value = next(iter(bad.values()))
        self.log.error(
            "dropped %d records that %s.flows cannot store, e.g. %s = %r (a %s column): %s",
            len(bad),
            self.database,
            column,
            value,
            COLUMN_TYPES[column],
            exc,
        )

    # -- reading -------------------------------------------------------------------------------

    def query(
        self,
        sql: str,
        parameters: dict[str, Any],
        timeout: float = readonly.TIMEOUT,
        max_rows: int = readonly.MAX_ROWS,
    ) -> tuple[list[str], list[list[Any]]]:
        """Column names and rows of one read-only SELECT of this sink's database.

        :raises readonly.QueryRefused: for anything but one SELECT of the database's tables, or a
            query over the limits; :class:`RetryableError` while ClickHouse cannot be reached.
        """
        sql = readonly.check_statement(sql)
        limits = readonly.settings(timeout, max_rows)
        with self._lock:
            if self._client is None:
                raise RetryableError(f"ClickHouse at {self.target} is not connected yet; the sink keeps trying")
            try:
                tree = self._client.query("EXPLAIN AST " + sql, parameters=parameters, settings=limits)
                readonly.check_tree([row[0] for row in tree.result_rows], self.database)
                result = self._client.query(sql, parameters=parameters, settings=limits)
            except readonly.QueryRefused:
                raise
            except Exception as exc:
                raise readonly.refusal(exc, timeout, max_rows) from None
        return list(result.column_names), [[readonly.plain(value) for value in row] for row in result.result_rows]

    def close(self) -> None:
        with self._lock:
            if self._client is not None:
                self._client.close()
                self._client = None
