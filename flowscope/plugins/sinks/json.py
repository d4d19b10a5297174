"""``json`` sink: one JSON object per line in the Antrea Flow Aggregator's JSON format.

Each record is written as ``{"@timestamp":"<now, RFC 3339>","ipfix":{...}}`` followed by a
newline, as go-ipfix's JSON exporting process does: keys sorted, no spaces, ``<``, ``>`` and
``&`` escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``; byte strings (octetArray) in base64.
"""

from __future__ import annotations

import base64
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import Field

from flowscope.core.components import Batch, Sink
from flowscope.core.config import OptionsModel
from flowscope.core.errors import RetryableError
from flowscope.core.hookspecs import hookimpl

# What Go's encoding/json escapes inside strings, as UTF-8 bytes.
_GO_ESCAPES = (
    (b"<", b"\\u003c"),
    (b">", b"\\u003e"),
    (b"&", b"\\u0026"),
    ("\u2028".encode(), b"\\u2028"),
    ("\u2029".encode(), b"\\u2029"),
)
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_NON_STR_KEYS


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def encode_body(record: dict[str, Any]) -> bytes:
    """A record as compact JSON with sorted keys and Go's HTML escaping."""
    body = orjson.dumps(record, default=_default, option=_OPTIONS)
    for raw, escaped in _GO_ESCAPES:
        if raw in body:
            body = body.replace(raw, escaped)
    return body


def encode_record(record: dict[str, Any], timestamp: str) -> str:
    """One record as an Antrea JSON line (without the newline)."""
    return _line(encode_body(record), timestamp.encode()).decode()


def _line(body: bytes, timestamp: bytes) -> bytes:
    return b'{"@timestamp":"' + timestamp + b'","ipfix":' + body + b"}"


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
        self._stream: IO[bytes] | None = None

    def open(self) -> None:
        if self.path == "-":
            self._stream = sys.stdout.buffer
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(target, "ab")  # noqa: SIM115 - held open until close()

    def write(self, records: Batch) -> None:
        assert self._stream is not None
        timestamp = rfc3339_now().encode()
        text = b"".join([_line(encode_body(record), timestamp) + b"\n" for record in records])
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
        if self._stream is not None and self._stream is not sys.stdout.buffer:
            self._stream.close()
        self._stream = None


@hookimpl
def register_sinks(register):
    register("json", JsonSink)
