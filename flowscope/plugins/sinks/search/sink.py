"""Sinks ``elasticsearch`` and ``opensearch``: records bulk-indexed as Antrea JSON documents into
daily indices, one implementation with two client adapters (:mod:`.clients`).

At ``open`` the sink asks the cluster who it is and, with ``template: true``, installs the index
template of the ``index`` pattern (:mod:`.template`). A cluster that cannot be reached makes ``open``
raise :class:`RetryableError`: the runtime buffers and tries again with backoff. A problem to fix
found at the start (credentials refused, a TLS certificate not trusted) stops the pipeline with an
error naming the keys to change.

Each batch is one bulk request (:mod:`.bulk`). A request that fails as a whole (no answer, 429, 5xx,
401/403/404 from a node or a proxy) raises :class:`RetryableError`, and the runtime sends the batch
again after the backoff. Items of an answer fail alone:

- 429 and 5xx items are to be sent again. The runtime retries a batch, not a subset of it, so the
  sink remembers which records of the batch were indexed (or rejected), by identity, raises
  :class:`RetryableError`, and when the runtime hands it the same records again sends only the
  others. The batch stays in the runtime's buffer meanwhile, under its backoff, ``maxRetries``,
  buffer cap and ``spool``, which holding the failed documents inside the sink would escape (a sink
  cannot be made to write again without a new batch, nor spool at the stop); the cost: records
  already indexed that are spooled at a stop are indexed again at the next start, and those dropped
  by ``maxRetries`` are counted as dropped although they were indexed.
- Other error items (400: a mapping conflict, a value the field cannot take) are rejected: written
  to the dead-letter file (:mod:`.deadletter`), logged, and counted as dropped with reason
  ``rejected``; ``write`` returns how many of the batch were indexed.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, ClassVar

from flowscope.core.components import Batch, Record, Sink
from flowscope.core.errors import ConfigIssue, FlowscopeError, RetryableError
from flowscope.core.hookspecs import hookimpl
from flowscope.plugins.sinks.json import rfc3339_now
from flowscope.plugins.sinks.search import bulk, clients, options, template
from flowscope.plugins.sinks.search.deadletter import DeadLetter

# A whole request refused with these is tried again: the records wait in the buffer while a person
# fixes credentials or privileges, or a proxy comes back.
RETRY_WHOLE = frozenset({401, 403, 404, 408, 409})
_HINTS = {
    401: "the credentials were refused: check apiKey (apiKeyFile) or username and password (passwordFile)",
    403: "the user lacks a privilege: it needs manage_index_templates to install the template (or template: false) "
    "and create_index and index on the indices",
    404: "no such endpoint: check the path of hosts",
    406: "the server does not take the client's media type: with type elasticsearch, the server must be "
    "Elasticsearch of the elasticsearch package's major version (e.g. pip install 'elasticsearch>=8,<9' for 8.x); "
    "for OpenSearch use type opensearch",
    413: "the bulk request is too large for the server: lower batchSize",
}


class SearchSink(Sink):
    """Bulk-indexes records into an Elasticsearch or OpenSearch cluster; subclasses name the client."""

    Options = options.SearchOptions
    flavour: ClassVar[str]

    @classmethod
    def preflight(cls, values: dict[str, Any]) -> list[ConfigIssue]:
        return options.preflight(values)

    def __init__(self, values: dict[str, Any], context):
        super().__init__(values, context)
        self.log = context.logger
        self.settings = options.connection(values)
        self.hosts = ", ".join(self.settings.hosts)
        self.pattern: str = values["index"]
        path = values["deadLetterPath"]
        self.dead_letter = DeadLetter(
            Path(path) if path else Path(context.data_dir) / f"{context.name}-dead-letter.jsonl"
        )
        self._names = template.IndexNames(self.pattern)
        self._actions = bulk.ActionLines()
        self._client: clients.Client | None = None
        # records of a failed batch that were indexed or rejected, by id (holding them keeps the ids
        # unique), so that its retry sends only the rest
        self._indexed: dict[int, Record] = {}
        self._rejected: dict[int, Record] = {}

    def open(self) -> None:
        """At the start, a problem to fix (credentials, privileges, TLS) stops the pipeline; when the
        runtime tries again because the cluster was unreachable at the start, it only delays indexing."""
        retrying = self._client is not None
        if self._client is None:
            self._client = clients.connect(self.flavour, self.settings)
            if not self.settings.tls_verify:
                self.log.warning("tlsVerify is false: the certificates of %s are not checked", self.hosts)
        try:
            info = self._client.info()
            if self.options["template"]:
                body = template.index_template(self.pattern, self.context.elements)
                self._client.put_template(self.options["templateName"], body)
        except clients.TlsFailure as exc:
            message = f"TLS with {self.hosts} failed: {exc}; check caCert and tlsVerify"
            raise (RetryableError if retrying else FlowscopeError)(message) from None
        except clients.Unreachable as exc:
            raise RetryableError(f"cannot reach {self.hosts}: {exc}") from None
        except clients.Refused as exc:
            message = f"{self.hosts} refused the sink: {_explain(exc)}"
            raise (RetryableError if retrying or bulk.retryable(exc.status) else FlowscopeError)(message) from None
        version = info.get("version", {})
        self.log.info(
            "indexing into %s on %s %s at %s%s",
            self.pattern,
            version.get("distribution", "elasticsearch"),
            version.get("number", "?"),
            self.hosts,
            f", index template {self.options['templateName']!r} for {template.wildcard(self.pattern)}"
            if self.options["template"]
            else "",
        )

    def write(self, records: Batch) -> int:
        self._forget_others(records)
        indexed, rejected = self._indexed, self._rejected
        todo = records
        if indexed or rejected:
            todo = [r for r in records if indexed.get(id(r)) is not r and rejected.get(id(r)) is not r]
        if todo:
            self._send(todo)
        written = len(records)
        if rejected:
            written -= sum(1 for r in records if rejected.get(id(r)) is r)
        indexed.clear()
        rejected.clear()
        return written

    def _send(self, records: Batch) -> None:
        """One bulk request; settles what its answer settles, and raises RetryableError for the rest."""
        assert self._client is not None
        now = int(time.time())
        names = self._names
        request = bulk.encode(records, rfc3339_now(), lambda seconds: names(seconds, now), self._actions)
        n = len(records)
        try:
            result = bulk.outcome(self._client.bulk(request.body), n)
        except clients.Unreachable as exc:
            raise RetryableError(f"cannot reach {self.hosts}: {exc}") from None
        except clients.Refused as exc:
            message = f"bulk request of {n} documents refused: {_explain(exc)}"
            if bulk.retryable(exc.status) or exc.status in RETRY_WHOLE:
                raise RetryableError(message) from None
            raise FlowscopeError(message) from None
        except bulk.BadAnswer as exc:
            raise RetryableError(f"{self.hosts}: {exc}") from None
        if result.rejected:
            self._reject(records, request, result.rejected)
        if result.retry:
            settled = set(result.retry)
            rejected = self._rejected
            for position, record in enumerate(records):
                if position not in settled and rejected.get(id(record)) is not record:
                    self._indexed[id(record)] = record
            raise RetryableError(
                f"{len(result.retry)} of {n} documents not indexed for now ({result.retry_reason}); sending them again"
            )

    def _reject(self, records: Batch, request: bulk.Bulk, rejected: list[tuple[int, int, str]]) -> None:
        """Dead-letter, count and log the documents the server rejected."""
        entries = [(request.indices[i], status, reason, request.documents[i]) for i, status, reason in rejected]
        for position, _, _ in rejected:
            self._rejected[id(records[position])] = records[position]
        self.context.counters.dropped(len(entries), "rejected")
        index, status, reason, _ = entries[0]
        try:
            self.dead_letter.append(entries)
        except OSError as exc:
            self.log.error(
                "%d documents rejected by the server are lost: cannot write the dead-letter file %s: %s; "
                "the first: index %s, %d %s",
                len(entries),
                self.dead_letter.path,
                exc.strerror or exc,
                index,
                status,
                reason,
            )
            return
        self.log.warning(
            "%d documents rejected by the server, written to %s; the first: index %s, %d %s",
            len(entries),
            self.dead_letter.path,
            index,
            status,
            reason,
        )

    def _forget_others(self, records: Batch) -> None:
        """Keep what the last failed write settled only for the records that came back."""
        if self._indexed or self._rejected:
            ids = {id(record) for record in records}
            self._indexed = {key: r for key, r in self._indexed.items() if key in ids}
            self._rejected = {key: r for key, r in self._rejected.items() if key in ids}

    def close(self) -> None:
        if self._client is not None:
            client, self._client = self._client, None
            client.close()


def _explain(exc: clients.Refused) -> str:
    hint = _HINTS.get(exc.status)
    return f"{exc}; {hint}" if hint else str(exc)


class ElasticsearchSink(SearchSink):
    """Bulk-indexes records into Elasticsearch with the official ``elasticsearch`` client."""

    flavour = "elasticsearch"


class OpenSearchSink(SearchSink):
    """Bulk-indexes records into OpenSearch with ``opensearch-py``."""

    flavour = "opensearch"


@hookimpl
def register_sinks(register):
    register("elasticsearch", ElasticsearchSink)
    register("opensearch", OpenSearchSink)
