"""Hand-built IPFIX messages for tests: every byte spelled out, independent of the encoder."""

from __future__ import annotations

import struct


def message(*sets: bytes, sequence: int = 0, odid: int = 0, export_time: int = 1764165600, version: int = 10) -> bytes:
    body = b"".join(sets)
    return struct.pack(">HHIII", version, 16 + len(body), export_time, sequence, odid) + body


def set_(set_id: int, payload: bytes) -> bytes:
    return struct.pack(">HH", set_id, 4 + len(payload)) + payload


def field(element_id: int, length: int, enterprise: int = 0) -> bytes:
    if enterprise:
        return struct.pack(">HHI", element_id | 0x8000, length, enterprise)
    return struct.pack(">HH", element_id, length)


def template(template_id: int, *fields: bytes) -> bytes:
    return struct.pack(">HH", template_id, len(fields)) + b"".join(fields)


def template_set(*templates: bytes) -> bytes:
    return set_(2, b"".join(templates))


def options_template_set(template_id: int, scope_count: int, *fields: bytes) -> bytes:
    return set_(3, struct.pack(">HHH", template_id, len(fields), scope_count) + b"".join(fields))


def varlen(data: bytes) -> bytes:
    if len(data) < 255:
        return bytes([len(data)]) + data
    return b"\xff" + struct.pack(">H", len(data)) + data
