"""The ``s3`` sink against a real S3 endpoint over HTTP: moto's server, started by the tests."""

from __future__ import annotations

import gzip
import itertools
import json
import re
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import boto3
import pytest

import flowscope
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins
from flowscope.plugins.sinks import s3csv
from tests.helpers import build, free_port, run, run_cli, wait_for

REGION = "us-west-2"
KEY = re.compile(r"records-[a-z0-9]{12}\.csv(\.gz)?")
TIME_COLUMN = s3csv.COLUMNS.index("timeInserted")
_buckets = itertools.count()

# Antrea's own test record (pkg/flowaggregator/s3uploader/s3uploader_test.go) as flowscope records, and
# the lines Antrea writes for them, with the cluster UUID and the time of the line left to fill in.
ANTREA_RECORD = {
    "flowStartSeconds": 1637706961,
    "flowEndSeconds": 1637706973,
    "flowEndSecondsFromSourceNode": 1637706974,
    "flowEndSecondsFromDestinationNode": 1637706975,
    "flowEndReason": 3,
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
    "destinationNodeName": "k8s-node-control-plane-b",
    "destinationServicePort": 5202,
    "destinationServicePortName": "perftest",
    "ingressNetworkPolicyName": "test-flow-aggregator-networkpolicy-ingress-allow",
    "ingressNetworkPolicyNamespace": "antrea-test-ns",
    "ingressNetworkPolicyRuleName": "test-flow-aggregator-networkpolicy-rule",
    "ingressNetworkPolicyRuleAction": 2,
    "ingressNetworkPolicyType": 1,
    "egressNetworkPolicyName": "test-flow-aggregator-networkpolicy-egress-allow",
    "egressNetworkPolicyNamespace": "antrea-test-ns-e",
    "egressNetworkPolicyRuleName": "test-flow-aggregator-networkpolicy-rule-e",
    "egressNetworkPolicyRuleAction": 1,
    "egressNetworkPolicyType": 3,
    "tcpState": "TIME_WAIT",
    "flowType": 2,
    "sourcePodLabels": '{"antrea-e2e":"perftest-a","app":"iperf"}',
    "destinationPodLabels": '{"antrea-e2e":"perftest-b","app":"iperf"}',
    "throughput": 15902813472,
    "reverseThroughput": 12381344,
    "throughputFromSourceNode": 15902813473,
    "throughputFromDestinationNode": 15902813474,
    "reverseThroughputFromSourceNode": 12381345,
    "reverseThroughputFromDestinationNode": 12381346,
    "egressName": "test-egress",
    "egressNodeName": "test-egress-node",
}
ANTREA_IPV4 = {
    "sourceIPv4Address": "10.10.0.79",
    "destinationIPv4Address": "10.10.0.80",
    "destinationClusterIPv4": "10.10.1.10",
    "destinationServiceIPv4": "10.10.2.10",
    "egressIP": "172.18.0.1",
}
ANTREA_IPV6 = {
    "sourceIPv6Address": "2001:0:3238:dfe1:63::fefb",
    "destinationIPv6Address": "2001:0:3238:dfe1:63::fefc",
    "destinationClusterIPv6": "2001:0:3238:dfe1:64::a",
    "destinationServiceIPv6": "2001:0:3238:dfe1:65::a",
    "egressIP": "2001:0:3238:dfe1::ac12:1",
}
_ANTREA_LINE = (
    "1637706961,1637706973,1637706974,1637706975,3,{src},{dst},44752,5201,6,823188,30472817041,241333,8982624938,"
    "471111,24500996,136211,7083284,perftest-a,antrea-test,k8s-node-control-plane,perftest-b,antrea-test-b,"
    "k8s-node-control-plane-b,{cluster_ip},{service_ip},5202,perftest,test-flow-aggregator-networkpolicy-ingress-allow,"
    "antrea-test-ns,test-flow-aggregator-networkpolicy-rule,2,1,test-flow-aggregator-networkpolicy-egress-allow,"
    "antrea-test-ns-e,test-flow-aggregator-networkpolicy-rule-e,1,3,TIME_WAIT,2,"
    """'{{"antrea-e2e":"perftest-a","app":"iperf"}}','{{"antrea-e2e":"perftest-b","app":"iperf"}}',"""
    "15902813472,12381344,15902813473,15902813474,12381345,12381346,{uuid},{now},test-egress,{egress_ip},"
    "test-egress-node\n"
)
IPV4_TEXT = {"src": "10.10.0.79", "dst": "10.10.0.80", "cluster_ip": "10.10.1.10", "service_ip": "10.10.2.10"}
IPV6_TEXT = {
    "src": "2001:0:3238:dfe1:63::fefb",
    "dst": "2001:0:3238:dfe1:63::fefc",
    "cluster_ip": "2001:0:3238:dfe1:64::a",
    "service_ip": "2001:0:3238:dfe1:65::a",
}
IPV4_LINE = {**IPV4_TEXT, "egress_ip": "172.18.0.1"}
IPV6_LINE = {**IPV6_TEXT, "egress_ip": "2001:0:3238:dfe1::ac12:1"}
CLUSTER_UUID = "1b3c5d7e-0000-4000-8000-0123456789ab"


