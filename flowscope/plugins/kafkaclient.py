"""What the ``kafka`` sink and the ``kafka`` source share: the brokers, SASL and TLS options, and
kafka-python's client settings made from them.

kafka-python is imported only when a client is made, so loading the plugins costs nothing and a
missing package fails only the pipelines that use Kafka.
"""

from __future__ import annotations

import importlib.util
import logging
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field, SecretStr, model_validator

from flowscope.core.config import Address, Duration, OptionsModel, parse_address
from flowscope.core.errors import ConfigError, ConfigIssue, FlowscopeError
from flowscope.core.preflight import readable_file
from flowscope.core.tlsconfig import client_context

DEFAULT_PORT = 9092
INSTALL_HINT = "pip install 'flowscope[kafka]'"
_TOPIC = re.compile(r"^[A-Za-z0-9._-]{1,249}$")


def _brokers(value: object) -> list[Address]:
    """``["host:port", ...]`` or one comma-separated string; port 9092 by default, IPv6 in brackets."""
    if isinstance(value, str):
        value = [part.strip() for part in value.split(",") if part.strip()]
    if not isinstance(value, list) or not value:
        raise ValueError('give at least one broker, "<host>:<port>" (a list, or one comma-separated string)')
    brokers = []
    for item in value:
        address = item if isinstance(item, Address) else parse_address(item, protocols=(), default_port=DEFAULT_PORT)
        if not address.host:
            raise ValueError(f'{item!r} has no host; write "<host>:<port>", e.g. "kafka-0.kafka:9092"')
        brokers.append(address)
    return brokers


def check_topic(name: str) -> str:
    """A name Kafka accepts for a topic."""
    if not _TOPIC.match(name) or name in (".", ".."):
        raise ValueError(f"{name!r} is not a Kafka topic name: use 1 to 249 letters, digits, '.', '_' or '-'")
    return name


Brokers = Annotated[list[Address], BeforeValidator(_brokers)]
Topic = Annotated[str, BeforeValidator(lambda v: check_topic(v) if isinstance(v, str) else v)]


class KafkaClientOptions(OptionsModel):
    """Where the brokers are and how to log in to them."""

    brokers: Brokers = Field(
        description='bootstrap brokers, ["<host>:<port>", ...] or "h1:9092,h2:9092"; port 9092 by default'
    )
    tls: bool = Field(False, description="connect with TLS (security protocol SSL, or SASL_SSL with saslMechanism)")
    caCert: str | None = Field(None, description="TLS: CA of the brokers' certificates (PEM); default the system CAs")
    clientCert: str | None = Field(None, description="TLS: client certificate (PEM), for brokers that require one")
    clientKey: str | None = Field(None, description="TLS: the client certificate's key (PEM)")
    tlsVerify: bool = Field(True, description="TLS: verify the brokers' certificates and names (off only for tests)")
    saslMechanism: Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"] | None = Field(
        None, description="SASL login: PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512; none by default"
    )
    username: str | None = Field(None, description="SASL user name")
    password: SecretStr | None = Field(None, description="SASL password; never logged")
    passwordFile: str | None = Field(None, description="file holding the SASL password (e.g. a mounted Secret)")
    connectTimeout: Duration = Field("10s", description="how long reaching the brokers may take at the start")

    @model_validator(mode="after")
    def _consistent(self) -> KafkaClientOptions:
        files = [key for key in ("caCert", "clientCert", "clientKey") if getattr(self, key) is not None]
        if files and not self.tls:
            raise ValueError(f"{', '.join(files)} given but tls is false; set tls: true to use them")
        if (self.clientCert is None) != (self.clientKey is None):
            raise ValueError("give clientCert and clientKey together, or neither")
        if self.password is not None and self.passwordFile is not None:
            raise ValueError("give password or passwordFile, not both")
        if self.saslMechanism is None:
            given = [key for key in ("username", "password", "passwordFile") if getattr(self, key) is not None]
            if given:
                raise ValueError(
                    f"{', '.join(given)} given without saslMechanism; set saslMechanism to PLAIN, SCRAM-SHA-256 "
                    "or SCRAM-SHA-512"
                )
        elif self.username is None or (self.password is None and self.passwordFile is None):
            raise ValueError(f"saslMechanism {self.saslMechanism} needs username and password (or passwordFile)")
        return self


