"""The clickhouse sink on the real ClickHouse engine (chDB, embedded): schema, rows, views,
migrations, failures and the spool.

chDB serves one directory per process, so every test here shares one engine directory and
works in a database of its own.
"""

from __future__ import annotations

import datetime
import itertools
import logging
import re
import shutil
import socket
import subprocess
import sys
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import clickhouse_connect
import pytest

from flowscope.core.errors import ConfigError
from flowscope.plugins.sinks.clickhouse import connection, schema
from flowscope.plugins.sinks.clickhouse import rows as mapping
from tests.helpers import build, run, run_cli, wait_for

_names = itertools.count()
EXAMPLES = Path(__file__).resolve().parent.parent / "examples"

FULL = {
    "flowStartSeconds": 1_700_000_000,
    "flowEndSeconds": 1_700_000_060,
    "flowEndSecondsFromSourceNode": 1_700_000_059,
    "flowEndSecondsFromDestinationNode": 1_700_000_058,
    "flowEndReason": 2,
    "sourceIPv4Address": "10.10.0.79",
    "destinationIPv4Address": "10.10.1.15",
    "sourceTransportPort": 44752,
    "destinationTransportPort": 5201,
    "protocolIdentifier": 6,
    "packetTotalCount": 823188,
    "octetTotalCount": 30472817041,
    "packetDeltaCount": 241333,
    "octetDeltaCount": 8982624938,
    "reversePacketTotalCount": 471111,
    "reverseOctetTotalCount": 24500996,
    "reversePacketDeltaCount": 136211,
    "reverseOctetDeltaCount": 7083284,
    "sourcePodName": "perftest-a",
    "sourcePodNamespace": "antrea-test",
    "sourceNodeName": "k8s-node-control-plane",
    "destinationPodName": "perftest-b",
    "destinationPodNamespace": "antrea-test-b",
    "destinationNodeName": "k8s-node-worker-1",
    "destinationClusterIPv4": "10.96.0.10",
    "destinationServicePort": 5202,
    "destinationServicePortName": "antrea-test/perftest:iperf",
    "ingressNetworkPolicyName": "test-flow-aggregator-networkpolicy-ingress-allow",
    "ingressNetworkPolicyNamespace": "antrea-test-b",
    "ingressNetworkPolicyRuleName": "ingress-0",
    "ingressNetworkPolicyRuleAction": 1,
    "ingressNetworkPolicyType": 1,
    "egressNetworkPolicyName": "test-flow-aggregator-networkpolicy-egress-allow",
    "egressNetworkPolicyNamespace": "antrea-test",
    "egressNetworkPolicyRuleName": "egress-0",
    "egressNetworkPolicyRuleAction": 1,
    "egressNetworkPolicyType": 1,
    "tcpState": "TIME_WAIT",
    "flowType": 2,
    "sourcePodLabels": '{"antrea-e2e":"perftest-a","app":"iperf"}',
    "destinationPodLabels": '{"antrea-e2e":"perftest-b","app":"iperf"}',
    "throughput": 15902813472,
    "reverseThroughput": 12381344,
    "throughputFromSourceNode": 15902813471,
    "throughputFromDestinationNode": 15902813470,
    "reverseThroughputFromSourceNode": 12381343,
    "reverseThroughputFromDestinationNode": 12381342,
    "clusterId": "5ec7d1f6-6e9f-4a3b-9f2e-0c1a2b3c4d5e",
    "egressName": "egress-web",
    "egressIP": "172.18.0.3",
    "egressNodeName": "k8s-node-worker-2",
}


@pytest.fixture(scope="module")
def engine(chdb_engine):
    """The chDB directory of the test process."""
    return chdb_engine


@pytest.fixture
def db(engine):
    """A database of its own for one test; ``db.client`` reads it, ``db.sink(**options)`` writes it."""
    name = f"t{next(_names)}"
    keeper = clickhouse_connect.get_client(interface="chdb", path=str(engine))
    keeper.command(f"CREATE DATABASE {name}")
    client = clickhouse_connect.get_client(interface="chdb", path=str(engine), database=name)

    class Db:
        def __init__(self):
            self.name, self.client, self.url = name, client, f"chdb://{engine}"

        def sink(self, **options):
            return {"type": "clickhouse", "databaseURL": self.url, "database": name, "commitInterval": "1s", **options}

        def rows(self, sql):
            return client.query(sql).result_rows

    yield Db()
    client.close()
    keeper.close()


