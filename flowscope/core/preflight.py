"""Checks of what a config points at, made before anything starts: files that must be readable or
writable, and ports that must be free. Plugins call them from ``preflight`` (see
:class:`flowscope.core.components.Component`), and the pipeline's own keys use them too.
"""

from __future__ import annotations

import errno
import os
import socket
from pathlib import Path
from typing import Annotated

from pydantic import AfterValidator

from flowscope.core.errors import ConfigIssue


def readable_file(key: str, path: str | os.PathLike[str], what: str = "file") -> list[ConfigIssue]:
    """Problems reading ``path`` as a file."""
    target = Path(path)
    if not target.exists():
        return [ConfigIssue(key, f"{str(target)!r} does not exist; check the path")]
    if target.is_dir():
        return [ConfigIssue(key, f"{str(target)!r} is a directory; give the path of a {what}")]
    if not os.access(target, os.R_OK):
        return [ConfigIssue(key, f"{str(target)!r} is not readable by this user; change its permissions")]
    return []


def writable_file(key: str, path: str | os.PathLike[str]) -> list[ConfigIssue]:
    """Problems creating or appending to the file ``path`` (its directory is created if missing)."""
    target = Path(path)
    if target.is_dir():
        return [ConfigIssue(key, f"{str(target)!r} is a directory; give the path of a file to write")]
    if target.exists():
        if not os.access(target, os.W_OK):
            return [ConfigIssue(key, f"{str(target)!r} is not writable by this user; change its permissions")]
        return []
    return writable_directory(key, target.parent, f"the directory of {str(target)!r}")


def writable_directory(key: str, path: str | os.PathLike[str], what: str | None = None) -> list[ConfigIssue]:
    """Problems using (and if need be creating) the directory ``path``."""
    target = Path(path).absolute()
    what = what or repr(str(path))
    existing = next((parent for parent in (target, *target.parents) if parent.exists()), Path("/"))
    if not existing.is_dir():
        return [ConfigIssue(key, f"{what} cannot be made: {str(existing)!r} is a file, not a directory")]
    if not os.access(existing, os.W_OK | os.X_OK):
        verb = "is" if existing == target else "would be made in"
        return [ConfigIssue(key, f"{what} {verb} {str(existing)!r}, which this user cannot write to")]
    return []


def port_in_use(key: str, host: str, port: int, proto: str = "tcp") -> list[ConfigIssue]:
    """A warning when ``host:port`` cannot be bound now (another process has it); port 0 is always free."""
    if port == 0:
        return []
    kind = socket.SOCK_DGRAM if proto == "udp" else socket.SOCK_STREAM
    family = socket.AF_INET6 if ":" in host or not host else socket.AF_INET
    with socket.socket(family, kind) as probe:
        try:
            if family == socket.AF_INET6:
                probe.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
            if kind == socket.SOCK_STREAM:
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host or "::", port))
        except OSError as exc:
            if exc.errno == errno.EADDRINUSE:
                where = f"{host or '*'}:{port}/{proto}"
                return [
                    ConfigIssue(key, f"{where} is in use by another process now; run fails unless it is free", True)
                ]
            if exc.errno == errno.EACCES:
                return [ConfigIssue(key, f"port {port} needs root (or CAP_NET_BIND_SERVICE); use a port above 1023")]
            if exc.errno == errno.EADDRNOTAVAIL:
                return [ConfigIssue(key, f"{host!r} is not an address of this host")]
    return []


def _readable(value: str | None) -> str | None:
    if value is not None:
        for issue in readable_file("", value):
            raise ValueError(issue.message)
    return value


ReadableFile = Annotated[str | None, AfterValidator(_readable)]
"""An option type: the path of a file that must exist and be readable (or ``None``)."""
