"""The dead-letter file of a search sink: documents the server rejected, one JSON object per line.

Each line is ``{"index":"<index>","status":<HTTP status>,"reason":"<type>: <reason>","document":{...}}``,
the document exactly as it was sent, so that it can be fixed and indexed again.
"""

from __future__ import annotations

import os
from pathlib import Path

import orjson


class DeadLetter:
    """Appends rejected documents to ``path`` (made with its directory on first use)."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def append(self, entries: list[tuple[str, int, str, bytes]]) -> None:
        """Add ``(index, status, reason, document line)`` entries; OSError when the file cannot be written."""
        text = b"".join(
            b'{"index":%s,"status":%d,"reason":%s,"document":%s}\n'
            % (orjson.dumps(index), status, orjson.dumps(reason), document.rstrip(b"\n"))
            for index, status, reason, document in entries
        )
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            view = memoryview(text)
            while view:
                view = view[os.write(fd, view) :]
        finally:
            os.close(fd)
