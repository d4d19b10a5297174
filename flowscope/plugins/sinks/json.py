"""``json`` sink: one JSON object per line in the Antrea Flow Aggregator's JSON format.

Each record is written as ``{"@timestamp":"<now, RFC 3339>","ipfix":{...}}`` followed by a
newline, as go-ipfix's JSON exporting process does: keys sorted, no spaces, ``<``, ``>`` and
``&`` escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``; byte strings (octetArray) in base64.
"""

from __future__ import annotations

import base64
import socket
import sys
import time
from pathlib import Path
from typing import IO, Any

import orjson
from pydantic import Field, model_validator

from flowscope.core.components import Batch, Sink
from flowscope.core.config import OptionsModel, address_type
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
    path: str | None = Field(None, description="file to append to, or '-' for standard output")
    address: address_type(protocols=("tcp", "udp"), default_proto="tcp") | None = Field(  # type: ignore[valid-type]
        None, description="send the lines to a TCP or UDP collector instead, e.g. Logstash on :4736"
    )

    @model_validator(mode="after")
    def _one_destination(self) -> JsonOptions:
        if (self.path is None) == (self.address is None):
            raise ValueError("give exactly one of path (a file, or '-') and address (<host>:<port>[:tcp|udp])")
        return self


class JsonSink(Sink):
    """Appends records as JSON lines to a file or standard output."""

    Options = JsonOptions

    def __init__(self, options: dict, context):
        super().__init__(options, context)
        self.path: str | None = options["path"]
        self.address = options["address"]
        self._stream: IO[bytes] | None = None
        self._socket: socket.socket | None = None

    def open(self) -> None:
        if self.address is not None:
            self._connect()
            return
        if self.path == "-":
            self._stream = sys.stdout.buffer
            return
        target = Path(self.path)
        target.parent.mkdir(parents=True, exist_ok=True)
        self._stream = open(target, "ab")  # noqa: SIM115 - held open until close()

    def _connect(self) -> None:
        kind = socket.SOCK_DGRAM if self.address.proto == "udp" else socket.SOCK_STREAM
        try:
            self._socket = (
                socket.create_connection((self.address.host, self.address.port), timeout=10)
                if kind == (socket.SOCK_STREAM)
                else _udp(self.address.host, self.address.port)
            )
        except OSError as exc:
            raise RetryableError(f"cannot connect to {self.address}: {exc}") from exc

    def write(self, records: Batch) -> None:
        timestamp = rfc3339_now().encode()
        lines = [_line(encode_body(record), timestamp) + b"\n" for record in records]
        if self.address is not None:
            self._send(lines)
            return
        assert self._stream is not None
        text = b"".join(lines)
        try:
            self._stream.write(text)
        except BrokenPipeError:
            raise  # the reader went away: retrying cannot help
        except OSError as exc:  # disk full, closed pipe: keep the batch and try again
            raise RetryableError(f"cannot write to {self.path}: {exc}") from exc

    def _send(self, lines: list[bytes]) -> None:
        if self._socket is None:
            self._connect()
        assert self._socket is not None
        try:
            if self.address.proto == "udp":  # one JSON object per datagram
                for line in lines:
                    self._socket.send(line)
            else:
                self._socket.sendall(b"".join(lines))
        except OSError as exc:
            self._socket.close()
            self._socket = None
            raise RetryableError(f"sending to {self.address} failed: {exc}") from exc

    def flush(self) -> None:
        if self._stream is not None:
            self._stream.flush()

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._stream is not None and self._stream is not sys.stdout.buffer:
            self._stream.close()
        self._stream = None


def _udp(host: str, port: int) -> socket.socket:
    family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind)
    sock.connect(address)
    return sock


@hookimpl
def register_sinks(register):
    register("json", JsonSink)
