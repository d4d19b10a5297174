"""``flowlogger`` sink: the Antrea Flow Aggregator's flow log, one CSV line per record, in a rotated file.

As Antrea's ``flowLogger`` (``pkg/flowaggregator/exporter/log.go``, ``flowlogger/logger.go``): the
records the ``filters`` keep are written as the flow logger's lines
(:func:`~flowscope.plugins.sinks.csvformat.logger_line`) to ``path``, which rotates as lumberjack
does (:mod:`~flowscope.plugins.sinks.rotation`). Records the filters leave out are counted as
dropped (``reason="filtered"``), not as errors.

Each batch is written with one ``write`` per file: the sink keeps nothing in memory between
batches, so a record is in the file once its batch is written (the runtime's ``flushInterval``, 1 s
by default, bounds how long it waits for its batch; Antrea flushes every 5 s). A failed write (a
full disk, a file that cannot be made) cuts the file back to its last whole line and raises
:class:`~flowscope.RetryableError`, so the runtime keeps the batch and tries again; lines of the
batch already stored before a rotation are remembered and not written twice.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator

from flowscope.core.components import Batch, Record, Sink
from flowscope.core.config import OptionsModel
from flowscope.core.errors import ConfigIssue, FlowscopeError, RetryableError
from flowscope.core.hookspecs import hookimpl
from flowscope.core.preflight import writable_directory, writable_file
from flowscope.plugins.sinks.csvformat import FIELDS, logger_line
from flowscope.plugins.sinks.rotation import MEGABYTE, PartialWrite, RotatingFile

RuleAction = Literal["None", "Allow", "Drop", "Reject"]
RULE_ACTION_VALUES: dict[str, int] = {"None": 0, "Allow": 1, "Drop": 2, "Reject": 3}
"""A filter's action names and the ``...NetworkPolicyRuleAction`` values they stand for."""


def default_path() -> str:
    """Antrea's default: ``antrea-flows.log`` in the temporary directory (``$TMPDIR``, else ``/tmp``)."""
    return os.path.join(tempfile.gettempdir(), "antrea-flows.log")


class FlowFilter(OptionsModel):
    """One filter: a record passes when each non-empty list holds its rule action."""

    ingressNetworkPolicyRuleActions: list[RuleAction] = Field(
        default_factory=list, description="ingress rule actions to keep (None, Allow, Drop, Reject); empty: any"
    )
    egressNetworkPolicyRuleActions: list[RuleAction] = Field(
        default_factory=list, description="egress rule actions to keep (None, Allow, Drop, Reject); empty: any"
    )


class FlowLoggerOptions(OptionsModel):
    path: str = Field(default_factory=default_path, description="the log file (its directory is created)")
    maxSize: float = Field(100, gt=0, description="size in MB (MiB) at which the file is rotated; may be fractional")
    maxBackups: int = Field(3, ge=0, description="rotated files kept at most; 0 keeps all (unless maxAge)")
    maxAge: int = Field(0, ge=0, description="days a rotated file is kept, by the time in its name; 0 keeps all")
    compress: bool = Field(True, description="gzip rotated files")
    recordFormat: str = Field("CSV", description="the only format Antrea's flow logger has: CSV")
    filters: list[FlowFilter] = Field(
        default_factory=list, description="records to log: those any filter matches; none: every record"
    )
    prettyPrint: bool = Field(True, description="protocol, rule actions and policy types as names, not numbers")

    @field_validator("recordFormat")
    @classmethod
    def _csv_only(cls, value: str) -> str:
        if value != "CSV":
            raise ValueError("the flow logger writes CSV only; set recordFormat to CSV or leave it out")
        return value


def compile_filters(filters: list[FlowFilter]) -> list[tuple[frozenset[int], frozenset[int]]]:
    """Each filter as (ingress actions, egress actions), as values; an empty set allows any."""
    return [
        (
            frozenset(RULE_ACTION_VALUES[a] for a in f.ingressNetworkPolicyRuleActions),
            frozenset(RULE_ACTION_VALUES[a] for a in f.egressNetworkPolicyRuleActions),
        )
        for f in filters
    ]


