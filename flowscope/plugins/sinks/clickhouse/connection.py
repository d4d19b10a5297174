"""Where the ClickHouse sink connects, with which credentials, and what its errors mean.

``databaseURL`` forms: ``http(s)://host[:port]`` (a ClickHouse server's HTTP interface),
``chdb://PATH`` (embedded ClickHouse through chDB; ``chdb://memory`` keeps nothing on disk), and
Antrea's native ``tcp://host:9000`` / ``tls://host:9440``, which clickhouse-connect cannot speak:
they are mapped to the HTTP interface (8123 / 8443) with one warning.
"""

from __future__ import annotations

import fcntl
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from flowscope.core.errors import RetryableError

_DEFAULT_PORTS = {"http": 8123, "https": 8443}
_NATIVE = {"tcp": "http", "tls": "https"}
_CODE = re.compile(r"Code: (\d+)")
_MISSING_PACKAGE = (
    "the clickhouse sink needs clickhouse-connect (and chdb for chdb:// URLs): pip install 'flowscope[clickhouse]'"
)


@dataclass(frozen=True)
class Target:
    """A parsed ``databaseURL``."""

    interface: str  # http, https or chdb
    host: str = ""
    port: int = 0
    path: str = ""  # chdb only
    mapped_from: str = ""  # the native URL this HTTP one replaces

    def __str__(self) -> str:
        if self.interface == "chdb":
            return f"chdb://{self.path}"
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{self.interface}://{host}:{self.port}"


def parse_database_url(url: str) -> Target:
    """Parse ``databaseURL``; a ``ValueError`` says what is wrong and what to write instead."""
    shape = "expected http(s)://<host>[:<port>], chdb://<path> or tcp://<host>:9000"
    if not isinstance(url, str) or "://" not in url:
        raise ValueError(shape)
    scheme = url.split("://", 1)[0].lower()
    if scheme == "chdb":
        path = url.split("://", 1)[1]
        if not path:
            raise ValueError('chdb:// needs a directory, e.g. "chdb://./flowscope-data/clickhouse", or chdb://memory')
        return Target("chdb", path=path)
    if scheme not in (*_DEFAULT_PORTS, *_NATIVE):
        raise ValueError(f"scheme {scheme!r} is not supported; {shape}")
    parts = urlsplit(url)
    if parts.username or parts.password:
        raise ValueError(
            "credentials do not go in databaseURL (it is logged); set username and password or passwordFile, "
            "or the CH_USERNAME and CH_PASSWORD environment variables"
        )
    if not parts.hostname:
        raise ValueError(f"the host is missing; {shape}")
    try:
        port = parts.port
    except ValueError:
        raise ValueError(f"the port of {url!r} must be a number from 1 to 65535") from None
    if scheme in _NATIVE:  # the native protocol: use the same server's HTTP interface
        interface = _NATIVE[scheme]
        return Target(interface, parts.hostname, _DEFAULT_PORTS[interface], mapped_from=url)
    return Target(scheme, parts.hostname, port or _DEFAULT_PORTS[scheme])


@dataclass(frozen=True)
class Credentials:
    """User name and password; the password never appears in ``repr`` or logs."""

    username: str
    password: str

    def __repr__(self) -> str:
        return f"Credentials(username={self.username!r}, password=***)"


def resolve_credentials(username: str | None, password: str | None, password_file: Path | None) -> Credentials:
    """Config first, then ``passwordFile``, then Antrea's ``CH_USERNAME``/``CH_PASSWORD`` environment."""
    if password is None and password_file is not None:
        try:
            password = password_file.read_text().strip()
        except OSError as exc:
            raise ValueError(f"passwordFile {str(password_file)!r} cannot be read: {exc.strerror}") from None
    return Credentials(
        username or os.environ.get("CH_USERNAME") or "default",
        password if password is not None else os.environ.get("CH_PASSWORD", ""),
    )


def connect(
    target: Target, database: str, credentials: Credentials, compress: bool, tls: dict[str, Any] | None = None
) -> Any:
    """A clickhouse-connect client on ``database``; ``RetryableError`` when it cannot be reached yet.
    ``tls`` holds clickhouse-connect's ``verify`` and ``ca_cert`` for https."""
    try:
        import clickhouse_connect
    except ImportError:
        raise RuntimeError(_MISSING_PACKAGE) from None
    if target.interface == "chdb":
        return _connect_chdb(clickhouse_connect, target, database)
    try:
        return clickhouse_connect.get_client(
            interface=target.interface,
            host=target.host,
            port=target.port,
            username=credentials.username,
            password=credentials.password,
            database=database,
            compress="lz4" if compress else False,
            connect_timeout=5,
            send_receive_timeout=60,
            autogenerate_session_id=False,
            **((tls or {}) if target.interface == "https" else {}),
        )
    except Exception as exc:
        raise RetryableError(explain(exc, target, database, credentials.username)) from None


def _connect_chdb(clickhouse_connect: Any, target: Target, database: str) -> Any:
    """The embedded engine; flowscope owns it, so it creates the database if needed."""
    path = target.path if target.path == "memory" else str(Path(target.path).resolve())
    if path != "memory":
        Path(path).mkdir(parents=True, exist_ok=True)
    try:
        bootstrap = clickhouse_connect.get_client(interface="chdb", path=path)
        try:
            bootstrap.command(f"CREATE DATABASE IF NOT EXISTS {quote_identifier(database)}")
            return clickhouse_connect.get_client(interface="chdb", path=path, database=database)
        finally:
            bootstrap.close()  # after the client on the database opened: the engine stays up
    except ImportError:
        raise RuntimeError(_MISSING_PACKAGE) from None
    except Exception as exc:
        message = str(exc)
        if "already initialized with path" in message:
            raise RuntimeError(
                f"cannot open {target}: this process already runs chDB on another path, and chDB serves one path "
                "per process; point every chdb:// URL of this config at the same directory"
            ) from None
        raise RetryableError(explain(exc, target, database, "")) from None


def held_elsewhere(target: Target) -> bool:
    """Whether another process holds this embedded database (chDB locks its ``status`` file)."""
    if target.interface != "chdb" or target.path == "memory":
        return False
    try:
        fd = os.open(Path(target.path) / "status", os.O_RDWR)
    except OSError:  # no such file: nobody has opened it yet
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False
    finally:
        os.close(fd)


def quote_identifier(name: str) -> str:
    return "`" + name.replace("\\", "\\\\").replace("`", "\\`") + "`"


def error_code(exc: BaseException) -> int | None:
    """ClickHouse's numeric error code in an exception's message, if any."""
    found = _CODE.search(str(exc))
    return int(found.group(1)) if found else None


def explain(exc: BaseException, target: Target, database: str, username: str) -> str:
    """One line that says what failed and what to do about it."""
    code = error_code(exc)
    first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
    if code == 516 or "Authentication failed" in str(exc):
        return (
            f"ClickHouse at {target} refused user {username!r}: authentication failed; check username and "
            "password (or passwordFile, CH_USERNAME, CH_PASSWORD)"
        )
    if code == 81:
        return (
            f"database {database!r} does not exist on {target}: create it (CREATE DATABASE {database}) "
            "or set the database key"
        )
    if code == 60:
        return f"a table is missing in {database!r} on {target}: {first}"
    if code is None and type(exc).__name__ == "OperationalError":
        return f"cannot reach ClickHouse at {target}: {first}"
    return f"ClickHouse at {target}: {first}"