def pipeline_spec(db, records, tmp_path, hold=False, shutdown="5s", **sink):
    return {
        "dataDir": str(tmp_path),
        "shutdownTimeout": shutdown,
        "sources": [{"type": "memory", "records": records, "hold": hold}],
        "sinks": [db.sink(**sink)],
    }


def counter(pipeline, what, reason=None):
    return pipeline.metrics.counters("sink", "clickhouse").value(what, reason)


def test_every_column_of_a_record_reads_back_exactly(db, tmp_path):
    pipeline = run(pipeline_spec(db, [FULL], tmp_path))
    assert counter(pipeline, "emitted") == 1
    [row] = db.client.query("SELECT * FROM flows").named_results()
    assert list(row) == [name for name, _, _ in schema.FLOWS_COLUMNS]  # every column, in Antrea's order
    inserted = row.pop("timeInserted")
    assert abs(inserted - datetime.datetime.now()) < datetime.timedelta(minutes=1)

    def dt(seconds):
        return datetime.datetime.fromtimestamp(seconds)

    expected = {
        **{k: v for k, v in FULL.items() if k in row},
        **{k: dt(FULL[k]) for k, type_ in schema.COLUMN_TYPES.items() if type_ == "DateTime" and k in FULL},
        "sourceIP": "10.10.0.79",
        "destinationIP": "10.10.1.15",
        "destinationClusterIP": "10.96.0.10",
        "clusterUUID": FULL["clusterId"],
        "trusted": 0,
    }
    assert row == expected


def test_row_mapping_ipv6_missing_fields_unspecified_cluster_ip_and_cluster_uuid(db, tmp_path):
    records = [
        {
            "sourceIPv6Address": "fd00:10:10::4f",
            "destinationIPv6Address": "fd00:10:10:1::f",
            "destinationClusterIPv6": "::",
            "protocolIdentifier": 17,
            "octetDeltaCount": 512,
        },
        {"sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.2", "destinationClusterIPv4": "0.0.0.0"},
        {**FULL, "sourceIPv4Address": "10.0.0.3", "sourcePodName": None, "octetDeltaCount": None},  # JSON nulls
    ]
    run(pipeline_spec(db, records, tmp_path, clusterUUID="from-the-sink"))
    rows = db.rows(
        "SELECT sourceIP, destinationIP, destinationClusterIP, protocolIdentifier, octetDeltaCount, sourcePodName, "
        "tcpState, toUnixTimestamp(flowStartSeconds), clusterUUID FROM flows ORDER BY sourceIP"
    )
    assert rows == [
        ("10.0.0.1", "10.0.0.2", "", 0, 0, "", "", 0, "from-the-sink"),
        ("10.0.0.3", "10.10.1.15", "10.96.0.10", 6, 0, "", "TIME_WAIT", FULL["flowStartSeconds"], "from-the-sink"),
        ("fd00:10:10::4f", "fd00:10:10:1::f", "", 17, 512, "", "", 0, "from-the-sink"),
    ]


def record(**fields):
    return {**FULL, **fields}


class _Record(dict):
    """A dict subclass: the C gatherer leaves it to the defaults' path, as its Python twin does."""


