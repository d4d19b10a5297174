"""One sink instance at run time: its bounded buffer, its batching thread and its retries.

Fan-out puts every batch into every sink's buffer; each sink drains its own buffer in its own
thread, so a slow or unreachable sink never stalls the others. ``onFull: dropOldest`` (the
default) discards the oldest buffered records when the buffer is full; ``block`` makes the
pipeline wait instead. Every discarded record is counted. A failed write puts its batch back at the
front of the buffer, so the next attempt after the backoff takes it again with what came since.
With ``spool: true``, what is still undelivered at shutdown is written to a file in ``dataDir`` and
sent first at the next start; the file is deleted once those records are delivered. Without it,
records still undelivered at shutdown are lost: counted (reason ``shutdown``), logged as an error
naming the sink, and the pipeline exits with status 3.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from pathlib import Path
from typing import Literal

from pydantic import Field

from flowscope.core import spool
from flowscope.core.components import Batch, Sink
from flowscope.core.config import Duration, OptionsModel
from flowscope.core.errors import RetryableError
from flowscope.core.metrics import PipelineMetrics, StageCounters


class SinkRuntimeConfig(OptionsModel):
    """Keys of a sink instance handled by the runtime, not by the sink plugin."""

    bufferSize: int = Field(100_000, gt=0)
    onFull: Literal["block", "dropOldest"] = "dropOldest"
    batchSize: int = Field(1000, gt=0)
    flushInterval: Duration = "1s"
    retryBackoff: Duration = "500ms"
    retryMaxBackoff: Duration = "30s"
    maxRetries: int = Field(0, ge=0)
    spool: bool = False


RUNTIME_KEYS = frozenset(SinkRuntimeConfig.model_fields)


class SinkRunner:
    """Buffers records for one sink and writes them in batches from its own thread."""

    def __init__(
        self,
        name: str,
        sink: Sink,
        runtime: SinkRuntimeConfig,
        counters: StageCounters,
        metrics: PipelineMetrics,
        logger: logging.Logger,
        spool_path: Path | None = None,
    ):
        self.name = name
        self.sink = sink
        self.cfg = runtime
        self.counters = counters
        self.logger = logger
        self._gauge = metrics.buffered.labels(instance=name)
        self._ready_gauge = metrics.sink_ready.labels(instance=name)
        self._spooled_counter = metrics.spooled.labels(instance=name)
        self.ready = False  # open, and the last write (if any) succeeded
        self._spool_path = spool_path
        self._spooled: Batch = []  # what this run has written to the spool
        self._replaying = 0  # records restored from the spool and not yet handled; the file stays till then
        self.lost = 0  # records lost because the pipeline stopped before the sink delivered them
        self._full_drops = 0  # buffer_full drops not yet logged
        self._full_logged = 0.0
        self._failures = 0  # consecutive retryable write failures
        self._buffer: deque = deque()
        self._cond = threading.Condition()
        self._first_at: float | None = None  # when the oldest buffered record arrived
        self._closing = False  # no more input will come
        self._deadline = float("inf")  # once stopping: when to give up on undelivered records
        self._opened = False
        self._finished = False  # the sink thread has ended
        self._failed = False  # ... because the sink could not be opened
        self._thread = threading.Thread(target=self._run, name=f"sink-{name}", daemon=True)

    # -- producer side -------------------------------------------------------------------------

    def open(self) -> None:
        """Open the sink now. A RetryableError leaves it to the sink thread to keep trying."""
        self._restore_spool()
        try:
            self.sink.open()
            self._opened = True
            self._set_ready(True)
        except RetryableError as exc:
            self.logger.warning("sink %r is not reachable yet, buffering and retrying: %s", self.name, exc)

    def start(self) -> None:
        self._thread.start()

    @property
    def buffered(self) -> int:
        """Records waiting in the buffer."""
        return len(self._buffer)

    def _set_ready(self, ready: bool) -> None:
        self.ready = ready
        self._ready_gauge.set(1 if ready else 0)

    def _restore_spool(self) -> None:
        if self._spool_path is None:
            return
        try:
            records, damaged = spool.load(self._spool_path)
        except OSError as exc:
            self.logger.error("sink %r: cannot read its spool %s: %s", self.name, self._spool_path, exc)
            return
        if damaged:
            self.counters.dropped(damaged, "spool_damaged")
            self.logger.error("sink %r: skipped %d damaged lines of %s", self.name, damaged, self._spool_path)
        if records:
            self.logger.info("sink %r: %d records restored from %s", self.name, len(records), self._spool_path)
            self._replaying = len(records)
            self.put(records)
        elif self._spool_path.exists():
            spool.remove(self._spool_path)

    def _handled(self, n: int) -> None:
        """``n`` records from the front of the buffer were written or dropped: once the spool's
        records are all handled, the spool goes."""
        if self._replaying and self._spool_path is not None:
            self._replaying = max(0, self._replaying - n)
            if not self._replaying and not self._spooled:
                try:
                    spool.remove(self._spool_path)
                except OSError as exc:
                    self.logger.error(
                        "sink %r: cannot remove its delivered spool %s: %s", self.name, self._spool_path, exc
                    )

    def discard(self) -> None:
        """Close a sink that was opened but will never run (another part failed to start)."""
        if self._opened:
            self._call("close")
            self._opened = False

    def put(self, batch: Batch) -> None:
        """Add a batch (called by the fan-out); drops or blocks when full, as configured."""
        n = len(batch)
        if not n:
            return
        self.counters.received(n)
        capacity = self.cfg.bufferSize
        with self._cond:
            if self._finished:
                self._lose(n)
                return
            if self._first_at is None:
                self._first_at = time.monotonic()
            if self.cfg.onFull == "dropOldest":
                self._put_dropping(batch, capacity)
            else:
                self._put_blocking(batch, capacity)
            self._gauge.set(len(self._buffer))
            self._cond.notify_all()

    def _put_dropping(self, batch: Batch, capacity: int) -> None:
        buffer = self._buffer
        overflow = len(buffer) + len(batch) - capacity
        if overflow > 0:
            if len(batch) >= capacity:
                buffer.clear()
                batch = batch[len(batch) - capacity :]
            else:
                for _ in range(overflow):
                    buffer.popleft()
            self._drop_full(overflow)
        buffer.extend(batch)

    def _drop_full(self, n: int) -> None:
        """Count records pushed out of a full buffer (the oldest) and log them, at most every 10 s."""
        self.counters.dropped(n, "buffer_full")
        self._handled(n)
        self._full_drops += n
        now = time.monotonic()
        if now - self._full_logged >= 10:
            self.logger.warning(
                "sink %r: its buffer (bufferSize %d) is full: dropped the %d oldest records; the sink is slower "
                "than its input or cannot deliver",
                self.name,
                self.cfg.bufferSize,
                self._full_drops,
            )
            self._full_drops, self._full_logged = 0, now

    def _put_blocking(self, batch: Batch, capacity: int) -> None:
        buffer = self._buffer
        start = 0
        while start < len(batch):
            if self._finished or time.monotonic() >= self._deadline:  # nobody will make room
                self._lose(len(batch) - start)
                return
            space = capacity - len(buffer)
            if space <= 0:
                self._cond.notify_all()
                self._cond.wait(0.1)
                continue
            buffer.extend(batch[start : start + space])
            start += space

    def set_deadline(self, deadline: float) -> None:
        """Shutdown has begun: give up blocking, retrying and delivering at ``deadline`` (monotonic)."""
        with self._cond:
            self._deadline = min(self._deadline, deadline)
            self._cond.notify_all()

    def close(self, deadline: float) -> None:
        """No more input will come; deliver what is buffered until ``deadline`` (monotonic)."""
        with self._cond:
            self._closing = True
            self._deadline = min(self._deadline, deadline)
            self._cond.notify_all()

    def join(self, timeout: float | None) -> bool:
        self._thread.join(timeout)
        return not self._thread.is_alive()

    def abandon(self) -> int:
        """The sink takes no more records; spool what is still buffered, or count it as dropped."""
        with self._cond:
            self._finished = True
            left = list(self._buffer)
            self._buffer.clear()
            self._gauge.set(0)
            self._cond.notify_all()
        if left and self._spool_path is not None and self._spool(left):
            return 0
        if left:
            self._lose(len(left))
        return len(left)

    def _lose(self, n: int) -> None:
        """Records that will never be delivered because the sink failed or the pipeline stopped."""
        reason = self._lost_reason()
        self.counters.dropped(n, reason)
        if reason == "shutdown":  # a sink that failed for good said so, with an error, when it failed
            with self._cond:
                self.lost += n

    def _spool(self, records: Batch) -> bool:
        try:
            spool.save(self._spool_path, self._spooled + records)
        except (OSError, TypeError) as exc:
            self.logger.error(
                "sink %r: cannot spool %d records to %s: %s", self.name, len(records), self._spool_path, exc
            )
            return False
        self._spooled += records
        self._replaying = 0  # the restored records not yet delivered are in this spool again
        self._spooled_counter.inc(len(records))
        self.logger.warning(
            "sink %r: %d undelivered records spooled to %s; they are sent first at the next start",
            self.name,
            len(records),
            self._spool_path,
        )
        return True

    def _lost_reason(self) -> str:
        return "sink_failed" if self._failed else "shutdown"

    # -- sink thread ---------------------------------------------------------------------------

    def _run(self) -> None:
        try:
            if not self._opened and not self._open_with_retry():
                return
            while True:
                batch = self._next_batch()
                if batch is None:
                    break
                self._write(batch)
            self._call("flush")
        finally:
            if self._opened:
                self._call("close")
            self.abandon()

    def _open_with_retry(self) -> bool:
        attempt = 0
        while True:
            attempt += 1
            if not self._sleep(self._backoff(attempt)):
                return False
            try:
                self.sink.open()
                self._opened = True
                self._set_ready(True)
                self.logger.info("sink %r is open after %d attempts", self.name, attempt + 1)
                return True
            except RetryableError as exc:
                self.counters.retried()
                log = self.logger.warning if attempt % 10 == 0 else self.logger.debug
                log("sink %r: open failed (attempt %d), retrying: %s", self.name, attempt + 1, exc)
            except Exception as exc:
                self._failed = True
                self.counters.error()
                self.logger.error(
                    "sink %r failed to open: %s: %s",
                    self.name,
                    type(exc).__name__,
                    exc,
                    exc_info=self.logger.isEnabledFor(logging.DEBUG),
                )
                return False

    def _next_batch(self) -> Batch | None:
        """Wait for a full batch, the flush interval, or shutdown; ``None`` when done."""
        size, interval = self.cfg.batchSize, self.cfg.flushInterval
        with self._cond:
            while True:
                n = len(self._buffer)
                now = time.monotonic()
                if now >= self._deadline:
                    return None
                if n >= size or (n and (self._closing or now >= (self._first_at or now) + interval)):
                    break
                if self._closing and not n:
                    return None
                self._cond.wait((self._first_at + interval - now) if n and self._first_at else 0.5)
            buffer = self._buffer
            if n <= size:  # all of it: copied at C speed
                batch = list(buffer)
                buffer.clear()
            else:
                popleft = buffer.popleft
                batch = [popleft() for _ in range(size)]
            if not buffer:
                self._first_at = None
            self._gauge.set(len(buffer))
            self._cond.notify_all()
            return batch

    def _write(self, batch: Batch) -> None:
        """Write one batch; on a retryable failure put it back at the front and wait the backoff."""
        try:
            written = self.sink.write(batch)
        except RetryableError as exc:
            self._retry_later(batch, exc)
        except Exception as exc:
            self.counters.error()
            self.counters.dropped(len(batch), "error")
            self._handled(len(batch))
            self.logger.error(
                "sink %r: dropped %d records, write raised %s: %s",
                self.name,
                len(batch),
                type(exc).__name__,
                exc,
                exc_info=self.logger.isEnabledFor(logging.DEBUG),
            )
        else:
            self._failures = 0
            self._set_ready(True)
            # a sink that dropped some records itself (and counted them) returns how many it wrote
            self.counters.emitted(written if type(written) is int else len(batch))
            self._handled(len(batch))
            if not self._buffer:
                self._call("flush")

    def _retry_later(self, batch: Batch, exc: RetryableError) -> None:
        self._failures += 1
        self._set_ready(False)
        self.counters.retried()
        if self.cfg.maxRetries and self._failures > self.cfg.maxRetries:
            self._failures = 0
            self.counters.dropped(len(batch), "retries_exhausted")
            self._handled(len(batch))
            self.logger.error(
                "sink %r: dropped %d records after %d retries: %s", self.name, len(batch), self.cfg.maxRetries, exc
            )
            return
        delay = self._backoff(self._failures)
        log = self.logger.warning if self._failures == 1 or self._failures % 10 == 0 else self.logger.debug
        log(
            "sink %r: write of %d records failed (attempt %d), retrying in %.1fs: %s",
            self.name,
            len(batch),
            self._failures,
            delay,
            exc,
        )
        self._requeue(batch)
        self._sleep(delay)

    def _requeue(self, batch: Batch) -> None:
        """Put a failed batch back at the front, in order; ``dropOldest`` still caps the buffer."""
        with self._cond:
            buffer = self._buffer
            buffer.extendleft(reversed(batch))
            overflow = len(buffer) - self.cfg.bufferSize
            if overflow > 0 and self.cfg.onFull == "dropOldest":
                for _ in range(overflow):
                    buffer.popleft()
                self._drop_full(overflow)
            self._first_at = time.monotonic() - self.cfg.flushInterval  # due again right after the backoff
            self._gauge.set(len(buffer))

    def _backoff(self, attempt: int) -> float:
        if attempt <= 0:
            return 0.0
        return min(self.cfg.retryBackoff * 2 ** (attempt - 1), self.cfg.retryMaxBackoff)

    def _sleep(self, delay: float) -> bool:
        """Wait ``delay`` seconds; ``False`` if the shutdown deadline comes first."""
        until = time.monotonic() + delay
        with self._cond:
            while True:
                now = time.monotonic()
                if now >= self._deadline:
                    return False
                if now >= until:
                    return True
                self._cond.wait(min(until, self._deadline) - now)

    def _call(self, method: str) -> None:
        try:
            getattr(self.sink, method)()
        except Exception as exc:
            self.counters.error()
            self.logger.error(
                "sink %r: %s() raised %s: %s",
                self.name,
                method,
                type(exc).__name__,
                exc,
                exc_info=self.logger.isEnabledFor(logging.DEBUG),
            )
