"""IPFIX (RFC 7011, RFC 5103): our own codec, template store and transports."""

from flowscope.core.ipfix.errors import FramingError, IPFIXError
from flowscope.core.ipfix.messages import Decoder, DecodeResult, MessageWriter, parse_header
from flowscope.core.ipfix.templates import FieldSpec, Template, TemplateStore

__all__ = [
    "DecodeResult",
    "Decoder",
    "FieldSpec",
    "FramingError",
    "IPFIXError",
    "MessageWriter",
    "Template",
    "TemplateStore",
    "parse_header",
]
