"""The HTTP server of a running pipeline: ``/metrics``, ``/healthz`` and ``/readyz``, and the routes
plugins add through the ``register_routes`` hook (the aggregator's ``/flowrecords``, for one).

A route is a path and a handler, ``handler(request) -> Response``, run in the connection's own
thread. A path is exact (``/flowrecords``) or has ``{name}`` parts, each matching one path segment,
the last of which may be ``{name:path}`` to match the rest of the path; the parts found are in
``request.params``. With TLS, each connection's handshake is done in its own thread with a time
limit, so a client that never completes one holds up nobody else.
"""

from __future__ import annotations

import json
import logging
import re
import socket
import ssl
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from email.message import Message
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlparse

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

log = logging.getLogger("flowscope.http")

HANDSHAKE_TIMEOUT = 10.0
"""Seconds a client has to complete its TLS handshake (and then to send each request)."""
MAX_BODY = 1 << 20
"""Bytes a request body may have."""
CORE_PATHS = ("/metrics", "/healthz", "/readyz")


@dataclass
class Request:
    """One HTTP request, as a route's handler gets it.

    :ivar method: ``GET``, ``POST``, ...
    :ivar path: the path, without the query string.
    :ivar query: the query parameters, the last value of each.
    :ivar params: the values of the path's ``{name}`` parts.
    :ivar headers: the request headers (case-insensitive lookup: ``request.headers["Accept"]``).
    :ivar body: the request body (empty for GET).
    :ivar pipeline: the running pipeline (:class:`flowscope.core.pipeline.Pipeline`): its ``config``,
        ``metrics``, flow ``table`` (``None`` without one), ``sinks`` and shared ``services``.
    """

    method: str
    path: str
    query: dict[str, str]
    params: dict[str, str]
    headers: Message
    body: bytes
    pipeline: Any


@dataclass
class Response:
    """What a handler returns: a status, a body and its content type, and any other headers."""

    status: int = 200
    body: bytes = b""
    content_type: str = "text/plain; charset=utf-8"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def json(cls, data: Any, status: int = 200) -> Response:
        """``data`` as JSON."""
        return cls(status, json.dumps(data).encode(), "application/json")

    @classmethod
    def text(cls, text: str, status: int = 200) -> Response:
        """Plain UTF-8 text."""
        return cls(status, text.encode())


Handler = Callable[[Request], Response]
_PART = re.compile(r"\{([A-Za-z_][A-Za-z0-9_]*)(:path)?\}")


@dataclass(frozen=True)
class Route:
    """A path, the methods it answers and its handler; ``origin`` names the plugin that added it.

    A ``public`` route answers without a token (it must hold nothing secret); one with a ``title``
    is announced in the log when the server starts (``"dashboards at https://..."``).
    """

    path: str
    handler: Handler
    methods: tuple[str, ...] = ("GET",)
    origin: str = ""
    public: bool = False
    title: str = ""
    pattern: re.Pattern[str] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "pattern", compile_path(self.path))

    def match(self, path: str) -> dict[str, str] | None:
        found = self.pattern.fullmatch(path)
        return None if found is None else found.groupdict()