_INGRESS_ACTION = FIELDS["ingressNetworkPolicyRuleAction"]
_EGRESS_ACTION = FIELDS["egressNetworkPolicyRuleAction"]


def passes(filters: list[tuple[frozenset[int], frozenset[int]]], record: Record) -> bool:
    """Antrea's ``applyFilters``: no filters keep everything; else the filters are OR-ed, and within one
    filter every non-empty list must hold the record's action (a missing action is 0, ``None``)."""
    if not filters:
        return True
    ingress, egress = _INGRESS_ACTION(record), _EGRESS_ACTION(record)
    return any((not i or ingress in i) and (not e or egress in e) for i, e in filters)


class FlowLoggerSink(Sink):
    """Writes records to a local, rotated CSV flow log, as Antrea's Flow Aggregator does."""

    Options = FlowLoggerOptions

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.filters = compile_filters(options["filters"])
        self.pretty: bool = options["prettyPrint"]
        self.file = RotatingFile(
            options["path"],
            int(options["maxSize"] * MEGABYTE),
            options["maxBackups"],
            options["maxAge"],
            options["compress"],
            context.logger,
        )
        # records of a batch that failed part-way, handled before the failure: id -> (record, drop reason or None)
        self._ahead: dict[int, tuple[Record, str | None]] = {}

    @classmethod
    def preflight(cls, options: dict) -> list[ConfigIssue]:
        """The file can be written, and so can its directory (rotation makes files there)."""
        path = Path(options["path"])
        issues = writable_file("path", path)
        if issues or not path.exists():
            return issues
        if not path.is_file():
            return [ConfigIssue("path", f"{str(path)!r} is not a regular file; the flow log rotates: give a file")]
        return writable_directory("path", path.parent, f"the directory of {str(path)!r}, where it rotates,")

    def open(self) -> None:
        try:
            self.file.open()
        except OSError as exc:
            raise FlowscopeError(
                f"cannot open {str(self.file.path)!r} for writing: {exc.strerror or exc}; check the flowlogger path"
            ) from None

    def write(self, records: Batch) -> int:
        verdicts = self._replay(records)  # index -> why the record was dropped, or None once written
        lines: list[str] = []
        owners: list[int] = []  # the index in records of each line's record
        invalid: ValueError | None = None
        for index in range(len(verdicts), len(records)):
            record = records[index]
            try:
                if not passes(self.filters, record):
                    verdicts[index] = "filtered"
                    continue
                lines.append(logger_line(record, self.pretty))
            except ValueError as exc:
                verdicts[index] = "invalid"
                invalid = exc
                continue
            owners.append(index)
        if invalid is not None:
            count = sum(reason == "invalid" for reason in verdicts.values())
            self.context.logger.warning("flow log: %d record(s) not written, e.g.: %s", count, invalid)
        if lines:
            text = ("\n".join(lines) + "\n").encode()
            try:
                self.file.write(text)
            except PartialWrite as exc:
                done = text.count(b"\n", 0, exc.written)
                # what the retry of this batch must not do again: the records before the first line not written
                self._ahead = {id(records[i]): (records[i], verdicts.get(i)) for i in range(owners[done])}
                raise RetryableError(
                    f"cannot write to {self.file.path}: {exc}; {len(lines) - done} lines kept for a retry"
                ) from None
        written = len(lines)
        dropped: dict[str, int] = {}
        for reason in verdicts.values():
            if reason is None:
                written += 1
            else:
                dropped[reason] = dropped.get(reason, 0) + 1
        for reason, count in dropped.items():
            self.context.counters.dropped(count, reason)
        return written

    def _replay(self, records: Batch) -> dict[int, str | None]:
        """What a failed attempt did with the leading records of ``records`` (the runtime retries a batch
        from its front): index -> drop reason, or ``None`` for a record already written."""
        ahead, self._ahead = self._ahead, {}
        verdicts: dict[int, str | None] = {}
        for index, record in enumerate(records):
            found = ahead.get(id(record))
            if found is None or found[0] is not record:
                break
            verdicts[index] = found[1]
        return verdicts

    def close(self) -> None:
        self.file.close()


@hookimpl
def register_sinks(register):
    register("flowlogger", FlowLoggerSink)