@pytest.mark.skipif(mapping.EXTENSION is None, reason="the C gatherer is not built")
def test_the_c_column_gatherer_gives_what_its_python_twin_gives(monkeypatch):
    full = [record(sourcePodName=f"pod-{i}", octetDeltaCount=i) for i in range(300)]
    cases = {
        "every column carried": full,
        "one record lacks a column": [*full[:200], {k: v for k, v in FULL.items() if k != "tcpState"}, *full[200:]],
        "a record that is not a plain dict": [*full[:5], _Record(FULL)],
        "no records": [],
    }

    def both(batch: list) -> tuple:
        return mapping._columns_of(batch, mapping._CARRIED), mapping.to_columns(batch, "")

    native = {what: both(batch) for what, batch in cases.items()}
    monkeypatch.setenv("FLOWSCOPE_PURE_PYTHON", "1")
    python = {what: both(batch) for what, batch in cases.items()}
    assert native == python
    carried, columns = native["every column carried"]
    assert len(carried) == len(mapping._CARRIED) == len(schema.INSERT_COLUMNS) - 4  # 3 derived, and clusterUUID
    assert carried[mapping._CARRIED.index("octetDeltaCount")] == list(range(300))
    assert columns[schema.INSERT_COLUMNS.index("sourceIP")] == ["10.10.0.79"] * 300
    assert native["one record lacks a column"][0] is None
    assert native["a record that is not a plain dict"][0] is None
    lacking = native["one record lacks a column"][1][schema.INSERT_COLUMNS.index("tcpState")]
    assert lacking[199:202] == ["TIME_WAIT", "", "TIME_WAIT"]  # the default, for that record only


def test_the_three_views_sum_as_their_sql_says(db, tmp_path):
    a = {"sourcePodName": "a", "octetDeltaCount": 100, "reverseOctetDeltaCount": 10, "throughput": 800}
    records = [
        record(**a, flowStartSeconds=1, throughputFromSourceNode=5),
        record(**a, flowStartSeconds=2, throughputFromSourceNode=7),  # same pod-view key: summed
        record(sourcePodName="b", octetDeltaCount=1, reverseOctetDeltaCount=2, throughput=3, sourceNodeName="n2"),
    ]
    run(pipeline_spec(db, records, tmp_path))
    for view in ("flows_pod_view", "flows_node_view", "flows_policy_view"):
        db.client.command(f"OPTIMIZE TABLE {view} FINAL")
    pods = db.rows(
        "SELECT sourcePodName, octetDeltaCount, reverseOctetDeltaCount, throughput, throughputFromSourceNode "
        "FROM flows_pod_view ORDER BY sourcePodName"
    )
    assert pods == [("a", 200, 20, 1600, 12), ("b", 1, 2, 3, FULL["throughputFromSourceNode"])]
    nodes = db.rows(
        "SELECT sourceNodeName, destinationNodeName, octetDeltaCount, reverseThroughputFromDestinationNode "
        "FROM flows_node_view ORDER BY sourceNodeName"
    )
    assert nodes == [
        ("k8s-node-control-plane", "k8s-node-worker-1", 200, 2 * FULL["reverseThroughputFromDestinationNode"]),
        ("n2", "k8s-node-worker-1", 1, FULL["reverseThroughputFromDestinationNode"]),
    ]
    policies = db.rows(
        "SELECT sourcePodName, ingressNetworkPolicyName, egressNetworkPolicyRuleAction, octetDeltaCount, throughput "
        "FROM flows_policy_view ORDER BY sourcePodName"
    )
    assert policies == [
        ("a", FULL["ingressNetworkPolicyName"], 1, 200, 1600),
        ("b", FULL["ingressNetworkPolicyName"], 1, 1, 3),
    ]


THEIA_2024_FLOWS = """CREATE TABLE flows (
    timeInserted DateTime DEFAULT now(),
    {columns}
) engine=MergeTree ORDER BY (timeInserted, flowEndSeconds)"""


def create_old_flows(db, without):
    columns = ",\n    ".join(
        schema.column_definition(name) for name, _, _ in schema.FLOWS_COLUMNS[1:] if name not in without
    )
    db.client.command(THEIA_2024_FLOWS.format(columns=columns))
    db.client.command("INSERT INTO flows (sourcePodName, octetDeltaCount) VALUES ('before-upgrade', 42)")


