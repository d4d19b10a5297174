"""Options of the search sinks, shared by both flavours, and the connection settings they make."""

from __future__ import annotations

import base64
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator

from flowscope.core.config import Duration, OptionsModel
from flowscope.core.errors import ConfigError, ConfigIssue
from flowscope.core.preflight import readable_file, writable_file
from flowscope.plugins.sinks.search.template import check_pattern

DEFAULT_INDEX = "flows-%Y.%m.%d"


class SearchOptions(OptionsModel):
    hosts: list[str] = Field(
        ["http://127.0.0.1:9200"], min_length=1, description="the cluster's nodes, http(s)://host[:port][/path]"
    )
    index: str = Field(
        DEFAULT_INDEX, description="index name pattern, dated with each record's flowEndSeconds (UTC) by strftime"
    )
    template: bool = Field(True, description="install the index template for the index pattern when the sink opens")
    templateName: str = Field("flowscope-flows", min_length=1, description="name of the index template")
    deadLetterPath: str | None = Field(
        None, description="JSON lines file for documents the server rejects; default <dataDir>/<name>-dead-letter.jsonl"
    )
    apiKey: SecretStr | None = Field(None, description="API key (the encoded key, or id:key)")
    apiKeyFile: str | None = Field(None, description="file holding the API key (e.g. a mounted Secret)")
    username: str | None = Field(None, description="user name for basic authentication")
    password: SecretStr | None = Field(None, description="password for basic authentication")
    passwordFile: str | None = Field(None, description="file holding the password (e.g. a mounted Secret)")
    caCert: str | None = Field(None, description="https: CA that signed the nodes' certificates (default: system CAs)")
    tlsVerify: bool = Field(True, description="https: verify the nodes' certificates and host names")
    timeout: Duration = Field("30s", description="how long one request may take before it is retried")

    @field_validator("hosts")
    @classmethod
    def _hosts(cls, hosts: list[str]) -> list[str]:
        for host in hosts:
            parts = urlsplit(host)
            if parts.scheme not in ("http", "https") or not parts.hostname:
                raise ValueError(f"{host!r} is not a URL: write http(s)://host[:port], e.g. https://es-0:9200")
            if parts.username or parts.password:
                raise ValueError(f"{host!r}: credentials do not go in hosts (it is logged); set apiKey or username")
            try:
                parts.port  # noqa: B018 - raises for a port that is not a number
            except ValueError:
                raise ValueError(f"the port of {host!r} must be a number from 1 to 65535") from None
        if len({urlsplit(host).scheme for host in hosts}) > 1:
            raise ValueError("hosts mixes http:// and https://: the nodes of a cluster take one scheme")
        return hosts

    @field_validator("index")
    @classmethod
    def _index(cls, pattern: str) -> str:
        return check_pattern(pattern)

    @model_validator(mode="after")
    def _credentials(self) -> SearchOptions:
        if self.apiKey is not None and self.apiKeyFile is not None:
            raise ValueError("give apiKey or apiKeyFile, not both")
        if self.password is not None and self.passwordFile is not None:
            raise ValueError("give password or passwordFile, not both")
        has_key = self.apiKey is not None or self.apiKeyFile is not None
        has_password = self.password is not None or self.passwordFile is not None
        if has_key and self.username is not None:
            raise ValueError("give an API key (apiKey, apiKeyFile) or basic authentication (username), not both")
        if self.username is not None and not has_password:
            raise ValueError("username needs password or passwordFile")
        if has_password and self.username is None:
            raise ValueError("password and passwordFile need username")
        return self


def preflight(options: dict[str, Any]) -> list[ConfigIssue]:
    """The secret and CA files are readable, the dead-letter file writable."""
    issues = []
    for key, what in (("apiKeyFile", "API key file"), ("passwordFile", "password file"), ("caCert", "CA file")):
        if options[key] is not None:
            issues += readable_file(key, options[key], what)
    if options["deadLetterPath"] is not None:
        issues += writable_file("deadLetterPath", options["deadLetterPath"])
    return issues


@dataclass(frozen=True)
class Connection:
    """Where and how a client connects; secrets are kept out of ``repr``."""

    hosts: list[str]
    timeout: float
    ca_cert: str | None = None
    tls_verify: bool = True
    api_key: str | None = field(default=None, repr=False)  # the encoded form, base64(id:key)
    basic: tuple[str, str] | None = field(default=None, repr=False)


def connection(options: dict[str, Any]) -> Connection:
    """The connection settings, with the secret files read; :class:`ConfigError` naming the key when one
    cannot be read."""
    api_key = _secret(options, "apiKey", "apiKeyFile")
    password = _secret(options, "password", "passwordFile")
    return Connection(
        hosts=list(options["hosts"]),
        timeout=options["timeout"],
        ca_cert=options["caCert"],
        tls_verify=options["tlsVerify"],
        api_key=None if api_key is None else encoded_api_key(api_key),
        basic=None if options["username"] is None else (options["username"], password or ""),
    )


def encoded_api_key(key: str) -> str:
    """The form the ``Authorization: ApiKey`` header carries: ``id:key`` is base64-encoded, an encoded key
    is kept."""
    if ":" in key:
        return base64.b64encode(key.encode()).decode("ascii")
    return key


def _secret(options: dict[str, Any], key: str, file_key: str) -> str | None:
    value = options[key]
    if value is not None:
        return value.get_secret_value()
    path = options[file_key]
    if path is None:
        return None
    try:
        return Path(path).read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        reason = getattr(exc, "strerror", None) or exc
        raise ConfigError(ConfigIssue(file_key, f"cannot read {path!r}: {reason}")) from None
