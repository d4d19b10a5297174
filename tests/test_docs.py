"""docs/plugins.md stays true to the plugin API: one section per hook, each with a working example.

Every ```python block under a hook's heading is executed as a fresh module, registered as a plugin
with no other plugin loaded (not even the built-ins), and must register something observable.
"""

import inspect
import json
import re
import sys
import types
import urllib.error
import urllib.request
from pathlib import Path

import click
import pytest

import flowscope
from flowscope import ConfigError, OptionsModel
from flowscope.core import hookspecs
from flowscope.core.pipeline import Pipeline
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins, register_commands
from flowscope.testing import run_pipeline

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "plugins.md"
EXAMPLE_PACKAGE = ROOT / "examples" / "plugins" / "flowscope-example"

HOOKS = list(hookspecs.__all__)
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*$")
FENCE = re.compile(r"^(`{3,}|~{3,})\s*(\S*)")


def hook_signature(name: str) -> str:
    """``register_sinks(register)``, from the hookspec itself."""
    parameters = inspect.signature(getattr(hookspecs, name)).parameters
    return f"{name}({', '.join(parameters)})"


SIGNATURES = {name: hook_signature(name) for name in HOOKS}


def parse(text: str) -> tuple[list[tuple[int, str]], list[dict]]:
    """The headings ``(level, text)`` and the fenced blocks, each with its hook section and heading."""
    headings: list[tuple[int, str]] = []
    blocks: list[dict] = []
    hook: str | None = None
    hook_level = 0
    heading = ""
    fence: str | None = None
    lines = text.splitlines()
    for number, line in enumerate(lines, 1):
        if fence is not None:
            if line.strip() == fence:
                fence = None
            else:
                blocks[-1]["lines"].append(line)
            continue
        opening = FENCE.match(line)
        if opening:
            fence = opening.group(1)
            blocks.append({"lang": opening.group(2), "hook": hook, "heading": heading, "line": number, "lines": []})
            continue
        match = HEADING.match(line)
        if not match:
            continue
        level, heading = len(match.group(1)), match.group(2)
        headings.append((level, heading))
        named = [name for name, signature in SIGNATURES.items() if f"`{signature}`" in heading]
        if named:
            hook, hook_level = named[0], level
        elif hook is not None and level <= hook_level:
            hook = None
    assert fence is None, f"{DOC}: a code fence is never closed"
    for block in blocks:
        block["code"] = "\n".join(block.pop("lines")) + "\n"
    return headings, blocks


HEADINGS, BLOCKS = parse(DOC.read_text(encoding="utf-8"))
PYTHON = [block for block in BLOCKS if block["lang"] == "python"]
HOOK_EXAMPLES = [block for block in PYTHON if block["hook"] is not None]
TESTING_EXAMPLES = [block for block in PYTHON if block["hook"] is None and block["heading"].startswith("Testing")]


def as_module(block: dict, name: str) -> types.ModuleType:
    """Execute a documented example the way a plugin module would be: as a fresh module."""
    module = types.ModuleType(name)
    module.__file__ = f"{DOC}:{block['line']}"
    exec(compile(block["code"], module.__file__, "exec"), module.__dict__)
    return module


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_has_a_heading_with_its_signature(hook):
    signature = SIGNATURES[hook]
    matching = [text for _level, text in HEADINGS if f"`{signature}`" in text]
    assert matching, f"docs/plugins.md has no heading containing `{signature}`"
    assert len(matching) == 1, f"several headings for `{signature}`: {matching}"


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_section_has_a_python_example(hook):
    assert any(block["hook"] == hook for block in HOOK_EXAMPLES), f"no ```python example under `{SIGNATURES[hook]}`"


def test_every_python_block_compiles():
    for block in PYTHON:
        compile(block["code"], f"{DOC}:{block['line']}", "exec")


