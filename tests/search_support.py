"""A real OpenSearch-API server for tests: osmem-server (the binary the ``osmem-server`` wheel ships,
in-memory), and a small HTTP proxy in front of it that misbehaves as a busy or failing node would.

osmem serves clones of its (empty) base cluster, each on a port of its own: a test that takes a
clone has a cluster nobody else writes to.
"""

from __future__ import annotations

import http.client
import json
import os
import ssl
import subprocess
import threading
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest

from tests.helpers import free_port, wait_for


def osmem_binary() -> str:
    try:
        from osmem_server import resolve_binary
    except ImportError:
        pytest.skip("osmem-server is not installed (the test extra)")
    return resolve_binary()


def request(method: str, url: str, body: Any = None) -> Any:
    """One JSON request; the decoded answer."""
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=30) as answer:
        text = answer.read()
    return json.loads(text) if text else None


class Osmem:
    """osmem-server on ``127.0.0.1:<port>``; ``stop`` and ``start`` again keep the port (not the data)."""

    def __init__(self, log: Path, port: int | None = None):
        self.binary = osmem_binary()
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = log
        self.process: subprocess.Popen | None = None

    def start(self) -> None:
        with open(self.log, "ab") as log:
            # it exits when its standard input closes or this process ends
            self.process = subprocess.Popen(
                [self.binary, "--addr", f"127.0.0.1:{self.port}", "--no-ja", "--parent-pid", str(os.getpid())],
                stdin=subprocess.PIPE,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for(self._answers, timeout=60, what=f"osmem-server on port {self.port} (log: {self.log})")

    def _answers(self) -> bool:
        assert self.process is not None and self.process.poll() is None, self.log.read_text()
        try:
            return request("GET", self.url)["version"]["distribution"] == "opensearch"
        except OSError:
            return False

    def clone(self) -> tuple[str, str]:
        """A new, empty cluster (a clone of the base on a port of its own): its id and URL."""
        made = request("POST", f"{self.url}/_osmem/clones")
        return made["id"], made["url"]

    def drop(self, clone: str) -> None:
        request("DELETE", f"{self.url}/_osmem/clones/{clone}")

    def stop(self) -> None:
        process, self.process = self.process, None
        if process is None or process.poll() is not None:
            return
        process.stdin.close()
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


class Cluster:
    """Reads what a sink wrote to the cluster at ``url``."""

    def __init__(self, url: str):
        self.url = url

    def documents(self, pattern: str = "flows-*") -> list[tuple[str, dict]]:
        """Every document of the indices matching ``pattern`` as ``(index, source)``, in the order of
        their records' ``flowStartSeconds``."""
        request("POST", f"{self.url}/{pattern}/_refresh")
        found = request("POST", f"{self.url}/{pattern}/_search", {"size": 10000, "query": {"match_all": {}}})
        hits = [(hit["_index"], hit["_source"]) for hit in found["hits"]["hits"]]
        return sorted(hits, key=lambda hit: (hit[1]["ipfix"].get("flowStartSeconds", 0), hit[0]))

    def count(self, pattern: str = "flows-*") -> int:
        """Documents in the indices of ``pattern``; 0 while there are none."""
        try:
            request("POST", f"{self.url}/{pattern}/_refresh")
            return request("POST", f"{self.url}/{pattern}/_count")["count"]
        except urllib.error.HTTPError as exc:
            if exc.code == 404:
                return 0
            raise

    def template(self, name: str) -> dict:
        [found] = request("GET", f"{self.url}/_index_template/{name}")["index_templates"]
        return found["index_template"]

    def search(self, query: dict, pattern: str = "flows-*") -> list[dict]:
        request("POST", f"{self.url}/{pattern}/_refresh")
        found = request("POST", f"{self.url}/{pattern}/_search", {"size": 10000, "query": query})
        return [hit["_source"] for hit in found["hits"]["hits"]]

    def indices(self) -> list[str]:
        return sorted(row["index"] for row in request("GET", f"{self.url}/_cat/indices?format=json"))

    def mapping(self, index: str) -> dict:
        return request("GET", f"{self.url}/{index}/_mapping")[index]["mappings"]


@dataclass
class Seen:
    """A request the proxy received."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def documents(self) -> list[dict]:
        """The documents of a bulk request, in order."""
        lines = self.body.decode().splitlines()
        return [json.loads(line) for line in lines[1::2]]


_BUSY = {
    "type": "es_rejected_execution_exception",
    "reason": "rejected execution of coordinating operation [queue capacity 200 reached]",
}


class Proxy(ThreadingHTTPServer):
    """An HTTP(S) node in front of ``upstream`` that forwards every request, except as told:

    - ``fail_bulk``: statuses to answer the next bulk requests with, one each, without forwarding them;
    - ``busy_bulk``: the next so many bulk requests have their documents at even positions refused with
      a per-item 429 (not forwarded), the others forwarded, and the two answers merged in order;
    - ``hang_bulk``: the next so many bulk requests get no answer until the proxy stops (a hung node);
    - ``refuse``: a status to answer every request with, as a node refusing the credentials does;
    - ``elastic``: speak Elasticsearch to the client: its ``compatible-with`` media types become plain
      JSON for osmem, and answers carry ``X-Elastic-Product: Elasticsearch``.
    """

    daemon_threads = True

    def __init__(self, upstream: str, tls: ssl.SSLContext | None = None, elastic: bool = False):
        super().__init__(("127.0.0.1", 0), _Handler)
        if tls is not None:
            self.socket = tls.wrap_socket(self.socket, server_side=True)
        self.upstream = urlsplit(upstream)
        self.elastic = elastic
        self.fail_bulk: list[int] = []
        self.busy_bulk = 0
        self.hang_bulk = 0
        self.stopping = threading.Event()
        self.refuse: int | None = None
        self.seen: list[Seen] = []
        self.lock = threading.Lock()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.server_address[1]}"
        self._thread = threading.Thread(target=self.serve_forever, daemon=True)

    def __enter__(self) -> Proxy:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self.stopping.set()
        self.shutdown()
        self.server_close()

    def handle_error(self, request: Any, client_address: Any) -> None:
        """A client that gave up the TLS handshake (an untrusted certificate) is what some tests want."""

    def bulks(self) -> list[Seen]:
        with self.lock:
            return [seen for seen in self.seen if seen.path.split("?")[0].endswith("/_bulk")]

    def forward(self, method: str, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        connection = http.client.HTTPConnection(self.upstream.hostname, self.upstream.port, timeout=30)
        try:
            connection.request(method, path, body=body or None, headers=headers)
            answer = connection.getresponse()
            return answer.status, answer.read()
        finally:
            connection.close()

    def bulk(self, path: str, headers: dict[str, str], body: bytes) -> tuple[int, bytes]:
        """A bulk request whose even documents are refused as a busy node refuses them."""
        lines = body.splitlines(keepends=True)
        pairs = [lines[i : i + 2] for i in range(0, len(lines), 2)]
        kept = b"".join(b"".join(pair) for position, pair in enumerate(pairs) if position % 2)
        items: list[Any] = [{"index": {"status": 429, "error": _BUSY}} for _ in pairs]
        if kept:
            status, answer = self.forward("POST", path, headers, kept)
            if status != 200:
                return status, answer
            for position, item in zip(range(1, len(pairs), 2), json.loads(answer)["items"], strict=True):
                items[position] = item
        return 200, json.dumps({"errors": True, "items": items}).encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: Proxy

    def log_message(self, format: str, *args: Any) -> None:
        """Quiet."""

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        headers = {k: v for k, v in self.headers.items() if k.lower() not in ("host", "connection", "content-length")}
        proxy = self.server
        with proxy.lock:
            proxy.seen.append(Seen(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body))
            is_bulk = self.path.split("?")[0].endswith("/_bulk")
            fail = proxy.fail_bulk.pop(0) if is_bulk and proxy.fail_bulk else None
            hang = is_bulk and fail is None and proxy.hang_bulk > 0
            if hang:
                proxy.hang_bulk -= 1
            busy = is_bulk and fail is None and not hang and proxy.busy_bulk > 0
            if busy:
                proxy.busy_bulk -= 1
        if hang:
            proxy.stopping.wait(60)
            fail = 503
        if proxy.elastic:
            for key, value in headers.items():
                if key.lower() in ("accept", "content-type"):
                    headers[key] = value.replace("vnd.elasticsearch+", "").split(";")[0]
        if proxy.refuse is not None:
            error = {"type": "security_exception", "reason": "unable to authenticate user"}
            status, answer = proxy.refuse, json.dumps({"error": error, "status": proxy.refuse}).encode()
        elif fail is not None:
            error = {"type": "es_rejected_execution_exception" if fail == 429 else "unavailable", "reason": "busy"}
            status, answer = fail, json.dumps({"error": error, "status": fail}).encode()
        elif busy:
            status, answer = proxy.bulk(self.path, headers, body)
        else:
            status, answer = proxy.forward(self.command, self.path, headers, body)
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(answer)))
        if proxy.elastic:
            self.send_header("X-Elastic-Product", "Elasticsearch")
        self.end_headers()
        self.wfile.write(answer)

    do_GET = do_POST = do_PUT = do_DELETE = _handle
