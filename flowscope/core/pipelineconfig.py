"""The pipeline's config: the keys every pipeline shares, and validation of a config (a bundle's or
one spelled out) against the loaded plugins, reporting every problem at once.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from pydantic import Field

from flowscope.core import preflight
from flowscope.core.config import (
    INSTANCE_KEYS,
    Duration,
    OptionsModel,
    address_type,
    did_you_mean,
    unknown_key_message,
    validate_model,
)
from flowscope.core.errors import ConfigError, ConfigIssue, PluginError
from flowscope.core.flowtable import TableConfig
from flowscope.core.plugins import Plugins
from flowscope.core.sinkrunner import RUNTIME_KEYS, SinkRuntimeConfig


class PipelineSettings(OptionsModel):
    """Keys shared by every pipeline, whether a bundle or spelled out."""

    dataDir: Path = Path("flowscope-data")
    shutdownTimeout: Duration = "10s"
    metricsAddress: address_type(protocols=(), allow_port_zero=True) | None = None  # type: ignore[valid-type]
    queueSize: int = Field(16, gt=0)
    apiAddress: address_type(protocols=(), allow_port_zero=True) | None = None  # type: ignore[valid-type]
    apiTLS: bool = True
    apiAuth: Literal["auto", "token", "kubernetes", "none"] = "auto"
    apiTokenFile: Path | None = None
    apiKubeconfig: str | None = None


SHARED_KEYS = {"bundle", "plugins", "sources", "enrichers", "sinks", "table", *PipelineSettings.model_fields}


@dataclass
class ComponentConfig:
    """One validated source, enricher or sink instance."""

    kind: str
    type: str
    name: str
    cls: type
    options: dict[str, Any]
    runtime: SinkRuntimeConfig | None = None
    key: str = ""  # where in the config it is, e.g. ``sinks[1]``


@dataclass
class PipelineConfig:
    """A validated pipeline, ready to be built."""

    settings: PipelineSettings
    table: TableConfig
    sources: list[ComponentConfig]
    enrichers: list[ComponentConfig] = field(default_factory=list)
    sinks: list[ComponentConfig] = field(default_factory=list)
    bundle: str | None = None
    policy: type | None = None  # the table mode's merge policy class; None without a table
    warnings: list[ConfigIssue] = field(default_factory=list)  # problems that do not stop it


def plugin_allow_list(data: Mapping[str, Any], source: str = "<config>") -> list[str] | None:
    """The ``plugins:`` key: a list of plugin names, or ``None`` when absent."""
    value = data.get("plugins")
    if value is None:
        return None
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(
            ConfigIssue("plugins", f"must be a list of plugin names, e.g. [my-plugin] (got {value!r})"), source
        )
    return value


def validate_config(data: Mapping[str, Any], plugins: Plugins, source: str = "<config>") -> PipelineConfig:
    """Validate a config mapping (either form) against the loaded plugins.

    :raises ConfigError: with every problem found.
    """
    data = dict(data)
    bundle = data.get("bundle")
    if bundle is not None:
        data = _expand_bundle(data, bundle, plugins, source)

    issues: list[ConfigIssue] = []
    unknown = [key for key in data if key not in SHARED_KEYS]
    for key in unknown:
        issues.append(ConfigIssue(str(key), unknown_key_message(str(key), sorted(SHARED_KEYS))))

    settings = validate_model(
        PipelineSettings, {k: v for k, v in data.items() if k in PipelineSettings.model_fields}, "", issues
    )
    table, policy = _validate_table(data.get("table"), plugins, issues)

    names: dict[str, str] = {}
    sources = _validate_components("source", data.get("sources"), plugins, issues, names, required=True)
    enrichers = _validate_components("enricher", data.get("enrichers"), plugins, issues, names, required=False)
    sinks = _validate_components("sink", data.get("sinks"), plugins, issues, names, required=True)

    if settings is not None:
        issues.extend(_settings_preflight(settings))
    for component in (*sources, *enrichers, *sinks):
        issues.extend(_preflight(component, plugins))
    warnings = [issue for issue in issues if issue.warning]
    issues = [issue for issue in issues if not issue.warning]
    if issues:
        raise ConfigError(issues, source, warnings)
    assert settings is not None and table is not None
    return PipelineConfig(settings, table, sources, enrichers, sinks, bundle, policy, warnings)


def _settings_preflight(settings: PipelineSettings) -> list[ConfigIssue]:
    """The data directory can be used, the token file read, and the HTTP ports are free."""
    issues = preflight.writable_directory("dataDir", settings.dataDir)
    if settings.apiTokenFile is not None and settings.apiTokenFile.exists():
        issues += preflight.readable_file("apiTokenFile", settings.apiTokenFile, "token file")
    for key in ("metricsAddress", "apiAddress"):
        address = getattr(settings, key)
        if address is not None:
            issues += preflight.port_in_use(key, address.host, address.port)
    return issues


def _preflight(component: ComponentConfig, plugins: Plugins) -> list[ConfigIssue]:
    """The component's own checks of what its options point at, under its config key."""
    check = getattr(component.cls, "preflight", None)  # subclassing Component is optional
    try:
        found = check(component.options) if check is not None else []
    except Exception as exc:
        origin = plugins.origin(component.kind, component.type)
        return [ConfigIssue(component.key, f"plugin {origin!r} raised in preflight: {type(exc).__name__}: {exc}")]
    return [
        ConfigIssue(f"{component.key}.{issue.key}" if issue.key else component.key, issue.message, issue.warning)
        for issue in found or []
    ]


