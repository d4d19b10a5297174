"""``json`` sink: one JSON object per line in the Antrea Flow Aggregator's JSON format.

Each record is written as ``{"@timestamp":"<now, RFC 3339>","ipfix":{...}}`` followed by a
newline, as go-ipfix's JSON exporting process does: keys sorted, no spaces, ``<``, ``>`` and
``&`` escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``; byte strings (octetArray) in base64.
"""

from __future__ import annotations

import base64
import json
import sys
import time
from pathlib import Path
from typing import IO, Any

from pydantic import Field

from flowscope.core.components import Batch, Sink
from flowscope.core.config import OptionsModel
from flowscope.core.errors import RetryableError
from flowscope.core.hookspecs import hookimpl

_GO_ESCAPES = str.maketrans({"<": "\\u003c", ">": "\\u003e", "&": "\\u0026", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


_encoder = json.JSONEncoder(sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=_default)


def encode_record(record: dict[str, Any], timestamp: str) -> str:
    """One record as an Antrea JSON line (without the newline)."""
    body = _encoder.encode(record).translate(_GO_ESCAPES)
    return f'{{"@timestamp":"{timestamp}","ipfix":{body}}}'


def rfc3339_now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())


class JsonOptions(OptionsModel):
    path: str = Field(description="file to append to, or '-' for standard output")


class JsonSink(Sink):
    """Appends records as JSON lines to a file or standard output."""

    Options = JsonOptions

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.path: str = options["path"]
        self._stream: IO[str] | None = None

    def open(self) -> None:
        if self.path == "-":
            self._stream = sys.stdout
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(target, "a", encoding="utf-8")  # noqa: SIM115 - held open until close()

    def write(self, records: Batch) -> None:
        assert self._stream is not None
        timestamp = rfc3339_now()
        text = "".join(encode_record(record, timestamp) + "\n" for record in records)
        try:
            self._stream.write(text)
        except BrokenPipeError:
            raise  # the reader went away: retrying cannot help
        except OSError as exc:  # disk full, closed pipe: keep the batch and try again
            raise RetryableError(f"cannot write to {self.path}: {exc}") from exc

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        if self._stream is not None and self._stream is not sys.stdout:
            self._stream.close()
        self._stream = None


@hookimpl
def register_sinks(register):
    register("json", JsonSink)
