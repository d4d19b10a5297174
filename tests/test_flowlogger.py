"""The ``flowlogger`` sink: Antrea's flow log lines, its filters, and lumberjack's rotation."""

from __future__ import annotations

import gzip
import os
import re
import subprocess
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest

from flowscope.plugins.sinks.csvformat import LOGGER_COLUMNS, flow_record, logger_line
from flowscope.plugins.sinks.rotation import MEGABYTE, RotatingFile, backup_stamp
from tests.helpers import build, run, run_cli, wait_for

# Antrea's flowrecordtesting.PrepareTestFlowRecord, as the record the aggregator hands on
FULL = {
    "flowStartSeconds": 1637706961,
    "flowEndSeconds": 1637706973,
    "flowEndSecondsFromSourceNode": 1637706974,
    "flowEndSecondsFromDestinationNode": 1637706975,
    "flowEndReason": 3,
    "sourceIPv4Address": "10.10.0.79",
    "destinationIPv4Address": "10.10.0.80",
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
    "destinationClusterIPv4": "10.10.1.10",
    "destinationServiceIPv4": "10.10.1.10",
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
    "egressNetworkPolicyRuleAction": 5,
    "egressNetworkPolicyType": 4,
    "tcpState": "TIME_WAIT",
    "flowType": 11,
    "sourcePodLabels": '{"antrea-e2e":"perftest-a","app":"iperf"}',
    "destinationPodLabels": '{"antrea-e2e":"perftest-b","app":"iperf"}',
    "throughput": 15902813472,
    "reverseThroughput": 12381344,
    "throughputFromSourceNode": 15902813473,
    "throughputFromDestinationNode": 15902813474,
    "reverseThroughputFromSourceNode": 12381345,
    "reverseThroughputFromDestinationNode": 12381346,
    "egressName": "test-egress",
    "egressIP": "172.18.0.1",
    "egressNodeName": "test-egress-node",
}
# logger_test.go's TestWriteRecord
ANTREA_PRETTY = (
    "1637706961,1637706973,10.10.0.79,10.10.0.80,44752,5201,TCP,perftest-a,antrea-test,k8s-node-control-plane,"
    "perftest-b,antrea-test-b,k8s-node-control-plane-b,10.10.1.10,10.10.1.10,5202,perftest,"
    "test-flow-aggregator-networkpolicy-ingress-allow,antrea-test-ns,test-flow-aggregator-networkpolicy-rule,Drop,"
    "K8sNetworkPolicy,test-flow-aggregator-networkpolicy-egress-allow,antrea-test-ns-e,"
    "test-flow-aggregator-networkpolicy-rule-e,Invalid,Invalid,test-egress,172.18.0.1,test-egress-node"
)
ANTREA_PLAIN = (
    "1637706961,1637706973,10.10.0.79,10.10.0.80,44752,5201,6,perftest-a,antrea-test,k8s-node-control-plane,"
    "perftest-b,antrea-test-b,k8s-node-control-plane-b,10.10.1.10,10.10.1.10,5202,perftest,"
    "test-flow-aggregator-networkpolicy-ingress-allow,antrea-test-ns,test-flow-aggregator-networkpolicy-rule,2,1,"
    "test-flow-aggregator-networkpolicy-egress-allow,antrea-test-ns-e,test-flow-aggregator-networkpolicy-rule-e,5,4,"
    "test-egress,172.18.0.1,test-egress-node"
)
BACKUP = re.compile(r"flows-(\d{4}-\d\d-\d\dT\d\d-\d\d-\d\d\.\d{3})\.log(\.gz)?")


def log_sink(path: Path, **options) -> dict:
    return {"type": "flowlogger", "path": str(path), **options}


def test_a_full_record_is_antreas_line_pretty_and_plain(tmp_path):
    assert logger_line(FULL) == ANTREA_PRETTY
    assert logger_line(FULL, pretty=False) == ANTREA_PLAIN
    assert len(LOGGER_COLUMNS) == 30
    for pretty, expected in ((True, ANTREA_PRETTY), (False, ANTREA_PLAIN)):
        out = tmp_path / f"{pretty}.log"
        run({"sources": [{"type": "memory", "records": [FULL]}], "sinks": [log_sink(out, prettyPrint=pretty)]})
        assert out.read_text() == expected + "\n"


