"""Records → the CSV lines Antrea's Flow Aggregator uploads to S3 (``s3uploader.writeRecord``).

Not the flow logger's CSV: every field of Antrea's ``FlowRecord`` (:data:`csvformat.FIELDS`, read
from the record as Antrea reads it), with the aggregator's ``clusterUUID`` and the time the line
was made inserted after ``reverseThroughputFromDestinationNode`` (:data:`COLUMNS`, 53 columns). No
header and no quoting, as Antrea writes them; one record per line, ending in ``\\n``. Numbers are
decimal, times epoch seconds; the Pod labels' JSON is enclosed in single quotes (``''`` without
labels), as it holds commas. ``clusterUUID`` is the sink's (the aggregator's cluster UUID, as
Antrea writes it), or the record's ``clusterId`` when the sink has none.
"""

from __future__ import annotations

import gzip
import io
from collections.abc import Callable
from typing import Any

from flowscope.core.components import Batch, Record
from flowscope.plugins.sinks.csvformat import FIELDS

_CHUNK = 10_000  # records encoded (and compressed) at a time, so a file's whole text never sits in memory
_INSERT_AFTER = "reverseThroughputFromDestinationNode"
_LABELS = frozenset(("sourcePodLabels", "destinationPodLabels"))

COLUMNS: tuple[str, ...] = tuple(
    column
    for name in FIELDS
    for column in ((name, "clusterUUID", "timeInserted") if name == _INSERT_AFTER else (name,))
)
"""The columns of Antrea's S3 CSV, in order; those named after an element hold its value."""

Cell = Callable[[Record], str]


def _cell(name: str, cluster_uuid: str, now: str) -> Cell:
    if name == "clusterUUID":
        return (lambda record: cluster_uuid) if cluster_uuid else (lambda record: record.get("clusterId") or "")
    if name == "timeInserted":
        return lambda record: now
    get = FIELDS[name]
    if name in _LABELS:
        return lambda record: f"'{get(record)}'"
    return lambda record: str(get(record))


class Encoder:
    """Makes the lines of records, as one object's content."""

    def __init__(self, cluster_uuid: str, now: int):
        self._cells = [_cell(name, cluster_uuid, str(now)) for name in COLUMNS]

    def line(self, record: Record) -> str:
        """One record's line, newline included; ``ValueError`` naming the field when a number field
        holds something that is not a number."""
        return ",".join([cell(record) for cell in self._cells]) + "\n"

    def lines(self, records: Batch, invalid: Callable[[Record, ValueError], None]) -> str:
        """The lines of ``records``; a record that cannot be written is left out and handed to ``invalid``."""
        try:
            return "".join([self.line(record) for record in records])
        except ValueError:
            pass
        out = []
        for record in records:
            try:
                out.append(self.line(record))
            except ValueError as exc:
                invalid(record, exc)
        return "".join(out)


def encode(
    records: Batch, cluster_uuid: str, now: int, compress: bool, invalid: Callable[[Record, ValueError], None]
) -> bytes:
    """The content of one object: the records' lines, gzipped when ``compress`` (level 6, no time in
    the header, as Go's ``gzip.Writer``). Records that cannot be written go to ``invalid``."""
    encoder = Encoder(cluster_uuid, now)
    out = io.BytesIO()
    target: Any = gzip.GzipFile(fileobj=out, mode="wb", compresslevel=6, mtime=0) if compress else out
    for start in range(0, len(records), _CHUNK):
        target.write(encoder.lines(records[start : start + _CHUNK], invalid).encode())
    if compress:
        target.close()
    return out.getvalue()
