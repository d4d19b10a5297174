"""RFC 7011 messages: decoding into records, and encoding records into size-bounded messages."""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable, Hashable
from dataclasses import dataclass
from typing import Any, NamedTuple

from flowscope.core import speedups
from flowscope.core.elements import ANTREA, ANTREA_SEED, ElementRegistry
from flowscope.core.ipfix.codec import (
    EXTENSION,
    ResolvedField,
    compile_decoder,
    compile_encoder,
    length_problem,
    resolve_fields,
    unknown_name,
)
from flowscope.core.ipfix.errors import FramingError, IPFIXError
from flowscope.core.ipfix.templates import FieldSpec, Template, TemplateStore

log = logging.getLogger("flowscope.ipfix")

VERSION = 10
HEADER = struct.Struct(">HHIII")  # version, length, export time, sequence number, observation domain id
SET_HEADER = struct.Struct(">HH")
TEMPLATE_SET, OPTIONS_TEMPLATE_SET, MIN_DATA_SET = 2, 3, 256
ENTERPRISE_BIT = 0x8000
DEFAULT_ALIASES = {ANTREA_SEED: ANTREA}


class Header(NamedTuple):
    version: int
    length: int
    export_time: int
    sequence: int
    odid: int


_new_header = tuple.__new__  # builds a Header from the unpacked tuple without NamedTuple's slower paths


def parse_header(data: bytes) -> Header:
    """The 16-byte message header; :class:`FramingError` if it is not an IPFIX v10 header."""
    if len(data) < HEADER.size:
        raise FramingError(f"message of {len(data)} bytes is shorter than the 16-byte header", "truncated")
    header = _new_header(Header, HEADER.unpack_from(data))
    if header.version != VERSION:
        raise FramingError(f"unsupported version {header.version} (IPFIX is version 10)", "bad_version")
    if header.length < HEADER.size:
        raise FramingError(f"message length field {header.length} is shorter than the header", "bad_length")
    return header


class DecodeResult:
    """What one message yielded."""

    __slots__ = (
        "errors",
        "header",
        "options",
        "records",
        "templates",
        "unknown_element_records",
        "unknown_elements",
        "withdrawals",
    )

    def __init__(self, header: Header):
        self.header = header
        self.records: list[dict[str, Any]] = []
        self.options: list[dict[str, Any]] = []
        self.errors: list[IPFIXError] = []
        self.templates = 0
        self.withdrawals = 0
        self.unknown_element_records = 0
        self.unknown_elements: list[tuple[int, list[str]]] = []  # new templates' unknown elements, by template id