def test_ipv6_addresses_and_the_other_pretty_names():
    record = {
        "sourceIPv6Address": "2001:0:3238:dfe1:63::fefb",
        "destinationIPv6Address": "2001:0:3238:dfe1:63::fefc",
        "destinationClusterIPv6": "2001:0:3238:dfe1:64::a",
        "destinationServiceIPv6": "2001:0:3238:dfe1:65::a",
        "egressIP": "2001:0000:3238:DFE1:0:0:AC12:0001",  # a string element: written as Go prints the address
        "protocolIdentifier": 58,
        "ingressNetworkPolicyRuleAction": 1,
        "ingressNetworkPolicyType": 3,
        "egressNetworkPolicyRuleAction": 3,
        "egressNetworkPolicyType": 2,
    }
    assert logger_line(record) == (
        "0,0,2001:0:3238:dfe1:63::fefb,2001:0:3238:dfe1:63::fefc,0,0,IPv6-ICMP,,,,,,,"
        "2001:0:3238:dfe1:64::a,2001:0:3238:dfe1:65::a,0,,,,,Allow,AntreaClusterNetworkPolicy,,,,Reject,"
        "AntreaNetworkPolicy,,2001:0:3238:dfe1::ac12:1,"
    )
    for protocol, name in ((1, "ICMP"), (2, "IGMP"), (17, "UDP"), (132, "SCTP"), (99, "Unknown Protocol")):
        assert logger_line({"protocolIdentifier": protocol}).split(",")[6] == name


def test_missing_fields_are_antreas_zero_values():
    assert logger_line({}) == "0,0,,,0,0,Unknown Protocol,,,,,,,,,0,,,,,,,,,,,,,,"
    assert logger_line({}, pretty=False) == "0,0,,,0,0,0,,,,,,,,,0,,,,,0,0,,,,0,0,,,"
    record = {
        "sourceIPv4Address": "10.0.0.1",
        "destinationIPv4Address": "10.0.0.2",
        "protocolIdentifier": 17,
        "destinationClusterIPv4": "0.0.0.0",  # no Service: the exporter sends zeros, Antrea writes nothing
        "destinationServiceIPv6": "::",
        "egressIP": "not-an-address",
        "sourcePodName": None,
    }
    assert logger_line(record) == "0,0,10.0.0.1,10.0.0.2,0,0,UDP,,,,,,,,,0,,,,,,,,,,,,,,"
    fields = flow_record(record)
    assert (fields["flowEndReason"], fields["sourceIP"], fields["tcpState"], fields["throughput"]) == (
        0,
        "10.0.0.1",
        "",
        0,
    )


UNPROTECTED = {"sourcePodName": "unprotected"}
DROPPED_BY_EGRESS = {"sourcePodName": "dropped-by-egress", "egressNetworkPolicyRuleAction": 2}
REJECTED_BY_INGRESS = {"sourcePodName": "rejected-by-ingress", "ingressNetworkPolicyRuleAction": 3}
ALLOWED_BY_BOTH = {
    "sourcePodName": "allowed-by-both-sides",
    "ingressNetworkPolicyRuleAction": 1,
    "egressNetworkPolicyRuleAction": 1,
}