def test_an_older_schema_is_upgraded_in_place_and_keeps_its_rows(db, tmp_path, caplog):
    create_old_flows(db, without={"egressNodeName"})  # Theia's Jan-2024 table
    with caplog.at_level(logging.INFO, logger="flowscope.sink.clickhouse"):
        run(pipeline_spec(db, [FULL], tmp_path))
    columns = [
        name
        for (name,) in db.rows(
            "SELECT name FROM system.columns WHERE database = currentDatabase() AND table = 'flows' ORDER BY position"
        )
    ]
    assert columns == [name for name, _, _ in schema.FLOWS_COLUMNS]
    assert db.rows("SELECT sourcePodName, octetDeltaCount, egressNodeName FROM flows ORDER BY octetDeltaCount") == [
        ("before-upgrade", 42, ""),
        ("perftest-a", FULL["octetDeltaCount"], "k8s-node-worker-2"),
    ]
    assert db.rows("SELECT version FROM flowscope_migrations ORDER BY version") == [(v,) for v in range(1, 6)]
    assert "schema migration 4 applied: flows.egressNodeName" in caplog.text
    # the views were created over the existing rows (POPULATE)
    assert db.rows("SELECT sum(octetDeltaCount) FROM flows_pod_view WHERE sourcePodName = 'before-upgrade'") == [(42,)]


def test_migrate_command_upgrades_once_then_has_nothing_to_do(tmp_path):
    url = f"chdb://{tmp_path / 'engine'}"  # its own engine: the command runs in another process
    first = run_cli("clickhouse", "migrate", "--url", url, "--database", "flows_db")
    assert first.returncode == 0, first.stderr
    assert first.stdout.splitlines() == [
        "applied migration 1: flows table",
        "applied migration 2: flows.trusted (policy recommendation)",
        "applied migration 3: flows.egressName and flows.egressIP",
        "applied migration 4: flows.egressNodeName",
        "applied migration 5: flows_pod_view, flows_node_view and flows_policy_view",
        f"{url} database 'flows_db': schema version 5, up to date",
    ]
    again = run_cli("clickhouse", "migrate", "--url", url, "--database", "flows_db", "--dry-run")
    assert again.stdout == f"-- {url} database 'flows_db' is at version 5: nothing to do\n"
    recorded = run_cli(
        "clickhouse",
        "query",
        "--url",
        url,
        "--database",
        "flows_db",
        "-o",
        "json",
        "SELECT version FROM flowscope_migrations ORDER BY version",
    )
    assert recorded.stdout.splitlines() == [f'{{"version": {v}}}' for v in range(1, 6)]


def test_schema_command_prints_the_cluster_layout():
    result = run_cli("clickhouse", "schema", "--cluster", "theia", "--ttl", "12h")
    assert result.returncode == 0, result.stderr
    sql = result.stdout
    assert "CREATE TABLE IF NOT EXISTS flows_local ON CLUSTER 'theia' (" in sql
    assert "ENGINE = ReplicatedMergeTree('/clickhouse/tables/{shard}/{database}/flows_local', '{replica}')" in sql
    assert "CREATE TABLE IF NOT EXISTS flows ON CLUSTER 'theia' AS flows_local\n" in sql
    assert "ENGINE = Distributed('theia', currentDatabase(), flows_local, rand())" in sql
    assert "TTL timeInserted + INTERVAL 43200 SECOND\nSETTINGS merge_with_ttl_timeout = 14400" in sql
    assert "CREATE MATERIALIZED VIEW IF NOT EXISTS flows_pod_view_local ON CLUSTER 'theia'" in sql
    assert "ENGINE = Distributed('theia', currentDatabase(), flows_node_view_local, rand())" in sql
    # Theia's replicated views add clusterUUID to the key, the selected columns and the GROUP BY
    assert (
        sql.count("    clusterUUID\n)"),
        sql.count("    clusterUUID,\n    sum("),
        sql.count("    clusterUUID;"),
    ) == (3, 3, 3)