class Decoder:
    """Decodes messages into records, keeping templates in a :class:`TemplateStore`.

    :param aliases: enterprise numbers read as another (default: Antrea's 56505 as 56506).
    :param template_lifetime: seconds a template lives unless refreshed; for UDP sessions.
    :param max_template_fields: fields a template may have; a larger one is refused.
    """

    def __init__(
        self,
        elements: ElementRegistry,
        store: TemplateStore | None = None,
        *,
        aliases: dict[int, int] | None = None,
        template_lifetime: float | None = None,
        max_template_fields: int = 512,
    ):
        self.elements = elements
        self.store = store or TemplateStore()
        self.aliases = DEFAULT_ALIASES if aliases is None else aliases
        self.template_lifetime = template_lifetime
        self.max_template_fields = max_template_fields
        self._compiled: dict[tuple[tuple[FieldSpec, ...], int], tuple[Any, int, int]] = {}
        self._decode_data = EXTENSION.decode_data if speedups.wanted(EXTENSION) else None

    def compile(self, template: Template) -> Template:
        """Attach a decoder to a template (shared by every template with the same fields).

        :raises IPFIXError: ``bad_field_length`` for a length its element's type does not allow
            (RFC 7011 §6.2), ``empty_template`` for records of no length.
        """
        key = (template.fields, template.scope_count)
        found = self._compiled.get(key)
        if found is None:
            resolved, unknown = resolve_fields(template.fields, self.elements, self.aliases)
            for f in resolved:
                problem = length_problem(f.type, f.length)
                if problem is not None:
                    raise IPFIXError(
                        f"template {template.template_id} refused: {f.name} ({f.type}) has length {problem}",
                        "bad_field_length",
                    )
            decode, min_length = compile_decoder(resolved)
            if min_length == 0:
                raise IPFIXError(f"template {template.template_id} describes records of zero length", "empty_template")
            if len(self._compiled) > 10_000:
                self._compiled.clear()
            found = self._compiled[key] = (decode, min_length, unknown)
        template.decode, template.min_length, template.unknown = found
        return template

    @property
    def native_decode_data(self) -> Callable[..., Any] | None:
        """The C function behind :meth:`decode_data`, called as ``(store.by_key, data, session, now)``, for
        loops that are themselves in C; ``None`` without the C decoder."""
        return self._decode_data

    def decode_data(self, data: bytes, session: Hashable, now: float) -> tuple[int, int, list[dict[str, Any]]] | None:
        """The common case of a message, in one C call: ``(odid, sequence, records)`` when it holds only
        data sets of known, unexpired templates (no options templates, no unknown elements) that decode
        cleanly; ``None`` for anything else, and always without the C decoder: :meth:`decode` it then."""
        if self._decode_data is None:
            return None
        return self._decode_data(self.store.by_key, data, session, now)

    def decode(self, data: bytes, session: Hashable, now: float | None = None) -> DecodeResult:
        """Decode one whole message. Problems are collected in ``result.errors``, never raised,
        except :class:`FramingError` for a header that cannot be trusted."""
        header = parse_header(data)
        result = DecodeResult(header)
        if header.length > len(data):
            raise FramingError(f"length field says {header.length} bytes but the message has {len(data)}", "bad_length")
        if now is None:  # only UDP templates expire; others never compare against the clock
            now = time.time() if self.template_lifetime is not None else 0.0
        domain = self.store.domain(session, header.odid)
        position, end = HEADER.size, header.length
        while position < end:
            if end - position < SET_HEADER.size:
                result.errors.append(IPFIXError(f"{end - position} stray bytes after the last set", "bad_set_length"))
                break
            set_id, set_length = SET_HEADER.unpack_from(data, position)
            if set_length < SET_HEADER.size or position + set_length > end:
                result.errors.append(
                    IPFIXError(
                        f"set {set_id} at offset {position} claims {set_length} bytes; "
                        f"{end - position} remain in the message",
                        "bad_set_length",
                    )
                )
                break
            body = data[position + SET_HEADER.size : position + set_length]
            position += set_length
            try:
                if set_id < MIN_DATA_SET:
                    if set_id not in (TEMPLATE_SET, OPTIONS_TEMPLATE_SET):
                        raise IPFIXError(f"set id {set_id} is reserved", "reserved_set")
                    self._template_set(set_id, body, session, header.odid, now, result)
                    domain = self.store.domain(session, header.odid)  # it may have been created
                    continue
                template = domain.get(set_id)
                if template is None or template.expires < now:
                    raise IPFIXError(
                        f"data set for template {set_id}, which this session has not defined", "unknown_template"
                    )
                try:
                    records = template.decode(body)
                except (struct.error, IndexError, OverflowError):
                    raise IPFIXError(
                        f"data set for template {set_id}: a record runs past the end of its {len(body)}-byte set",
                        "record_overrun",
                    ) from None
                if not records:
                    raise IPFIXError(
                        f"data set for template {set_id} has {len(body)} bytes, less than one "
                        f"{template.min_length}-byte record",
                        "short_set",
                    )
                (result.options if template.scope_count else result.records).extend(records)
                if template.unknown:
                    result.unknown_element_records += len(records)
            except IPFIXError as exc:
                result.errors.append(exc)
        return result

    def _template_set(
        self, set_id: int, body: bytes, session: Hashable, odid: int, now: float, result: DecodeResult
    ) -> None:
        options = set_id == OPTIONS_TEMPLATE_SET
        position, size = 0, len(body)
        while size - position >= 4:
            template_id, count = SET_HEADER.unpack_from(body, position)
            position += 4
            if count == 0:  # RFC 7011 §8.1 withdrawal; the set id itself withdraws every template
                which = None if template_id == set_id else template_id
                result.withdrawals += self.store.withdraw(session, odid, which, options)
                continue
            if template_id < MIN_DATA_SET:
                raise IPFIXError(f"template id {template_id} is below 256", "bad_template_id")
            if count > self.max_template_fields:
                raise IPFIXError(
                    f"template {template_id} refused: it has {count} fields, more than the "
                    f"{self.max_template_fields} accepted (maxTemplateFields)",
                    "template_too_large",
                )
            scope = 0
            if options:
                if size - position < 2:
                    raise IPFIXError(f"options template {template_id} is cut short", "template_truncated")
                (scope,) = struct.unpack_from(">H", body, position)
                position += 2
                if scope == 0 or scope > count:
                    raise IPFIXError(
                        f"options template {template_id} has scope field count {scope} of {count} fields",
                        "bad_template",
                    )
            fields = []
            for _ in range(count):
                if size - position < 4:
                    raise IPFIXError(f"template {template_id} is cut short", "template_truncated")
                element_id, length = SET_HEADER.unpack_from(body, position)
                position += 4
                enterprise = 0
                if element_id & ENTERPRISE_BIT:
                    if size - position < 4:
                        raise IPFIXError(f"template {template_id} is cut short", "template_truncated")
                    (enterprise,) = struct.unpack_from(">I", body, position)
                    position += 4
                    element_id &= ~ENTERPRISE_BIT
                fields.append(FieldSpec(element_id, length, enterprise))
            template = self.compile(Template(template_id, tuple(fields), scope))
            if self.template_lifetime is not None:
                template.expires = now + self.template_lifetime
            if self.store.add(session, odid, template) and template.unknown:
                names = [unknown_name(f.enterprise_id, f.element_id) for f in fields if not self._known(f)]
                result.unknown_elements.append((template_id, names))
            result.templates += 1

    def _known(self, spec: FieldSpec) -> bool:
        enterprise = self.aliases.get(spec.enterprise_id, spec.enterprise_id)
        return self.elements.by_id(enterprise, spec.element_id) is not None


