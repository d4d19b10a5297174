"""Prometheus metrics shared by every pipeline stage.

Every stage instance (source, table, enricher, sink) gets a :class:`StageCounters` bound to its
labels, so the hot path increments a pre-resolved child instead of looking labels up per batch.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, TypeVar

from prometheus_client import CollectorRegistry, Counter, Gauge


class PipelineMetrics:
    """The pipeline's own Prometheus collectors, registered in one registry."""

    def __init__(self, registry: CollectorRegistry | None = None):
        self.registry = registry or CollectorRegistry()
        self._stages: dict[tuple[str, str], StageCounters] = {}
        labels = ["stage", "instance"]
        self.received = Counter(
            "flowscope_records_received", "Records that entered a stage.", labels, registry=self.registry
        )
        self.emitted = Counter(
            "flowscope_records_emitted",
            "Records a stage handed on (sources: to the pipeline; sinks: written).",
            labels,
            registry=self.registry,
        )
        self.dropped = Counter(
            "flowscope_records_dropped",
            "Records a stage dropped, by reason.",
            [*labels, "reason"],
            registry=self.registry,
        )
        self.retried = Counter(
            "flowscope_retries", "Retries of a failed write or open.", labels, registry=self.registry
        )
        self.errors = Counter("flowscope_errors", "Errors raised by a plugin.", labels, registry=self.registry)
        self.buffered = Gauge(
            "flowscope_sink_buffer_records",
            "Records waiting in a sink's buffer.",
            ["instance"],
            registry=self.registry,
        )
        self.sink_ready = Gauge(
            "flowscope_sink_ready",
            "1 when a sink is open and its last write succeeded, else 0.",
            ["instance"],
            registry=self.registry,
        )
        self.spooled = Counter(
            "flowscope_sink_spooled_records",
            "Records written to a sink's spool at shutdown, to be sent at the next start.",
            ["instance"],
            registry=self.registry,
        )
        self.flows = Gauge("flowscope_flowtable_flows", "Flows held in the flow table.", registry=self.registry)
        self.evicted = Counter(
            "flowscope_flowtable_evictions",
            "Flows pushed out of a full flow table (their records are emitted first).",
            registry=self.registry,
        )

    def counters(self, stage: str, instance: str) -> StageCounters:
        """The counters of one stage instance (the same object for the same labels)."""
        key = (stage, instance)
        found = self._stages.get(key)
        if found is None:
            found = self._stages[key] = StageCounters(self, stage, instance)
        return found


@dataclass
class StageCounters:
    """Counters of one stage instance. Plugins reach theirs as ``context.counters``."""

    metrics: PipelineMetrics
    stage: str
    instance: str
    _dropped: dict[str, Counter] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        labels = {"stage": self.stage, "instance": self.instance}
        self._received = self.metrics.received.labels(**labels)
        self._emitted = self.metrics.emitted.labels(**labels)
        self._retried = self.metrics.retried.labels(**labels)
        self._errors = self.metrics.errors.labels(**labels)

    def received(self, n: int = 1) -> None:
        self._received.inc(n)

    def emitted(self, n: int = 1) -> None:
        self._emitted.inc(n)

    def retried(self, n: int = 1) -> None:
        self._retried.inc(n)

    def error(self, n: int = 1) -> None:
        self._errors.inc(n)

    def dropped(self, n: int, reason: str) -> None:
        """Count ``n`` dropped records; ``reason`` is a short snake_case word, e.g. ``malformed``."""
        child = self._dropped.get(reason)
        if child is None:
            with self._lock:
                child = self._dropped.setdefault(
                    reason,
                    self.metrics.dropped.labels(stage=self.stage, instance=self.instance, reason=reason),
                )
        child.inc(n)

    def value(self, name: str, reason: str | None = None) -> float:
        """Current value of one counter: ``received``, ``emitted``, ``dropped``, ``retried`` or ``errors``.

        For ``dropped`` without ``reason`` the sum over every reason is returned.
        """
        labels = {"stage": self.stage, "instance": self.instance}
        sample = self.metrics.registry.get_sample_value
        if name == "dropped":
            reasons = [reason] if reason else list(self._dropped)
            return sum(sample("flowscope_records_dropped_total", {**labels, "reason": r}) or 0.0 for r in reasons)
        metric = _COUNTER_NAMES[name]
        return sample(f"{metric}_total", labels) or 0.0


_COUNTER_NAMES = {
    "received": "flowscope_records_received",
    "emitted": "flowscope_records_emitted",
    "retried": "flowscope_retries",
    "errors": "flowscope_errors",
}


T = TypeVar("T")
_shared: weakref.WeakKeyDictionary[CollectorRegistry, dict[Callable[..., Any], Any]] = weakref.WeakKeyDictionary()


def shared(registry: CollectorRegistry, factory: Callable[[CollectorRegistry], T]) -> T:
    """``factory(registry)``, made once per registry: collectors that several plugin instances share."""
    made = _shared.setdefault(registry, {})
    if factory not in made:
        made[factory] = factory(registry)
    return made[factory]
