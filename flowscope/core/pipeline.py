"""The pipeline runtime: sources → flow table → enrichers → fan-out → sinks.

Threads: one per source, one processor (flow table, enrichers, fan-out), one per sink. Sources
hand batches to the processor through a bounded queue (a slow processor makes ``emit`` wait);
the processor puts each batch into every sink's own bounded buffer.

Shutdown (``stop()``, SIGINT/SIGTERM, or every source finished): sources are stopped, the
processor drains its queue and flushes the flow table, and every sink delivers its buffer until
``shutdownTimeout``; what is still undelivered then is counted as dropped (reason ``shutdown``).
A second ``stop()`` abandons the drain at once.
"""

from __future__ import annotations

import functools
import gc
import logging
import queue
import threading
import time
from pathlib import Path
from typing import Any

from flowscope.core.apiauth import authorizer
from flowscope.core.certs import ensure_certificates
from flowscope.core.components import Batch, Context, Enricher, Record, Source
from flowscope.core.errors import ConfigError, ConfigIssue, FlowscopeError, PluginError
from flowscope.core.flowtable import FlowTable
from flowscope.core.http import HttpServer
from flowscope.core.memory import Releaser
from flowscope.core.metrics import PipelineMetrics
from flowscope.core.pipelineconfig import ComponentConfig, PipelineConfig
from flowscope.core.plugins import Plugins
from flowscope.core.sinkrunner import SinkRunner
from flowscope.core.tlsconfig import server_context

log = logging.getLogger("flowscope.pipeline")

_END = object()
EXPIRY_SLICE = 10_000
"""Due flows handed to the policy at a time; what they emit goes to the sinks before the next slice."""
GC_YOUNG_THRESHOLD = 20_000
"""Container allocations between collections of the youngest generation (Python's default: 700)."""


@functools.cache  # once a process: later pipelines (tests, reloads) find it done
def settle_garbage_collector() -> None:
    """Make the cyclic garbage collector cheap for a stream of records.

    Records are dicts of strings and numbers: they hold no cycles, and CPython does not even track
    them, yet each counts as an allocation that brings the next collection nearer. What start-up built
    (modules, plugins, configuration) lives as long as the process: it is collected once and then
    frozen out of every later collection, and the youngest generation is collected every
    :data:`GC_YOUNG_THRESHOLD` allocations instead of every 700. Cycles are still collected.
    """
    gc.collect()
    gc.freeze()
    young, middle, old = gc.get_threshold()
    gc.set_threshold(max(young, GC_YOUNG_THRESHOLD), middle, old)


