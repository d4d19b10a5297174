"""End to end: the example third-party plugin package, pip-installed, found and used by the CLI.

The package in examples/plugins/flowscope-example is installed into the running environment for
this module only and uninstalled afterwards, even when a test fails.
"""

import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[1]
PACKAGE_DIR = ROOT / "examples" / "plugins" / "flowscope-example"
PROJECT = tomllib.loads((PACKAGE_DIR / "pyproject.toml").read_text(encoding="utf-8"))["project"]

RECORDS = [
    {"flowStartSeconds": 1, "sourcePodName": "web,frontend", "packetTotalCount": 10, "octetTotalCount": 1005},
    {"flowStartSeconds": 2, "sourcePodName": "b", "packetTotalCount": 0, "octetTotalCount": 0},
    {"flowStartSeconds": 3, "octetTotalCount": 64},  # no packetTotalCount, no sourcePodName
]
BYTES_PER_PACKET = [100, 0, 0]
COLUMNS = ["flowStartSeconds", "sourcePodName", "packetTotalCount", "octetTotalCount", "bytesPerPacket"]
CSV_HEADER = "flowStartSeconds,sourcePodName,packetTotalCount,octetTotalCount,bytesPerPacket\r\n"
CSV_ROWS = '1,"web,frontend",10,1005,100\r\n2,b,0,0,0\r\n3,,,64,0\r\n'