@pytest.mark.parametrize(
    ("filters", "kept"),
    [  # log_test.go's TestLog_Filters cases
        ([], [UNPROTECTED, DROPPED_BY_EGRESS, REJECTED_BY_INGRESS, ALLOWED_BY_BOTH]),
        ([{"ingressNetworkPolicyRuleActions": ["None"], "egressNetworkPolicyRuleActions": ["None"]}], [UNPROTECTED]),
        (
            [
                {"ingressNetworkPolicyRuleActions": ["Drop", "Reject"]},
                {"egressNetworkPolicyRuleActions": ["Drop", "Reject"]},
            ],
            [DROPPED_BY_EGRESS, REJECTED_BY_INGRESS],
        ),
        (
            [{"ingressNetworkPolicyRuleActions": ["None"]}, {"egressNetworkPolicyRuleActions": ["None"]}],
            [UNPROTECTED, DROPPED_BY_EGRESS, REJECTED_BY_INGRESS],
        ),
    ],
    ids=["no filter", "ingress and egress unprotected", "denied only", "ingress and / or egress unprotected"],
)
def test_filters_keep_what_antrea_keeps_and_count_the_rest(tmp_path, filters, kept):
    out = tmp_path / "flows.log"
    records = [UNPROTECTED, DROPPED_BY_EGRESS, REJECTED_BY_INGRESS, ALLOWED_BY_BOTH]
    pipeline = run({"sources": [{"type": "memory", "records": records}], "sinks": [log_sink(out, filters=filters)]})
    assert out.read_text().splitlines() == [logger_line(record) for record in kept]
    counters = pipeline.metrics.counters("sink", "flowlogger")
    assert counters.value("emitted") == len(kept)
    assert counters.value("dropped", "filtered") == len(records) - len(kept)
    assert counters.value("errors") == 0


def test_a_record_with_a_value_that_is_not_a_number_is_counted_not_written(tmp_path, caplog):
    out = tmp_path / "flows.log"
    records = [{"sourcePodName": "a"}, {"sourcePodName": "b", "sourceTransportPort": "http"}, {"sourcePodName": "c"}]
    pipeline = run({"sources": [{"type": "memory", "records": records}], "sinks": [log_sink(out)]})
    assert [line.split(",")[7] for line in out.read_text().splitlines()] == ["a", "c"]
    assert pipeline.metrics.counters("sink", "flowlogger").value("dropped", "invalid") == 1
    assert "flow log: 1 record(s) not written, e.g.: sourceTransportPort = 'http' is not a number" in caplog.text


def test_lines_reach_the_file_while_the_pipeline_runs(tmp_path):
    out = tmp_path / "flows.log"
    pipeline = build({"sources": [{"type": "memory", "records": [FULL], "hold": True}], "sinks": [log_sink(out)]})
    pipeline.start()
    try:
        wait_for(lambda: out.exists() and out.read_text() == ANTREA_PRETTY + "\n", 10, "the line in the file")
    finally:
        pipeline.stop()
        assert pipeline.wait(10)
    assert oct(out.stat().st_mode & 0o777) == "0o600"  # lumberjack's mode for a new log


def numbered(count: int) -> list[dict]:
    return [dict(FULL, sourceTransportPort=40000 + port) for port in range(count)]


def files_in_order(directory: Path) -> list[Path]:
    """The backups oldest first, then the current file."""
    backups = sorted((p for p in directory.iterdir() if BACKUP.fullmatch(p.name)), key=lambda p: p.name)
    return [*backups, directory / "flows.log"]


def text_of(path: Path) -> str:
    return gzip.decompress(path.read_bytes()).decode() if path.suffix == ".gz" else path.read_text()


def test_rotation_with_a_fractional_max_size_cuts_between_lines_and_loses_nothing(tmp_path):
    out = tmp_path / "flows.log"
    records = numbered(30)
    assert {len(logger_line(r)) + 1 for r in records} == {480}
    max_bytes = int(0.002 * MEGABYTE)  # 2097 bytes: 4 lines of 480 bytes
    run(
        {
            "sources": [{"type": "memory", "records": records, "batch": 7}],
            "sinks": [log_sink(out, maxSize=0.002, maxBackups=0, compress=False, batchSize=7)],
        }
    )
    files = files_in_order(tmp_path)
    assert all(f.stat().st_size <= max_bytes for f in files)
    assert [len(f.read_text().splitlines()) for f in files] == [4] * 7 + [2]
    assert "".join(f.read_text() for f in files) == "".join(logger_line(r) + "\n" for r in records)
    stamps = [BACKUP.fullmatch(f.name).group(1) for f in files[:-1]]
    assert len(set(stamps)) == len(stamps)  # rotations in the same millisecond each get their own name
    newest = datetime.strptime(stamps[-1][:19], "%Y-%m-%dT%H-%M-%S").replace(tzinfo=UTC)
    assert abs((datetime.now(UTC) - newest).total_seconds()) < 600  # the name's time is UTC


