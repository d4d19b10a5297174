"""Bulk requests of the search sinks, the same for both clients: the request body, and what the
answer says of each document.

A document is the record's Antrea JSON line, ``{"@timestamp":"<RFC 3339>","ipfix":{...}}``, made by
the ``json`` sink's encoder (:func:`flowscope.plugins.sinks.json.encode_line`); each is preceded by
an ``index`` action naming its index. Of the answer, a document with status 429 or 5xx is to be
sent again, one with another error status (400: a mapping conflict, a bad value) is rejected.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import orjson

from flowscope.core.components import Batch
from flowscope.plugins.sinks.json import encode_line

RETRY = 429


def retryable(status: int) -> bool:
    """A status worth trying again later: too many requests, or a server error."""
    return status == RETRY or status >= 500


class ActionLines:
    """The ``index`` action line of each index name, made once."""

    def __init__(self) -> None:
        self._lines: dict[str, bytes] = {}

    def __call__(self, index: str) -> bytes:
        line = self._lines.get(index)
        if line is None:
            if len(self._lines) > 4096:
                self._lines.clear()
            line = self._lines[index] = orjson.dumps({"index": {"_index": index}}) + b"\n"
        return line


@dataclass
class Bulk:
    """The documents of one bulk request, in order, with the index of each."""

    indices: list[str]
    documents: list[bytes]  # each one JSON line, newline included
    body: bytes


def encode(records: Batch, timestamp: str, index_of: Callable[[Any], str], actions: ActionLines) -> Bulk:
    """The bulk request for ``records``; ``index_of`` gets each record's ``flowEndSeconds``."""
    indices = [index_of(record.get("flowEndSeconds")) for record in records]
    documents = [encode_line(record, timestamp) for record in records]
    parts = []
    for index, document in zip(indices, documents, strict=True):
        parts.append(actions(index))
        parts.append(document)
    return Bulk(indices, documents, b"".join(parts))


@dataclass
class Outcome:
    """What a bulk answer says: the positions to send again and the rejected ones."""

    retry: list[int] = field(default_factory=list)
    rejected: list[tuple[int, int, str]] = field(default_factory=list)  # position, status, reason
    retry_reason: str = ""  # the first one, for the log


class BadAnswer(Exception):
    """A bulk answer that does not account for every document."""


def outcome(answer: dict[str, Any], count: int) -> Outcome:
    """Read a bulk answer for ``count`` documents (filtered to ``errors`` and the items' status and error)."""
    result = Outcome()
    if answer.get("errors") is False:
        return result
    items = answer.get("items")
    if not isinstance(items, list) or len(items) != count:
        got = len(items) if isinstance(items, list) else "no"
        raise BadAnswer(f"the bulk answer has {got} items for {count} documents")
    for position, item in enumerate(items):
        ((_, state),) = item.items()
        status = state.get("status", 0)
        if status < 300:
            continue
        reason = error_reason(state.get("error"))
        if retryable(status):
            result.retry.append(position)
            result.retry_reason = result.retry_reason or f"{status} {reason}"
        else:
            result.rejected.append((position, status, reason))
    return result


def error_reason(error: Any) -> str:
    """``type: reason (caused by: ...)`` of an item's error."""
    if not isinstance(error, dict):
        return str(error or "")
    text = f"{error.get('type', 'error')}: {error.get('reason', '')}"
    cause = error.get("caused_by")
    if isinstance(cause, dict) and cause.get("reason"):
        text += f" (caused by: {cause['reason']})"
    return text