def _validate_table(
    table_data: object, plugins: Plugins, issues: list[ConfigIssue]
) -> tuple[TableConfig | None, type | None]:
    """The ``table:`` mapping, validated by its mode's model; and the mode's policy class (``None``: no table)."""
    table_data = table_data or {}
    if not isinstance(table_data, dict):
        issues.append(ConfigIssue("table", f"must be a mapping, e.g. {{mode: none}} (got {table_data!r})"))
        return None, None
    mode = table_data.get("mode", "none")
    policy = plugins.table_modes.get(mode) if isinstance(mode, str) else None
    if mode != "none" and policy is None:
        modes = ", ".join(["none", *sorted(plugins.table_modes)])
        issues.append(ConfigIssue("table.mode", f"{mode!r} is not available; use one of: {modes}"))
        shared = {key: value for key, value in table_data.items() if key in TableConfig.model_fields}
        validate_model(TableConfig, {**shared, "mode": "none"}, "table", issues)  # the keys every mode has
        return None, None
    model = getattr(policy, "Options", None) or TableConfig
    return validate_model(model, table_data, "table", issues), policy


def _expand_bundle(data: dict[str, Any], bundle: object, plugins: Plugins, source: str) -> dict[str, Any]:
    build = plugins.bundles.get(bundle) if isinstance(bundle, str) else None
    if build is None:
        available = sorted(plugins.bundles)
        raise ConfigError(
            ConfigIssue(
                "bundle",
                f"{bundle!r} is not a registered bundle; available: {', '.join(available) or 'none'}"
                + did_you_mean(str(bundle), available),
            ),
            source,
        )
    own = {k: v for k, v in data.items() if k not in SHARED_KEYS}
    extra = {}
    if "data_dir" in inspect.signature(build).parameters:  # a bundle that keeps state across runs
        extra["data_dir"] = Path(str(data.get("dataDir", PipelineSettings.model_fields["dataDir"].default)))
    try:
        spec = build(own, **extra)
    except ConfigError as exc:
        raise ConfigError(exc.issues, source) from None
    except Exception as exc:
        raise PluginError(f"bundle {bundle!r} failed to build its pipeline: {type(exc).__name__}: {exc}") from exc
    if not isinstance(spec, dict):
        raise ConfigError(f"bundle {bundle!r} returned {type(spec).__name__}, not a pipeline mapping", source)
    merged = dict(spec)
    for key in ("sources", "enrichers", "sinks"):
        extra = data.get(key)
        if extra is not None and not isinstance(extra, list):
            raise ConfigError(ConfigIssue(key, f"must be a list of plugin instances (got {extra!r})"), source)
        merged[key] = list(spec.get(key) or []) + list(extra or [])
    for key in SHARED_KEYS - {"bundle", "sources", "enrichers", "sinks"}:
        if key in data:
            merged[key] = data[key]
    return merged