def test_a_line_longer_than_max_size_gets_a_file_of_its_own(tmp_path):
    log = RotatingFile(tmp_path / "flows.log", max_bytes=10)
    log.open()
    log.write(b"one\ntwo\n")
    log.write(b"a line of twenty-two\nend\n")
    log.close()
    assert [f.read_bytes() for f in files_in_order(tmp_path)] == [b"one\ntwo\n", b"a line of twenty-two\n", b"end\n"]


def make_backups(directory: Path, ages_in_days: list[float], suffix: str = "") -> list[str]:
    names = []
    for age in ages_in_days:
        name = f"flows-{backup_stamp(int((time.time() - age * 86400) * 1000))}.log{suffix}"
        (directory / name).write_text(f"{age}\n")
        names.append(name)
    return names


def test_backups_beyond_max_backups_are_removed_newest_kept(tmp_path):
    names = make_backups(tmp_path, [5, 4, 3, 2, 1])
    gz_twin = names[3] + ".gz"  # an interrupted compression: the plain backup and its .gz count as one
    (tmp_path / gz_twin).write_bytes(gzip.compress(b"2\n"))
    (tmp_path / "flows-not-a-time.log").write_text("kept: not a backup name\n")
    (tmp_path / "flows.log").write_text("current\n")
    log = RotatingFile(tmp_path / "flows.log", max_bytes=MEGABYTE, max_backups=2)
    log.open()  # the mill runs at open too, as lumberjack's does
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        [names[3], gz_twin, names[4], "flows-not-a-time.log", "flows.log"]
    )
    assert (tmp_path / "flows.log").read_text() == "current\n"


def test_backups_older_than_max_age_are_removed(tmp_path):
    names = make_backups(tmp_path, [30, 8, 6.5, 1])
    names += make_backups(tmp_path, [9], ".gz")
    log = RotatingFile(tmp_path / "flows.log", max_bytes=MEGABYTE, max_age_days=7)
    log.open()
    log.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([names[2], names[3], "flows.log"])


def test_rotated_files_are_gzipped_with_their_lines(tmp_path):
    out = tmp_path / "flows.log"
    records = numbered(20)
    run(
        {
            "sources": [{"type": "memory", "records": records, "batch": 10}],
            "sinks": [log_sink(out, maxSize=0.002, maxBackups=10, batchSize=10)],
        }
    )
    files = files_in_order(tmp_path)  # close() waits for the compression
    assert [f.suffix for f in files] == [".gz"] * 4 + [".log"]
    assert all(not (tmp_path / f.name.removesuffix(".gz")).exists() for f in files[:-1])
    assert "".join(text_of(f) for f in files) == "".join(logger_line(r) + "\n" for r in records)
    assert oct(files[0].stat().st_mode & 0o777) == "0o600"


def test_max_backups_and_compression_while_running(tmp_path):
    out = tmp_path / "flows.log"
    records = numbered(30)
    run(
        {
            "sources": [{"type": "memory", "records": records, "batch": 9}],
            "sinks": [log_sink(out, maxSize=0.002, maxBackups=3, batchSize=9)],
        }
    )
    files = files_in_order(tmp_path)
    assert [f.suffix for f in files] == [".gz"] * 3 + [".log"]
    # of 7 backups, the newest 3 (4 lines each), and the current file (2 lines): the last 14 lines
    assert "".join(text_of(f) for f in files) == "".join(logger_line(r) + "\n" for r in records[-14:])


