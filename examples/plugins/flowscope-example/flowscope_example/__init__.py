"""An example third-party flowscope plugin.

It registers two types, found by flowscope through the ``flowscope`` entry-point group declared in
this package's ``pyproject.toml``:

- the ``bytes-per-packet`` enricher adds ``octetTotalCount // packetTotalCount`` to every record;
- the ``csv`` sink appends records as CSV rows with a fixed list of columns.
"""

from __future__ import annotations

import csv
import io
from pathlib import Path
from typing import IO, Any

from pydantic import Field

import flowscope

__version__ = "0.1.0"

__all__ = ["BytesPerPacket", "CsvSink", "register_enrichers", "register_sinks"]


class BytesPerPacket(flowscope.Enricher):
    """Adds the average packet size (in bytes) of each flow; 0 when it has no packets."""

    class Options(flowscope.OptionsModel):
        field: str = Field("bytesPerPacket", min_length=1, description="name of the field to add")

    def __init__(self, options: dict[str, Any], context: flowscope.Context):
        super().__init__(options, context)
        self.field: str = options["field"]

    def enrich(self, records: list[dict[str, Any]]) -> list[dict[str, Any]]:
        for record in records:
            packets = record.get("packetTotalCount") or 0
            octets = record.get("octetTotalCount") or 0
            record[self.field] = octets // packets if packets > 0 else 0
        return records


class CsvSink(flowscope.Sink):
    """Appends one CSV row per record; the header row is written once, when the file is new."""

    class Options(flowscope.OptionsModel):
        path: str = Field(description="CSV file to append to (its directory is created if missing)")
        columns: list[str] = Field(min_length=1, description="record fields to write, in this order")

    def __init__(self, options: dict[str, Any], context: flowscope.Context):
        super().__init__(options, context)
        self.path = Path(options["path"])
        self.columns: list[str] = list(options["columns"])
        self._stream: IO[str] | None = None
        self._needs_header = False

    def open(self) -> None:
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._needs_header = not self.path.exists() or self.path.stat().st_size == 0
            self._stream = open(self.path, "a", encoding="utf-8", newline="")  # noqa: SIM115 closed in close()
        except OSError as exc:  # e.g. a volume not mounted yet: the runtime retries open()
            raise flowscope.RetryableError(f"cannot open {self.path}: {exc}") from exc

    def write(self, records: list[dict[str, Any]]) -> None:
        assert self._stream is not None
        # Format the whole batch first and write it in one call, so a retried batch is not
        # preceded by half of itself.
        buffer = io.StringIO()
        writer = csv.writer(buffer)
        if self._needs_header:
            writer.writerow(self.columns)
        for record in records:
            writer.writerow(["" if record.get(c) is None else record[c] for c in self.columns])
        try:
            self._stream.write(buffer.getvalue())
            self._stream.flush()  # surface "disk full" here, where it can still be retried
        except OSError as exc:  # disk full and the like: keep the batch and try again
            raise flowscope.RetryableError(f"cannot write to {self.path}: {exc}") from exc
        self._needs_header = False

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None:
            self._stream.close()
            self._stream = None


@flowscope.hookimpl
def register_enrichers(register):
    register("bytes-per-packet", BytesPerPacket)


@flowscope.hookimpl
def register_sinks(register):
    register("csv", CsvSink)