def preflight(options: dict[str, Any]) -> list[ConfigIssue]:
    """kafka-python is installed; the certificate and password files can be read."""
    issues = []
    if importlib.util.find_spec("kafka") is None:
        issues.append(ConfigIssue("type", f"needs the Python package kafka-python: {INSTALL_HINT}"))
    for key, what in (("caCert", "CA certificate"), ("clientCert", "certificate"), ("clientKey", "key")):
        if options[key] is not None:
            issues += readable_file(key, options[key], what)
    if options["passwordFile"] is not None:
        issues += readable_file("passwordFile", options["passwordFile"], "password file")
    return issues


def bootstrap_servers(options: dict[str, Any]) -> list[str]:
    return [str(address) for address in options["brokers"]]


def client_settings(options: dict[str, Any], logger: logging.Logger) -> dict[str, Any]:
    """kafka-python's connection arguments (for a producer or a consumer) from validated options."""
    library = logging.getLogger("kafka")
    if library.level == logging.NOTSET:  # its errors come again in ours, with the keys to change
        library.setLevel(logging.DEBUG if logger.isEnabledFor(logging.DEBUG) else logging.CRITICAL)
    settings: dict[str, Any] = {
        "bootstrap_servers": bootstrap_servers(options),
        "bootstrap_timeout_ms": int(options["connectTimeout"] * 1000),
        "client_id": "flowscope",
    }
    mechanism = options["saslMechanism"]
    if options["tls"]:
        settings["ssl_context"] = client_context(
            options["caCert"], options["clientCert"], options["clientKey"], options["tlsVerify"], key_prefix="caCert"
        )
    settings["security_protocol"] = ("SASL_" if mechanism else "") + ("SSL" if options["tls"] else "PLAINTEXT")
    if mechanism:
        if mechanism == "PLAIN" and not options["tls"]:
            logger.warning("SASL PLAIN without tls: the password crosses the network in clear text")
        settings["sasl_mechanism"] = mechanism
        settings["sasl_plain_username"] = options["username"]
        settings["sasl_plain_password"] = _password(options)
    return settings


def _password(options: dict[str, Any]) -> str:
    if options["password"] is not None:
        return options["password"].get_secret_value()
    path = Path(options["passwordFile"])
    try:
        return path.read_text(encoding="utf-8").strip()
    except OSError as exc:
        raise ConfigError(ConfigIssue("passwordFile", f"{str(path)!r} cannot be read: {exc.strerror}")) from None


_warned: set[str] = set()  # loggers that said crc32c is missing


def check_crc32c(logger: logging.Logger) -> None:
    """Warn (once per plugin instance) when kafka-python has only its pure-Python CRC-32C, about 2 ms
    for each 16 KiB message batch it writes or reads: Kafka would cost more CPU than the rest of the pipeline."""
    if logger.name not in _warned and importlib.util.find_spec("crc32c") is None:
        _warned.add(logger.name)
        logger.warning(
            "the Python package crc32c is not installed: kafka-python checksums every message batch in pure "
            "Python, which limits Kafka to a few thousand records per CPU-second; install it: pip install crc32c"
        )


def kafka_module() -> Any:
    """kafka-python, or an error saying how to install it."""
    try:
        import kafka
    except ImportError:
        raise FlowscopeError(f"the Kafka plugins need the Python package kafka-python: {INSTALL_HINT}") from None
    return kafka


def unreachable(options: dict[str, Any], exc: Exception) -> str:
    """What to say when the brokers could not be reached."""
    brokers, within = ", ".join(bootstrap_servers(options)), options["connectTimeout"]
    login = [what for key, what in (("tls", "the TLS keys"), ("saslMechanism", "the SASL login")) if options[key]]
    hint = f"; if they are up, they may refuse {' or '.join(login)}" if login else ""
    return f"cannot reach the Kafka brokers {brokers} (key brokers) within {within:g}s: {describe(exc)}{hint}"


def describe(exc: Exception) -> str:
    """An error as ``Name: text`` (kafka-python's errors already start with their name)."""
    text, name = str(exc), type(exc).__name__
    return text if text.startswith(name) else f"{name}: {text}" if text else name
