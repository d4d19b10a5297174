"""Read-only SQL, for the live query API and the dashboards.

A query must be one SELECT statement (``WITH ... SELECT`` included), read only tables of the sink's
database (no table functions such as ``file()`` or ``url()``, no other database), and it runs with
ClickHouse's ``readonly`` setting, a time limit and a row limit. Three checks, each enough alone
for what it covers: the statement's text, its syntax tree as ClickHouse parses it (``EXPLAIN
AST``), and the server's own read-only mode.
"""

from __future__ import annotations

import datetime
import decimal
import ipaddress
import re
import uuid
from typing import Any

MAX_ROWS = 100_000
TIMEOUT = 30
_FIRST_WORD = re.compile(r"^\s*(?:--[^\n]*\n\s*|/\*.*?\*/\s*)*([A-Za-z]+)", re.S)
_CODE = re.compile(r"Code: (\d+)")
_NODE = re.compile(r"^( *)(\S+)(?: (.*?))?(?: \(children \d+\))?$")


class QueryRefused(ValueError):
    """A query that is not one read-only SELECT of the flows database, or that ClickHouse refused;
    the message says why."""


class QueryFailed(RuntimeError):
    """ClickHouse could not answer (unreachable, stopped): not the query's fault."""


def check_statement(sql: str) -> str:
    """The statement without a trailing ``;``; :class:`QueryRefused` unless it is one SELECT or WITH."""
    text = sql.strip().rstrip(";").strip()
    if not text:
        raise QueryRefused("the query is empty; send one SELECT statement")
    if ";" in text:
        raise QueryRefused("one statement at a time: remove the ';' (a ';' in a string literal counts too)")
    first = _FIRST_WORD.match(text)
    if first is None or first.group(1).upper() not in ("SELECT", "WITH"):
        word = first.group(1).upper() if first else text.split()[0]
        raise QueryRefused(f"only SELECT and WITH statements are allowed, not {word}")
    return text


def check_tree(explained: list[str], database: str) -> None:
    """Refuse what the syntax tree (``EXPLAIN AST`` lines) reads besides tables of ``database``."""
    nodes = [_NODE.match(line) for line in explained]
    if not nodes or nodes[0] is None or nodes[0].group(2) != "SelectWithUnionQuery":
        raise QueryRefused("only SELECT and WITH statements are allowed")
    for index, node in enumerate(nodes):
        if node is None or node.group(2) != "TableExpression" or index + 1 >= len(nodes):
            continue
        child = nodes[index + 1]
        if child is None:
            continue
        kind, name = child.group(2), child.group(3) or ""
        if kind == "Function":
            raise QueryRefused(f"table functions such as {name}() are not allowed; query the tables of {database!r}")
        if kind == "TableIdentifier" and "." in name and name.split(".", 1)[0].strip("`") != database:
            raise QueryRefused(f"only the tables of database {database!r} can be read, not {name}")


def settings(timeout: float = TIMEOUT, max_rows: int = MAX_ROWS) -> dict[str, Any]:
    """ClickHouse settings of a read-only query with these limits."""
    return {
        "readonly": 2,  # no writes, but settings may be given (1 would refuse the limits below)
        "max_execution_time": timeout,
        "max_result_rows": max_rows,
        "result_overflow_mode": "throw",
    }


def refusal(exc: BaseException, timeout: float, max_rows: int) -> Exception:
    """What a failed query says to whoever sent it: the limit it hit, or ClickHouse's own first line."""
    text = str(exc).strip()
    code = _CODE.search(text)
    if code and code.group(1) == "396":
        return QueryRefused(f"the answer has more than {max_rows} rows; narrow the query (WHERE, LIMIT)")
    if code and code.group(1) == "159":
        return QueryRefused(f"the query took longer than {timeout:g}s; narrow it, or ask for a longer timeout")
    first = text.splitlines()[0] if text else type(exc).__name__
    if code:  # the server's message, without its stack trace
        first = re.sub(r"^.*?DB::Exception: ", "", first)
        first = re.sub(r"\s*\(version [^)]*\)\.?$", "", first)
        return QueryRefused(first)
    return QueryFailed(first)


def plain(value: Any) -> Any:
    """A value as JSON can carry it: times as epoch seconds, addresses and UUIDs as text."""
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            value = value.replace(tzinfo=datetime.UTC)
        return int(value.timestamp())
    if isinstance(value, datetime.date):
        return value.isoformat()
    if isinstance(value, ipaddress.IPv4Address | ipaddress.IPv6Address | uuid.UUID):
        return str(value)
    if isinstance(value, decimal.Decimal):
        return float(value)
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    if isinstance(value, list | tuple):
        return [plain(item) for item in value]
    return value
