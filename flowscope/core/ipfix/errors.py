"""Decoding problems, each with a short reason used as a metric label."""

from __future__ import annotations


class IPFIXError(Exception):
    """Malformed or unusable IPFIX input. ``reason`` is a snake_case metric label."""

    reason = "malformed"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            self.reason = reason


class FramingError(IPFIXError):
    """The message header cannot be trusted: on TCP the session must be closed."""

    reason = "bad_framing"
