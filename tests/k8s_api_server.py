"""A local stand-in for the Kubernetes API server, enough for the official client to list and watch.

It serves the cluster-scope lists of six kinds (with ``limit``/``continue`` pages) and their watches
(``?watch=true&resourceVersion=N``: a chunked stream of JSON lines, one event each). Objects live in
memory behind one global resourceVersion counter, with a bounded event log per kind; the test
changes them and breaks things on purpose::

    server = K8sApiServer()
    server.kubeconfig(tmp_path / "kubeconfig")   # a token user for the client
    server.add("Pod", {...}); server.update("Pod", {...}); server.delete("Pod", "web-0", "default")
    server.bookmark("Pod")          # a BOOKMARK event at a fresh resourceVersion
    server.expire("Pod")            # resume points so far are compacted away: 410 Gone
    server.drop_connections()       # open watch streams are cut mid-stream
    server.forbid("NetworkPolicy")  # 403 with a Status body, as RBAC answers
    server.unauthorized()           # 401 for every request, as for an expired token
    server.user("antctl-token", "alice", ["ops"])    # TokenReview knows this token
    server.allow("alice", "get", "/flowrecords")     # SubjectAccessReview allows this request
    server.close()

Every request is recorded (``server.requests``); ``with server.atomic():`` makes several changes
without a watch stream seeing any of them before the last.
"""

from __future__ import annotations

import contextlib
import copy
import datetime
import json
import select
import socket
import threading
import time
import uuid
from collections import OrderedDict, deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit


@dataclass(frozen=True)
class KindInfo:
    path: str
    api_version: str
    plural: str
    group: str
    namespaced: bool


KINDS = {
    "Namespace": KindInfo("/api/v1/namespaces", "v1", "namespaces", "", False),
    "Node": KindInfo("/api/v1/nodes", "v1", "nodes", "", False),
    "Pod": KindInfo("/api/v1/pods", "v1", "pods", "", True),
    "Service": KindInfo("/api/v1/services", "v1", "services", "", True),
    "EndpointSlice": KindInfo(
        "/apis/discovery.k8s.io/v1/endpointslices", "discovery.k8s.io/v1", "endpointslices", "discovery.k8s.io", True
    ),
    "NetworkPolicy": KindInfo(
        "/apis/networking.k8s.io/v1/networkpolicies",
        "networking.k8s.io/v1",
        "networkpolicies",
        "networking.k8s.io",
        True,
    ),
}
PATHS = {info.path: kind for kind, info in KINDS.items()}


@dataclass(frozen=True)
class Request:
    """One request the server answered (or refused)."""

    kind: str
    watch: bool
    params: dict[str, str]
    at: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Event:
    version: int
    type: str  # ADDED, MODIFIED, DELETED, BOOKMARK
    object: dict[str, Any] | None  # None for a BOOKMARK


class _Stream:
    """An open watch response."""

    def __init__(self, handler: BaseHTTPRequestHandler, kind: str):
        self.handler = handler
        self.kind = kind
        self.dropped = False