def test_a_failed_commit_is_kept_and_lands_once_the_table_is_back(db, tmp_path):
    run(pipeline_spec(db, [FULL], tmp_path))  # creates the schema
    db.client.command("DETACH TABLE flows")
    pipeline = build(
        pipeline_spec(
            db,
            [record(sourceTransportPort=i) for i in range(1, 301)],
            tmp_path,
            hold=True,
            retryBackoff="100ms",
            retryMaxBackoff="200ms",
        )
    )
    pipeline.start()
    try:
        wait_for(lambda: counter(pipeline, "retried") >= 2, what="failed commits")
        runner = pipeline.sinks[0]
        assert (runner.ready, runner.buffered, counter(pipeline, "emitted")) == (False, 300, 0)
        db.client.command("ATTACH TABLE flows")
        wait_for(lambda: counter(pipeline, "emitted") == 300, what="the commit after the table came back")
        assert runner.ready
    finally:
        pipeline.stop()
        pipeline.wait(10)
    assert db.rows("SELECT count(), uniqExact(sourceTransportPort) FROM flows WHERE sourceTransportPort <= 300") == [
        (300, 300)
    ]
    assert counter(pipeline, "dropped", "buffer_full") == 0


def test_a_full_queue_drops_the_oldest_and_counts_them(db, tmp_path):
    run(pipeline_spec(db, [], tmp_path))
    db.client.command("DETACH TABLE flows")
    records = [record(sourceTransportPort=i) for i in range(1, 26)]
    pipeline = build(pipeline_spec(db, records, tmp_path, hold=True, maxQueueSize=10, retryBackoff="50ms"))
    pipeline.start()
    try:
        wait_for(lambda: counter(pipeline, "retried") >= 1, what="a failed commit")
        db.client.command("ATTACH TABLE flows")
        wait_for(lambda: counter(pipeline, "emitted") == 10, what="the newest 10 records")
    finally:
        pipeline.stop()
        pipeline.wait(10)
    assert counter(pipeline, "dropped", "buffer_full") == 15
    assert db.rows("SELECT min(sourceTransportPort), max(sourceTransportPort), count() FROM flows") == [(16, 25, 10)]


def test_records_survive_a_restart_through_the_spool(db, tmp_path, caplog):
    run(pipeline_spec(db, [], tmp_path))
    db.client.command("DETACH TABLE flows")
    records = [record(sourceTransportPort=i, sourcePodLabels="<b>&</b>") for i in range(1, 51)]
    first = build(pipeline_spec(db, records, tmp_path, hold=True, shutdown="500ms", spool=True, retryBackoff="50ms"))
    first.start()
    wait_for(lambda: counter(first, "retried") >= 1, what="a failed commit")
    first.stop()
    assert first.wait(10)
    spooled = tmp_path / "spool" / "clickhouse.jsonl"
    assert len(spooled.read_text().splitlines()) == 50
    assert first.metrics.counters("sink", "clickhouse").value("dropped", "shutdown") == 0

    db.client.command("ATTACH TABLE flows")
    with caplog.at_level(logging.INFO):
        second = run(pipeline_spec(db, [], tmp_path, spool=True))
    assert "50 records restored from" in caplog.text
    assert counter(second, "emitted") == 50
    assert not spooled.exists()
    assert db.rows("SELECT count(), sum(sourceTransportPort), any(sourcePodLabels) FROM flows") == [
        (50, 1275, "<b>&</b>")
    ]


def test_a_value_out_of_range_drops_that_record_only_and_names_it(db, tmp_path, caplog):
    records = [record(sourceTransportPort=80), record(sourceTransportPort=70000), record(sourceTransportPort=443)]
    with caplog.at_level(logging.ERROR):
        pipeline = run(pipeline_spec(db, records, tmp_path))
    assert (counter(pipeline, "emitted"), counter(pipeline, "dropped", "invalid")) == (2, 1)
    assert (
        f"dropped 1 records that {db.name}.flows cannot store, e.g. sourceTransportPort = 70000 (a UInt16 column)"
        in caplog.text
    )
    assert db.rows("SELECT sourceTransportPort FROM flows ORDER BY 1") == [(80,), (443,)]
    assert "Error serializing column" not in caplog.text  # reported once, by the sink


