"""Config validation: both forms, and errors that name the key, the value and what is allowed."""

from __future__ import annotations

import pytest

import flowscope
from flowscope.core.config import parse_config_text, read_config_file
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins
from flowscope.plugins.sinks import json as json_sink
from flowscope.plugins.sources import jsonl
from tests import helpers


class ToyBundleOptions(flowscope.OptionsModel):
    activeFlowRecordTimeout: flowscope.Duration = "60s"
    outputPath: str = "-"


def build_toy(config: dict) -> dict:
    """A bundle with Antrea-style keys, as the exporter and aggregator bundles are."""
    try:
        options = ToyBundleOptions.model_validate(config)
    except Exception as exc:
        from flowscope.core.config import issues_from_validation_error

        raise ConfigError(issues_from_validation_error(exc, ToyBundleOptions)) from None
    return {
        "sources": [{"type": "memory", "records": [{"seq": 1}]}],
        "table": {"mode": "none", "activeTimeout": f"{options.activeFlowRecordTimeout}s"},
        "sinks": [{"type": "json", "path": options.outputPath}],
    }


class BundlePlugin:
    @flowscope.hookimpl
    def register_bundles(self, register):
        register("toy", build_toy)


@pytest.fixture(scope="module")
def plugins():
    """The jsonl and json built-ins and the test plugins only, so listed choices stay stable."""
    return load_plugins(extra=[jsonl, json_sink, helpers, BundlePlugin()], entry_points=False)


def errors(plugins, text: str) -> list[str]:
    with pytest.raises(ConfigError) as err:
        validate_config(parse_config_text(text, "test.yaml"), plugins, "test.yaml")
    return [str(issue) for issue in err.value.issues]


def test_explicit_form_with_defaults(plugins):
    config = validate_config(
        parse_config_text("sources: [{type: jsonl, path: '-'}]\nsinks: [{type: json, path: '-'}]\n"), plugins
    )
    assert [(c.kind, c.type, c.name) for c in config.sources + config.sinks] == [
        ("source", "jsonl", "jsonl"),
        ("sink", "json", "json"),
    ]
    assert config.sources[0].options == {"path": "-", "follow": False, "batchSize": 1000, "pollInterval": 0.2}
    runtime = config.sinks[0].runtime
    assert (runtime.onFull, runtime.bufferSize, runtime.batchSize, runtime.flushInterval) == (
        "dropOldest",
        100000,
        1000,
        1.0,
    )
    assert (config.table.mode, config.settings.shutdownTimeout) == ("none", 10.0)


def test_instance_names_default_to_type_and_stay_unique(plugins):
    config = validate_config(
        {"sources": [{"type": "memory"}], "sinks": [{"type": "collect"}, {"type": "collect"}, {"type": "collect"}]},
        plugins,
    )
    assert [c.name for c in config.sinks] == ["collect", "collect-2", "collect-3"]
    assert errors(plugins, "sources: [{type: memory, name: x}]\nsinks: [{type: collect, name: x}]") == [
        "sinks[0].name: 'x' is already used by sources[0]; names must be unique"
    ]


def test_bundle_form_with_own_keys_and_extra_sinks(plugins):
    text = """
bundle: toy
activeFlowRecordTimeout: 2m
outputPath: out.jsonl
sinks:
  - {type: collect, name: extra}
shutdownTimeout: 3s
"""
    config = validate_config(parse_config_text(text), plugins)
    assert config.bundle == "toy"
    assert config.table.activeTimeout == 120.0
    assert [(c.type, c.name) for c in config.sinks] == [("json", "json"), ("collect", "extra")]
    assert config.sinks[0].options == {"path": "out.jsonl", "address": None}
    assert config.settings.shutdownTimeout == 3.0


def test_bundle_keys_are_validated_by_the_bundle(plugins):
    assert errors(plugins, "bundle: toy\nactiveFlowRecordTimeout: 60\nouputPath: x") == [
        'activeFlowRecordTimeout: a number needs a unit: write "60s" for 60 seconds (got 60)',
        "ouputPath: unknown key (did you mean 'outputPath'?); allowed keys: activeFlowRecordTimeout, outputPath",
    ]


def test_unknown_bundle(plugins):
    assert errors(plugins, "bundle: aggregater") == ["bundle: 'aggregater' is not a registered bundle; available: toy"]


def test_several_errors_are_reported_together_each_naming_key_and_value(plugins):
    text = """
sources:
  - {type: jsonl, path: flows.jsonl, batchSize: -3}
  - {type: jsnol, path: x}
sinks:
  - {type: json, path: '-', onFull: dropNewest, flushInterval: 5, bogus: 1}
  - {type: json}
shutdownTimout: 10s
queueSize: many
table: {mode: aggregate, activeTimeout: -1s}
"""
    assert errors(plugins, text) == [
        "shutdownTimout: unknown key (did you mean 'shutdownTimeout'?); allowed keys: apiAddress, apiAuth, "
        "apiKubeconfig, apiTLS, apiTokenFile, bundle, dataDir, enrichers, metricsAddress, plugins, queueSize, "
        "shutdownTimeout, sinks, sources, table",
        "queueSize: expected a valid integer, unable to parse string as an integer (got 'many')",
        "table.mode: 'aggregate' is not available; use one of: none",
        'table.activeTimeout: must not be negative; expected a duration with a unit, e.g. "500ms", "5s", '
        "\"1m30s\" (units: ns, us, ms, s, m, h) (got '-1s')",
        "sources[0].batchSize: must be greater than 0 (got -3)",
        "sources[1].type: unknown source type 'jsnol'; available: counting, failing, jsonl, memory (did you mean "
        "'jsonl'?) (is the plugin installed and allowed?)",
        "sinks[0].onFull: 'dropNewest' is not allowed; use one of: 'block', 'dropOldest'",
        'sinks[0].flushInterval: a number needs a unit: write "5s" for 5 seconds (got 5)',
        "sinks[0].bogus: unknown key; allowed keys: address, batchSize, bufferSize, flushInterval, maxRetries, name, "
        "onFull, path, retryBackoff, retryMaxBackoff, spool, type",
        "sinks[1]: give exactly one of path (a file, or '-') and address (<host>:<port>[:tcp|udp])",
    ]


@pytest.fixture(scope="module")
def with_builtins():
    """The built-in plugins, whose bundles register the ``aggregate`` and ``connections`` table modes."""
    return load_plugins(extra=[helpers])


def test_table_mode_must_be_available(with_builtins):
    text = "sources: [{type: memory}]\nsinks: [{type: collect}]\ntable: {mode: aggregat}"
    assert errors(with_builtins, text) == [
        "table.mode: 'aggregat' is not available; use one of: none, aggregate, connections"
    ]


def test_table_keys_are_validated_by_their_mode(with_builtins):
    plugins = with_builtins
    base = "sources: [{type: memory}]\nsinks: [{type: collect}]\n"
    config = validate_config(parse_config_text(base + "table: {mode: aggregate, partialRecords: drop}"), plugins)
    assert (config.table.partialRecords, config.policy.__name__) == ("drop", "Aggregation")
    assert errors(plugins, base + "table: {mode: connections, partialRecords: drop}") == [
        "table.partialRecords: unknown key; allowed keys: activeTimeout, inactiveTimeout, maxFlows, mode, tick"
    ]
    assert errors(plugins, base + "table: {mode: aggregate, partialRecords: keep}") == [
        "table.partialRecords: 'keep' is not allowed; use one of: 'export', 'drop'"
    ]


def test_missing_sections_and_wrong_shapes(plugins):
    assert errors(plugins, "dataDir: /tmp/x") == [
        "sources: at least one source is required, e.g. [{type: jsonl, path: flows.jsonl}]",
        "sinks: at least one sink is required, e.g. [{type: json, path: '-'}]",
    ]
    assert errors(plugins, "sources: {type: memory}\nsinks: [json]") == [
        "sources: must be a list of source instances, each with a 'type' (got {'type': 'memory'})",
        "sinks[0]: must be a mapping with a 'type' key (got 'json')",
    ]
    assert errors(plugins, "sources: [{path: x}]\nsinks: [{type: collect}]") == [
        "sources[0].type: required key is missing; use one of: counting, failing, jsonl, memory"
    ]


def test_addresses_in_config(plugins):
    assert errors(plugins, "sources: [{type: memory}]\nsinks: [{type: collect}]\nmetricsAddress: 'fd00::1:9090'") == [
        'metricsAddress: IPv6 addresses must be written in brackets, e.g. "[fd00::1:9090]:4739"; expected '
        "<host>:<port> (no <proto>), e.g. \"127.0.0.1:4739\" (got 'fd00::1:9090')"
    ]


def test_yaml_and_file_problems(tmp_path):
    with pytest.raises(ConfigError) as err:
        parse_config_text("sources: [\n  {type: x\n", "bad.yaml")
    assert str(err.value).startswith("invalid configuration in bad.yaml: not valid YAML at line 3, column 1")
    with pytest.raises(ConfigError) as err:
        parse_config_text("- a\n- b\n", "list.yaml")
    assert str(err.value) == "invalid configuration in list.yaml: the top level must be a mapping of keys, not list"
    with pytest.raises(ConfigError) as err:
        read_config_file(tmp_path / "missing.yaml")
    assert "does not exist; check the path given with -c" in str(err.value)
    with pytest.raises(ConfigError) as err:
        read_config_file(tmp_path)
    assert "is a directory; give a YAML file" in str(err.value)
    unreadable = tmp_path / "binary.yaml"
    unreadable.write_bytes(b"\xff\xfe\x00bad")
    with pytest.raises(ConfigError) as err:
        read_config_file(unreadable)
    assert "cannot read config file" in str(err.value)


def test_error_text_lists_every_problem():
    err = ConfigError([ConfigIssue("x", "bad"), ConfigIssue("y", "worse")], "f.yaml")
    assert str(err) == "2 problems in the configuration in f.yaml:\n  - x: bad\n  - y: worse"


def test_a_bundle_that_crashes_is_named():
    def broken(config):
        raise KeyError("clickHouse")

    class Broken:
        @flowscope.hookimpl
        def register_bundles(self, register):
            register("broken", broken)

    from flowscope.core.errors import PluginError

    plugins = load_plugins(extra=[Broken()], entry_points=False)
    with pytest.raises(PluginError) as err:
        validate_config({"bundle": "broken"}, plugins)
    assert str(err.value) == "bundle 'broken' failed to build its pipeline: KeyError: 'clickHouse'"