class Pipeline:
    """A running (or runnable) pipeline built from a validated config."""

    def __init__(self, config: PipelineConfig, plugins: Plugins, metrics: PipelineMetrics | None = None):
        self.config = config
        self.plugins = plugins
        self.metrics = metrics or PipelineMetrics()
        self.services: dict[str, Any] = {}
        self.failed: list[str] = []
        self._queue: queue.Queue = queue.Queue(maxsize=config.settings.queueSize)
        self._stopping = threading.Event()
        self._abort = threading.Event()
        self._done = threading.Event()
        self._deadline = float("inf")  # once stopping: when undelivered records are given up (monotonic)
        self._live_sources = 0
        self._end_sent = False
        self.servers: list[HttpServer] = []
        self.api: HttpServer | None = None  # the server on apiAddress, with the plugins' routes
        self._lock = threading.Lock()

        self.sources: list[tuple[str, Source]] = [(c.name, self._build(c)) for c in config.sources]
        self.enrichers: list[tuple[str, Enricher]] = [(c.name, self._build(c)) for c in config.enrichers]
        self.sinks: list[SinkRunner] = [
            SinkRunner(
                c.name,
                self._build(c),
                c.runtime,
                self._counters(c),
                self.metrics,
                logging.getLogger(f"flowscope.sink.{c.name}"),
                config.settings.dataDir / "spool" / f"{c.name}.jsonl" if c.runtime.spool else None,
            )
            for c in config.sinks
        ]
        self.table: FlowTable | None = None
        if config.policy is not None:
            self.table = FlowTable(
                config.policy.from_config(config.table), config.table.maxFlows, on_evict=self.metrics.evicted.inc
            )
            self.services["flowtable"] = self.table  # read (never changed) by plugins that report its size
        self._table_counters = self.metrics.counters("table", config.table.mode)
        self.releaser = Releaser()  # gives freed memory back after a burst (see _process_loop)
        self._enricher_counters = [self.metrics.counters("enricher", name) for name, _ in self.enrichers]
        self._source_counters = [self.metrics.counters("source", name) for name, _ in self.sources]

    # -- construction --------------------------------------------------------------------------

    def _counters(self, c: ComponentConfig):
        return self.metrics.counters(c.kind, c.name)

    def _build(self, c: ComponentConfig) -> Any:
        context = Context(
            name=c.name,
            elements=self.plugins.elements,
            logger=logging.getLogger(f"flowscope.{c.kind}.{c.name}"),
            metrics=self.metrics.registry,
            counters=self._counters(c),
            data_dir=self.config.settings.dataDir,
            services=self.services,
        )
        try:
            return c.cls(c.options, context)
        except Exception as exc:
            raise _start_error(c, self.plugins, exc) from exc

    # -- running -------------------------------------------------------------------------------

    def run(self) -> int:
        """Run until stopped or until every source has ended; return the exit status: 0, 1 if a source
        failed, 3 if records were lost because the pipeline stopped before a sink delivered them."""
        self.start()
        self._done.wait()
        return self.exit_status()

    def exit_status(self) -> int:
        """0, 1 if a source failed, 3 if records were lost at the stop (once the pipeline has finished)."""
        if self.failed:
            return 1
        return 3 if any(runner.lost for runner in self.sinks) else 0

    def start(self) -> None:
        self._serve_http()
        opened: list[SinkRunner] = []
        try:
            for cfg, runner in zip(self.config.sinks, self.sinks, strict=True):
                self._start_component(cfg, runner.open, "failed to open")
                opened.append(runner)
            for cfg, (_, enricher) in zip(self.config.enrichers, self.enrichers, strict=True):
                self._start_component(cfg, enricher.start, "failed to start")
        except FlowscopeError:
            for runner in opened:
                runner.discard()
            self._stop_http()
            raise
        log.info(
            "pipeline started: %d source(s), %d enricher(s), %d sink(s), table %s",
            len(self.sources),
            len(self.enrichers),
            len(self.sinks),
            self.config.table.mode,
        )

        settle_garbage_collector()
        for runner in self.sinks:
            runner.start()
        threading.Thread(target=self._process_loop, name="processor", daemon=True).start()
        self._live_sources = len(self.sources)
        for index, (name, source) in enumerate(self.sources):
            threading.Thread(
                target=self._run_source,
                args=(name, source, self._source_counters[index]),
                name=f"source-{name}",
                daemon=True,
            ).start()

    def _start_component(self, cfg: ComponentConfig, step: Any, what: str) -> None:
        try:
            step()
        except Exception as exc:
            raise _start_error(cfg, self.plugins, exc, what) from exc

    def health(self) -> list[str]:
        """What keeps the pipeline from delivering: one line per sink that is not ready."""
        return [
            f"sink {runner.name!r} is not ready ({runner.buffered} records buffered)"
            for runner in self.sinks
            if not runner.ready
        ]

    def _serve_http(self) -> None:
        """``metricsAddress``: the core's paths over HTTP; ``apiAddress``: those and the plugins' routes,
        over HTTPS unless ``apiTLS`` is false."""
        settings = self.config.settings
        for key, address, routes in (
            ("metricsAddress", settings.metricsAddress, []),
            ("apiAddress", settings.apiAddress, self.plugins.routes),
        ):
            if address is None:
                continue
            tls = authorize = None
            if key == "apiAddress":
                if settings.apiTLS:
                    paths = ensure_certificates(Path(settings.dataDir) / "certs", ["localhost", "127.0.0.1", "::1"])
                    tls = server_context(paths.server_cert, paths.server_key, key_prefix="apiAddress")
                data_dir = Path(settings.dataDir)
                authorize = authorizer(settings.apiAuth, data_dir, settings.apiTokenFile, settings.apiKubeconfig)
            try:
                server = HttpServer(
                    address.host,
                    address.port,
                    registry=self.metrics.registry,
                    health=self.health,
                    routes=routes,
                    app=self,
                    tls=tls,
                    authorize=authorize,
                    name="api" if key == "apiAddress" else "metrics",
                )
            except OSError as exc:
                self._stop_http()
                raise ConfigError([ConfigIssue(key, f"cannot listen on {address}: {exc.strerror or exc}")]) from None
            server.start()
            self.servers.append(server)
            if key == "apiAddress":
                self.api = server

    def _stop_http(self) -> None:
        for server in self.servers:
            server.close()
        self.servers.clear()
        self.api = None

    def stop(self) -> None:
        """Begin an orderly shutdown; a second call abandons the drain."""
        if self._stopping.is_set():
            log.warning("second stop request: abandoning undelivered records")
            self._abort.set()
            for runner in self.sinks:
                runner.set_deadline(time.monotonic())
            return
        timeout = self.config.settings.shutdownTimeout
        log.info("stopping: draining within %.1fs", timeout)
        self._stopping.set()
        deadline = self._deadline = time.monotonic() + timeout
        for runner in self.sinks:  # bounds a sink that blocks the pipeline or keeps retrying
            runner.set_deadline(deadline)
        for name, source in self.sources:
            try:
                source.stop()
            except Exception as exc:
                log.error("source %r: stop() raised %s: %s", name, type(exc).__name__, exc)
        threading.Thread(target=self._end_after_grace, name="stopper", daemon=True).start()

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def _end_after_grace(self) -> None:
        """Sources that do not return soon after stop() are left behind."""
        deadline = time.monotonic() + min(2.0, self.config.settings.shutdownTimeout)
        while self._live_sources and time.monotonic() < deadline and not self._abort.is_set():
            time.sleep(0.02)
        self._put_end()

    def _put_end(self) -> None:
        with self._lock:
            if self._end_sent:
                return
            self._end_sent = True
        self._queue.put(_END)

    def _run_source(self, name: str, source: Source, counters) -> None:
        def emit(batch: Batch) -> None:
            if not batch:
                return
            if not isinstance(batch, list):
                batch = list(batch)
            counters.emitted(len(batch))
            while True:
                if self._abort.is_set() or self._end_sent:
                    counters.dropped(len(batch), "shutdown")
                    return
                try:
                    self._queue.put(batch, timeout=0.2)
                    return
                except queue.Full:
                    continue

        try:
            source.run(emit)
            log.info("source %r finished", name)
        except Exception as exc:
            counters.error()
            self.failed.append(name)
            log.error(
                "source %r failed: %s: %s", name, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG)
            )
        finally:
            with self._lock:
                self._live_sources -= 1
                last = self._live_sources == 0
            if last:
                self._put_end()

    def _process_loop(self) -> None:
        table = self.table
        tick = self.config.table.tick
        next_tick = time.time() + tick
        try:
            while True:
                timeout = max(0.0, next_tick - time.time()) if table else None
                try:
                    item = self._queue.get(timeout=timeout)
                except queue.Empty:
                    item = None
                if item is _END:
                    break
                now = time.time()
                out: list[Record] = []
                if item is not None:
                    self.releaser.count(len(item))
                    if table is not None:
                        self._table_counters.received(len(item))
                        table.offer(item, now, out)
                    else:
                        out = item
                if table is not None and now >= next_tick:
                    # in slices, so that sinks start on a burst of exports while the rest are made
                    while table.expire(now, out, EXPIRY_SLICE) == EXPIRY_SLICE:
                        self._deliver(out)
                        out = []
                    next_tick = now + tick
                    self.metrics.flows.set(len(table))
                if out:
                    self._deliver(out)
                elif item is None and not any(runner.buffered for runner in self.sinks):
                    self.releaser.idle()  # a quiet tick after a burst: the memory it freed goes back
            if table is not None:
                out = []
                table.flush(time.time(), out)
                if out:
                    self._deliver(out)
        except Exception:
            log.exception("internal error in the processor thread")
            self.failed.append("processor")
        finally:
            self._finish()

    def _deliver(self, batch: Batch) -> None:
        self.releaser.count(len(batch))
        if self.table is not None:
            self._table_counters.emitted(len(batch))
        for index, (name, enricher) in enumerate(self.enrichers):
            counters = self._enricher_counters[index]
            counters.received(len(batch))
            try:
                result = enricher.enrich(batch)
            except Exception as exc:
                counters.error()
                log.error(
                    "enricher %r raised %s: %s; the batch passes on unenriched",
                    name,
                    type(exc).__name__,
                    exc,
                    exc_info=log.isEnabledFor(logging.DEBUG),
                )
                result = batch
            if result is None:
                result = batch
            if len(result) < len(batch):
                counters.dropped(len(batch) - len(result), "filtered")
            counters.emitted(len(result))
            batch = result
            if not batch:
                return
        for runner in self.sinks:
            runner.put(batch)

    def _finish(self) -> None:
        for name, enricher in self.enrichers:
            try:
                enricher.close()
            except Exception as exc:
                log.error("enricher %r: close() raised %s: %s", name, type(exc).__name__, exc)
        # the deadline set by stop() holds; a pipeline whose sources ended has its full timeout
        deadline = min(self._deadline, time.monotonic() + self.config.settings.shutdownTimeout)
        for runner in self.sinks:
            runner.close(deadline if not self._abort.is_set() else time.monotonic())
        for runner in self.sinks:
            while not runner.join(0.1):
                if self._abort.is_set():
                    runner.close(time.monotonic())
                if time.monotonic() > deadline + 1.0:
                    log.error("sink %r did not finish within the shutdown timeout", runner.name)
                    runner.abandon()
                    break
        self._stop_http()
        for runner in self.sinks:
            if runner.lost:
                log.error(
                    "sink %r: %d records were not delivered before the pipeline stopped and are lost; "
                    "set spool: true on the sink to keep them for the next start, or a longer shutdownTimeout",
                    runner.name,
                    runner.lost,
                )
        log.info("pipeline stopped")
        self._done.set()


def _start_error(c: ComponentConfig, plugins: Plugins, exc: Exception, what: str = "failed to start") -> FlowscopeError:
    """An error naming the instance, its type and its plugin."""
    origin = plugins.origin(c.kind, c.type)
    where = f"{c.kind} {c.name!r} (type {c.type!r}" + (f", plugin {origin!r})" if origin else ")")
    if isinstance(exc, ConfigError):
        return ConfigError([ConfigIssue(where, str(issue)) for issue in exc.issues])
    detail = str(exc) if isinstance(exc, FlowscopeError) else f"{type(exc).__name__}: {exc}"
    return PluginError(f"{where} {what}: {detail}")