# -- encoding -----------------------------------------------------------------------------------


@dataclass
class ExportTemplate:
    """A template this exporter defined: its id, element names, wire form and record encoder."""

    template_id: int
    names: list[str]
    wire: bytes  # the template record (id, count, field specifiers)
    encode: Any


class MessageWriter:
    """Encodes records into IPFIX messages of at most ``max_size`` bytes.

    One template per record shape (the record's keys, in order, that the registry knows).
    Templates not yet sent in the current session are put in front of the first data that
    uses them. ``antrea_enterprise_id`` replaces 56506 on the wire.
    """

    def __init__(
        self,
        elements: ElementRegistry,
        *,
        odid: int = 0,
        max_size: int = 65535,
        antrea_enterprise_id: int = ANTREA,
    ):
        if max_size < 64:
            raise ValueError("max_size must be at least 64 bytes")
        self.elements = elements
        self.odid = odid
        self.max_size = min(max_size, 65535)
        self.antrea_enterprise_id = antrea_enterprise_id
        self.sequence = 0
        self._shapes: dict[tuple[str, ...], ExportTemplate | None] = {}
        self._by_names: dict[tuple[str, ...], ExportTemplate] = {}
        self._sent: set[int] = set()
        self._next_id = MIN_DATA_SET

    @property
    def templates(self) -> list[ExportTemplate]:
        return list(self._by_names.values())

    def new_session(self) -> None:
        """A new transport session: templates must be sent again and sequence numbers restart."""
        self._sent.clear()
        self.sequence = 0

    def template_for(self, record: dict[str, Any]) -> ExportTemplate | None:
        shape = tuple(record)
        found = self._shapes.get(shape, False)
        if found is not False:
            return found
        known = [name for name in shape if name in self.elements]
        skipped = [name for name in shape if name not in self.elements]
        if skipped:
            log.warning("fields not in the IE registry are not exported: %s", ", ".join(skipped))
        template = self._define(tuple(known)) if known else None
        self._shapes[shape] = template
        return template

    def _define(self, names: tuple[str, ...]) -> ExportTemplate:
        found = self._by_names.get(names)
        if found is not None:
            return found
        if self._next_id > 0xFFFF:
            raise IPFIXError("more than 65280 record shapes: no template id left", "template_ids_exhausted")
        template_id = self._next_id
        self._next_id += 1
        elements = [self.elements[name] for name in names]
        wire = bytearray(SET_HEADER.pack(template_id, len(elements)))
        for element in elements:
            enterprise = self.antrea_enterprise_id if element.enterprise_id == ANTREA else element.enterprise_id
            if enterprise:
                wire += struct.pack(">HHI", element.element_id | ENTERPRISE_BIT, element.length, enterprise)
            else:
                wire += SET_HEADER.pack(element.element_id, element.length)
        encode = compile_encoder([ResolvedField(e.name, e.type, e.length, e.uuid) for e in elements])
        template = self._by_names[names] = ExportTemplate(template_id, list(names), bytes(wire), encode)
        return template

    def template_messages(self, export_time: int | None = None) -> list[bytes]:
        """Messages carrying every defined template (session start, UDP refresh)."""
        builder = _Builder(self, export_time)
        for template in self._by_names.values():
            builder.add_template(template)
        self._sent.update(t.template_id for t in self._by_names.values())
        return builder.finish()

    def encode(
        self, records: list[dict[str, Any]], export_time: int | None = None
    ) -> tuple[list[bytes], dict[str, int]]:
        """Messages for ``records``; also the count of records that could not be encoded, by reason."""
        builder = _Builder(self, export_time)
        dropped: dict[str, int] = {}
        for record in records:
            template = self.template_for(record)
            if template is None:
                dropped["no_known_fields"] = dropped.get("no_known_fields", 0) + 1
                continue
            try:
                data = template.encode(record)
            except (TypeError, ValueError, OSError, AttributeError, struct.error, OverflowError) as exc:
                dropped["unencodable"] = dropped.get("unencodable", 0) + 1
                log.debug("record not encodable with template %d: %s", template.template_id, exc)
                continue
            largest = max(len(template.wire), len(data))  # each goes in a message of its own if need be
            if HEADER.size + SET_HEADER.size + largest > self.max_size:
                dropped["too_large"] = dropped.get("too_large", 0) + 1
                continue
            if template.template_id not in self._sent:
                builder.add_template(template)
                self._sent.add(template.template_id)
            builder.add_record(template.template_id, data)
        return builder.finish(), dropped