class MotoServer:
    """moto's S3 server on 127.0.0.1:``port``, in a process of its own that can be stopped and started again."""

    def __init__(self, port: int, log: Path):
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with self.log.open("a") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(self.port)],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._answers, timeout=60, what=f"moto on port {self.port} (log: {self.log})")

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        try:
            with urllib.request.urlopen(f"{self.url}/moto-api/", timeout=2):
                return True
        except OSError:
            return False

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def client(self):
        return boto3.client("s3", endpoint_url=self.url, region_name=REGION)

    def create_bucket(self, name: str) -> None:
        self.client().create_bucket(Bucket=name, CreateBucketConfiguration={"LocationConstraint": REGION})

    def objects(self, bucket: str) -> dict[str, list[str]]:
        """Every object of the bucket: key → its lines (gzip undone)."""
        client = self.client()
        found = {}
        for item in client.list_objects_v2(Bucket=bucket).get("Contents", []):
            body = client.get_object(Bucket=bucket, Key=item["Key"])["Body"].read()
            if item["Key"].endswith(".gz"):
                body = gzip.decompress(body)
            found[item["Key"]] = body.decode().splitlines(keepends=True)
        return found


@pytest.fixture(autouse=True)
def aws_environment(monkeypatch, tmp_path):
    """Credentials for moto (it takes any), and no other AWS configuration of this machine."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "testing")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "testing")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "no-credentials"))
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "no-config"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    for name in ("AWS_SESSION_TOKEN", "AWS_PROFILE", "AWS_REGION", "AWS_DEFAULT_REGION", "AWS_ENDPOINT_URL"):
        monkeypatch.delenv(name, raising=False)


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    """One moto server for the tests that do not stop it; each uses a bucket of its own."""
    server = MotoServer(free_port(), tmp_path_factory.mktemp("moto") / "moto.log")
    server.start()
    yield server
    server.stop()


@pytest.fixture
def own_moto(tmp_path):
    """A moto server this test may stop and start again (on the same port)."""
    server = MotoServer(free_port(), tmp_path / "moto.log")
    yield server
    server.stop()


@pytest.fixture
def bucket(moto):
    name = f"flows-{next(_buckets)}"
    moto.create_bucket(name)
    return name


def record(i: int, **fields) -> dict:
    """A flow record told apart by ``flowStartSeconds``."""
    return {
        "flowStartSeconds": 1700000000 + i,
        "flowEndSeconds": 1700000060 + i,
        "sourceIPv4Address": "10.0.1.5",
        "destinationIPv4Address": "10.0.2.7",
        "sourceTransportPort": 40000 + i % 20000,
        "destinationTransportPort": 443,
        "protocolIdentifier": 6,
        "octetDeltaCount": 1500,
        "sourcePodName": f"client-{i}",
        "sourcePodNamespace": "shop",
        "tcpState": "ESTABLISHED",
        **fields,
    }


def starts(objects: dict[str, list[str]]) -> list[int]:
    """The records' flowStartSeconds (less 1700000000) in every object, sorted, repeats kept."""
    return sorted(int(line.split(",", 1)[0]) - 1700000000 for lines in objects.values() for line in lines)


def s3_sink(url: str, bucket: str, **options) -> dict:
    return {"type": "s3", "bucketName": bucket, "endpointURL": url, "region": REGION, **options}


def spec(records: list[dict], sink: dict, tmp_path: Path, hold: bool = False, **settings) -> dict:
    return {
        "sources": [{"type": "memory", "records": records, "batch": 500, "hold": hold}],
        "sinks": [sink],
        "dataDir": str(tmp_path / "data"),
        **settings,
    }


def counter(pipeline, what: str, reason: str | None = None) -> float:
    return pipeline.metrics.counters("sink", "s3").value(what, reason)