class K8sApiServer:
    """The test API server, listening on 127.0.0.1 (``port``, ``url``) from a daemon thread."""

    def __init__(self, token: str = "flowscope-test-token", log_size: int = 1000, max_watch_seconds: float = 60.0):
        self.token = token
        self.max_watch_seconds = max_watch_seconds
        self._cond = threading.Condition(threading.RLock())
        self.version = 100  # the global resourceVersion counter
        self.objects: dict[str, dict[str, dict[str, Any]]] = {kind: {} for kind in KINDS}
        self._log: dict[str, deque[Event]] = {kind: deque(maxlen=log_size) for kind in KINDS}
        self._compacted = dict.fromkeys(KINDS, 0)  # watching from at or below this version: 410 Gone
        self._expire_http: dict[str, bool] = dict.fromkeys(KINDS, False)
        self._forbidden: set[str] = set()
        self._unauthorized = False
        self._users: dict[str, tuple[str, list[str]]] = {}  # token -> (username, groups), for TokenReview
        self._allowed: set[tuple[str, str, str]] = set()  # (username, verb, path), for SubjectAccessReview
        self.reviews: list[dict[str, Any]] = []  # the TokenReview and SubjectAccessReview bodies received
        self.requests: deque[Request] = deque(maxlen=10_000)
        self._streams: set[_Stream] = set()
        self._connections: set[socket.socket] = set()
        self._snapshots: OrderedDict[str, tuple[int, list[dict[str, Any]], int]] = OrderedDict()
        self._closed = False
        self._httpd = _HTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.api = self
        self.port = self._httpd.server_address[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="k8s-api-server", daemon=True
        )
        self._thread.start()

    def __enter__(self) -> K8sApiServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop serving: watch streams end, connections are closed. Calling it again does nothing."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._cond.notify_all()
            connections = list(self._connections)
        self._httpd.shutdown()
        for connection in connections:
            with contextlib.suppress(OSError):
                connection.shutdown(socket.SHUT_RDWR)
        self._httpd.server_close()
        self._thread.join(2)

    # -- the client's side -----------------------------------------------------------------------

    def kubeconfig(self, path: str | Path, token: str | None = None) -> Path:
        """Write a kubeconfig for this server (a token user, context ``test``); returns the path."""
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "test", "cluster": {"server": self.url}}],
            "users": [{"name": "tester", "user": {"token": token or self.token}}],
            "contexts": [{"name": "test", "context": {"cluster": "test", "user": "tester"}}],
            "current-context": "test",
        }
        path = Path(path)
        path.write_text(json.dumps(config, indent=2), encoding="utf-8")  # JSON is YAML
        return path

    # -- what the test does to the cluster -------------------------------------------------------

    @contextlib.contextmanager
    def atomic(self):
        """Changes made inside reach watch streams together, after the block."""
        with self._cond:
            yield self

    def add(self, kind: str, obj: dict[str, Any]) -> str:
        """Create an object (ADDED); its resourceVersion."""
        with self._cond:
            obj = self._fill(kind, obj)
            key = self._key(kind, obj)
            if key in self.objects[kind]:
                raise ValueError(f"{kind} {key} already exists")
            return self._change(kind, "ADDED", obj)

    def update(self, kind: str, obj: dict[str, Any]) -> str:
        """Replace an existing object (MODIFIED); its new resourceVersion."""
        with self._cond:
            obj = self._fill(kind, obj)
            key = self._key(kind, obj)
            old = self.objects[kind].get(key)
            if old is None:
                raise KeyError(f"{kind} {key} does not exist")
            for name in ("uid", "creationTimestamp"):
                obj["metadata"][name] = old["metadata"][name]
            return self._change(kind, "MODIFIED", obj)

    def delete(self, kind: str, name: str, namespace: str | None = None) -> str:
        """Delete an object (DELETED, with its last state); the resourceVersion of the deletion."""
        with self._cond:
            key = f"{namespace or 'default'}/{name}" if KINDS[kind].namespaced else name
            obj = self.objects[kind].get(key)
            if obj is None:
                raise KeyError(f"{kind} {key} does not exist")
            return self._change(kind, "DELETED", copy.deepcopy(obj))

    def bookmark(self, kind: str) -> str:
        """A BOOKMARK event for watches of ``kind`` that allow them, at a fresh resourceVersion; that version."""
        with self._cond:
            version = self._next()
            self._append(kind, Event(version, "BOOKMARK", None))
            return str(version)

    def expire(self, kind: str, http: bool = False) -> None:
        """Compact the history of ``kind``: every watch or resume from before now gets 410 Gone.

        Open watches get an ERROR event (code 410) and end; with ``http``, they just end, and the
        resume is answered with HTTP 410 instead.
        """
        with self._cond:
            self._compacted[kind] = self.version
            self._expire_http[kind] = http
            self._log[kind].clear()
            self.version += 1  # a list from now on is at a version the compaction spares
            self._cond.notify_all()

    def drop_connections(self) -> int:
        """Cut every open watch stream mid-stream (no last chunk); how many."""
        with self._cond:
            streams = list(self._streams)
            for stream in streams:
                stream.dropped = True
                with contextlib.suppress(OSError):
                    stream.handler.connection.shutdown(socket.SHUT_RDWR)
            self._cond.notify_all()
            return len(streams)

    def forbid(self, kind: str, forbidden: bool = True) -> None:
        """Answer lists and watches of ``kind`` with 403 Forbidden (or serve them again)."""
        with self._cond:
            (self._forbidden.add if forbidden else self._forbidden.discard)(kind)

    def unauthorized(self, unauthorized: bool = True) -> None:
        """Answer every request with 401 Unauthorized, as for expired credentials (or serve again)."""
        with self._cond:
            self._unauthorized = unauthorized

    def user(self, token: str, username: str, groups: list[str] | None = None) -> None:
        """Make TokenReview say ``token`` belongs to ``username``."""
        with self._cond:
            self._users[token] = (username, groups or [])

    def allow(self, username: str, verb: str, path: str) -> None:
        """Make SubjectAccessReview allow ``username`` to ``verb`` the non-resource URL ``path``."""
        with self._cond:
            self._allowed.add((username, verb, path))

    # -- what the test looks at ------------------------------------------------------------------

    def watch_requests(self, kind: str) -> list[dict[str, str]]:
        """The query parameters of every watch request of ``kind``, oldest first."""
        return [r.params for r in list(self.requests) if r.kind == kind and r.watch]

    def list_requests(self, kind: str) -> list[dict[str, str]]:
        return [r.params for r in list(self.requests) if r.kind == kind and not r.watch]

    def open_watches(self, kind: str | None = None) -> int:
        with self._cond:
            return sum(1 for s in self._streams if kind is None or s.kind == kind)

    # -- state -----------------------------------------------------------------------------------

    def _next(self) -> int:
        self.version += 1
        return self.version

    def _fill(self, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        obj = copy.deepcopy(obj)
        obj["kind"] = kind
        obj.setdefault("apiVersion", KINDS[kind].api_version)
        metadata = obj.setdefault("metadata", {})
        if not metadata.get("name"):
            raise ValueError(f"a {kind} needs metadata.name")
        if KINDS[kind].namespaced:
            metadata.setdefault("namespace", "default")
        else:
            metadata.pop("namespace", None)
        metadata.setdefault("uid", str(uuid.uuid4()))
        metadata.setdefault("creationTimestamp", _now())
        return obj

    @staticmethod
    def _key(kind: str, obj: dict[str, Any]) -> str:
        metadata = obj["metadata"]
        return f"{metadata['namespace']}/{metadata['name']}" if KINDS[kind].namespaced else metadata["name"]

    def _change(self, kind: str, type_: str, obj: dict[str, Any]) -> str:
        version = self._next()
        obj["metadata"]["resourceVersion"] = str(version)
        key = self._key(kind, obj)
        if type_ == "DELETED":
            self.objects[kind].pop(key, None)
        else:
            self.objects[kind][key] = obj
        self._append(kind, Event(version, type_, copy.deepcopy(obj)))
        return str(version)

    def _append(self, kind: str, event: Event) -> None:
        log = self._log[kind]
        if log.maxlen is not None and len(log) == log.maxlen:  # the oldest event falls out: compacted
            self._compacted[kind] = max(self._compacted[kind], log[0].version)
        log.append(event)
        self._cond.notify_all()

    # -- serving ---------------------------------------------------------------------------------

    def _serve(self, handler: _Handler) -> None:
        url = urlsplit(handler.path)
        params = {k: v[-1] for k, v in parse_qs(url.query, keep_blank_values=True).items()}
        kind = PATHS.get(url.path)
        if kind is None:
            handler.status(404, "NotFound", f"the server could not find the requested resource ({url.path})")
            return
        watch = params.get("watch", "").lower() in ("true", "1")
        self.requests.append(Request(kind, watch, params))
        scheme, _, token = handler.headers.get("Authorization", "").partition(" ")
        with self._cond:
            unauthorized = self._unauthorized or scheme.lower() != "bearer" or token != self.token
            forbidden = kind in self._forbidden
        if unauthorized:
            handler.status(401, "Unauthorized", "Unauthorized")
        elif forbidden:
            info = KINDS[kind]
            handler.status(
                403,
                "Forbidden",
                f'{info.plural} is forbidden: User "system:serviceaccount:flowscope:flowscope" cannot '
                f'{"watch" if watch else "list"} resource "{info.plural}" in API group "{info.group}" '
                "at the cluster scope",
                {"group": info.group, "kind": info.plural},
            )
        elif watch:
            self._serve_watch(handler, kind, params)
        else:
            self._serve_list(handler, kind, params)

    def _review(self, handler: _Handler) -> None:
        """POST TokenReview and SubjectAccessReview, as the authentication and authorization APIs answer."""
        length = int(handler.headers.get("Content-Length") or 0)
        body = json.loads(handler.rfile.read(length) or b"{}")
        scheme, _, token = handler.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer" or token != self.token:
            handler.status(401, "Unauthorized", "Unauthorized")
            return
        path = urlsplit(handler.path).path
        with self._cond:
            self.reviews.append(body)
            if path == "/apis/authentication.k8s.io/v1/tokenreviews":
                found = self._users.get(body.get("spec", {}).get("token", ""))
                status: dict[str, Any] = {"authenticated": found is not None}
                if found is not None:
                    status["user"] = {"username": found[0], "groups": found[1], "uid": f"uid-{found[0]}"}
            elif path == "/apis/authorization.k8s.io/v1/subjectaccessreviews":
                spec = body.get("spec", {})
                attributes = spec.get("nonResourceAttributes") or {}
                allowed = (spec.get("user"), attributes.get("verb"), attributes.get("path")) in self._allowed
                status = {"allowed": allowed}
            else:
                handler.status(404, "NotFound", f"the server could not find the requested resource ({path})")
                return
        handler.send_json(201, {**body, "status": status})

    def _serve_list(self, handler: _Handler, kind: str, params: dict[str, str]) -> None:
        try:
            limit = int(params.get("limit") or 0)
        except ValueError:
            handler.status(400, "BadRequest", f"limit {params['limit']!r} is not a number")
            return
        with self._cond:
            token = params.get("continue")
            if token:
                snapshot = self._snapshots.pop(token, None)
            else:
                objects = self.objects[kind]
                snapshot = (self.version, [copy.deepcopy(objects[key]) for key in sorted(objects)], 0)
            if snapshot is not None:
                version, items, offset = snapshot
                end = offset + limit if limit > 0 else len(items)
                page, metadata = items[offset:end], {"resourceVersion": str(version)}
                if end < len(items):  # the next page: from the same snapshot
                    metadata["continue"] = token = uuid.uuid4().hex
                    self._snapshots[token] = (version, items, end)
                    while len(self._snapshots) > 100:
                        self._snapshots.popitem(last=False)
        if snapshot is None:
            handler.status(410, "Expired", "The provided continue parameter is too old to display a consistent list.")
            return
        for item in page:  # as a real server: items of a list carry neither kind nor apiVersion
            item.pop("kind", None)
            item.pop("apiVersion", None)
        body = {"kind": f"{kind}List", "apiVersion": KINDS[kind].api_version, "metadata": metadata, "items": page}
        handler.send_json(200, body)

    def _serve_watch(self, handler: _Handler, kind: str, params: dict[str, str]) -> None:
        try:
            timeout = min(float(params.get("timeoutSeconds") or self.max_watch_seconds), self.max_watch_seconds)
        except ValueError:
            handler.status(400, "BadRequest", f"timeoutSeconds {params['timeoutSeconds']!r} is not a number")
            return
        bookmarks = params.get("allowWatchBookmarks", "").lower() in ("true", "1")
        start = params.get("resourceVersion", "")
        pending: list[dict[str, Any]] = []
        if start not in ("", "0") and not start.isdigit():
            handler.status(400, "BadRequest", f"resourceVersion {start!r} is not a number")
            return
        with self._cond:
            if start in ("", "0"):  # from now, with the current objects as ADDED events first
                position = self.version
                pending = [{"type": "ADDED", "object": copy.deepcopy(o)} for o in self.objects[kind].values()]
            else:
                position = int(start)
            gone = position <= self._compacted[kind] and self._expire_http[kind]
            message = self._too_old(kind, position)
            stream = _Stream(handler, kind)
            if not gone:
                self._streams.add(stream)
        if gone:
            handler.status(410, "Expired", message)
            return
        deadline = time.monotonic() + timeout
        try:
            handler.send_response(200)
            handler.send_header("Content-Type", "application/json")
            handler.send_header("Transfer-Encoding", "chunked")
            handler.end_headers()
            handler.wfile.flush()
            while True:
                if pending:
                    handler.write_chunk(b"".join(json.dumps(e).encode() + b"\n" for e in pending))
                    if pending[-1]["type"] == "ERROR":
                        break
                with self._cond:
                    pending, position, end = self._wait_events(stream, position, bookmarks, deadline)
                if end == "drop":
                    handler.close_connection = True
                    return
                if end == "done" and not pending:
                    break
            handler.write_chunk(b"")  # the last chunk: the watch ended normally
        except OSError:
            handler.close_connection = True
        finally:
            with self._cond:
                self._streams.discard(stream)

    def _wait_events(
        self, stream: _Stream, position: int, bookmarks: bool, deadline: float
    ) -> tuple[list[dict[str, Any]], int, str]:
        """Under the lock: the next events of a stream after ``position``, and whether it ends."""
        kind = stream.kind
        while True:
            if self._closed:
                return [], position, "done"
            if stream.dropped or _hung_up(stream.handler.connection):
                return [], position, "drop"
            if position <= self._compacted[kind]:
                if self._expire_http[kind]:
                    return [], position, "done"
                status = _status(410, "Expired", self._too_old(kind, position))
                return [{"type": "ERROR", "object": status}], position, "done"
            events = [e for e in self._log[kind] if e.version > position]
            if events:
                position = events[-1].version
                out = []
                for e in events:
                    if e.type != "BOOKMARK":
                        out.append({"type": e.type, "object": copy.deepcopy(e.object)})
                    elif bookmarks:
                        info = KINDS[kind]
                        bookmark = {"kind": kind, "apiVersion": info.api_version}
                        bookmark["metadata"] = {"resourceVersion": str(e.version)}
                        out.append({"type": "BOOKMARK", "object": bookmark})
                if out:
                    return out, position, ""
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return [], position, "done"
            self._cond.wait(min(remaining, 0.1))

    def _too_old(self, kind: str, position: int) -> str:
        return f"too old resource version: {position} ({self._compacted[kind] + 1})"


def _status(code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> dict[str, Any]:
    status = {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure", "message": message}
    status.update({"reason": reason, "code": code})
    if details:
        status["details"] = details
    return status


def _hung_up(connection: socket.socket) -> bool:
    """Whether the client closed its end (a watch client sends nothing more: readable means EOF)."""
    try:
        readable, _, _ = select.select([connection], [], [], 0)
        return bool(readable) and not connection.recv(1, socket.MSG_PEEK)
    except (OSError, ValueError):
        return True


def _now() -> str:
    return datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


class _HTTPServer(ThreadingHTTPServer):
    daemon_threads = True
    block_on_close = False
    api: K8sApiServer

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that hung up: nothing to report


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive and chunked responses, as the client expects
    timeout = 120  # an idle keep-alive connection is closed after this
    server: _HTTPServer

    def setup(self) -> None:
        super().setup()
        with self.server.api._cond:
            self.server.api._connections.add(self.connection)

    def finish(self) -> None:
        with self.server.api._cond:
            self.server.api._connections.discard(self.connection)
        with contextlib.suppress(OSError):
            super().finish()

    def do_GET(self) -> None:
        self.server.api._serve(self)

    def do_POST(self) -> None:
        self.server.api._review(self)

    def send_json(self, code: int, body: dict[str, Any]) -> None:
        data = json.dumps(body).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)
        self.wfile.flush()

    def status(self, code: int, reason: str, message: str, details: dict[str, Any] | None = None) -> None:
        self.send_json(code, _status(code, reason, message, details))

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):X}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass
