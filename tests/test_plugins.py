"""Plugin loading: hooks, attribution, duplicates, allow/deny lists and clear errors."""

from __future__ import annotations

import types

import click
import pytest

import flowscope
from flowscope.core.errors import PluginError
from flowscope.core.plugins import load_plugins
from flowscope.core.plugins import register_commands as apply_commands
from tests import helpers


def plugin(name: str, **hooks) -> types.ModuleType:
    module = types.ModuleType(name)
    for hook_name, function in hooks.items():
        function.__name__ = hook_name
        setattr(module, hook_name, flowscope.hookimpl(function))
    return module


class NullSink(flowscope.Sink):
    def write(self, records):
        pass


def test_builtins_register_through_entry_points():
    plugins = load_plugins()
    assert plugins.origin("source", "jsonl") == "jsonl"
    assert plugins.origin("sink", "json") == "json"
    info = plugins.info["json"]
    assert (info.package, info.version, info.builtin, info.types["sinks"]) == (
        "flowscope",
        flowscope.__version__,
        True,
        ["json"],
    )
    assert plugins.info["elements"].elements == len(plugins.elements)


def test_hook_implementation_with_a_misspelled_name_fails_at_start_up():
    bad = plugin("typo", register_sink=lambda register: register("x", NullSink))
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[bad], entry_points=False)
    assert str(err.value).startswith(
        "plugin 'typo' implements unknown hook 'register_sink'. Did you mean 'register_sinks'? Known hooks: "
    )


def test_hook_implementation_with_a_wrong_argument_name_fails_at_start_up():
    bad = plugin("badargs", register_sinks=lambda registr: None)
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[bad], entry_points=False)
    assert "plugin 'badargs' is invalid" in str(err.value)
    assert "registr" in str(err.value)


def test_two_plugins_registering_the_same_type_name_is_an_error_naming_both():
    first = plugin("first_plugin", register_sinks=lambda register: register("csv", NullSink))
    second = plugin("second_plugin", register_sinks=lambda register: register("csv", NullSink))
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[first, second], entry_points=False)
    assert str(err.value) == (
        "sink type 'csv' is registered by both plugin 'first_plugin' and plugin 'second_plugin'; "
        "uninstall or block one of them with FLOWSCOPE_DISABLED_PLUGINS"
    )


def test_a_third_party_type_may_not_shadow_a_builtin():
    shadow = plugin("shadow", register_sinks=lambda register: register("json", NullSink))
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[shadow])
    assert "sink type 'json' is registered by both plugin 'json' and plugin 'shadow'" in str(err.value)


def test_registering_something_that_is_not_a_sink_class_is_refused():
    bad = plugin("notaclass", register_sinks=lambda register: register("x", print))
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[bad], entry_points=False)
    assert "registered sink 'x' as <built-in function print>, which is not a class with a write() method" in str(
        err.value
    )


def test_a_hook_that_raises_is_reported_with_the_plugin_name():
    def register_sources(register):
        raise ImportError("No module named 'kafka'")

    with pytest.raises(PluginError) as err:
        load_plugins(extra=[plugin("needs_kafka", register_sources=register_sources)], entry_points=False)
    assert str(err.value) == ("plugin 'needs_kafka' raised in register_sources: ImportError: No module named 'kafka'")


def test_elements_clash_names_both_plugins():
    def mine(register):
        register("myCounter", 99999, 1, "unsigned64")

    def theirs(register):
        register("otherCounter", 99999, 1, "unsigned32")

    with pytest.raises(PluginError) as err:
        load_plugins(
            extra=[plugin("mine", register_elements=mine), plugin("theirs", register_elements=theirs)],
            entry_points=False,
        )
    assert str(err.value).startswith(
        "information element 'otherCounter' (99999/1, unsigned32) from plugin 'theirs' clashes with "
        "'myCounter' (99999/1, unsigned64) from plugin 'mine'"
    )


def test_element_with_unknown_type_is_refused():
    def register_elements(register):
        register("weird", 99999, 2, "uint64")

    with pytest.raises(PluginError) as err:
        load_plugins(extra=[plugin("weird", register_elements=register_elements)], entry_points=False)
    assert "type 'uint64' is not an RFC 7012 abstract data type; use one of: octetArray, unsigned8," in str(err.value)


def test_hooks_may_declare_fewer_arguments():
    calls = []
    quiet = plugin("quiet", register_sinks=lambda: calls.append(1))
    load_plugins(extra=[quiet], entry_points=False)
    assert calls == [1]


def test_disabled_plugins_env_blocks_builtins(monkeypatch):
    monkeypatch.setenv("FLOWSCOPE_DISABLED_PLUGINS", "json")
    plugins = load_plugins()
    assert "json" not in plugins.components["sink"]
    assert "jsonl" in plugins.components["source"]


def test_allow_list_naming_an_uninstalled_plugin_is_an_error(monkeypatch):
    monkeypatch.setenv("FLOWSCOPE_PLUGINS", "flowscope-nonexistent")
    with pytest.raises(PluginError) as err:
        load_plugins()
    assert str(err.value).startswith(
        "plugin(s) 'flowscope-nonexistent' selected by FLOWSCOPE_PLUGINS or the 'plugins' key are not installed"
    )


