"""A sink's undelivered records on disk, so that they outlive a restart.

One JSON object per line. Values are the record conventions (int, str, bool, float, lists);
``bytes`` are written as ``{"$bytes": "<base64>"}`` so that they read back as ``bytes``.
The file is written to a temporary name and renamed, so a crash leaves the old spool or the new
one, never half of one. It is readable by its owner only (mode 0600), like the keys. A spool read at
start stays on disk until its records are delivered: a crash meanwhile replays it at the next start
(at least once).
"""

from __future__ import annotations

import base64
import os
from pathlib import Path
from typing import Any

import orjson

from flowscope.core.components import Batch

_BYTES = "$bytes"


def _default(value: Any) -> Any:
    if isinstance(value, bytes | bytearray | memoryview):
        return {_BYTES: base64.b64encode(value).decode("ascii")}
    if isinstance(value, set | frozenset | tuple):
        return list(value)
    raise TypeError(f"cannot spool a value of type {type(value).__name__}")


def _restore(record: dict[str, Any]) -> dict[str, Any]:
    for key, value in record.items():
        if type(value) is dict and len(value) == 1 and _BYTES in value:
            record[key] = base64.b64decode(value[_BYTES])
    return record


def save(path: Path, records: Batch) -> None:
    """Write ``records`` to ``path``, replacing what was there."""
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with os.fdopen(os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600), "wb") as out:
        os.fchmod(out.fileno(), 0o600)  # also when an older partial file had another mode
        for record in records:
            out.write(orjson.dumps(record, default=_default))
            out.write(b"\n")
        out.flush()
        os.fsync(out.fileno())
    os.replace(partial, path)


def load(path: Path) -> tuple[Batch, int]:
    """The records spooled in ``path`` and the number of damaged lines skipped; the file stays.

    A missing file gives no records.
    """
    if not path.exists():
        return [], 0
    records: Batch = []
    skipped = 0
    with open(path, "rb") as spooled:
        for line in spooled:
            try:
                value = orjson.loads(line)
            except orjson.JSONDecodeError:
                value = None
            if isinstance(value, dict):
                records.append(_restore(value))
            else:
                skipped += 1
    return records, skipped


def remove(path: Path) -> None:
    """Delete a spool whose records were delivered."""
    path.unlink(missing_ok=True)