def antrea_line(addresses: dict[str, str], uuid: str, now: int | str) -> str:
    """The line Antrea writes for ANTREA_RECORD with these addresses."""
    return _ANTREA_LINE.format(uuid=uuid, now=now, **addresses)


def with_time(line: str, before: int, after: int) -> str:
    """``line`` with its timeInserted column checked to lie in [before, after] and replaced by ``NOW``."""
    columns = line.split(",")
    # the labels' JSON holds commas: count the column from the end
    index = TIME_COLUMN - len(s3csv.COLUMNS)
    assert before <= int(columns[index]) <= after, line
    columns[index] = "NOW"
    return ",".join(columns)


# -- the CSV -------------------------------------------------------------------------------------


@pytest.mark.parametrize(("addresses", "text"), [(ANTREA_IPV4, IPV4_LINE), (ANTREA_IPV6, IPV6_LINE)])
def test_a_line_is_the_one_antreas_uploader_writes(addresses, text):
    encoder = s3csv.Encoder(CLUSTER_UUID, 1700000123)
    assert encoder.line({**ANTREA_RECORD, **addresses}) == antrea_line(text, CLUSTER_UUID, 1700000123)


def test_missing_values_and_unspecified_addresses_are_written_as_antrea_does():
    line = s3csv.Encoder("cluster-a", 7).line(
        {"sourceIPv4Address": "10.0.0.1", "destinationClusterIPv4": "0.0.0.0", "destinationServiceIPv6": "::"}
    )
    assert line == (
        "0,0,0,0,0,10.0.0.1,,0,0,0,0,0,0,0,0,0,0,0,,,,,,,,,0,,,,,0,0,,,,0,0,,0,'','',0,0,0,0,0,0,cluster-a,7,,,\n"
    )
    assert s3csv.Encoder("", 7).line({"clusterId": "cluster-b"}).split(",")[TIME_COLUMN - 1] == "cluster-b"
    assert s3csv.Encoder("cluster-a", 7).line({"clusterId": "cluster-b"}).split(",")[TIME_COLUMN - 1] == "cluster-a"
    assert len(s3csv.COLUMNS) == 53 and s3csv.COLUMNS[48:50] == ("clusterUUID", "timeInserted")


# -- uploads -------------------------------------------------------------------------------------


@pytest.mark.parametrize("compress", [True, False])
def test_objects_arrive_under_the_prefix_with_antreas_csv(moto, bucket, tmp_path, compress):
    records = [{**ANTREA_RECORD, **ANTREA_IPV4}, {**ANTREA_RECORD, **ANTREA_IPV6, "clusterId": "other-cluster"}]
    sink = s3_sink(moto.url, bucket, bucketPrefix="/flows/2024/", compress=compress, clusterUUID=CLUSTER_UUID)
    before = int(time.time())
    pipeline = run(spec(records, sink, tmp_path))
    after = int(time.time())
    assert pipeline.exit_status() == 0
    objects = moto.objects(bucket)
    [(key, lines)] = objects.items()
    prefix, name = key.rsplit("/", 1)
    assert prefix == "flows/2024"
    assert KEY.fullmatch(name) and name.endswith(".csv.gz" if compress else ".csv"), key
    assert [with_time(line, before, after) for line in lines] == [
        antrea_line(IPV4_LINE, CLUSTER_UUID, "NOW"),
        antrea_line(IPV6_LINE, CLUSTER_UUID, "NOW"),  # the sink's, as Antrea's uploader writes its own
    ]
    assert (counter(pipeline, "emitted"), counter(pipeline, "retried")) == (2, 0)


def test_files_hold_max_records_per_file(moto, bucket, tmp_path):
    sink = s3_sink(moto.url, bucket, maxRecordsPerFile=1000)
    pipeline = run(spec([record(i) for i in range(2500)], sink, tmp_path))
    assert pipeline.exit_status() == 0
    objects = moto.objects(bucket)
    assert sorted(len(lines) for lines in objects.values()) == [500, 1000, 1000]
    assert all(KEY.fullmatch(key) for key in objects)
    assert starts(objects) == list(range(2500))
    assert pipeline.metrics.registry.get_sample_value("flowscope_s3_uploads_total", {"instance": "s3"}) == 3


def test_a_file_is_uploaded_once_its_oldest_record_has_waited_upload_interval(moto, bucket, tmp_path):
    sink = s3_sink(moto.url, bucket, uploadInterval="1s")
    pipeline = build(spec([record(i) for i in range(10)], sink, tmp_path, hold=True))
    pipeline.start()
    try:
        wait_for(lambda: moto.objects(bucket), timeout=30, what="the upload after uploadInterval")
        assert not pipeline.wait(0)  # still running: the upload came from the interval, not the stop
        assert starts(moto.objects(bucket)) == list(range(10))
    finally:
        pipeline.stop()
        assert pipeline.wait(30)
    assert len(moto.objects(bucket)) == 1