@pytest.mark.parametrize(
    "block", HOOK_EXAMPLES, ids=[f"{block['hook']}-line{block['line']}" for block in HOOK_EXAMPLES]
)
def test_hook_example_registers(block, monkeypatch):
    monkeypatch.delenv("FLOWSCOPE_PLUGINS", raising=False)
    monkeypatch.delenv("FLOWSCOPE_DISABLED_PLUGINS", raising=False)
    hook = block["hook"]
    name = f"docs_example_line{block['line']}"
    module = as_module(block, name)
    plugins = load_plugins(extra=[module], entry_points=False)

    assert list(plugins.info) == [name], "only the example may be loaded, no built-ins"
    info = plugins.info[name]
    assert hook in info.hooks, f"the example under `{SIGNATURES[hook]}` does not implement {hook}"

    if hook == "register_elements":
        assert info.elements > 0
        assert len(plugins.elements) == info.elements
        assert all(element.origin == name for element in plugins.elements)
    elif hook == "register_bundles":
        assert info.types["bundles"]
        assert set(info.types["bundles"]) <= set(plugins.bundles)
        assert all(callable(plugins.bundles[bundle]) for bundle in info.types["bundles"])
    elif hook == "register_table_modes":
        assert info.types["tableModes"]
        for mode in info.types["tableModes"]:
            options = getattr(plugins.table_modes[mode], "Options", flowscope.TableConfig)
            assert issubclass(options, flowscope.TableConfig)
    elif hook == "register_routes":
        assert info.types["routes"]
        assert [route.path for route in plugins.routes] == info.types["routes"]
    elif hook == "register_commands":
        group = click.Group("flowscope")
        register_commands(plugins, group)
        assert group.commands, "register_commands added no command"
        for command in group.commands.values():
            assert command.help, f"command {command.name!r} has no help text"
    else:
        kind = {"register_sources": "source", "register_enrichers": "enricher", "register_sinks": "sink"}[hook]
        registered = info.types[kind + "s"]
        assert registered, f"the example under `{SIGNATURES[hook]}` registered no {kind}"
        for type_name in registered:
            cls = plugins.components[kind][type_name]
            assert plugins.origin(kind, type_name) == name
            options = getattr(cls, "Options", None)
            if options is not None:
                assert issubclass(options, OptionsModel)


