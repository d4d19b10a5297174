"""The two client adapters of the search sinks: ``elasticsearch`` (the official Elasticsearch client)
and ``opensearch`` (opensearch-py), behind one small interface.

Each adapter builds its client from :class:`~flowscope.plugins.sinks.search.options.Connection`,
with the client's own retries off (the sink runtime retries, with backoff), and turns the client's
exceptions into three: :class:`Unreachable` (no answer: connection refused, timeout),
:class:`TlsFailure` (the TLS handshake failed) and :class:`Refused` (an HTTP error status).
"""

from __future__ import annotations

from typing import Any, Protocol

from flowscope.core.errors import FlowscopeError
from flowscope.plugins.sinks.search.options import Connection

BULK_FILTER = "errors,items.*.status,items.*.error.type,items.*.error.reason,items.*.error.caused_by.reason"
"""The parts of a bulk answer the sink reads: an answer of a few bytes per document."""


class Unreachable(Exception):
    """No answer from any node."""


class TlsFailure(Unreachable):
    """The TLS handshake failed (a certificate not trusted, a host name that does not match)."""


class Refused(Exception):
    """The server answered a request with an HTTP error status."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(f"HTTP {status}: {message}")
        self.status = status


class Client(Protocol):
    flavour: str

    def info(self) -> dict[str, Any]: ...

    def put_template(self, name: str, body: dict[str, Any]) -> None: ...

    def bulk(self, body: bytes) -> dict[str, Any]: ...

    def close(self) -> None: ...


def connect(flavour: str, settings: Connection) -> Client:
    """A client of ``flavour`` (``elasticsearch`` or ``opensearch``); it connects on its first request."""
    return ElasticsearchClient(settings) if flavour == "elasticsearch" else OpenSearchClient(settings)


def _missing(package: str, extra: str, exc: ImportError) -> FlowscopeError:
    return FlowscopeError(f"the {extra} sink needs the {package} package: pip install 'flowscope[{extra}]' ({exc})")


class OpenSearchClient:
    """opensearch-py's ``OpenSearch`` client."""

    flavour = "opensearch"

    def __init__(self, settings: Connection) -> None:
        try:
            import opensearchpy
        except ImportError as exc:
            raise _missing("opensearch-py", "opensearch", exc) from None
        self._errors = opensearchpy.exceptions
        headers = {"authorization": f"ApiKey {settings.api_key}"} if settings.api_key else None
        self.client = opensearchpy.OpenSearch(
            hosts=settings.hosts,
            http_auth=settings.basic,
            headers=headers,
            **_tls(settings),
            timeout=settings.timeout,
            max_retries=0,
            retry_on_status=(),
            retry_on_timeout=False,
        )

    def info(self) -> dict[str, Any]:
        return self._call(self.client.info)

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        self._call(self.client.indices.put_index_template, name=name, body=body)

    def bulk(self, body: bytes) -> dict[str, Any]:
        return self._call(self.client.bulk, body=body, params={"filter_path": BULK_FILTER})

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        errors = self._errors
        try:
            return method(*args, **kwargs)
        except errors.SSLError as exc:
            raise TlsFailure(_cause(exc)) from None
        except errors.ConnectionError as exc:
            raise Unreachable(_cause(exc)) from None
        except errors.TransportError as exc:
            if not isinstance(exc.status_code, int):
                raise Unreachable(str(exc)) from None
            raise Refused(exc.status_code, _reason(exc.info, exc.error)) from None
        except errors.SerializationError as exc:
            raise Unreachable(f"an answer that is not JSON: {exc}") from None

    def close(self) -> None:
        self.client.close()


class ElasticsearchClient:
    """The official ``Elasticsearch`` client (its major version must match the server's)."""

    flavour = "elasticsearch"

    def __init__(self, settings: Connection) -> None:
        try:
            import elasticsearch
        except ImportError as exc:
            raise _missing("elasticsearch", "elasticsearch", exc) from None
        self._module = elasticsearch
        self.client = elasticsearch.Elasticsearch(
            hosts=settings.hosts,
            api_key=settings.api_key,
            basic_auth=settings.basic,
            **_tls(settings),
            request_timeout=settings.timeout,
            max_retries=0,
            retry_on_status=(),
            retry_on_timeout=False,
        )

    def info(self) -> dict[str, Any]:
        return self._call(self.client.info).body

    def put_template(self, name: str, body: dict[str, Any]) -> None:
        fields = {"meta" if key == "_meta" else key: value for key, value in body.items()}
        self._call(self.client.indices.put_index_template, name=name, **fields)

    def bulk(self, body: bytes) -> dict[str, Any]:
        return self._call(self.client.bulk, operations=body, filter_path=BULK_FILTER).body

    def _call(self, method: Any, *args: Any, **kwargs: Any) -> Any:
        es = self._module
        try:
            return method(*args, **kwargs)
        except es.UnsupportedProductError:
            raise FlowscopeError(
                "the server is not Elasticsearch (no X-Elastic-Product header): for OpenSearch use type: opensearch"
            ) from None
        except es.ApiError as exc:
            raise Refused(exc.meta.status, _reason(exc.body, exc.message)) from None
        except es.SSLError as exc:
            raise TlsFailure(_cause(exc)) from None
        except es.SerializationError as exc:
            raise Unreachable(f"an answer that is not JSON: {exc}") from None
        except es.TransportError as exc:  # connection errors and timeouts
            raise Unreachable(_cause(exc)) from None

    def close(self) -> None:
        self.client.close()


def _tls(settings: Connection) -> dict[str, Any]:
    """The TLS arguments both clients take, for https nodes only (the elasticsearch client refuses them
    for http); the sink warns once itself when certificates are not verified."""
    if not settings.hosts[0].startswith("https:"):
        return {}
    return {"ca_certs": settings.ca_cert, "verify_certs": settings.tls_verify, "ssl_show_warn": False}


def _reason(body: Any, fallback: Any) -> str:
    """``type: reason`` of an error answer's ``error``, else what the client said."""
    error = body.get("error") if isinstance(body, dict) else None
    if isinstance(error, dict):
        return f"{error.get('type', 'error')}: {error.get('reason', '')}".rstrip(": ")
    if isinstance(error, str):
        return error
    return str(fallback) if fallback else str(body)


def _cause(exc: BaseException) -> str:
    """The innermost error's message: what refused or timed out, without the clients' wrapping."""
    while exc.__cause__ is not None or exc.__context__ is not None:
        exc = exc.__cause__ or exc.__context__  # type: ignore[assignment]
    return str(exc) or type(exc).__name__