def test_an_incompatible_column_type_is_reported_and_the_pipeline_keeps_running(db, tmp_path, caplog):
    columns = ",\n    ".join(
        schema.column_definition(n) if n != "sourceTransportPort" else "sourceTransportPort String"
        for n, _, _ in schema.FLOWS_COLUMNS
    )
    db.client.command(f"CREATE TABLE flows ({columns}) ENGINE = MergeTree ORDER BY timeInserted")
    with caplog.at_level(logging.WARNING):
        pipeline = build(pipeline_spec(db, [FULL], tmp_path, hold=True, shutdown="500ms", retryBackoff="50ms"))
        pipeline.start()
        try:
            wait_for(lambda: pipeline.sinks[0].buffered == 1, what="the record to be buffered")
            assert not pipeline.sinks[0].ready
        finally:
            pipeline.stop()
            pipeline.wait(10)
    assert "flows.sourceTransportPort is String, but flowscope writes UInt16" in caplog.text
    assert "ALTER TABLE ... MODIFY COLUMN" in caplog.text


REFUSALS = {
    516: (
        401,
        b"Code: 516. DB::Exception: bob: Authentication failed: password is incorrect, or there is no user "
        b"with such name. (AUTHENTICATION_FAILED) (version 24.8.4.13 (official build))\n",
    ),
    81: (404, b"Code: 81. DB::Exception: Database flows_db does not exist. (UNKNOWN_DATABASE) (version 24.8.4.13)\n"),
}


class _RefusingClickHouse(BaseHTTPRequestHandler):
    """Answers every request as a ClickHouse server's HTTP interface answers a wrong password
    (code 516) or an unknown database (code 81): the error a real server sends, and nothing else."""

    code = 516

    def do_POST(self):
        self._refuse()

    def do_GET(self):
        self._refuse()

    def _refuse(self):
        status, body = REFUSALS[self.code]
        self.send_response(status)
        self.send_header("X-ClickHouse-Exception-Code", str(self.code))
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.mark.parametrize(
    ("code", "message"),
    [
        (516, "refused user 'bob': authentication failed; check username and password"),
        (81, "database 'flows_db' does not exist on http://127.0.0.1:{port}: create it (CREATE DATABASE flows_db)"),
    ],
)
def test_wrong_credentials_or_database_give_a_clear_error_and_the_secret_is_never_printed(
    code, message, tmp_path, caplog
):
    server = ThreadingHTTPServer(("127.0.0.1", 0), type("Refusing", (_RefusingClickHouse,), {"code": code}))
    threading.Thread(target=server.serve_forever, daemon=True).start()
    spec = {
        "dataDir": str(tmp_path),
        "shutdownTimeout": "2s",
        "sources": [{"type": "memory", "records": [FULL], "hold": True}],
        "sinks": [
            {
                "type": "clickhouse",
                "databaseURL": f"http://127.0.0.1:{server.server_port}",
                "database": "flows_db",
                "username": "bob",
                "password": "s3cret-pa55",
            }
        ],
    }
    try:
        with caplog.at_level(logging.DEBUG):
            pipeline = build(spec)
            pipeline.start()
            wait_for(lambda: pipeline.sinks[0].buffered == 1, what="the record to be buffered")
            pipeline.stop()
            assert pipeline.wait(10)
    finally:
        server.shutdown()
    assert message.format(port=server.server_port) in caplog.text
    assert "s3cret-pa55" not in caplog.text
    assert "s3cret-pa55" not in repr(pipeline.sinks[0].sink.credentials)
    assert counter(pipeline, "dropped", "shutdown") == 1  # counted, not silently lost