def test_bundle_example_builds_a_valid_pipeline(monkeypatch, tmp_path):
    """The bundle example names built-in types, so check it with the built-ins loaded."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "flows.jsonl").write_text("")
    [block] = [block for block in HOOK_EXAMPLES if block["hook"] == "register_bundles"]
    monkeypatch.delenv("FLOWSCOPE_PLUGINS", raising=False)
    monkeypatch.delenv("FLOWSCOPE_DISABLED_PLUGINS", raising=False)
    module = as_module(block, "docs_bundle_example")
    plugins = load_plugins(extra=[module])
    [bundle] = plugins.info["docs_bundle_example"].types["bundles"]
    config = validate_config({"bundle": bundle, "path": "flows.jsonl"}, plugins)
    assert [source.type for source in config.sources] == ["jsonl"]
    with pytest.raises(ConfigError, match=r"pth: unknown key \(did you mean 'path'\?\)"):
        validate_config({"bundle": bundle, "pth": "flows.jsonl"}, plugins)


def example(hook: str, name: str) -> types.ModuleType:
    [block] = [block for block in HOOK_EXAMPLES if block["hook"] == hook]
    return as_module(block, name)


def test_table_mode_example_sums_per_pair(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWSCOPE_PLUGINS", raising=False)
    monkeypatch.delenv("FLOWSCOPE_DISABLED_PLUGINS", raising=False)
    records = [
        {"sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.2", "packetDeltaCount": 3},
        {"sourceIPv4Address": "10.0.0.1", "destinationIPv4Address": "10.0.0.2", "packetDeltaCount": 4},
        {"sourceIPv4Address": "10.0.0.3", "destinationIPv4Address": "10.0.0.2", "packetDeltaCount": 5},
    ]
    (tmp_path / "in.jsonl").write_text("".join(json.dumps(record) + "\n" for record in records))
    spec = {
        "sources": [{"type": "jsonl", "path": str(tmp_path / "in.jsonl")}],
        "table": {"mode": "pairs", "counter": "packetDeltaCount", "activeTimeout": "1h"},
        "sinks": [{"type": "json", "path": str(tmp_path / "out.jsonl")}],
        "dataDir": str(tmp_path / "data"),
    }
    run_pipeline(spec, [example("register_table_modes", "docs_pairs")])
    out = [json.loads(line)["ipfix"] for line in (tmp_path / "out.jsonl").read_text().splitlines()]
    assert sorted((r["sourceIPv4Address"], r["packetDeltaCount"]) for r in out) == [("10.0.0.1", 7), ("10.0.0.3", 5)]
    plugins = load_plugins(extra=[example("register_table_modes", "docs_pairs_2")])
    with pytest.raises(ConfigError, match=r"table.countr: unknown key \(did you mean 'counter'\?\)"):
        validate_config({**spec, "table": {"mode": "pairs", "countr": "x"}}, plugins)


def test_route_example_answers(tmp_path, monkeypatch):
    monkeypatch.delenv("FLOWSCOPE_PLUGINS", raising=False)
    monkeypatch.delenv("FLOWSCOPE_DISABLED_PLUGINS", raising=False)
    plugins = load_plugins(extra=[example("register_routes", "docs_routes")])
    spec = {
        "sources": [{"type": "jsonl", "path": str(tmp_path / "in.jsonl"), "follow": True}],
        "sinks": [{"type": "json", "path": str(tmp_path / "out.jsonl")}],
        "apiAddress": "127.0.0.1:0",
        "apiTLS": False,
        "dataDir": str(tmp_path / "data"),
    }
    (tmp_path / "in.jsonl").write_text("")
    pipeline = Pipeline(validate_config(spec, plugins), plugins)
    pipeline.start()
    try:
        base = f"http://127.0.0.1:{pipeline.api.port}"
        token = (tmp_path / "data" / "api-token").read_text().strip()

        def get(path):
            request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
            try:
                with urllib.request.urlopen(request, timeout=10) as response:
                    return response.status, json.loads(response.read())
            except urllib.error.HTTPError as error:
                return error.code, error.read().decode()

        assert get("/flows/count") == (200, {"flows": 0})
        assert get("/sinks/json") == (200, {"ready": True, "buffered": 0})
        assert get("/sinks/nope") == (404, "no sink named 'nope'")
    finally:
        pipeline.stop()
        assert pipeline.wait(10)


@pytest.mark.parametrize("block", TESTING_EXAMPLES, ids=[f"testing-line{block['line']}" for block in TESTING_EXAMPLES])
def test_testing_example_passes(block, tmp_path, monkeypatch):
    """The pytest example of the guide runs against the example plugin package, uninstalled."""
    monkeypatch.delenv("FLOWSCOPE_PLUGINS", raising=False)
    monkeypatch.delenv("FLOWSCOPE_DISABLED_PLUGINS", raising=False)
    monkeypatch.syspath_prepend(str(EXAMPLE_PACKAGE))
    monkeypatch.delitem(sys.modules, "flowscope_example", raising=False)
    try:
        module = as_module(block, f"docs_testing_line{block['line']}")
        tests = {name: fn for name, fn in vars(module).items() if name.startswith("test_") and callable(fn)}
        assert tests, "the testing example defines no test function"
        for test_name, test in tests.items():
            parameters = inspect.signature(test).parameters
            kwargs = {"tmp_path": tmp_path / test_name} if "tmp_path" in parameters else {}
            for path in kwargs.values():
                path.mkdir()
            assert set(parameters) <= {"tmp_path"}, f"{test_name} needs fixtures this test does not provide"
            test(**kwargs)
    finally:
        sys.modules.pop("flowscope_example", None)


def test_testing_section_has_an_example():
    assert TESTING_EXAMPLES, "the 'Testing a plugin' section has no ```python example"
