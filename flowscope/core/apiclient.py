"""A client of a running flowscope's HTTP API (``apiAddress``), for ``flowscope get`` and for the
commands plugins add: it verifies the server with a CA file, sends the bearer token, and turns every
failure into one line that says what to do."""

from __future__ import annotations

import contextlib
import json
import ssl
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from flowscope.core.errors import FlowscopeError


@dataclass
class ApiClient:
    """Where the API is (``https://127.0.0.1:10348``), the CA that signed its certificate, and the token.

    :ivar insecure: do not verify the server's certificate (then ``ca_cert`` is not needed).
    :ivar what: how messages name the server, e.g. ``"the aggregator API"``.
    """

    server: str
    ca_cert: str | None = None
    token: str | None = None
    insecure: bool = False
    what: str = "the flowscope API"

    @classmethod
    def local(cls, address: Any, tls: bool, data_dir: Path, token_file: Path | None = None) -> ApiClient:
        """The API a config serves on this host, with the CA and token its process made in ``data_dir``."""
        host = {"": "127.0.0.1", "0.0.0.0": "127.0.0.1", "::": "::1"}.get(address.host, address.host)
        host = f"[{host}]" if ":" in host else host
        path = token_file or data_dir / "api-token"
        token = path.read_text(encoding="utf-8").strip() if path.is_file() else None
        server = f"{'https' if tls else 'http'}://{host}:{address.port}"
        return cls(server, str(data_dir / "certs" / "ca.crt"), token)

    def get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        return self._call(path, query, None)

    def post(self, path: str, body: bytes, query: dict[str, Any] | None = None) -> Any:
        return self._call(path, query, body)

    def _call(self, path: str, query: dict[str, Any] | None, body: bytes | None) -> Any:
        url = self.server.rstrip("/") + path + ("?" + urllib.parse.urlencode(query) if query else "")
        context = self._tls_context() if url.startswith("https") else None
        headers = {"Authorization": f"Bearer {self.token}"} if self.token else {}
        request = urllib.request.Request(url, data=body, headers=headers)
        try:
            with urllib.request.urlopen(request, timeout=120, context=context) as answer:
                return json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            raise FlowscopeError(self._refusal(url, exc)) from None
        except (urllib.error.URLError, OSError) as exc:
            reason = getattr(exc, "reason", exc)
            raise FlowscopeError(f"cannot reach {self.what} at {self.server}: {reason}; is it running?") from None

    def _refusal(self, url: str, exc: urllib.error.HTTPError) -> str:
        text = exc.read().decode(errors="replace").strip()
        with contextlib.suppress(ValueError, AttributeError):  # a JSON answer's "error", else the text
            text = json.loads(text).get("error", text)
        status = "" if text.startswith(str(exc.code)) else f"{exc.code} "  # flowscope's answers begin with it
        hint = ""
        if exc.code == 401:
            hint = "; give its token with --token-file (the apiTokenFile, default <dataDir>/api-token)"
        return f"{url.split('?')[0]}: {status}{text}{hint}"

    def _tls_context(self) -> ssl.SSLContext:
        if self.insecure:
            return ssl._create_unverified_context()
        ca = self.ca_cert
        if ca is None or not Path(ca).is_file():
            raise FlowscopeError(
                f"there is no CA certificate at {ca!r}: give the CA of {self.what}'s certificate with --ca-cert "
                "(its <dataDir>/certs/ca.crt), or --insecure to skip verifying it"
            )
        try:
            context = ssl.create_default_context(cafile=ca)
        except (OSError, ssl.SSLError) as exc:
            raise FlowscopeError(f"cannot use {ca!r} as a CA certificate: {exc}") from None
        context.check_hostname = False  # the certificate names the server; the address may be an IP
        return context