def test_what_is_buffered_is_uploaded_at_the_stop(moto, bucket, tmp_path):
    sink = s3_sink(moto.url, bucket, uploadInterval="1h")
    pipeline = build(spec([record(i) for i in range(7)], sink, tmp_path, hold=True))
    pipeline.start()
    try:
        wait_for(lambda: counter(pipeline, "received") == 7, what="the records in the sink's buffer")
        assert moto.objects(bucket) == {}
    finally:
        pipeline.stop()
        assert pipeline.wait(30)
    assert pipeline.exit_status() == 0
    assert starts(moto.objects(bucket)) == list(range(7))


# -- errors --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("options", "message"),
    [
        (
            {"bucketName": "Flows_2024"},
            "sinks[0].bucketName: not a valid S3 bucket name: 3 to 63 characters: lowercase letters, digits, '.' "
            "and '-', beginning and ending with a letter or digit, without '..' and not an IP address "
            "(got 'Flows_2024')",
        ),
        ({"bucketName": "192.168.1.1"}, "sinks[0].bucketName: not a valid S3 bucket name"),
        ({"recordFormat": "JSON"}, "sinks[0].recordFormat: 'JSON' is not allowed; use one of: 'CSV'"),
        ({"uploadInterval": "500ms"}, "sinks[0].uploadInterval: must be at least 1s (got '500ms')"),
        ({"maxRecordsPerFile": 0}, "sinks[0].maxRecordsPerFile: must be greater than 0 (got 0)"),
        ({"endpointURL": "127.0.0.1:9000"}, "sinks[0].endpointURL: must start with http:// or https://"),
    ],
)
def test_bad_options_are_config_errors(options, message):
    config = {"sources": [{"type": "jsonl", "path": "-"}], "sinks": [{"type": "s3", "bucketName": "flows", **options}]}
    with pytest.raises(flowscope.ConfigError) as error:
        validate_config(config, load_plugins())
    assert message in str(error.value)


def test_a_missing_bucket_stops_the_start_with_a_clear_error(moto, tmp_path):
    pipeline = build(spec([record(0)], s3_sink(moto.url, "no-such-bucket"), tmp_path))
    with pytest.raises(flowscope.ConfigError) as error:
        pipeline.start()
    assert str(error.value) == (
        "invalid configuration: sink 's3' (type 's3', plugin 's3'): bucketName: the bucket 'no-such-bucket' at "
        f"{moto.url} does not exist: create it, or correct bucketName (and region)"
    )
    assert error.value.exit_code == 2


