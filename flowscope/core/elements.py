"""The Information Element (IE) registry, keyed by name and by (enterprise id, element id).

IE ids are only unique within one enterprise: ``flowEndReason`` is IANA (0) id 136 and
``tcpState`` is Antrea (56506) id 136, so lookups always take both numbers.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from flowscope.core.errors import PluginError

IANA = 0
IANA_REVERSE = 29305
ANTREA = 56506
ANTREA_SEED = 56505  # the number printed in Antrea's own documentation; accepted as an alias on input

VARIABLE_LENGTH = 65535

# RFC 7012 §3.1 abstract data types and their default encoded length (RFC 7011 §6.1).
DATA_TYPES: dict[str, int] = {
    "octetArray": VARIABLE_LENGTH,
    "unsigned8": 1,
    "unsigned16": 2,
    "unsigned32": 4,
    "unsigned64": 8,
    "signed8": 1,
    "signed16": 2,
    "signed32": 4,
    "signed64": 8,
    "float32": 4,
    "float64": 8,
    "boolean": 1,
    "macAddress": 6,
    "string": VARIABLE_LENGTH,
    "dateTimeSeconds": 4,
    "dateTimeMilliseconds": 8,
    "dateTimeMicroseconds": 8,
    "dateTimeNanoseconds": 8,
    "ipv4Address": 4,
    "ipv6Address": 16,
    "basicList": VARIABLE_LENGTH,
    "subTemplateList": VARIABLE_LENGTH,
    "subTemplateMultiList": VARIABLE_LENGTH,
}

ENTERPRISE_NAMES = {IANA: "IANA", IANA_REVERSE: "IANA reverse (RFC 5103)", ANTREA: "Antrea"}


@dataclass(frozen=True, slots=True)
class Element:
    """One Information Element."""

    name: str
    enterprise_id: int
    element_id: int
    type: str
    origin: str = ""
    fixed_length: int | None = None  # an octetArray of this many bytes (None: variable length)
    uuid: bool = False  # a 16-byte octetArray that records carry as UUID text

    @property
    def length(self) -> int:
        """Encoded length in a template (65535 = variable length)."""
        return DATA_TYPES[self.type] if self.fixed_length is None else self.fixed_length

    def as_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "enterpriseId": self.enterprise_id,
            "elementId": self.element_id,
            "type": self.type,
            "plugin": self.origin,
        }


class ElementRegistry:
    """IEs by name and by (enterprise id, element id); grown through ``register_elements`` hooks."""

    def __init__(self) -> None:
        self._by_name: dict[str, Element] = {}
        self._by_id: dict[tuple[int, int], Element] = {}

    def register(
        self,
        name: str,
        enterprise_id: int,
        element_id: int,
        type: str,
        *,
        origin: str = "",
        length: int | None = None,
        uuid: bool = False,
    ) -> Element:
        """Add one IE. Registering the same IE twice is harmless; a clash of name or id is an error.

        ``length`` gives an ``octetArray`` a fixed length; ``uuid`` makes it a 16-byte UUID that
        records carry as text (``"4d0a4c8e-..."``)."""
        _check_element(name, enterprise_id, element_id, type, origin)
        length = _check_length(name, type, length, uuid, origin)
        element = Element(name, enterprise_id, element_id, type, origin, length, uuid)
        same_name = self._by_name.get(name)
        same_id = self._by_id.get((enterprise_id, element_id))
        for other in (same_name, same_id):
            if other is not None and not _same_element(other, element):
                raise PluginError(
                    f"information element {_describe(element)} from plugin '{origin}' clashes with "
                    f"{_describe(other)} from plugin '{other.origin}': names and "
                    "(enterpriseId, elementId) pairs must each be unique; rename or renumber one of them"
                )
        if same_name is None:
            self._by_name[name] = element
            self._by_id[(enterprise_id, element_id)] = element
        return self._by_name[name]

    def by_name(self, name: str) -> Element | None:
        return self._by_name.get(name)

    def by_id(self, enterprise_id: int, element_id: int) -> Element | None:
        return self._by_id.get((enterprise_id, element_id))

    def __getitem__(self, name: str) -> Element:
        return self._by_name[name]

    def __contains__(self, name: object) -> bool:
        return name in self._by_name

    def __iter__(self) -> Iterator[Element]:
        return iter(sorted(self._by_id.values(), key=lambda e: (e.enterprise_id, e.element_id)))

    def __len__(self) -> int:
        return len(self._by_name)


def _same_element(a: Element, b: Element) -> bool:
    return (a.name, a.enterprise_id, a.element_id, a.type, a.fixed_length, a.uuid) == (
        b.name,
        b.enterprise_id,
        b.element_id,
        b.type,
        b.fixed_length,
        b.uuid,
    )


def _describe(e: Element) -> str:
    return f"'{e.name}' ({e.enterprise_id}/{e.element_id}, {e.type})"


def _check_element(name: str, enterprise_id: int, element_id: int, type: str, origin: str) -> None:
    where = f" (plugin '{origin}')" if origin else ""
    if not isinstance(name, str) or not name.isidentifier():
        raise PluginError(f"information element name {name!r}{where} must be a non-empty identifier")
    if not isinstance(enterprise_id, int) or not 0 <= enterprise_id <= 0xFFFFFFFF:
        raise PluginError(
            f"information element '{name}'{where}: enterprise_id {enterprise_id!r} must be an "
            "integer from 0 to 4294967295"
        )
    if not isinstance(element_id, int) or not 1 <= element_id <= 0x7FFF:
        raise PluginError(
            f"information element '{name}'{where}: element_id {element_id!r} must be an integer "
            "from 1 to 32767 (the top bit of the 16-bit field is the enterprise bit)"
        )
    if type not in DATA_TYPES:
        raise PluginError(
            f"information element '{name}'{where}: type {type!r} is not an RFC 7012 abstract data "
            f"type; use one of: {', '.join(DATA_TYPES)}"
        )


def _check_length(name: str, type: str, length: int | None, uuid: bool, origin: str) -> int | None:
    """The fixed length of an element (``None``: its type's), checked."""
    where = f" (plugin '{origin}')" if origin else ""
    if (length is not None or uuid) and type != "octetArray":
        raise PluginError(
            f"information element '{name}'{where}: only an octetArray takes a fixed length or uuid=True, not {type}"
        )
    if uuid:
        if length not in (None, 16):
            raise PluginError(f"information element '{name}'{where}: a UUID has 16 bytes, not length {length!r}")
        return 16
    if length is not None and (not isinstance(length, int) or not 0 <= length < VARIABLE_LENGTH):
        raise PluginError(
            f"information element '{name}'{where}: length {length!r} must be an integer from 0 to 65534 "
            "(leave it out for a variable length)"
        )
    return length