def _pip(*args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "pip", *args, "--disable-pip-version-check", "--no-input"]
    return subprocess.run(command, capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
    # Build from a copy, so pip's in-tree build directories never land in the source tree.
    source = tmp_path_factory.mktemp("package") / PACKAGE_DIR.name
    shutil.copytree(PACKAGE_DIR, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    try:  # the test extra brings a setuptools that builds wheels itself
        result = _pip("install", "--no-deps", "--no-build-isolation", str(source))
        assert result.returncode == 0, f"pip install failed:\n{result.stdout}\n{result.stderr}"
        yield PROJECT
    finally:
        _pip("uninstall", "-y", PROJECT["name"])


def flowscope(*args: str, cwd: Path | None = None, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """Run the flowscope CLI of this environment in a subprocess, with no plugin selection set."""
    environment = {k: v for k, v in os.environ.items() if k not in ("FLOWSCOPE_PLUGINS", "FLOWSCOPE_DISABLED_PLUGINS")}
    environment.update(env or {})
    return subprocess.run(
        [sys.executable, "-m", "flowscope.entrypoints.cli", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=environment,
    )


def test_plugin_is_listed_with_its_types_and_version(installed):
    result = flowscope("plugins", "--json")
    assert result.returncode == 0, result.stderr
    plugins = {plugin["name"]: plugin for plugin in json.loads(result.stdout)}
    example = plugins["example"]
    assert example["package"] == "flowscope-example"
    assert example["version"] == installed["version"] == "0.1.0"
    assert example["module"] == "flowscope_example"
    assert example["builtin"] is False
    assert example["hooks"] == ["register_enrichers", "register_sinks"]
    assert example["enrichers"] == ["bytes-per-packet"]
    assert example["sinks"] == ["csv"]
    assert example["sources"] == [] and example["bundles"] == [] and example["elements"] == 0
    assert plugins["jsonl"]["builtin"] is True and plugins["json"]["builtin"] is True


def _write_config(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_pipeline_enriches_and_writes_csv_and_json(installed, tmp_path):
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(r) + "\n" for r in RECORDS), encoding="utf-8")
    config = _write_config(
        tmp_path,
        "pipeline.yaml",
        f"""
plugins: [example]
sources:
  - {{type: jsonl, path: in.jsonl}}
enrichers:
  - {{type: bytes-per-packet}}
sinks:
  - {{type: csv, path: out/flows.csv, columns: [{", ".join(COLUMNS)}]}}
  - {{type: json, path: out/flows.jsonl}}
""",
    )
    result = flowscope("run", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr

    with open(tmp_path / "out" / "flows.csv", encoding="utf-8", newline="") as f:
        assert f.read() == CSV_HEADER + CSV_ROWS

    lines = (tmp_path / "out" / "flows.jsonl").read_text(encoding="utf-8").splitlines()
    written = [json.loads(line) for line in lines]
    assert [set(w) for w in written] == [{"@timestamp", "ipfix"}] * 3
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", w["@timestamp"]) for w in written)
    assert [w["ipfix"] for w in written] == [
        {**record, "bytesPerPacket": expected} for record, expected in zip(RECORDS, BYTES_PER_PACKET, strict=True)
    ]
    assert [w["ipfix"]["bytesPerPacket"] for w in written] == [100, 0, 0]

    # A second run appends rows to the existing CSV file, without a second header.
    result = flowscope("run", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    with open(tmp_path / "out" / "flows.csv", encoding="utf-8", newline="") as f:
        assert f.read() == CSV_HEADER + CSV_ROWS + CSV_ROWS


def test_enricher_field_option(installed, tmp_path):
    (tmp_path / "in.jsonl").write_text(json.dumps(RECORDS[0]) + "\n", encoding="utf-8")
    config = _write_config(
        tmp_path,
        "pipeline.yaml",
        """
sources: [{type: jsonl, path: in.jsonl}]
enrichers: [{type: bytes-per-packet, field: avgPacketSize}]
sinks: [{type: csv, path: out.csv, columns: [octetTotalCount, avgPacketSize, bytesPerPacket]}]
""",
    )
    result = flowscope("run", "-c", str(config), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "out.csv").read_bytes() == b"octetTotalCount,avgPacketSize,bytesPerPacket\r\n1005,100,\r\n"


def test_misspelled_options_are_refused_naming_the_key(installed, tmp_path):
    (tmp_path / "in.jsonl").write_text("", encoding="utf-8")
    config = _write_config(
        tmp_path,
        "bad.yaml",
        """
sources: [{type: jsonl, path: in.jsonl}]
enrichers: [{type: bytes-per-packet, feild: avg}]
sinks: [{type: csv, path: out.csv, colums: [octetTotalCount]}]
""",
    )
    result = flowscope("config", "check", str(config), cwd=tmp_path)
    assert result.returncode == 2, result.stderr
    assert result.stdout == ""
    assert "3 problems in the configuration" in result.stderr
    assert "enrichers[0].feild: unknown key (did you mean 'field'?)" in result.stderr
    assert "sinks[0].colums: unknown key (did you mean 'columns'?)" in result.stderr
    assert "sinks[0].columns: required key is missing" in result.stderr
    assert "Traceback" not in result.stderr


def test_allow_list_selects_the_plugin(installed, tmp_path):
    (tmp_path / "in.jsonl").write_text("", encoding="utf-8")
    config = _write_config(
        tmp_path,
        "pipeline.yaml",
        f"sources: [{{type: jsonl, path: {tmp_path / 'in.jsonl'}}}]\n"
        f"sinks: [{{type: csv, path: {tmp_path / 'out.csv'}, columns: [a]}}]\n",
    )
    allowed = flowscope("config", "check", str(config), env={"FLOWSCOPE_PLUGINS": "flowscope-example"})
    assert allowed.returncode == 0, allowed.stderr
    assert "OK (1 source(s), 0 enricher(s), 1 sink(s), table none)" in allowed.stdout

    # An empty allow-list loads only the built-ins, so the csv sink type is unknown.
    refused = flowscope("config", "check", str(config), env={"FLOWSCOPE_PLUGINS": ""})
    assert refused.returncode == 2
    assert "sinks[0].type: unknown sink type 'csv'; available: " in refused.stderr
    assert "csv" not in refused.stderr.split("available: ")[1].split(" (")[0]

    blocked = flowscope("config", "check", str(config), env={"FLOWSCOPE_DISABLED_PLUGINS": "example"})
    assert blocked.returncode == 2
    assert "unknown sink type 'csv'" in blocked.stderr