class _Builder:
    """Packs template records and data records into messages no larger than ``max_size``."""

    def __init__(self, writer: MessageWriter, export_time: int | None):
        self.writer = writer
        self.export_time = int(time.time()) if export_time is None else export_time
        self.messages: list[bytes] = []
        self.sets: list[bytes] = []
        self.size = HEADER.size
        self.records_in_message = 0
        self.set_id: int | None = None
        self.set_parts: list[bytes] = []
        self.set_size = 0

    def add_template(self, template: ExportTemplate) -> None:
        self._add(TEMPLATE_SET, template.wire, is_data=False)

    def add_record(self, template_id: int, data: bytes) -> None:
        self._add(template_id, data, is_data=True)

    def _add(self, set_id: int, payload: bytes, is_data: bool) -> None:
        same_set = self.set_id == set_id
        needed = len(payload) + (0 if same_set else SET_HEADER.size)
        if self.size + needed > self.writer.max_size:
            self._close_message()
            same_set = False
            needed = len(payload) + SET_HEADER.size
        if not same_set:
            self._close_set()
            self.set_id = set_id
            self.set_size = SET_HEADER.size
        self.set_parts.append(payload)
        self.set_size += len(payload)
        self.size += needed
        if is_data:
            self.records_in_message += 1

    def _close_set(self) -> None:
        if self.set_id is not None and self.set_parts:
            self.sets.append(SET_HEADER.pack(self.set_id, self.set_size) + b"".join(self.set_parts))
        self.set_id, self.set_parts, self.set_size = None, [], 0

    def _close_message(self) -> None:
        self._close_set()
        if self.sets:
            writer = self.writer
            header = HEADER.pack(VERSION, self.size, self.export_time, writer.sequence, writer.odid)
            self.messages.append(header + b"".join(self.sets))
            writer.sequence = (writer.sequence + self.records_in_message) & 0xFFFFFFFF
        self.sets, self.size, self.records_in_message = [], HEADER.size, 0

    def finish(self) -> list[bytes]:
        self._close_message()
        return self.messages