def _validate_components(
    kind: str,
    items: object,
    plugins: Plugins,
    issues: list[ConfigIssue],
    names: dict[str, str],
    *,
    required: bool,
) -> list[ComponentConfig]:
    section = f"{kind}s"
    if items is None or items == []:
        if required:
            example = {"source": "{type: jsonl, path: flows.jsonl}", "sink": "{type: json, path: '-'}"}[kind]
            issues.append(ConfigIssue(section, f"at least one {kind} is required, e.g. [{example}]"))
        return []
    if not isinstance(items, list):
        issues.append(ConfigIssue(section, f"must be a list of {kind} instances, each with a 'type' (got {items!r})"))
        return []
    result = []
    for index, item in enumerate(items):
        key = f"{section}[{index}]"
        if not isinstance(item, dict):
            issues.append(ConfigIssue(key, f"must be a mapping with a 'type' key (got {item!r})"))
            continue
        type_name = item.get("type")
        available = sorted(plugins.components[kind])
        if type_name is None:
            issues.append(ConfigIssue(f"{key}.type", f"required key is missing; use one of: {', '.join(available)}"))
            continue
        cls = plugins.component(kind, type_name) if isinstance(type_name, str) else None
        if cls is None:
            issues.append(
                ConfigIssue(
                    f"{key}.type",
                    f"unknown {kind} type {type_name!r}; available: {', '.join(available) or 'none'}"
                    + did_you_mean(str(type_name), available)
                    + " (is the plugin installed and allowed?)",
                )
            )
            continue
        name = item.get("name", type_name)
        if not isinstance(name, str) or not name:
            issues.append(ConfigIssue(f"{key}.name", f"must be a non-empty text (got {name!r})"))
            continue
        if "name" not in item and name in names:
            suffix = 2
            while f"{type_name}-{suffix}" in names:
                suffix += 1
            name = f"{type_name}-{suffix}"
        if name in names:
            issues.append(
                ConfigIssue(f"{key}.name", f"{name!r} is already used by {names[name]}; names must be unique")
            )
            continue
        names[name] = key
        raw = {k: v for k, v in item.items() if k not in INSTANCE_KEYS}
        runtime_keys = {k: v for k, v in raw.items() if k in RUNTIME_KEYS} if kind == "sink" else {}
        raw = {k: v for k, v in raw.items() if k not in runtime_keys}
        options: dict[str, Any] | None = raw
        model = getattr(cls, "Options", None)
        option_issues: list[ConfigIssue] = []  # reported after the runtime keys' issues
        if model is not None:
            extra_allowed = sorted(INSTANCE_KEYS | (RUNTIME_KEYS if kind == "sink" else set()))
            validated = validate_model(model, raw, key, option_issues, also_allowed=extra_allowed)
            options = None if validated is None else {f: getattr(validated, f) for f in type(validated).model_fields}
        runtime = None
        if kind == "sink":
            # a sink may derive its runtime defaults from its options (e.g. the clickhouse commitInterval)
            derived = getattr(cls, "runtime_defaults", None)
            defaults = derived(options) if derived is not None and options is not None else {}
            runtime = validate_model(SinkRuntimeConfig, {**defaults, **runtime_keys}, key, issues)
        issues.extend(option_issues)
        if options is not None and (kind != "sink" or runtime is not None):
            result.append(ComponentConfig(kind, type_name, name, cls, options, runtime, key))
    return result
