"""Per-template record decoders and encoders, generated as Python source for speed.

A template is compiled once into a function that unpacks a whole data set with precompiled
``struct`` formats and builds each record as a dict literal keyed by IE name. Fixed-length
templates decode with ``struct.iter_unpack``; variable-length fields (RFC 7011 §7: a 1-byte length,
or 255 then a 2-byte length) are read inline. Integers may arrive in reduced size (RFC 7011 §6.2).

Value conventions (DESIGN.md §1): integers for unsigned/signed and dateTime* (seconds,
milliseconds, microseconds or nanoseconds since the Unix epoch, by type), ``str`` for strings, IP
and MAC addresses, ``bool`` for booleans, ``float`` for floats, ``bytes`` for octet arrays and for
elements the registry does not know. A UUID element (the registry's ``uuid``, Antrea's
``sourcePodUUID`` ...) is its text, ``"4d0a4c8e-..."``, and ``""`` for the nil UUID or no bytes.
"""

from __future__ import annotations

import logging
import socket
import struct
import uuid
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

from flowscope.core import speedups
from flowscope.core.elements import ElementRegistry
from flowscope.core.ipfix.templates import VARIABLE, FieldSpec

log = logging.getLogger("flowscope.ipfix")

EXTENSION = speedups.built("flowscope.core.ipfix._codec")
"""The C decoder (``_codec.c``), or ``None`` when it was not built."""

NTP_EPOCH_OFFSET = 2208988800  # seconds from 1900-01-01 to 1970-01-01

_INT_CODES = {1: "B", 2: "H", 4: "I", 8: "Q"}
_SIGNED_CODES = {1: "b", 2: "h", 4: "i", 8: "q"}


def unknown_name(enterprise_id: int, element_id: int) -> str:
    """The stable name of an element the registry does not know, e.g. ``ie_56506_200``."""
    return f"ie_{enterprise_id}_{element_id}"


def ntp_to_us(value: int) -> int:
    """RFC 7011 §6.1.9: the top 21 bits of the fraction carry the microseconds."""
    return ((value >> 32) - NTP_EPOCH_OFFSET) * 1_000_000 + (
        (((value & 0xFFFFFFFF) >> 11) * 1_000_000 + (1 << 20)) >> 21
    )


def ntp_to_ns(value: int) -> int:
    return ((value >> 32) - NTP_EPOCH_OFFSET) * 1_000_000_000 + (
        ((value & 0xFFFFFFFF) * 1_000_000_000 + (1 << 31)) >> 32
    )