def compile_path(path: str) -> re.Pattern[str]:
    """The pattern of a route's path; ``ValueError`` says what is wrong with a bad one."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"a route's path must be text starting with '/', e.g. '/flows' (got {path!r})")
    pattern, position = "", 0
    for part in _PART.finditer(path):
        if part.group(2) and part.end() != len(path):
            raise ValueError(f"in {path!r}, {{{part.group(1)}:path}} may only be the last part")
        pattern += re.escape(path[position : part.start()])
        pattern += f"(?P<{part.group(1)}>.+)" if part.group(2) else f"(?P<{part.group(1)}>[^/]+)"
        position = part.end()
    rest = path[position:]
    if "{" in rest or "}" in rest:
        raise ValueError(f"{path!r} has a malformed {{name}} part; write {{name}} or {{name:path}}")
    return re.compile(pattern + re.escape(rest))


class HttpServer:
    """Serves ``/metrics``, ``/healthz``, ``/readyz`` and the given routes from threads of its own.

    :param registry: the Prometheus registry ``/metrics`` shows.
    :param health: what keeps the pipeline from delivering, one line each; ``/readyz`` answers 503
        while there is any, ``/healthz`` answers 200 with ``degraded: ...``.
    :param app: handed to route handlers as ``request.pipeline``.
    :param tls: serve HTTPS with this context.
    :param authorize: checks each request first; a response it returns (401, 403) is the answer.
    """

    def __init__(
        self,
        host: str,
        port: int,
        *,
        registry: CollectorRegistry,
        health: Callable[[], list[str]],
        routes: list[Route] = (),  # type: ignore[assignment]
        app: Any = None,
        tls: ssl.SSLContext | None = None,
        authorize: Callable[[Request], Response | None] | None = None,
        name: str = "http",
    ):
        self.routes = [
            Route("/metrics", lambda _request: Response(200, generate_latest(registry), CONTENT_TYPE_LATEST)),
            Route("/healthz", lambda _request: _health(health(), ready=False), public=True),
            Route("/readyz", lambda _request: _health(health(), ready=True), public=True),
            *routes,
        ]
        self.app = app
        self.name = name
        self.tls = tls
        self.authorize = authorize
        handler = type("Handler", (_Handler,), {"server_of": self})
        self.server = _Server((host or "0.0.0.0", port), handler, tls)
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, name=name, daemon=True)

    def start(self) -> None:
        self._thread.start()
        log.info("%s on %s", self.name, self.url(""))
        for route in self.routes:
            if route.title:
                log.info("%s at %s", route.title, self.url(route.path))

    def url(self, path: str) -> str:
        """The address of ``path`` on this server, as a local client reaches it."""
        host = self.server.server_address[0]
        host = {"0.0.0.0": "127.0.0.1", "::": "127.0.0.1"}.get(host, host)
        host = f"[{host}]" if ":" in host else host
        return f"{'https' if self.tls else 'http'}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def dispatch(self, method: str, target: str, headers: Message, body: bytes) -> Response:
        """The response to one request."""
        url = urlparse(target)
        query = {key: values[-1] for key, values in parse_qs(url.query).items()}
        request = Request(method, url.path, query, {}, headers, body, self.app)
        matched = [(route, params) for route in self.routes if (params := route.match(url.path)) is not None]
        if self.authorize is not None and not (matched and all(route.public for route, _ in matched)):
            denied = self.authorize(request)  # before anything else: a stranger learns not even the paths
            if denied is not None:
                return denied
        allowed: list[str] = []
        for route, params in matched:
            if method not in route.methods:
                allowed += route.methods
                continue
            request.params = params
            try:
                return route.handler(request)
            except Exception as exc:
                where = f"route {route.path!r}" + (f" of plugin {route.origin!r}" if route.origin else "")
                log.error("%s raised %s: %s", where, type(exc).__name__, exc, exc_info=log.isEnabledFor(logging.DEBUG))
                return Response.text(f"internal error in {where}: {type(exc).__name__}", 500)
        if allowed:
            response = Response.text(f"{method} is not allowed on {url.path}; use {', '.join(allowed)}", 405)
            response.headers["Allow"] = ", ".join(allowed)
            return response
        paths = ", ".join(route.path for route in self.routes)
        return Response.text(f"no such path {url.path!r}; try {paths}", 404)


def _health(problems: list[str], ready: bool) -> Response:
    code = 503 if problems and ready else 200
    return Response.text("degraded: " + "; ".join(problems) if problems else "ok", code)


class _Server(ThreadingHTTPServer):
    """Accepts in the serving thread; a connection's TLS handshake happens in its own thread."""

    daemon_threads = True
    request_queue_size = 128

    def __init__(self, address: tuple[str, int], handler: type, tls: ssl.SSLContext | None):
        self.tls = tls
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, handler)

    def finish_request(self, request: Any, client_address: Any) -> None:
        request.settimeout(HANDSHAKE_TIMEOUT)
        if self.tls is not None:
            try:
                request = self.tls.wrap_socket(request, server_side=True)
            except (OSError, ssl.SSLError) as exc:
                log.debug("TLS handshake with %s failed: %s", client_address[0], exc)
                return
        super().finish_request(request, client_address)


class _Handler(BaseHTTPRequestHandler):
    server_of: HttpServer
    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s %s", self.address_string(), format % args)

    def _answer(self) -> None:
        length_text = self.headers.get("Content-Length") or "0"
        length = int(length_text) if length_text.isdigit() else -1
        if not 0 <= length <= MAX_BODY:
            status = 413 if length > 0 else 400
            response = Response.text(f"Content-Length must be a number from 0 to {MAX_BODY}", status)
            self.close_connection = True
        else:
            body = self.rfile.read(length) if length else b""
            response = self.server_of.dispatch(self.command, self.path, self.headers, body)
        self.send_response(response.status)
        self.send_header("Content-Type", response.content_type)
        self.send_header("Content-Length", str(len(response.body)))
        for name, value in response.headers.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(response.body)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _answer