def test_an_unreachable_server_does_not_stop_the_start_and_shows_in_healthz(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]  # closed once the block ends: nothing listens there
    spec = {
        "dataDir": str(tmp_path),
        "shutdownTimeout": "2s",
        "apiAddress": "127.0.0.1:0",
        "apiTLS": False,
        "sources": [{"type": "memory", "records": [FULL], "hold": True}],
        "sinks": [{"type": "clickhouse", "databaseURL": f"http://127.0.0.1:{port}"}],
    }
    pipeline = build(spec)
    pipeline.start()
    try:
        import urllib.error
        import urllib.request

        wait_for(lambda: pipeline.sinks[0].buffered == 1, what="the record to be buffered")
        base = f"http://127.0.0.1:{pipeline.api.port}"
        with urllib.request.urlopen(f"{base}/healthz") as answer:
            assert answer.read() == b"degraded: sink 'clickhouse' is not ready (1 records buffered)"
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(f"{base}/readyz")
        assert refused.value.code == 503
        gauge = pipeline.metrics.registry.get_sample_value("flowscope_sink_ready", {"instance": "clickhouse"})
        assert gauge == 0
    finally:
        pipeline.stop()
        pipeline.wait(10)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://ch.example:8123", "http://ch.example:8123"),
        ("https://ch.example", "https://ch.example:8443"),
        (
            "tcp://clickhouse-clickhouse.flow-visibility.svc:9000",
            "http://clickhouse-clickhouse.flow-visibility.svc:8123",
        ),
        ("tls://ch.example:9440", "https://ch.example:8443"),
        ("http://[fd00::5]:8123", "http://[fd00::5]:8123"),
        ("chdb://./flowscope-data/clickhouse", "chdb://./flowscope-data/clickhouse"),
    ],
)
def test_database_urls(url, expected):
    target = connection.parse_database_url(url)
    assert str(target) == expected
    assert bool(target.mapped_from) == url.startswith(("tcp", "tls"))


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("clickhouse:9000", "expected http(s)://<host>[:<port>], chdb://<path> or tcp://<host>:9000"),
        ("mysql://db:3306", "scheme 'mysql' is not supported"),
        ("http://bob:pw@ch:8123", "credentials do not go in databaseURL"),
        ("chdb://", "chdb:// needs a directory"),
        ("http://ch:99999", "the port of 'http://ch:99999' must be a number from 1 to 65535"),
    ],
)
def test_bad_database_urls_are_config_errors(url, message, tmp_path):
    spec = {"sources": [{"type": "memory"}], "sinks": [{"type": "clickhouse", "databaseURL": url}]}
    with pytest.raises(ConfigError) as error:
        build(spec)
    assert f"sinks[0].databaseURL: {message}" in str(error.value)


def test_commit_interval_below_one_second_is_refused():
    spec = {"sources": [{"type": "memory"}], "sinks": [{"type": "clickhouse", "commitInterval": "500ms"}]}
    with pytest.raises(ConfigError, match=r"sinks\[0\]\.commitInterval: must be at least 1s"):
        build(spec)


def test_the_tcp_url_is_mapped_with_one_warning(tmp_path, caplog):
    spec = {
        "dataDir": str(tmp_path),
        "sources": [{"type": "memory"}],
        "sinks": [{"type": "clickhouse", "databaseURL": "tcp://clickhouse.example:9000"}],
    }
    with caplog.at_level(logging.WARNING):
        pipeline = build(spec)
    assert caplog.text.count("uses ClickHouse's native protocol") == 1
    assert "http://clickhouse.example:8123" in caplog.text
    runtime = pipeline.config.sinks[0].runtime
    assert (runtime.bufferSize, runtime.batchSize, runtime.flushInterval, runtime.onFull) == (
        524288,
        524288,
        8.0,
        "dropOldest",
    )


def node_record(side: str) -> dict:
    """One node's half of an inter-node TCP flow, as an exporter sends it."""
    common = {
        "flowStartSeconds": 1_767_225_600,
        "flowEndSeconds": 1_767_225_610,
        "flowEndReason": 2,
        "sourceIPv4Address": "10.244.1.5",
        "destinationIPv4Address": "10.244.2.9",
        "sourceTransportPort": 40001,
        "destinationTransportPort": 5432,
        "protocolIdentifier": 6,
        "packetTotalCount": 10,
        "octetTotalCount": 4000,
        "packetDeltaCount": 10,
        "octetDeltaCount": 4000,
        "flowType": 2,
        "tcpState": "ESTABLISHED",
    }
    if side == "source":
        return {**common, "sourcePodName": "web-1", "sourcePodNamespace": "shop", "sourceNodeName": "node-1"}
    return {**common, "destinationPodName": "db-1", "destinationPodNamespace": "shop", "destinationNodeName": "node-2"}


