"""Who may use a pipeline's HTTP API (``apiAddress``): a bearer token on every request but those of
public routes (the health checks, the web UI's page).

Outside a cluster the token is checked against a token file, created with a random token (mode 0600)
at first start. In a cluster, as Antrea's Flow Aggregator does, the Kubernetes API server decides:
a TokenReview says who the token belongs to, a SubjectAccessReview whether they may use the path
(a non-resource URL, with the request's method as the verb, e.g. ``get /flowrecords``).
"""

from __future__ import annotations

import hmac
import logging
import os
import secrets
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path

from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.http import Request, Response

log = logging.getLogger("flowscope.api")

TOKEN_FILE = "api-token"
"""Where in the data directory the token lives, unless ``apiTokenFile`` says otherwise."""
IN_CLUSTER_ENV = "KUBERNETES_SERVICE_HOST"

Authorize = Callable[[Request], Response | None]


def bearer_token(request: Request) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header."""
    header = request.headers.get("Authorization") or ""
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def unauthorized(why: str) -> Response:
    response = Response.text(f"401 Unauthorized: {why}", 401)
    response.headers["WWW-Authenticate"] = 'Bearer realm="flowscope"'
    return response


def ensure_token_file(path: Path) -> str:
    """The token in ``path``; a new random one, written with mode 0600, if the file does not exist."""
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with os.fdopen(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "w") as out:
            out.write(secrets.token_urlsafe(32) + "\n")
        log.info("created the API token %s (send it as 'Authorization: Bearer <token>')", path)
    except FileExistsError:
        pass
    except OSError as exc:
        raise ConfigError(ConfigIssue("apiTokenFile", f"cannot create {str(path)!r}: {exc.strerror or exc}")) from None
    try:
        token = path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(ConfigIssue("apiTokenFile", f"cannot read {str(path)!r}: {exc}")) from None
    if len(token) < 16:
        why = f"{str(path)!r} holds no token of 16 characters or more; delete it for a new one"
        raise ConfigError(ConfigIssue("apiTokenFile", why))
    return token


class TokenFileAuth:
    """Requests must carry the token of the token file."""

    def __init__(self, path: Path):
        self.path = path
        self.token = ensure_token_file(path)

    def __call__(self, request: Request) -> Response | None:
        token = bearer_token(request)
        if token is None:
            return unauthorized("send 'Authorization: Bearer <token>'; the token is in the aggregator's apiTokenFile")
        if not hmac.compare_digest(token.encode(), self.token.encode()):
            return unauthorized("the bearer token is not the API's")
        return None


class KubernetesAuth:
    """The Kubernetes API server reviews each token and each request (results kept ``ttl`` seconds)."""

    def __init__(self, kubeconfig: str | None, ttl: float = 10.0):
        try:
            from kubernetes import client, config
        except ImportError:
            raise ConfigError(
                ConfigIssue("apiAuth", "kubernetes needs the kubernetes package: pip install 'flowscope[kubernetes]'")
            ) from None
        try:
            if kubeconfig:
                api = config.new_client_from_config(config_file=kubeconfig)
            else:
                config.load_incluster_config()
                api = client.ApiClient()
        except Exception as exc:
            where = f"kubeconfig {kubeconfig!r}" if kubeconfig else "the in-cluster service account"
            raise ConfigError(ConfigIssue("apiAuth", f"cannot load {where}: {exc}")) from None
        self._client = client
        self._authentication = client.AuthenticationV1Api(api)
        self._authorization = client.AuthorizationV1Api(api)
        self._ttl = ttl
        self._cache: OrderedDict[tuple[str, str, str], tuple[float, Response | None]] = OrderedDict()
        self._lock = threading.Lock()

    def __call__(self, request: Request) -> Response | None:
        token = bearer_token(request)
        if token is None:
            return unauthorized("send 'Authorization: Bearer <token>' with a Kubernetes token")
        key = (token, request.path, request.method.lower())
        now = time.monotonic()
        with self._lock:
            found = self._cache.get(key)
            if found is not None and found[0] > now:
                return found[1]
        try:
            answer = self._review(*key)
        except Exception as exc:  # the API server is unreachable or refuses us: refuse, but say why
            log.error("cannot review a token with the Kubernetes API server: %s: %s", type(exc).__name__, exc)
            return Response.text("503 Service Unavailable: the Kubernetes API server cannot review the token", 503)
        with self._lock:
            self._cache[key] = (now + self._ttl, answer)
            if len(self._cache) > 10_000:
                self._cache.popitem(last=False)
        return answer

    def _review(self, token: str, path: str, verb: str) -> Response | None:
        client = self._client
        review = self._authentication.create_token_review(
            client.V1TokenReview(spec=client.V1TokenReviewSpec(token=token))
        )
        status = review.status
        if status is None or not status.authenticated:
            return unauthorized("the Kubernetes API server does not know this token")
        user = status.user
        access = self._authorization.create_subject_access_review(
            client.V1SubjectAccessReview(
                spec=client.V1SubjectAccessReviewSpec(
                    user=user.username,
                    groups=user.groups,
                    uid=user.uid,
                    extra=user.extra,
                    non_resource_attributes=client.V1NonResourceAttributes(path=path, verb=verb),
                )
            )
        )
        if access.status is None or not access.status.allowed:
            return Response.text(f"403 Forbidden: user {user.username!r} may not {verb} {path}", 403)
        return None


def authorizer(mode: str, data_dir: Path, token_file: Path | None, kubeconfig: str | None) -> Authorize | None:
    """The check for ``apiAuth`` (``auto``, ``token``, ``kubernetes`` or ``none``); ``None`` for none."""
    if mode == "auto":
        mode = "kubernetes" if kubeconfig or os.environ.get(IN_CLUSTER_ENV) else "token"
    if mode == "none":
        log.warning("apiAuth: none: the API answers anyone who can reach it")
        return None
    if mode == "kubernetes":
        return KubernetesAuth(kubeconfig)
    return TokenFileAuth(token_file or data_dir / TOKEN_FILE)
