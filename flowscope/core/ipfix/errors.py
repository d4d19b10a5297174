"""Decoding problems, each with a short reason used as a metric label.

Every reason is in :data:`REASONS` with what it means; the docs list them all (a test checks), so
that a ``flowscope_ipfix_decode_errors_total{reason=...}`` a user sees is explained.
"""

from __future__ import annotations

REASONS = {
    "truncated": "a message shorter than its 16-byte header, or a TCP/TLS stream that ended inside a message",
    "bad_version": "a header whose version is not 10 (IPFIX)",
    "bad_length": "a header whose length field is shorter than the header or longer than the message",
    "bad_framing": "a TCP/TLS stream that cannot be read as IPFIX messages any more (the session is closed)",
    "bad_set_length": "a set whose length runs past the end of its message, or stray bytes after the last set",
    "reserved_set": "a set id of 4 to 255, which RFC 7011 reserves",
    "unknown_template": "a data set for a template the session has not defined (or whose UDP lifetime ran out)",
    "record_overrun": "a data record whose fields run past the end of its set",
    "short_set": "a data set too short to hold one record of its template",
    "template_truncated": "a template record cut short by the end of its set",
    "bad_template": "an options template whose scope field count is 0 or more than its field count",
    "bad_template_id": "a template id below 256",
    "empty_template": "a template whose records have no length",
    "bad_field_length": "a field whose length its type does not allow (RFC 7011 §6.2); the template is refused",
    "template_too_large": "a template with more fields than maxTemplateFields; it is refused",
    "too_many_templates": "a new template refused: its exporter holds maxTemplatesPerExporter, the store maxTemplates",
    "message_timeout": "a TCP/TLS message begun but not complete within messageTimeout (the session is closed)",
    "tls_error": "a TLS handshake or record that failed, e.g. a client certificate refused",
    "template_ids_exhausted": "exporting: records of more shapes than there are template ids (65,280)",
    "malformed": "any other malformed input",
}


class IPFIXError(Exception):
    """Malformed or unusable IPFIX input. ``reason`` is a snake_case metric label, one of :data:`REASONS`."""

    reason = "malformed"

    def __init__(self, message: str, reason: str | None = None):
        super().__init__(message)
        if reason is not None:
            assert reason in REASONS, f"undocumented IPFIX error reason {reason!r}"
            self.reason = reason


class FramingError(IPFIXError):
    """The message header cannot be trusted: on TCP the session must be closed."""

    reason = "bad_framing"
