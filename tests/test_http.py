"""The core's HTTP server: its own paths, plugin routes, errors, and TLS handshakes per connection."""

from __future__ import annotations

import json
import socket
import ssl
import urllib.error
import urllib.request

import pytest
from prometheus_client import CollectorRegistry, Counter

from flowscope.core.certs import ensure_certificates
from flowscope.core.http import HttpServer, Request, Response, Route
from flowscope.core.tlsconfig import server_context


def echo(request: Request) -> Response:
    return Response.json(
        {"method": request.method, "params": request.params, "query": request.query, "body": request.body.decode()}
    )


def broken(request: Request) -> Response:
    raise RuntimeError("boom")


@pytest.fixture
def server():
    registry = CollectorRegistry()
    Counter("demo_things", "Things.", registry=registry).inc(3)
    problems: list[str] = []
    routes = [
        Route("/echo/{name}", echo, ("GET", "POST"), "demo"),
        Route("/files/{rest:path}", echo, ("GET",), "demo"),
        Route("/broken", broken, ("GET",), "demo"),
    ]
    http = HttpServer("127.0.0.1", 0, registry=registry, health=lambda: problems, routes=routes, app="the app")
    http.start()
    http.problems = problems
    yield http
    http.close()


def call(port: int, path: str, data: bytes | None = None, scheme: str = "http", context=None) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"{scheme}://127.0.0.1:{port}{path}", data, timeout=5, context=context) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def test_core_paths(server):
    status, text = call(server.port, "/metrics")
    assert status == 200 and "demo_things_total 3.0" in text
    assert call(server.port, "/healthz") == (200, "ok")
    assert call(server.port, "/readyz") == (200, "ok")
    server.problems.append("sink 'x' is not ready (5 records buffered)")
    assert call(server.port, "/healthz") == (200, "degraded: sink 'x' is not ready (5 records buffered)")
    assert call(server.port, "/readyz") == (503, "degraded: sink 'x' is not ready (5 records buffered)")


def test_routes_get_params_query_and_body(server):
    status, text = call(server.port, "/echo/web-1?a=1&a=2&b=x")
    assert (status, json.loads(text)) == (
        200,
        {"method": "GET", "params": {"name": "web-1"}, "query": {"a": "2", "b": "x"}, "body": ""},
    )
    status, text = call(server.port, "/echo/db", data=b"select 1")
    assert json.loads(text) == {"method": "POST", "params": {"name": "db"}, "query": {}, "body": "select 1"}
    assert json.loads(call(server.port, "/files/a/b/c.txt")[1])["params"] == {"rest": "a/b/c.txt"}


def test_unknown_paths_methods_and_failing_handlers(server, caplog):
    assert call(server.port, "/nope") == (
        404,
        "no such path '/nope'; try /metrics, /healthz, /readyz, /echo/{name}, /files/{rest:path}, /broken",
    )
    assert call(server.port, "/echo/a/b")[0] == 404  # {name} is one segment
    assert call(server.port, "/files/x", data=b"") == (405, "POST is not allowed on /files/x; use GET")
    assert call(server.port, "/broken") == (500, "internal error in route '/broken' of plugin 'demo': RuntimeError")
    assert "route '/broken' of plugin 'demo' raised RuntimeError: boom" in caplog.text


def test_a_bad_content_length_is_refused(server):
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as sock:
        sock.sendall(b"POST /echo/x HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999\r\n\r\n")
        assert sock.recv(4096).startswith(b"HTTP/1.1 413 ")


def test_idle_tls_connections_do_not_hold_up_others(tmp_path):
    paths = ensure_certificates(tmp_path / "certs", ["localhost", "127.0.0.1"])
    tls = server_context(paths.server_cert, paths.server_key, key_prefix="apiAddress")
    http = HttpServer("127.0.0.1", 0, registry=CollectorRegistry(), health=lambda: [], tls=tls)
    http.start()
    idle = [socket.create_connection(("127.0.0.1", http.port), timeout=5) for _ in range(50)]  # no ClientHello
    try:
        context = ssl.create_default_context(cafile=str(paths.ca_cert))
        assert call(http.port, "/healthz", scheme="https", context=context) == (200, "ok")
    finally:
        for sock in idle:
            sock.close()
        http.close()


def test_public_routes_need_no_token_and_titled_ones_are_announced(caplog):
    import logging

    caplog.set_level(logging.INFO, logger="flowscope")
    routes = [
        Route("/page", echo, ("GET",), "demo", public=True, title="the page"),
        Route("/data", echo, ("GET",), "demo"),
    ]
    refuse = lambda request: Response.text("401 Unauthorized: no", 401)  # noqa: E731
    http = HttpServer("127.0.0.1", 0, registry=CollectorRegistry(), health=lambda: [], routes=routes, authorize=refuse)
    http.start()
    try:
        assert call(http.port, "/page")[0] == 200
        assert call(http.port, "/healthz") == (200, "ok")
        assert call(http.port, "/data") == (401, "401 Unauthorized: no")
        assert call(http.port, "/nope") == (401, "401 Unauthorized: no")  # a stranger learns no paths
        assert f"the page at http://127.0.0.1:{http.port}/page" in caplog.text
    finally:
        http.close()