def test_bad_options_are_one_clear_error_each(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text(
        "sources: [{type: jsonl, path: '-'}]\n"
        f"sinks: [{{type: flowlogger, path: {tmp_path}/flows.log, recordFormat: JSON, maxSize: 0,\n"
        "          filters: [{ingressNetworkPolicyRuleActions: [Allow, drop]}, {egressRuleActions: [Drop]}]}]\n"
    )
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines() == [
        f"error: 4 problems in the configuration in {config}:",
        "  - sinks[0].maxSize: must be greater than 0.0 (got 0)",
        "  - sinks[0].recordFormat: the flow logger writes CSV only; set recordFormat to CSV or leave it out "
        "(got 'JSON')",
        "  - sinks[0].filters[0].ingressNetworkPolicyRuleActions[1]: 'drop' is not allowed; use one of: "
        "'None', 'Allow', 'Drop', 'Reject'",
        "  - sinks[0].filters[1].egressRuleActions: unknown key",
    ]


def test_preflight_finds_a_path_that_cannot_be_written(tmp_path):
    (tmp_path / "a-file").write_text("")
    config = tmp_path / "p.yaml"
    config.write_text(
        f"sources: [{{type: jsonl, path: '-'}}]\nsinks: [{{type: flowlogger, path: {tmp_path}/a-file/flows.log}}]\n"
    )
    result = run_cli("config", "check", str(config))
    assert result.returncode == 2
    assert result.stderr.splitlines()[-1] == (
        f"error: invalid configuration in {config}: sinks[0].path: the directory of "
        f"'{tmp_path}/a-file/flows.log' cannot be made: '{tmp_path}/a-file' is a file, not a directory"
    )


def test_flowscope_run_writes_the_flow_log_from_a_jsonl_file(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text(
        '{"sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.2", "protocolIdentifier": 6, '
        '"egressNetworkPolicyRuleAction": 2, "sourcePodName": "web-0", "flowStartSeconds": 1700000000}\n'
        '{"sourceIPv4Address": "10.0.0.3", "destinationIPv4Address": "10.0.0.4", "protocolIdentifier": 17}\n'
    )
    out = tmp_path / "logs" / "antrea-flows.log"
    config = tmp_path / "p.yaml"
    config.write_text(
        f"sources: [{{type: jsonl, path: {source}}}]\n"
        f"sinks:\n  - type: flowlogger\n    path: {out}\n    prettyPrint: false\n"
        "    filters: [{egressNetworkPolicyRuleActions: [Drop, Reject]}]\n"
    )
    result = run_cli("run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    assert out.read_text() == "1700000000,0,10.0.0.1,10.0.0.2,0,0,6,web-0,,,,,,,,0,,,,,0,0,,,,2,0,,,\n"


@pytest.fixture
def small_disk(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mount = tmp_path / "disk"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_a_full_disk_loses_no_line_and_writes_none_twice_across_rotations(small_disk, tmp_path, caplog):
    filler = small_disk / "filler"
    filler.write_bytes(b"x" * (220 << 10))
    out = small_disk / "flows.log"
    records = numbered(200)  # 96,000 bytes in files of 21 lines (3 pages), batches of 50 spanning 2 or 3 files
    pipeline = build(
        {
            "sources": [{"type": "memory", "records": records, "batch": 50, "hold": True}],
            "sinks": [
                log_sink(
                    out,
                    maxSize=0.01,
                    maxBackups=0,
                    compress=False,
                    batchSize=50,
                    retryBackoff="20ms",
                    retryMaxBackoff="50ms",
                )
            ],
            "dataDir": str(tmp_path / "data"),
        }
    )
    pipeline.start()
    try:
        counters = pipeline.metrics.counters("sink", "flowlogger")
        wait_for(lambda: counters.value("retried") >= 3, 30, "the disk to fill up")
        # 9 free pages: the 2nd batch fills the 3rd file (13 lines), rotates, and fails on the 4th
        assert "No space left on device; 37 lines kept for a retry" in caplog.text
        for path in files_in_order(small_disk):
            assert path.read_bytes().endswith(b"\n") or path.stat().st_size == 0  # every line whole
        filler.unlink()
        wait_for(lambda: counters.value("emitted") == len(records), 30, "every record once there is room")
    finally:
        pipeline.stop()
        pipeline.wait(10)
    written = "".join(path.read_text() for path in files_in_order(small_disk))
    assert written == "".join(logger_line(r) + "\n" for r in records)  # each exactly once, in order
