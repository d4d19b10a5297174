"""Config primitives: Go-style durations, ``<host>:<port>[:<proto>]`` addresses, the base of option
models, YAML reading, and problems reported as the key, the value and what is allowed.

The pipeline's own models and its validation against the loaded plugins are in
:mod:`flowscope.core.pipelineconfig`.
"""

from __future__ import annotations

import difflib
import ipaddress
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any

import yaml
from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, ValidationError

from flowscope.core.errors import ConfigError, ConfigIssue

# ---------------------------------------------------------------------------------------------
# Durations

_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
DURATION_HELP = 'a duration with a unit, e.g. "500ms", "5s", "1m30s" (units: ns, us, ms, s, m, h)'


def parse_duration(value: object) -> float:
    """Parse a Go duration (``"1m30s"``, ``"500ms"``) into seconds. Negative values are refused."""
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise ValueError(f"expected {DURATION_HELP}")
    if isinstance(value, int | float):
        if value == 0:
            return 0.0
        raise ValueError(f'a number needs a unit: write "{value}s" for {value} seconds')
    text = value.strip()
    if text in ("0", "+0"):
        return 0.0
    if text.startswith("-"):
        raise ValueError(f"must not be negative; expected {DURATION_HELP}")
    body = text[1:] if text.startswith("+") else text
    pos, total = 0, 0.0
    while pos < len(body):
        match = _DURATION_PART.match(body, pos)
        if match is None:
            if re.fullmatch(r"\d+\.?\d*", body):
                raise ValueError(f'a number needs a unit: write "{body}s" for {body} seconds')
            raise ValueError(f"not a duration; expected {DURATION_HELP}")
        total += float(match.group(1)) * _UNITS[match.group(2)]
        pos = match.end()
    if not body:
        raise ValueError(f"empty; expected {DURATION_HELP}")
    return total


