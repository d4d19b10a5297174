"""Helpers for testing plugins: a ready ``Context`` and an in-process pipeline run."""

from __future__ import annotations

import logging
import tempfile
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from flowscope.core import elements_data
from flowscope.core.components import Context
from flowscope.core.elements import ElementRegistry
from flowscope.core.metrics import PipelineMetrics
from flowscope.core.pipeline import Pipeline
from flowscope.core.pipelineconfig import validate_config
from flowscope.core.plugins import load_plugins


def make_context(name: str = "test", *, kind: str = "sink", data_dir: str | Path | None = None) -> Context:
    """A ``Context`` for building one plugin instance by hand, with the built-in IE registry.

    Its counters are readable: ``context.counters.value("dropped", "malformed")``.
    """
    metrics = PipelineMetrics()
    return Context(
        name=name,
        elements=builtin_elements(),
        logger=logging.getLogger(f"flowscope.{kind}.{name}"),
        metrics=metrics.registry,
        counters=metrics.counters(kind, name),
        data_dir=Path(data_dir) if data_dir is not None else Path(tempfile.mkdtemp(prefix="flowscope-test-")),
    )


def run_pipeline(
    spec: dict[str, Any], plugins: Iterable[object] = (), *, builtins: bool = True, timeout: float = 60.0
) -> Pipeline:
    """Validate ``spec`` (the explicit config form) and run it until its sources end.

    :param plugins: plugin modules to register in addition to the installed ones.
    :param builtins: also load installed plugins (the built-ins and any third-party ones).
    :returns: the finished pipeline; ``pipeline.metrics.counters(stage, name)`` has its counters.
    :raises TimeoutError: if the pipeline has not finished within ``timeout`` seconds.
    """
    loaded = load_plugins(extra=plugins, entry_points=builtins)
    pipeline = Pipeline(validate_config(spec, loaded), loaded)
    pipeline.start()
    if not pipeline.wait(timeout):
        pipeline.stop()
        raise TimeoutError(f"the pipeline did not finish within {timeout}s; are its sources finite?")
    return pipeline


def builtin_elements() -> ElementRegistry:
    """The IANA, IANA-reverse and Antrea elements, without loading any plugin."""
    registry = ElementRegistry()
    elements_data.register_elements(registry.register)
    return registry
