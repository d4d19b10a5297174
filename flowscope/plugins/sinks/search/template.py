"""The index template of the search sinks: field types from the IE registry, and the index names.

Every Information Element of the registry (``context.elements``: IANA, reverse, Antrea and any a
plugin registers) gets the search type of its RFC 7012 abstract data type under ``ipfix``, so the
template follows the registry instead of a list kept by hand. Fields a record carries that the
registry does not know are mapped dynamically, text as ``keyword``.
"""

from __future__ import annotations

import re
import time
from collections.abc import Iterable
from typing import Any

from flowscope.core.elements import Element

KEYWORD = {"type": "keyword", "ignore_above": 8191}  # longer text is kept in _source, not indexed (Lucene's limit)
SEARCH_TYPES: dict[str, dict[str, Any]] = {
    "unsigned8": {"type": "short"},
    "unsigned16": {"type": "integer"},
    "unsigned32": {"type": "long"},
    "unsigned64": {"type": "long"},
    "signed8": {"type": "byte"},
    "signed16": {"type": "short"},
    "signed32": {"type": "integer"},
    "signed64": {"type": "long"},
    "float32": {"type": "float"},
    "float64": {"type": "double"},
    "boolean": {"type": "boolean"},
    "macAddress": KEYWORD,
    "string": KEYWORD,
    "octetArray": {"type": "binary"},  # base64, as the JSON encoding writes bytes
    "dateTimeSeconds": {"type": "date", "format": "epoch_second"},
    "dateTimeMilliseconds": {"type": "date", "format": "epoch_millis"},
    "dateTimeMicroseconds": {"type": "long"},  # no epoch format has microseconds: the number as it is
    "dateTimeNanoseconds": {"type": "long"},
    "ipv4Address": {"type": "ip"},
    "ipv6Address": {"type": "ip"},
}
"""Search field type of each abstract data type; the list types (basicList, ...) are left dynamic."""

# strftime directives whose output is lowercase digits, as index names need
DIRECTIVES = "YymdHjGVu%"
_DIRECTIVE = re.compile(r"%(.)")
_FORBIDDEN = set('\\/*?"<>| ,#:')


def field_type(element: Element) -> dict[str, Any] | None:
    """The search mapping of one element; ``None`` for a type left to dynamic mapping."""
    if element.uuid:  # a 16-byte octetArray that records carry as UUID text
        return KEYWORD
    return SEARCH_TYPES.get(element.type)


def mappings(elements: Iterable[Element]) -> dict[str, Any]:
    """The mappings of a document ``{"@timestamp": ..., "ipfix": {record}}``."""
    fields = {element.name: kind for element in elements if (kind := field_type(element)) is not None}
    return {
        "dynamic_templates": [{"strings_as_keywords": {"match_mapping_type": "string", "mapping": KEYWORD}}],
        "properties": {
            "@timestamp": {"type": "date"},
            "ipfix": {"properties": dict(sorted(fields.items()))},
        },
    }


def index_template(pattern: str, elements: Iterable[Element]) -> dict[str, Any]:
    """A composable index template (``PUT _index_template/<name>``) for the indices of ``pattern``."""
    return {
        "index_patterns": [wildcard(pattern)],
        "priority": 100,
        "template": {"mappings": mappings(elements)},
        "_meta": {"managed_by": "flowscope"},
    }


def wildcard(pattern: str) -> str:
    """The index pattern matching every name of ``pattern``: each directive becomes ``*``."""
    return re.sub(r"\*+", "*", _DIRECTIVE.sub(lambda m: "%" if m.group(1) == "%" else "*", pattern))


def check_pattern(pattern: str) -> str:
    """``pattern`` if it makes valid index names, else ValueError saying what is allowed."""
    unknown = sorted({m.group(1) for m in _DIRECTIVE.finditer(pattern)} - set(DIRECTIVES))
    if unknown or "%" in _DIRECTIVE.sub("", pattern):
        shown = ", ".join(f"%{d}" for d in unknown) or "a % at the end"
        allowed = ", ".join(f"%{d}" for d in DIRECTIVES)
        raise ValueError(f"{shown} cannot be used: index names take only the date directives {allowed}")
    name = time.strftime(pattern, time.gmtime(0))
    bad = sorted(set(name) & _FORBIDDEN)
    if not name or name != name.lower() or bad or name[0] in "-_+" or name in (".", "..") or len(name) > 255:
        raise ValueError(
            f"makes index names such as {name!r}, which is not a valid index name: lowercase, at most 255 "
            f'characters, not starting with -, _ or +, without spaces or any of \\ / * ? " < > | , # :'
        )
    return pattern


class IndexNames:
    """The index of a record: ``pattern`` formatted with its ``flowEndSeconds`` (UTC), or with the
    time of writing when it has none; names are kept per hour (per day when the pattern has no %H)."""

    def __init__(self, pattern: str) -> None:
        self.pattern = pattern
        self.step = 3600 if "%H" in pattern else 86400
        self._names: dict[int, str] = {}

    def __call__(self, seconds: Any, now: int) -> str:
        if type(seconds) is not int or not 0 <= seconds < 253402300800:  # before year 10000
            seconds = now
        slot = seconds // self.step
        name = self._names.get(slot)
        if name is None:
            if len(self._names) > 4096:
                self._names.clear()
            name = self._names[slot] = time.strftime(self.pattern, time.gmtime(slot * self.step))
        return name
