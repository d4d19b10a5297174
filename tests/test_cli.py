"""The flowscope command, run as a user runs it: in a subprocess."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import urllib.request
from pathlib import Path

import pytest

import flowscope
from tests.helpers import free_port, wait_for

ROOT = Path(__file__).resolve().parent.parent
FLOWSCOPE = [sys.executable, "-m", "flowscope.entrypoints.cli"]


def flowscope_cmd(*args: str, stdin: str | None = None, cwd: Path = ROOT, env: dict | None = None, timeout=60):
    return subprocess.run(
        [*FLOWSCOPE, *args],
        input=stdin,
        capture_output=True,
        text=True,
        cwd=cwd,
        timeout=timeout,
        env={**os.environ, **(env or {})},
    )


def test_version_and_help_everywhere():
    result = flowscope_cmd("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"flowscope, version {flowscope.__version__}"
    for args in ([], ["run"], ["plugins"], ["elements"], ["config"], ["config", "check"]):
        result = flowscope_cmd(*args, "--help")
        assert result.returncode == 0, (args, result.stderr)
        assert "Usage: python -m flowscope.entrypoints.cli" in result.stdout or "Usage:" in result.stdout


def test_run_converts_jsonl_to_antrea_json(tmp_path):
    source = tmp_path / "in.jsonl"
    source.write_text('{"sourcePodName": "a<b>", "octetDeltaCount": 10}\n\n{"octetDeltaCount": 2}\n')
    config = tmp_path / "p.yaml"
    config.write_text(f"sources: [{{type: jsonl, path: {source}}}]\nsinks: [{{type: json, path: '-'}}]\n")
    result = flowscope_cmd("run", "-c", str(config))
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert len(lines) == 2
    assert lines[0].endswith(',"ipfix":{"octetDeltaCount":10,"sourcePodName":"a\\u003cb\\u003e"}}')
    assert json.loads(lines[1])["ipfix"] == {"octetDeltaCount": 2}
    assert "pipeline stopped" in result.stderr


def test_run_reads_stdin(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("sources: [{type: jsonl, path: '-'}]\nsinks: [{type: json, path: '-'}]\n")
    result = flowscope_cmd("--log-level", "warning", "run", "-c", str(config), stdin='{"a": 1}\nnot json\n{"b": 2}\n')
    assert result.returncode == 0
    assert [json.loads(line)["ipfix"] for line in result.stdout.splitlines()] == [{"a": 1}, {"b": 2}]
    assert "- line 2 skipped: not valid JSON" in result.stderr


def test_config_check_ok_and_errors(tmp_path):
    good = tmp_path / "good.yaml"
    good.write_text("sources: [{type: jsonl, path: '-'}]\nsinks: [{type: json, path: '-'}]\n")
    result = flowscope_cmd("config", "check", str(good))
    assert (result.returncode, result.stdout.strip()) == (
        0,
        f"{good}: OK (1 source(s), 0 enricher(s), 1 sink(s), table none)",
    )
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "sources: [{type: jsonl, path: '-', follw: true}]\nsinks: [{type: json, path: '-', onFull: wait}]\n"
        "shutdownTimeout: 10\n"
    )
    result = flowscope_cmd("config", "check", str(bad))
    assert result.returncode == 2
    assert result.stdout == ""
    assert result.stderr.splitlines() == [
        f"error: 3 problems in the configuration in {bad}:",
        '  - shutdownTimeout: a number needs a unit: write "10s" for 10 seconds (got 10)',
        "  - sources[0].follw: unknown key (did you mean 'follow'?); allowed keys: batchSize, follow, name, path, "
        "pollInterval, type",
        "  - sinks[0].onFull: 'wait' is not allowed; use one of: 'block', 'dropOldest'",
    ]
    assert "Traceback" not in result.stderr


def test_config_check_looks_at_files_and_ports(tmp_path):
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate")
    (tmp_path / "a-file").write_text("")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = tmp_path / "p.yaml"
        config.write_text(
            f"sources:\n  - {{type: jsonl, path: {tmp_path / 'absent.jsonl'}}}\n"
            f"  - {{type: ipfix, address: '127.0.0.1:{port}:tls', tlsCert: {garbage}, tlsKey: {tmp_path}}}\n"
            f"sinks:\n  - {{type: json, path: {tmp_path / 'a-file' / 'out.jsonl'}}}\n"
            f"  - {{type: ipfix, address: '127.0.0.1:4739:tls', caCert: {tmp_path / 'nope.crt'}}}\n"
            f"dataDir: {tmp_path / 'a-file'}\n"
        )
        result = flowscope_cmd("config", "check", str(config))
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    warning = f"sources[1].address: 127.0.0.1:{port}/tcp is in use by another process now; run fails unless it is free"
    assert lines[0] == f"warning: {config}: {warning}"
    assert lines[1:] == [
        f"error: 5 problems in the configuration in {config}:",
        f"  - dataDir: '{tmp_path / 'a-file'}' cannot be made: '{tmp_path / 'a-file'}' is a file, not a directory",
        f"  - sources[0].path: '{tmp_path / 'absent.jsonl'}' does not exist; check the path",
        f"  - sources[1].tlsCert: cannot load certificate '{garbage}': not a PEM certificate (no "
        "'-----BEGIN CERTIFICATE-----' line); give a PEM file",
        f"  - sinks[0].path: the directory of '{tmp_path / 'a-file' / 'out.jsonl'}' cannot be made: "
        f"'{tmp_path / 'a-file'}' is a file, not a directory",
        f"  - sinks[1].caCert: cannot load CA certificate '{tmp_path / 'nope.crt'}': no such file; create one with "
        "'flowscope certs --out DIR --host NAME'",
    ]


def test_config_errors_from_run_and_missing_file(tmp_path):
    result = flowscope_cmd("run", "-c", str(tmp_path / "nope.yaml"))
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: invalid configuration: config file '{tmp_path / 'nope.yaml'}' does not exist; "
        "check the path given with -c"
    )
    config = tmp_path / "p.yaml"
    config.write_text(
        f"sources: [{{type: jsonl, path: {tmp_path / 'absent.jsonl'}}}]\nsinks: [{{type: json, path: '-'}}]\n"
    )
    result = flowscope_cmd("run", "-c", str(config))
    assert result.returncode == 2
    assert f"sources[0].path: '{tmp_path / 'absent.jsonl'}' does not exist; check the path" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_sink_path_that_cannot_be_written_is_one_clear_line_and_debug_shows_the_traceback(tmp_path):
    (tmp_path / "ro").mkdir()
    (tmp_path / "ro" / "flows.jsonl").mkdir()  # a directory where the sink wants a file
    config = tmp_path / "p.yaml"
    config.write_text(
        f"sources: [{{type: jsonl, path: '-'}}]\nsinks: [{{type: json, path: {tmp_path}/ro/flows.jsonl}}]\n"
    )
    result = flowscope_cmd("run", "-c", str(config), stdin="")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        f"error: invalid configuration in {config}: sinks[0].path: '{tmp_path}/ro/flows.jsonl' is a directory; "
        "give the path of a file to write"
    )
    assert "Traceback" not in result.stderr
    result = flowscope_cmd("--log-level", "debug", "run", "-c", str(config), stdin="")
    assert "Traceback" in result.stderr


def test_plugins_and_elements_listings():
    result = flowscope_cmd("plugins", "--json")
    assert result.returncode == 0
    listed = {p["name"]: p for p in json.loads(result.stdout)}
    assert listed["jsonl"]["sources"] == ["jsonl"] and listed["json"]["sinks"] == ["json"]
    assert listed["json"]["version"] == flowscope.__version__
    table = flowscope_cmd("plugins").stdout.splitlines()
    assert table[0].split() == ["NAME", "PACKAGE", "VERSION", "REGISTERS"]
    elements = json.loads(flowscope_cmd("elements", "--json").stdout)
    assert {
        "name": "tcpState",
        "enterpriseId": 56506,
        "elementId": 136,
        "type": "string",
        "plugin": "elements",
    } in elements
    antrea = flowscope_cmd("elements", "--enterprise", "56506").stdout.splitlines()
    assert len(antrea) == 1 + 73
    assert antrea[1].split() == ["56506", "100", "sourcePodNamespace", "string", "Antrea"]


def test_broken_third_party_plugin_does_not_break_help(monkeypatch):
    result = flowscope_cmd("plugins", env={"FLOWSCOPE_PLUGINS": "not-installed-plugin"})
    assert result.returncode == 2
    assert result.stderr.startswith("error: plugin(s) 'not-installed-plugin' selected by FLOWSCOPE_PLUGINS")
    result = flowscope_cmd("--help", env={"FLOWSCOPE_PLUGINS": "not-installed-plugin"})
    assert result.returncode == 0


def test_log_format_json(tmp_path):
    config = tmp_path / "p.yaml"
    config.write_text("sources: [{type: jsonl, path: '-'}]\nsinks: [{type: json, path: '-'}]\n")
    result = flowscope_cmd("--log-format", "json", "run", "-c", str(config), stdin="")
    entries = [json.loads(line) for line in result.stderr.splitlines()]
    assert entries[0]["logger"] == "flowscope.pipeline" and entries[0]["level"] == "info"
    assert entries[-1]["msg"] == "pipeline stopped"


def received(port: int) -> float:
    """Records the ``jsonl`` source of a running flowscope has read, from its ``/metrics``."""
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
            text = response.read().decode()
    except OSError:
        return -1
    prefix = 'flowscope_records_received_total{instance="jsonl",stage="source"} '
    return next((float(line[len(prefix) :]) for line in text.splitlines() if line.startswith(prefix)), 0)


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_signal_drains_and_flushes_a_following_source(tmp_path, signum):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"seq": i}) + "\n" for i in range(100)))
    out = tmp_path / "out.jsonl"
    config = tmp_path / "p.yaml"
    metrics = free_port()
    config.write_text(
        f"sources: [{{type: jsonl, path: {source}, follow: true, pollInterval: 50ms}}]\n"
        f"sinks: [{{type: json, path: {out}, flushInterval: 1h, batchSize: 100000}}]\n"
        f"metricsAddress: 127.0.0.1:{metrics}\n"
    )
    process = subprocess.Popen([*FLOWSCOPE, "run", "-c", str(config)], cwd=ROOT, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(process.stderr), daemon=True)
    reader.start()
    try:
        wait_for(lambda: any("pipeline started" in line for line in lines), 60, "the pipeline to start")
        with source.open("a") as more:  # lines appended while running are picked up
            more.write(json.dumps({"seq": 100}) + "\n")
        wait_for(lambda: received(metrics) == 101, 60, "the appended line to be read")
        assert process.poll() is None  # follow: true never ends on its own
        process.send_signal(signum)
        process.wait(timeout=60)
    finally:
        process.kill()
        reader.join(10)
    stderr = "".join(lines)
    assert process.returncode == 0, stderr
    seqs = [json.loads(line)["ipfix"]["seq"] for line in out.read_text().splitlines()]
    assert seqs == list(range(101))  # held back by batchSize/flushInterval, written at shutdown
    assert f"received {signal.Signals(signum).name}" in stderr