def format_duration(seconds: float) -> str:
    """Render seconds the way Go does for whole units: 90 → ``"1m30s"``, 0.5 → ``"500ms"``."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:g}ms"
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    parts = [f"{int(hours)}h" if hours else "", f"{int(minutes)}m" if minutes else "", f"{secs:g}s" if secs else ""]
    return "".join(parts)


Duration = Annotated[float, BeforeValidator(parse_duration)]
"""A pydantic field type: a Go-style duration string, validated into float seconds."""


def duration_at_least(minimum: float, note: str = "") -> Any:
    """A :data:`Duration` field type that refuses less than ``minimum`` seconds."""

    def check(value: float) -> float:
        if value < minimum:
            raise ValueError(f"must be at least {format_duration(minimum)}{note}")
        return value

    return Annotated[float, BeforeValidator(parse_duration), AfterValidator(check)]


# ---------------------------------------------------------------------------------------------
# Addresses


@dataclass(frozen=True)
class Address:
    """A parsed ``<host>:<port>[:<proto>]`` address."""

    host: str
    port: int
    proto: str | None = None

    def __str__(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}" + (f":{self.proto}" if self.proto else "")


_HOSTNAME = re.compile(
    r"^(?=.{1,253}$)[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?(\.[A-Za-z0-9_]([A-Za-z0-9_-]*[A-Za-z0-9_])?)*\.?$"
)


def parse_address(
    value: object,
    *,
    default_port: int | None = None,
    default_proto: str | None = None,
    protocols: tuple[str, ...] = ("tcp", "udp", "tls"),
    allow_port_zero: bool = False,
) -> Address:
    """Parse ``<host>:<port>[:<proto>]``; IPv6 hosts go in brackets (``[fd00::1]:4739:tls``).

    An empty host means all interfaces (``":4739"``). ``default_port`` makes the port optional.
    """
    if protocols:
        shape = f'expected <host>:<port>[:<proto>] (<proto> one of {", ".join(protocols)}), e.g. "127.0.0.1:4739:tcp"'
    else:
        shape = 'expected <host>:<port> (no <proto>), e.g. "127.0.0.1:4739"'
    if not isinstance(value, str) or not value.strip():
        raise ValueError(shape)
    text = value.strip()
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise ValueError(f"IPv6 address has no closing ']'; {shape}")
        host, rest = text[1:end], text[end + 1 :]
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            raise ValueError(f"{host!r} in brackets is not an IPv6 address") from None
        parts = rest[1:].split(":") if rest.startswith(":") else ([] if not rest else None)
        if parts is None:
            raise ValueError(shape)
    else:
        if text.count(":") > 2:
            raise ValueError(f'IPv6 addresses must be written in brackets, e.g. "[{text}]:4739"; {shape}')
        host, *parts = text.split(":")
        if host and not _HOSTNAME.match(host):
            raise ValueError(f"{host!r} is not a valid host name or IPv4 address")
    port_text = parts[0] if parts else ""
    proto = parts[1] if len(parts) > 1 else None
    if len(parts) > 2:
        raise ValueError(shape)
    if port_text == "":
        if default_port is None:
            raise ValueError(f"the port is missing; {shape}")
        port = default_port
    elif not port_text.isdigit() or not (0 if allow_port_zero else 1) <= int(port_text) <= 65535:
        raise ValueError(f"port {port_text!r} must be a number from {0 if allow_port_zero else 1} to 65535")
    else:
        port = int(port_text)
    if proto is not None and proto not in protocols:
        allowed = ", ".join(protocols) if protocols else "none (the address takes no protocol)"
        raise ValueError(f"protocol {proto!r} is not supported; use one of: {allowed}")
    return Address(host, port, proto or default_proto)


def address_type(**kwargs: Any) -> Any:
    """A pydantic field type for addresses; keyword arguments as :func:`parse_address`."""
    return Annotated[Address, BeforeValidator(lambda v: v if isinstance(v, Address) else parse_address(v, **kwargs))]


# ---------------------------------------------------------------------------------------------
# Models


class OptionsModel(BaseModel):
    """Base for plugin ``Options``: unknown keys are errors; keys are written as in the YAML;
    defaults are validated too, so a ``Duration`` default may be written ``"5s"``."""

    model_config = ConfigDict(
        extra="forbid", populate_by_name=True, arbitrary_types_allowed=True, validate_default=True
    )

    @classmethod
    def from_config(cls, data: Mapping[str, Any], prefix: str = "") -> Any:
        """Validate a mapping; raise :class:`ConfigError` listing every problem (keys under ``prefix``)."""
        try:
            return cls.model_validate(dict(data))
        except ValidationError as exc:
            raise ConfigError(issues_from_validation_error(exc, cls, prefix)) from None


INSTANCE_KEYS = frozenset({"type", "name"})
"""Keys of every source, enricher and sink instance that the runtime reads, not the plugin."""


# ---------------------------------------------------------------------------------------------
# Reading


def read_config_file(path: str | Path) -> dict[str, Any]:
    """Read a YAML config file into a mapping, with a clear error for every way that can fail."""
    source = str(path)
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"config file {source!r} does not exist; check the path given with -c") from None
    except IsADirectoryError:
        raise ConfigError(f"config path {source!r} is a directory; give a YAML file") from None
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError(f"cannot read config file {source!r}: {exc}") from None
    return parse_config_text(text, source)


def parse_config_text(text: str, source: str = "<config>") -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        raise ConfigError(f"not valid YAML{where}: {problem}", source) from None
    if data is None:
        raise ConfigError("the file is empty; it needs 'sources' and 'sinks', or 'bundle'", source)
    if not isinstance(data, dict):
        raise ConfigError(f"the top level must be a mapping of keys, not {type(data).__name__}", source)
    return data


def validate_model(
    model: type[BaseModel],
    data: Mapping[str, Any],
    prefix: str,
    issues: list[ConfigIssue],
    also_allowed: list[str] = (),  # type: ignore[assignment]
) -> Any:
    """``model`` validated from ``data``, or ``None`` with its problems (keys under ``prefix``) added to ``issues``."""
    try:
        return model.model_validate(dict(data))
    except ValidationError as exc:
        issues.extend(issues_from_validation_error(exc, model, prefix, also_allowed))
        return None


def issues_from_validation_error(
    exc: ValidationError,
    model: type[BaseModel],
    prefix: str = "",
    also_allowed: list[str] = (),  # type: ignore[assignment]
) -> list[ConfigIssue]:
    """Turn pydantic's errors into :class:`ConfigIssue` s naming key, value and what is allowed."""
    issues = []
    for error in exc.errors():
        key = _join_key(prefix, error["loc"])
        value = error.get("input")
        kind = error["type"]
        ctx = error.get("ctx") or {}
        if kind == "missing":
            message = "required key is missing"
        elif kind == "extra_forbidden":
            allowed = sorted({*model.model_fields, *also_allowed}) if len(error["loc"]) == 1 else []
            message = unknown_key_message(str(error["loc"][-1]), allowed)
        elif kind == "literal_error":
            message = f"{value!r} is not allowed; use one of: {ctx.get('expected', '').replace(' or ', ', ')}"
        elif kind == "value_error":  # a whole section's problem names its keys itself, a quoted value itself
            message = str(ctx.get("error", error["msg"]))
            if not isinstance(value, dict) and not (isinstance(value, str) and repr(value) in message):
                message += f" (got {value!r})"
        elif kind in ("greater_than", "greater_than_equal", "less_than", "less_than_equal"):
            bound = {
                "greater_than": "greater than",
                "greater_than_equal": "at least",
                "less_than": "less than",
                "less_than_equal": "at most",
            }[kind]
            limit = next(iter(ctx.values()), "?")
            message = f"must be {bound} {limit} (got {value!r})"
        else:
            message = f"{error['msg'].replace('Input should be', 'expected')} (got {value!r})"
        issues.append(ConfigIssue(key, message))
    return issues


def _join_key(prefix: str, loc: tuple[Any, ...]) -> str:
    key = prefix
    for part in loc:
        if isinstance(part, int):
            key += f"[{part}]"
        else:
            key = f"{key}.{part}" if key else str(part)
    return key


def unknown_key_message(key: str, allowed: list[str]) -> str:
    """ "unknown key", with the closest allowed key and the list of them."""
    message = "unknown key"
    if allowed:
        message += did_you_mean(key, allowed) + f"; allowed keys: {', '.join(allowed)}"
    return message


def did_you_mean(word: str, choices: list[str]) -> str:
    """`` (did you mean 'x'?)`` for the choice closest to ``word``, or nothing."""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    lowered = [c for c in choices if c.lower() == word.lower()]
    hint = lowered[0] if lowered else (close[0] if close else None)
    return f" (did you mean {hint!r}?)" if hint else ""
