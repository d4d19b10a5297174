"""docs/configuration.md documents every shared key and every built-in plugin option."""

from pathlib import Path

import pytest

from flowscope.core.flowtable import TableConfig
from flowscope.core.pipelineconfig import PipelineSettings
from flowscope.core.plugins import load_plugins
from flowscope.core.sinkrunner import SinkRuntimeConfig

DOC = (Path(__file__).resolve().parent.parent / "docs" / "configuration.md").read_text()


@pytest.mark.parametrize("model", [PipelineSettings, TableConfig, SinkRuntimeConfig])
def test_runtime_keys_are_documented(model):
    for key in model.model_fields:
        assert f"| `{key}` |" in DOC, key


def test_builtin_plugin_options_are_documented():
    plugins = load_plugins(entry_points=True)
    for kind, types in plugins.components.items():
        for type_name, cls in types.items():
            if not plugins.info[plugins.origin(kind, type_name)].builtin:
                continue
            assert f"### {kind.capitalize()} `{type_name}`" in DOC, type_name
            section = DOC.split(f"### {kind.capitalize()} `{type_name}`")[1].split("\n### ")[0]
            for key in cls.Options.model_fields:
                assert f"| `{key}` |" in section, (type_name, key)


def test_builtin_table_mode_keys_are_documented():
    table = DOC.split("## `table`")[1].split("\n## ")[0]
    for mode, policy in load_plugins(entry_points=True).table_modes.items():
        assert f"`{mode}`" in table, mode
        for key in getattr(policy, "Options", TableConfig).model_fields:
            assert f"| `{key}` |" in table, (mode, key)


def test_every_ipfix_error_reason_is_explained():
    from flowscope.core.ipfix.errors import REASONS

    for reason, meaning in REASONS.items():
        assert f"| `{reason}` | {meaning} |" in DOC, reason
