"""``jsonl`` source: records from a file (or stdin), one JSON object per line.

Lines in the Antrea JSON format written by the ``json`` sink (``{"@timestamp": ..., "ipfix":
{...}}``) are unwrapped to their ``ipfix`` record, so the two plugins round-trip. Blank lines are
skipped; a line that is not a JSON object is counted as dropped (reason ``malformed``) and logged
with its line number.
"""

from __future__ import annotations

import sys
import threading
import time
from pathlib import Path
from typing import IO

import orjson
from pydantic import Field

from flowscope.core.components import Emit, Record, Source
from flowscope.core.config import Duration, OptionsModel
from flowscope.core.errors import ConfigIssue
from flowscope.core.hookspecs import hookimpl
from flowscope.core.preflight import readable_file


class JsonlOptions(OptionsModel):
    path: str = Field(description="file to read, or '-' for standard input")
    follow: bool = Field(False, description="keep reading lines appended to the file, like tail -f")
    batchSize: int = Field(1000, gt=0, description="records per emitted batch")
    pollInterval: Duration = Field("200ms", description="with follow: how often to look for new lines")


class JsonlSource(Source):
    """Reads JSON lines; finite unless ``follow: true``."""

    Options = JsonlOptions

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.path: str = options["path"]
        self.follow: bool = options["follow"]
        self.batch_size: int = options["batchSize"]
        self.poll_interval: float = options["pollInterval"]
        self._stopped = threading.Event()

    @classmethod
    def preflight(cls, options: dict) -> list[ConfigIssue]:
        path = options["path"]
        if path == "-" or (options["follow"] and not Path(path).exists()):  # follow: read once it appears
            return []
        return readable_file("path", path, "file of JSON lines")

    def stop(self) -> None:
        self._stopped.set()

    def run(self, emit: Emit) -> None:
        if self.path == "-":
            self._read(sys.stdin, emit, follow=False)
            return
        while not Path(self.path).exists():  # follow mode: wait for the file to appear
            if self._stopped.wait(self.poll_interval):
                return
        with open(self.path, encoding="utf-8", errors="replace") as stream:
            self._read(stream, emit, follow=self.follow)

    def _read(self, stream: IO[str], emit: Emit, follow: bool) -> None:
        batch: list[Record] = []
        line_number = 0
        seen = 0  # non-blank lines since the last emit, counted as received
        pending = ""
        counters = self.context.counters

        def hand_over() -> None:
            nonlocal batch, seen
            counters.received(seen)
            seen = 0
            if batch:
                emit(batch)
                batch = []

        while not self._stopped.is_set():
            line = stream.readline()
            if not line:
                hand_over()
                if not follow:
                    break
                time.sleep(self.poll_interval)
                continue
            if follow and not line.endswith("\n"):
                pending += line  # a line still being written
                continue
            if pending:
                line, pending = pending + line, ""
            line_number += 1
            if line.isspace():
                continue
            seen += 1
            record = self._parse(line, line_number)
            if record is not None:
                batch.append(record)
                if len(batch) >= self.batch_size:
                    hand_over()
        hand_over()

    def _parse(self, line: str, line_number: int) -> Record | None:
        try:
            return decode_record(line)
        except NotARecord as exc:
            return self._malformed(line_number, str(exc))

    def _malformed(self, line_number: int, why: str) -> None:
        self.context.counters.dropped(1, "malformed")
        self.context.logger.warning("%s line %d skipped: %s", self.path, line_number, why)
        return None


class NotARecord(ValueError):
    """A line (or message) that is not a JSON object; the text says what it is instead."""


def decode_record(text: str | bytes) -> Record:
    """One JSON object as a record; an Antrea JSON line (the ``json`` sink's) is unwrapped to its
    ``ipfix`` record. Raises :class:`NotARecord` for anything else."""
    try:
        value = orjson.loads(text)
    except orjson.JSONDecodeError as exc:
        raise NotARecord(f"not valid JSON ({exc})") from None
    if type(value) is not dict:
        kind = {list: "list", str: "string", int: "number", float: "number", bool: "boolean"}.get(type(value), "null")
        raise NotARecord(f"a JSON {kind}, not an object")
    wrapped = value.get("ipfix")
    # {"ipfix": {...}} or {"@timestamp": ..., "ipfix": {...}}, told apart without making a set of the keys
    if type(wrapped) is dict and (len(value) == 1 or (len(value) == 2 and "@timestamp" in value)):
        return wrapped
    return value


@hookimpl
def register_sources(register):
    register("jsonl", JsonlSource)