def test_allow_list_keeps_builtins(monkeypatch):
    monkeypatch.setenv("FLOWSCOPE_PLUGINS", "")
    plugins = load_plugins(extra=[helpers])
    assert {"jsonl", "memory"} <= set(plugins.components["source"])


def test_register_commands_adds_subcommands():
    @click.group()
    def cli():
        pass

    def register_commands(cli):
        @cli.command()
        def hello():
            click.echo("hi")

    plugins = load_plugins(extra=[plugin("greeter", register_commands=register_commands)], entry_points=False)
    apply_commands(plugins, cli)
    assert "hello" in cli.commands
    assert plugins.info["greeter"].hooks == ["register_commands"]


def test_register_bundles_records_the_bundle():
    build = lambda config: {"sources": [], "sinks": []}  # noqa: E731
    plugins = load_plugins(
        extra=[plugin("b", register_bundles=lambda register: register("mine", build))], entry_points=False
    )
    assert plugins.bundles == {"mine": build}
    assert plugins.info["b"].types["bundles"] == ["mine"]


def test_options_named_like_runtime_keys_are_refused_at_registration():
    class Greedy(NullSink):
        class Options(flowscope.OptionsModel):
            path: str
            batchSize: int = 10

    bad = plugin("greedy", register_sinks=lambda register: register("greedy", Greedy))
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[bad], entry_points=False)
    assert str(err.value) == (
        "plugin 'greedy': sink 'greedy' has option(s) batchSize, which the runtime handles for every sink; rename "
        "them (reserved: batchSize, bufferSize, flushInterval, maxRetries, name, onFull, retryBackoff, "
        "retryMaxBackoff, spool, type)"
    )


def test_options_from_config_validates_defaults_and_reports_every_problem():
    class Opts(flowscope.OptionsModel):
        timeout: flowscope.Duration = "5s"
        port: int

    assert Opts.from_config({"port": 1}).timeout == 5.0
    with pytest.raises(flowscope.ConfigError) as err:
        Opts.from_config({"timeout": "5", "prot": 1}, prefix="clickHouse")
    assert [str(i) for i in err.value.issues] == [
        "clickHouse.timeout: a number needs a unit: write \"5s\" for 5 seconds (got '5')",
        "clickHouse.port: required key is missing",
        "clickHouse.prot: unknown key (did you mean 'port'?); allowed keys: port, timeout",
    ]


def test_builtin_plugins_register_their_table_modes_and_routes():
    plugins = load_plugins()
    assert plugins.origin("table mode", "connections") == "exporter"
    assert plugins.origin("table mode", "aggregate") == "aggregator"
    assert sorted((route.path, route.origin) for route in plugins.routes) == [
        ("/clickhouse/query", "clickhouse"),
        ("/flowrecords", "aggregator"),
        ("/recordmetrics", "aggregator"),
        ("/ui/", "web"),
        ("/ui/api/dashboards", "web"),
        ("/ui/api/data/{dashboard}", "web"),
        ("/ui/static/{name}", "web"),
    ]


class Policy:
    @classmethod
    def from_config(cls, options):
        return cls()


@pytest.mark.parametrize(
    ("mode", "policy", "message"),
    [
        ("none", Policy, "plugin 'modes' registered a table mode named 'none'; choose another name"),
        ("x", print, "plugin 'modes' registered table mode 'x' as <built-in function print>, which is not a merge"),
        ("x", type("P", (Policy,), {"Options": flowscope.OptionsModel}), "it must subclass flowscope.TableConfig"),
    ],
)
def test_bad_table_modes_are_refused(mode, policy, message):
    bad = plugin("modes", register_table_modes=lambda register: register(mode, policy))
    with pytest.raises(PluginError, match=message.replace("(", r"\(").replace(")", r"\)")):
        load_plugins(extra=[bad], entry_points=False)


def test_a_table_mode_registered_twice_names_both_plugins():
    first = plugin("first", register_table_modes=lambda register: register("pairs", Policy))
    second = plugin("second", register_table_modes=lambda register: register("pairs", Policy))
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[first, second], entry_points=False)
    assert "table mode 'pairs' is registered by both plugin 'first' and plugin 'second'" in str(err.value)


@pytest.mark.parametrize(
    ("path", "handler", "methods", "message"),
    [
        ("/metrics", print, ("GET",), "registered route '/metrics', which the core serves itself"),
        ("flows", print, ("GET",), "a route's path must be text starting with '/'"),
        ("/a/{rest:path}/b", print, ("GET",), "in '/a/{rest:path}/b', {rest:path} may only be the last part"),
        ("/a/{x", print, ("GET",), "'/a/{x' has a malformed {name} part"),
        ("/a", "print", ("GET",), "registered route '/a' with a handler that is not callable"),
        ("/a", print, ("get",), "registered route '/a' with methods ('get',); give upper-case HTTP methods"),
    ],
)
def test_bad_routes_are_refused(path, handler, methods, message):
    bad = plugin("routes", register_routes=lambda register: register(path, handler, methods))
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[bad], entry_points=False)
    assert message in str(err.value)


def test_a_route_registered_twice_names_both_plugins():
    shadow = plugin("shadow", register_routes=lambda register: register("/flowrecords", print))
    with pytest.raises(PluginError) as err:
        load_plugins(extra=[shadow])
    assert "route '/flowrecords' is registered by both plugin 'aggregator' and plugin 'shadow'" in str(err.value)