def us_to_ntp(value: int) -> int:
    seconds, micros = divmod(value, 1_000_000)
    return ((seconds + NTP_EPOCH_OFFSET) << 32) | ((((micros << 21) + 500_000) // 1_000_000) << 11)


def ns_to_ntp(value: int) -> int:
    seconds, nanos = divmod(value, 1_000_000_000)
    return ((seconds + NTP_EPOCH_OFFSET) << 32) | (((nanos << 32) + 500_000_000) // 1_000_000_000)


class _AddressCache(dict):
    """Packed address → text, filled on first sight: flows repeat the same few addresses.

    A subscript that hits is one C-level dict lookup, cheaper than ``inet_ntoa``/``inet_ntop``.
    """

    def __init__(self, convert: Any, limit: int = 1 << 16):
        super().__init__()
        self.convert, self.limit = convert, limit

    def __missing__(self, packed: bytes) -> str:
        if len(self) >= self.limit:
            self.clear()
        text = self[packed] = self.convert(packed)
        return text


NIL_UUID = bytes(16)


def uuid_text(packed: bytes) -> str | bytes:
    """The text of a 16-byte UUID (``""`` for the nil UUID and for no bytes); other lengths stay bytes."""
    if len(packed) == 16:
        return "" if packed == NIL_UUID else str(uuid.UUID(bytes=packed))
    return packed or ""


def uuid_bytes(value: Any) -> bytes:
    """The 16 bytes of a UUID given as text or as 16 bytes; the nil UUID for an empty or invalid
    value, as Antrea's ``setUUID`` (logged, as Antrea logs it)."""
    if isinstance(value, str):
        if not value:
            return NIL_UUID
        try:
            return uuid.UUID(value).bytes
        except ValueError:
            pass
    elif isinstance(value, bytes | bytearray) and len(value) == 16:
        return bytes(value)
    log.warning("%r is not a UUID: exported as the nil UUID", value)
    return NIL_UUID


def _fixed_octets(value: Any, length: int) -> bytes:
    """The bytes of a fixed-length octet array (``struct`` pads shorter ones with zeros)."""
    packed = bytes(value or b"")
    if len(packed) > length:
        raise ValueError(f"{len(packed)} bytes do not fit an octet array of {length}")
    return packed


class _UuidCache(_AddressCache):
    """UUID value → its other form, filled on first sight: flows repeat the same few UIDs."""

    def __missing__(self, value: Any) -> Any:
        if not value:  # no lookup to cache: None, "" and b"" convert at once
            return self.convert(value)
        return super().__missing__(value)


_HELPERS: dict[str, Any] = {
    "IP4": _AddressCache(socket.inet_ntoa),
    "IP6": _AddressCache(lambda packed: socket.inet_ntop(socket.AF_INET6, packed)),
    "UUID": _UuidCache(uuid_text),
    "UUIDB": _UuidCache(uuid_bytes),
    "octets": _fixed_octets,
    "ntoa": socket.inet_ntoa,
    "ntop": socket.inet_ntop,
    "AF6": socket.AF_INET6,
    "aton": socket.inet_aton,
    "pton": socket.inet_pton,
    "from_bytes": int.from_bytes,
    "ntp_us": ntp_to_us,
    "ntp_ns": ntp_to_ns,
    "us_ntp": us_to_ntp,
    "ns_ntp": ns_to_ntp,
    "fromhex": bytes.fromhex,
}


@dataclass(frozen=True)
class ResolvedField:
    """A template field with its name and abstract type (``None`` type: unknown element), and
    whether it is a UUID carried as text."""

    name: str
    type: str | None
    length: int
    uuid: bool = False


def resolve_fields(
    fields: Iterable[FieldSpec], elements: ElementRegistry, aliases: dict[int, int]
) -> tuple[list[ResolvedField], int]:
    """Names and types of template fields; returns them and how many are unknown to the registry."""
    resolved, unknown = [], 0
    seen: dict[str, int] = {}
    for spec in fields:
        enterprise = aliases.get(spec.enterprise_id, spec.enterprise_id)
        element = elements.by_id(enterprise, spec.element_id)
        is_uuid = False
        if element is None:
            unknown += 1
            name, type_ = unknown_name(spec.enterprise_id, spec.element_id), None
        else:
            name, type_, is_uuid = element.name, element.type, element.uuid
        if name in seen:  # RFC 7011 allows repeated elements: keep later ones under name_2, name_3 ...
            seen[name] += 1
            name = f"{name}_{seen[name]}"
        else:
            seen[name] = 1
        resolved.append(ResolvedField(name, type_, spec.length, is_uuid))
    return resolved, unknown


_FIXED_LENGTHS = {
    "boolean": 1,
    "macAddress": 6,
    "ipv4Address": 4,
    "ipv6Address": 16,
    "dateTimeSeconds": 4,
    "dateTimeMilliseconds": 8,
    "dateTimeMicroseconds": 8,
    "dateTimeNanoseconds": 8,
    "float32": 4,
}
_REDUCIBLE = {  # RFC 7011 §6.2: integers may be sent in fewer bytes, float64 as float32
    **{f"unsigned{bits}": bits // 8 for bits in (8, 16, 32, 64)},
    **{f"signed{bits}": bits // 8 for bits in (8, 16, 32, 64)},
}


def length_problem(type_: str | None, length: int) -> str | None:
    """What is wrong with a field of this type being sent in ``length`` bytes (``None``: nothing).

    Strings, octet arrays, lists and elements the registry does not know take any length.
    """
    shown = f"{length} (variable)" if length == VARIABLE else str(length)
    if type_ in _REDUCIBLE:
        most = _REDUCIBLE[type_]
        return None if 1 <= length <= most else f"{shown}; it takes 1 to {most} bytes"
    if type_ == "float64":
        return None if length in (4, 8) else f"{shown}; it takes 4 or 8 bytes"
    if type_ in _FIXED_LENGTHS:
        need = _FIXED_LENGTHS[type_]
        return None if length == need else f"{shown}; it takes {need} byte{'s' if need > 1 else ''}"
    return None


# -- decoding -----------------------------------------------------------------------------------


def _fixed_decoding(type_: str | None, length: int, is_uuid: bool = False) -> tuple[str, str, str]:
    """How one fixed-length field decodes: (struct code, expression over ``{v}``, kind for the C decoder)."""
    if is_uuid:
        return f"{length}s", "UUID[{v}]", "uuid"
    if type_ in _UNSIGNED and length <= 8:
        return (
            (_INT_CODES[length], "{v}", "unsigned")
            if length in _INT_CODES
            else (f"{length}s", "from_bytes({v}, 'big')", "unsigned")
        )
    if type_ in _SIGNED and length <= 8:
        return (
            (_SIGNED_CODES[length], "{v}", "signed")
            if length in _SIGNED_CODES
            else (f"{length}s", "from_bytes({v}, 'big', signed=True)", "signed")
        )
    if type_ in ("float32", "float64") and length in (4, 8):
        return ("f", "{v}", "float32") if length == 4 else ("d", "{v}", "float64")
    if type_ == "boolean" and length == 1:
        return "B", "{v} == 1", "boolean"
    if type_ == "ipv4Address" and length == 4:
        return "4s", "IP4[{v}]", "ipv4Address"
    if type_ == "ipv6Address" and length == 16:
        return "16s", "IP6[{v}]", "ipv6Address"
    if type_ == "macAddress" and length == 6:
        return "6s", "{v}.hex(':')", "macAddress"
    if type_ == "dateTimeMicroseconds" and length == 8:
        return "Q", "ntp_us({v})", "micros"
    if type_ == "dateTimeNanoseconds" and length == 8:
        return "Q", "ntp_ns({v})", "nanos"
    if type_ == "string":
        return f"{length}s", "{v}.decode('utf-8', 'replace').rstrip('\\x00')", "string"
    return f"{length}s", "{v}", "octets"  # octet arrays, lists, unknown elements, lengths that do not fit the type


_UNSIGNED = {"unsigned8", "unsigned16", "unsigned32", "unsigned64", "dateTimeSeconds", "dateTimeMilliseconds"}
_SIGNED = {"signed8", "signed16", "signed32", "signed64"}


def compile_decoder(
    fields: list[ResolvedField], native: bool | None = None
) -> tuple[Callable[[bytes], list[dict[str, Any]]], int]:
    """Build ``decode(set_body) -> list[record]`` for a template; also return its minimum record length.

    The C decoder (:data:`EXTENSION`) is used when it was built and ``FLOWSCOPE_PURE_PYTHON`` is unset;
    otherwise, or with ``native=False``, a Python function generated for the template. Both return
    the same records and raise on the same input.
    """
    python_decode, min_length = _compile_python_decoder(fields)
    if native is None:
        native = speedups.wanted(EXTENSION)
    if not native or min_length == 0:
        return python_decode, min_length
    assert EXTENSION is not None, "the C decoder is not built"
    plan = tuple((f.name, *_native_kind(f)) for f in fields)
    return EXTENSION.Plan(plan, min_length), min_length


_KINDS = {
    "unsigned": 0,
    "signed": 1,
    "float32": 2,
    "float64": 3,
    "boolean": 4,
    "ipv4Address": 5,
    "ipv6Address": 6,
    "macAddress": 7,
    "string": 8,
    "octets": 9,
    "micros": 10,
    "nanos": 11,
    "uuid": 12,
}


def _native_kind(f: ResolvedField) -> tuple[int, int]:
    """(kind, length) of a field for the C decoder, chosen exactly as the Python decoder chooses."""
    if f.length == VARIABLE:
        return _KINDS["uuid" if f.uuid else "string" if f.type == "string" else "octets"], f.length
    return _KINDS[_fixed_decoding(f.type, f.length, f.uuid)[2]], f.length


def _compile_python_decoder(fields: list[ResolvedField]) -> tuple[Callable[[bytes], list[dict[str, Any]]], int]:
    """Generate the Python decoder of a template."""
    segments: list[list[tuple[int, ResolvedField]]] = [[]]
    for index, f in enumerate(fields):
        if f.length == VARIABLE:
            segments.append([(index, f)])
            segments.append([])
        else:
            segments[-1].append((index, f))
    namespace: dict[str, Any] = dict(_HELPERS)
    exprs: dict[int, str] = {}
    lines: list[str] = []
    min_length = 0
    variable = any(f.length == VARIABLE for f in fields)

    def fixed_segment(seg_index: int, segment: list[tuple[int, ResolvedField]]) -> struct.Struct:
        """Unpack a run of fixed-length fields with one precompiled struct (or plain indexing)."""
        nonlocal min_length
        codes = []
        for index, f in segment:
            code, expr, _ = _fixed_decoding(f.type, f.length, f.uuid)
            codes.append(code)
            exprs[index] = expr.format(v=f"v{index}")
        fmt = struct.Struct(">" + "".join(codes))
        namespace[f"S{seg_index}"] = fmt
        min_length += fmt.size
        if len(segment) == 1 and codes[0] in ("B", "H"):  # cheaper than a struct call
            index = segment[0][0]
            read = "body[off]" if codes[0] == "B" else "(body[off] << 8) | body[off + 1]"
            lines.append(f"        v{index} = {read}; off += {fmt.size}")
        else:
            targets = ", ".join(f"v{index}" for index, _ in segment) + ("," if len(segment) == 1 else "")
            lines.append(f"        {targets} = S{seg_index}.unpack_from(body, off); off += {fmt.size}")
        return fmt

    if not variable:
        fmt = fixed_segment(0, segments[0])
        targets = ", ".join(f"v{i}" for i in range(len(fields))) + ("," if len(fields) == 1 else "")
        record = ", ".join(f"{fields[i].name!r}: {exprs[i]}" for i in range(len(fields)))
        size = fmt.size
        source = (
            "def decode(body):\n"
            f"    n = len(body) // {size}\n"
            f"    return [{{{record}}} for {targets} in S0.iter_unpack(body[:n * {size}])] if n else []\n"
        )
    else:
        body_lines = []
        for seg_index, segment in enumerate(segments):
            if not segment:
                continue
            index, f = segment[0]
            if f.length == VARIABLE:
                min_length += 1
                empty, convert = ("''", ".decode('utf-8', 'replace')") if f.type == "string" else ("b''", "")
                body_lines += [
                    "        n = body[off]",
                    "        if n < 255:",
                    "            e = off + 1 + n",
                    f"            v{index} = body[off + 1:e]{convert} if n else {empty}",
                    "        else:",
                    "            e = off + 3 + ((body[off + 1] << 8) | body[off + 2])",
                    f"            v{index} = body[off + 3:e]{convert}",
                    "        off = e",
                ]
                exprs[index] = f"UUID[v{index}]" if f.uuid else f"v{index}"
            else:
                lines.clear()
                fixed_segment(seg_index, segment)
                body_lines += lines
        record = ", ".join(f"{fields[i].name!r}: {exprs[i]}" for i in range(len(fields)))
        source = "\n".join(
            [
                "def decode(body):",
                "    out = []",
                "    append = out.append",
                "    off = 0",
                "    size = len(body)",
                f"    while size - off >= {min_length}:",
                *body_lines,
                "        if off > size: raise OverflowError",  # a length ran past the set
                f"        append({{{record}}})",
                "    return out",
                "",
            ]
        )
    exec(compile(source, "<ipfix-decoder>", "exec"), namespace)
    return namespace["decode"], min_length


# -- encoding -----------------------------------------------------------------------------------

_ZERO = {"ipv4Address": '"0.0.0.0"', "ipv6Address": '"::"', "macAddress": '"00:00:00:00:00:00"'}


def _fixed_encoding(type_: str, length: int, getter: str) -> tuple[str, str]:
    """(struct code, expression) encoding one value read by ``getter``."""
    if type_ in ("unsigned8", "unsigned16", "unsigned32", "unsigned64", "dateTimeSeconds", "dateTimeMilliseconds"):
        return _INT_CODES[length], f"({getter} or 0)"
    if type_ in ("signed8", "signed16", "signed32", "signed64"):
        return _SIGNED_CODES[length], f"({getter} or 0)"
    if type_ in ("float32", "float64"):
        return ("f" if length == 4 else "d"), f"({getter} or 0.0)"
    if type_ == "boolean":
        return "B", f"(1 if {getter} else 2)"
    if type_ == "ipv4Address":
        return "4s", f"aton({getter} or {_ZERO[type_]})"
    if type_ == "ipv6Address":
        return "16s", f"pton(AF6, {getter} or {_ZERO[type_]})"
    if type_ == "macAddress":
        return "6s", f"fromhex(({getter} or {_ZERO[type_]}).replace(':', '').replace('-', ''))"
    if type_ == "dateTimeMicroseconds":
        return "Q", f"us_ntp({getter} or 0)"
    if type_ == "dateTimeNanoseconds":
        return "Q", f"ns_ntp({getter} or 0)"
    raise ValueError(f"type {type_} has no fixed-length encoding")


def compile_encoder(fields: list[ResolvedField]) -> Callable[[dict[str, Any]], bytes]:
    """Build ``encode(record) -> bytes`` for one data record of a template of these elements.

    Missing or ``None`` values are sent as zero: 0, ``0.0.0.0``, ``::``, empty string, the nil UUID.
    A fixed-length octet array shorter than its length is padded with zeros; a longer one raises
    ``ValueError``.
    """
    namespace: dict[str, Any] = dict(_HELPERS)
    lines = ["def encode(r):", "    g = r.get", "    parts = []"]
    codes: list[str] = []
    values: list[str] = []
    count = 0

    def flush_fixed() -> None:
        nonlocal count
        if codes:
            namespace[f"P{count}"] = struct.Struct(">" + "".join(codes)).pack
            lines.append(f"    parts.append(P{count}({', '.join(values)}))")
            count += 1
            codes.clear()
            values.clear()

    for f in fields:
        getter = f"g({f.name!r})"
        if f.uuid:
            codes.append(f"{f.length}s")
            values.append(f"UUIDB[{getter} or '']")
        elif f.type == "octetArray" and f.length != VARIABLE:
            codes.append(f"{f.length}s")
            values.append(f"octets({getter}, {f.length})")
        elif f.type in ("string", "octetArray", "basicList", "subTemplateList", "subTemplateMultiList"):
            flush_fixed()
            if f.type == "string":
                lines.append(f"    b = ({getter} or '').encode()")
            else:
                lines.append(f"    b = bytes({getter} or b'')")
            lines += [
                "    n = len(b)",
                "    parts.append((bytes((n,)) if n < 255 else b'\\xff' + n.to_bytes(2, 'big')) + b)",
            ]
        else:
            code, expr = _fixed_encoding(f.type, f.length, getter)
            codes.append(code)
            values.append(expr)
    flush_fixed()
    lines.append("    return b''.join(parts)")
    exec(compile("\n".join(lines) + "\n", "<ipfix-encoder>", "exec"), namespace)
    return namespace["encode"]
