"""``json`` sink: one JSON object per line in the Antrea Flow Aggregator's JSON format.

Each record is written as ``{"@timestamp":"<now, RFC 3339>","ipfix":{...}}`` followed by a
newline, as go-ipfix's JSON exporting process does: keys sorted, no spaces, ``<``, ``>`` and
``&`` escaped as ``\\u003c``, ``\\u003e``, ``\\u0026``; byte strings (octetArray) in base64.
"""

from __future__ import annotations

import base64
import contextlib
import errno
import os
import socket
import sys
import time
from pathlib import Path
from typing import Any

import orjson
from pydantic import Field, model_validator

from flowscope.core import speedups
from flowscope.core.components import Batch, Sink
from flowscope.core.config import OptionsModel, address_type
from flowscope.core.errors import ConfigIssue, FlowscopeError, RetryableError
from flowscope.core.hookspecs import hookimpl
from flowscope.core.preflight import writable_file
from flowscope.plugins.sinks.streams import check_open

EXTENSION = speedups.built("flowscope.plugins.sinks._jsonlines")
"""The C line encoder (``_jsonlines.c``), or ``None`` when it was not built."""

# What Go's encoding/json escapes inside strings, as UTF-8 bytes; U+2028 and U+2029 both begin with 0xE2.
_HTML_ESCAPES = ((b"<", b"\\u003c"), (b">", b"\\u003e"), (b"&", b"\\u0026"))
_LINE_ESCAPES = (("\u2028".encode(), b"\\u2028"), ("\u2029".encode(), b"\\u2029"))
_OPTIONS = orjson.OPT_SORT_KEYS | orjson.OPT_APPEND_NEWLINE
_ANY_KEYS = _OPTIONS | orjson.OPT_NON_STR_KEYS  # slower: only for records that need it
_KEEP = 64 << 20  # the most buffer memory a sink keeps between batches


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return base64.b64encode(value).decode("ascii")
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    return str(value)


def encode_line(record: dict[str, Any], timestamp: str) -> bytes:
    """One record as an Antrea JSON line, newline included: keys sorted (``@timestamp`` comes
    before ``ipfix``), no spaces, Go's HTML escaping."""
    document = {"@timestamp": timestamp, "ipfix": record}
    try:
        line = orjson.dumps(document, default=_default, option=_OPTIONS)
    except orjson.JSONEncodeError:  # a key that is not a str, or a value orjson refuses either way
        line = orjson.dumps(document, default=_default, option=_ANY_KEYS)
    for raw, escaped in _HTML_ESCAPES:
        if raw in line:
            line = line.replace(raw, escaped)
    if b"\xe2" in line:  # one memchr instead of two searches for three-byte sequences
        for raw, escaped in _LINE_ESCAPES:
            line = line.replace(raw, escaped)
    return line


def encode_record(record: dict[str, Any], timestamp: str) -> str:
    """One record as an Antrea JSON line (without the newline)."""
    return encode_line(record, timestamp)[:-1].decode()


class _Text:
    """A batch's lines, in a buffer kept from batch to batch: built in fresh memory each time, the
    text makes the allocator hand pages back to the system and fault them in again.

    The lines are made by the C extension's ``LineEncoder`` (:data:`EXTENSION`) when it was built
    and ``FLOWSCOPE_PURE_PYTHON`` is unset (the same lines, with the records' sorted key order kept
    for the next ones), or by :func:`encode_line`.
    """

    def __init__(self, native: bool | None = None) -> None:
        if native is None:
            native = speedups.wanted(EXTENSION)
        self.encoder = EXTENSION.LineEncoder() if native else None
        self.buffer = bytearray()

    def fill(self, records: Batch, timestamp: str) -> memoryview:
        """The lines of the records; release the view before the next call."""
        buffer = self.buffer
        if self.encoder is not None and type(records) is list:
            end = self.encoder.fill(buffer, records, timestamp, encode_line)
        else:
            end = 0
            for record in records:
                line = encode_line(record, timestamp)
                start, end = end, end + len(line)
                buffer[start:end] = line  # in place, or growing the buffer at its end
        if len(buffer) > _KEEP:
            self.buffer = bytearray()
        return memoryview(buffer)[:end]


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
        self._fd: int | None = None  # the file or FIFO, written without a user-space buffer
        self._stdout = False
        self._socket: socket.socket | None = None
        self._text = _Text()

    @classmethod
    def preflight(cls, options: dict) -> list[ConfigIssue]:
        """The file can be written (a FIFO too)."""
        path = options["path"]
        if path is None or path == "-" or Path(path).is_fifo():
            return []
        return writable_file("path", path)

    def open(self) -> None:
        if self.address is not None:
            self._connect()
            return
        if self.path == "-":
            self._stdout = True
            return
        self._fd = _open_for_append(Path(self.path))

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
        timestamp = rfc3339_now()
        if self.address is not None:
            self._send([encode_line(record, timestamp) for record in records])
            return
        text = self._text.fill(records, timestamp)
        try:
            if self._stdout:
                sys.stdout.buffer.write(text)
                sys.stdout.buffer.flush()
            else:
                self._append(text)
        finally:
            text.release()

    def _append(self, text: memoryview) -> None:
        """The whole batch, or nothing: a failed write is cut back to the last whole line."""
        if self._fd is None:  # a FIFO that lost its reader
            try:
                self._fd = _open_for_append(Path(self.path))
            except FlowscopeError as exc:
                raise RetryableError(str(exc)) from None
        fd = self._fd
        try:
            start = os.lseek(fd, 0, os.SEEK_END)
        except OSError:  # a FIFO: nothing to cut back
            start = None
        try:
            while text:
                written = os.write(fd, text)
                text = text[written:]
        except OSError as exc:  # a full disk, a quota, a reader gone: keep the batch and try again
            if start is not None:
                with contextlib.suppress(OSError):
                    os.ftruncate(fd, start)
            else:
                self._close_file()
            raise RetryableError(f"cannot write to {self.path}: {exc.strerror or exc}") from exc

    def _send(self, lines: list[bytes]) -> None:
        if self._socket is None:
            self._connect()
        assert self._socket is not None
        try:
            if self.address.proto == "udp":  # one JSON object per datagram
                for line in lines:
                    self._socket.send(line)
            else:
                check_open(self._socket)  # not into a connection the collector has closed meanwhile
                self._socket.sendall(b"".join(lines))
        except OSError as exc:
            self._socket.close()
            self._socket = None
            raise RetryableError(f"sending to {self.address} failed: {exc}") from exc

    def close(self) -> None:
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._close_file()

    def _close_file(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None


def _open_for_append(path: Path) -> int:
    """A descriptor appending to ``path``: a file (created) or a FIFO, which must have a reader."""
    try:
        if path.is_fifo():  # opening a FIFO waits for a reader: do not, come back later
            try:
                fd = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
            except OSError as exc:
                if exc.errno == errno.ENXIO:
                    raise RetryableError(f"no process reads the FIFO {str(path)!r} yet") from None
                raise
            os.set_blocking(fd, True)
            return fd
        path.parent.mkdir(parents=True, exist_ok=True)
        return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as exc:
        raise FlowscopeError(f"cannot open {str(path)!r} for writing: {exc.strerror or exc}") from None


def _udp(host: str, port: int) -> socket.socket:
    family, kind, _, _, address = socket.getaddrinfo(host, port, type=socket.SOCK_DGRAM)[0]
    sock = socket.socket(family, kind)
    sock.connect(address)
    return sock


@hookimpl
def register_sinks(register):
    register("json", JsonSink)