def test_missing_credentials_stop_the_start_with_a_clear_error(moto, bucket, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    pipeline = build(spec([record(0)], s3_sink(moto.url, bucket), tmp_path))
    with pytest.raises(flowscope.ConfigError) as error:
        pipeline.start()
    assert "credentialsFile: no AWS credentials found: set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY" in str(
        error.value
    )


# -- outages -------------------------------------------------------------------------------------


def test_an_outage_loses_nothing_and_repeats_nothing(own_moto, tmp_path):
    own_moto.start()
    own_moto.create_bucket("flows")
    source = tmp_path / "flows.jsonl"
    source.touch()

    def append(numbers: range) -> None:
        with source.open("a") as out:
            out.write("".join(json.dumps(record(i)) + "\n" for i in numbers))

    config = {
        "sources": [{"type": "jsonl", "path": str(source), "follow": True, "pollInterval": "50ms"}],
        "sinks": [
            s3_sink(
                own_moto.url,
                "flows",
                maxRecordsPerFile=100,
                uploadInterval="1s",
                retryBackoff="100ms",
                retryMaxBackoff="500ms",
            )
        ],
        "dataDir": str(tmp_path / "data"),
    }
    pipeline = build(config)
    pipeline.start()
    try:
        append(range(250))
        wait_for(lambda: len(starts(own_moto.objects("flows"))) == 250, timeout=30, what="the first 250 records")
        before_outage = own_moto.objects("flows")
        own_moto.stop()  # moto keeps nothing: what it held is in before_outage
        append(range(250, 550))
        wait_for(lambda: counter(pipeline, "retried") >= 3, timeout=30, what="failed uploads")
        assert pipeline.sinks[0].ready is False
        own_moto.start()
        own_moto.create_bucket("flows")
        append(range(550, 700))
        wait_for(lambda: counter(pipeline, "emitted") == 700, timeout=60, what="every record uploaded")
    finally:
        pipeline.stop()
        assert pipeline.wait(30)
    after_outage = own_moto.objects("flows")
    assert sorted(starts(before_outage) + starts(after_outage)) == list(range(700))
    assert all(len(lines) <= 100 for lines in after_outage.values())
    assert (pipeline.exit_status(), counter(pipeline, "dropped", "buffer_full")) == (0, 0)


def test_an_endpoint_down_at_the_start_is_waited_for(own_moto, tmp_path):
    sink = s3_sink(own_moto.url, "flows", retryBackoff="100ms", retryMaxBackoff="500ms")
    pipeline = build(spec([record(i) for i in range(20)], sink, tmp_path, hold=True))
    pipeline.start()
    try:
        wait_for(lambda: counter(pipeline, "retried") >= 2, timeout=30, what="failed attempts to open the sink")
        own_moto.start()
        own_moto.create_bucket("flows")
        wait_for(lambda: counter(pipeline, "emitted") == 20, timeout=60, what="the upload once S3 is there")
    finally:
        pipeline.stop()
        assert pipeline.wait(30)
    assert starts(own_moto.objects("flows")) == list(range(20))


def test_records_not_uploaded_by_the_stop_are_reported_lost(own_moto, tmp_path):
    own_moto.start()
    own_moto.create_bucket("flows")
    sink = s3_sink(own_moto.url, "flows", uploadInterval="1h", retryBackoff="100ms", retryMaxBackoff="200ms")
    pipeline = build(spec([record(i) for i in range(30)], sink, tmp_path, hold=True, shutdownTimeout="1s"))
    pipeline.start()
    try:
        wait_for(lambda: counter(pipeline, "received") == 30, what="the records in the sink's buffer")
        own_moto.stop()  # before the stop, which uploads them
    finally:
        pipeline.stop()
        assert pipeline.wait(30)
    assert counter(pipeline, "retried") >= 1
    assert pipeline.exit_status() == 3
    assert (pipeline.sinks[0].lost, counter(pipeline, "dropped", "shutdown"), counter(pipeline, "emitted")) == (
        30,
        30,
        0,
    )


# -- the command line ----------------------------------------------------------------------------


def test_flowscope_run_uploads_a_jsonl_file_with_a_credentials_file(moto, bucket, tmp_path, monkeypatch):
    monkeypatch.delenv("AWS_ACCESS_KEY_ID")  # only the credentials file has keys
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "[default]\naws_access_key_id = nobody\n\n[flows]\naws_access_key_id = AKIDFLOWS\n"
        "aws_secret_access_key = secret\n"
    )
    flows = tmp_path / "flows.jsonl"
    flows.write_text(
        "".join(json.dumps({"@timestamp": "2024-01-01T00:00:00Z", "ipfix": record(i)}) + "\n" for i in range(5))
    )
    config = tmp_path / "s3.yaml"
    config.write_text(
        f"sources: [{{type: jsonl, path: {flows}}}]\n"
        "sinks:\n"
        f"  - {{type: s3, bucketName: {bucket}, bucketPrefix: antrea, endpointURL: '{moto.url}', region: {REGION},\n"
        f"     compress: false, credentialsFile: {credentials}, profile: flows, clusterUUID: {CLUSTER_UUID}}}\n"
        f"dataDir: {tmp_path / 'data'}\n"
    )
    before = int(time.time())
    result = run_cli("run", "-c", str(config))
    after = int(time.time())
    assert result.returncode == 0, result.stderr
    [(key, lines)] = moto.objects(bucket).items()
    assert key.startswith("antrea/records-") and key.endswith(".csv")
    expected = s3csv.Encoder(CLUSTER_UUID, 0).line
    assert [with_time(line, before, after) for line in lines] == [
        with_time(expected(record(i)), 0, 0) for i in range(5)
    ]


def test_config_check_reports_a_credentials_file_without_the_profile(tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text("[default]\naws_access_key_id = a\naws_secret_access_key = b\n")
    config = tmp_path / "s3.yaml"
    config.write_text(
        "sources: [{type: jsonl, path: '-'}]\n"
        f"sinks: [{{type: s3, bucketName: flows, credentialsFile: {credentials}, profile: prod}}]\n"
    )
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2
    assert f"sinks[0].profile: '{credentials}' has no [prod] section (it has: default)" in result.stderr
