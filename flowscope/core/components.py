"""Base classes of the three plugin kinds and the context every instance receives.

A record is a plain ``dict`` keyed by Information Element name; records move in batches
(``list[dict]``). Subclassing is optional: the runtime only calls the methods documented here.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry
    from pydantic import BaseModel

    from flowscope.core.elements import ElementRegistry
    from flowscope.core.errors import ConfigIssue
    from flowscope.core.metrics import StageCounters

Record = dict[str, Any]
Batch = list[Record]
Emit = Callable[[Batch], None]


@dataclass
class Context:
    """What the runtime hands to every plugin instance.

    :ivar name: the instance name (the ``name:`` key of its config, or its type).
    :ivar elements: the IE registry, keyed by name and by (enterprise id, element id).
    :ivar logger: a logger named ``flowscope.<kind>.<name>``; logs go to stderr.
    :ivar metrics: the Prometheus registry served on ``/metrics``; add your own collectors to it.
    :ivar counters: this instance's received/emitted/dropped/retried/error counters.
    :ivar data_dir: a directory the plugin may keep state in (created on first use by the plugin).
    :ivar services: shared services by name (e.g. ``"kubernetes"`` for the Kubernetes inventory).
    """

    name: str
    elements: ElementRegistry
    logger: logging.Logger
    metrics: CollectorRegistry
    counters: StageCounters
    data_dir: Path
    services: dict[str, Any] = field(default_factory=dict)


class Component:
    """Common constructor of sources, enrichers and sinks.

    Set ``Options`` to a pydantic model to have the runtime (and ``flowscope config check``)
    validate this plugin's keys; ``options`` then holds the validated values with defaults filled
    in (durations as float seconds). Without ``Options``, ``options`` is the raw mapping.
    """

    Options: ClassVar[type[BaseModel] | None] = None

    def __init__(self, options: dict[str, Any], context: Context):
        self.options = options
        self.context = context

    @classmethod
    def preflight(cls, options: dict[str, Any]) -> list[ConfigIssue]:
        """Problems with what the validated ``options`` point at (a file that must exist, a port that
        must be free), found without starting anything. ``flowscope config check`` and ``run`` report
        them with the config's other problems, under this instance's keys; an issue with
        ``warning=True`` is reported but does not stop the pipeline. The helpers of
        :mod:`flowscope.core.preflight` check the usual things."""
        return []


class Source(Component):
    """Produces records. ``run`` runs in its own thread.

    ``run(emit)`` calls ``emit(batch)`` for each batch and returns when the input is exhausted
    (a finite source) or after ``stop()`` has been called. ``stop`` is called from another thread
    and must make ``run`` return soon.
    """

    def run(self, emit: Emit) -> None:
        raise NotImplementedError

    def stop(self) -> None:
        """Ask ``run`` to return."""


class Enricher(Component):
    """Adds fields to records, or drops records, one batch at a time."""

    def start(self) -> None:
        """Called once before the first batch."""

    def enrich(self, records: Batch) -> Batch:
        """Return the batch to pass on: the same list changed in place, or a new one."""
        return records

    def close(self) -> None:
        """Called once after the last batch."""


class Sink(Component):
    """Writes batches of records somewhere.

    ``open`` may raise :class:`~flowscope.RetryableError` when the destination is not reachable
    yet: the runtime buffers and tries again. ``write`` raises ``RetryableError`` for a transient
    failure (the batch is retried with backoff); any other exception drops the batch, counted.
    """

    def open(self) -> None:
        """Connect or open files."""

    def write(self, records: Batch) -> None:
        raise NotImplementedError

    def flush(self) -> None:
        """Push out anything buffered inside the sink."""

    def close(self) -> None:
        """Release resources; called once, after the final ``flush``."""