def test_the_aggregator_bundle_stores_correlated_records(db, tmp_path):
    aggregator = build(
        {
            "bundle": "aggregator",
            "aggregatorTransportProtocol": "tcp",
            "listenAddress": "127.0.0.1:0",
            "grpcListenAddress": "127.0.0.1:0",
            "apiServer": {"apiPort": 0, "tls": False},
            "clusterID": "east-1",
            "clickHouse": {"enable": True, "databaseURL": db.url, "database": db.name, "commitInterval": "1s"},
            "dataDir": str(tmp_path),
        }
    )
    aggregator.start()
    try:
        port = aggregator.sources[0][1].port
        exporter = build(
            {
                "sources": [{"type": "memory", "records": [node_record("source"), node_record("destination")]}],
                "sinks": [{"type": "ipfix", "address": f"127.0.0.1:{port}:tcp"}],
            }
        )
        assert exporter.run() == 0
        wait_for(lambda: db.rows("SELECT count() FROM flows") == [(1,)], timeout=20, what="the correlated row")
    finally:
        aggregator.stop()
        aggregator.wait(10)
    rows = db.rows(
        "SELECT sourcePodName, sourceNodeName, destinationPodName, destinationNodeName, octetDeltaCount, "
        "destinationClusterIP, clusterUUID FROM flows"
    )
    cluster_uuid = (tmp_path / "cluster-uuid").read_text().strip()  # as Antrea: the UUID, not clusterID
    assert rows == [("web-1", "node-1", "db-1", "node-2", 4000, "", cluster_uuid)]


def test_the_quick_start_of_the_docs_runs_as_written(tmp_path):
    doc = (Path(__file__).resolve().parent.parent / "docs" / "clickhouse.md").read_text()
    blocks = re.findall(r"```(\w*)\n(.*?)```", doc, re.S)
    config = next(text for lang, text in blocks if lang == "yaml" and "# store.yaml" in text)
    commands = next(text for lang, text in blocks if lang == "sh" and "store.yaml" in text)
    expected = next(text for lang, text in blocks if lang == "" and text.startswith("sourcePodName"))
    (tmp_path / "examples").mkdir()
    shutil.copy(EXAMPLES / "sample-flows.jsonl", tmp_path / "examples")
    (tmp_path / "store.yaml").write_text(config)
    venv_bin = str(Path(sys.executable).parent)
    result = subprocess.run(
        ["bash", "-e", "-c", commands.replace(".venv/bin/", venv_bin + "/")],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout == expected


def test_credentials_come_from_config_then_file_then_antreas_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("CH_USERNAME", "clickhouse_operator")
    monkeypatch.setenv("CH_PASSWORD", "from-env")
    secret = tmp_path / "password"
    secret.write_text("from-file\n")
    assert connection.resolve_credentials(None, None, None) == connection.Credentials("clickhouse_operator", "from-env")
    assert connection.resolve_credentials("bob", None, secret) == connection.Credentials("bob", "from-file")
    assert connection.resolve_credentials("bob", "given", secret).password == "given"
    monkeypatch.delenv("CH_USERNAME")
    monkeypatch.delenv("CH_PASSWORD")
    assert connection.resolve_credentials(None, None, None) == connection.Credentials("default", "")
    assert repr(connection.Credentials("bob", "given")) == "Credentials(username='bob', password=***)"
    with pytest.raises(ValueError, match="passwordFile '/nonexistent' cannot be read: No such file or directory"):
        connection.resolve_credentials(None, None, Path("/nonexistent"))


def test_tables_that_exist_keep_their_ttl_unless_one_is_given(db, tmp_path):
    def ttls():
        rows = db.rows(
            "SELECT name, engine_full FROM system.tables WHERE database = currentDatabase() AND name = 'flows'"
        )
        return [re.search(r"toIntervalSecond\((\d+)\)", engine).group(1) for _, engine in rows]

    run(pipeline_spec(db, [FULL], tmp_path, ttl="12h"))  # as Theia's chart makes it, longer than 1h
    assert ttls() == ["43200"]
    run(pipeline_spec(db, [FULL], tmp_path / "again"))  # no ttl: the table keeps its own
    assert ttls() == ["43200"]
    run(pipeline_spec(db, [FULL], tmp_path / "asked", ttl="2h"))  # asked for: changed in place
    assert ttls() == ["7200"]
    assert db.rows("SELECT count() FROM flows") == [(3,)]
