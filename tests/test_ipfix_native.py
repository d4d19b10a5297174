"""The C decoder returns exactly what the generated Python decoder returns, on any input."""

from __future__ import annotations

import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flowscope.core.ipfix import codec
from flowscope.core.ipfix.codec import ResolvedField, compile_decoder

pytestmark = pytest.mark.skipif(codec.EXTENSION is None, reason="the C decoder is not built (no compiler?)")

TYPES = [
    "unsigned8",
    "unsigned16",
    "unsigned32",
    "unsigned64",
    "signed8",
    "signed16",
    "signed32",
    "signed64",
    "float32",
    "float64",
    "boolean",
    "macAddress",
    "string",
    "octetArray",
    "dateTimeSeconds",
    "dateTimeMilliseconds",
    "dateTimeMicroseconds",
    "dateTimeNanoseconds",
    "ipv4Address",
    "ipv6Address",
    None,
]

fields = st.lists(
    st.tuples(st.sampled_from(TYPES), st.sampled_from([0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 16, 65535])),
    min_size=1,
    max_size=8,
)


def outcome(decode, body):
    """The records (as text: NaN equals NaN), or "overrun" for the errors the Decoder counts."""
    try:
        return repr(decode(body))
    except (struct.error, IndexError, OverflowError):
        return "overrun"


@settings(max_examples=1500, deadline=None)
@given(fields, st.binary(max_size=300))
def test_native_and_python_decoders_agree(spec, body):
    resolved = [ResolvedField(f"f{i}", type_, length) for i, (type_, length) in enumerate(spec)]
    python, min_python = compile_decoder(resolved, native=False)
    if min_python == 0:
        return  # such templates are refused before any decoder is used
    native, min_native = compile_decoder(resolved, native=True)
    assert min_native == min_python
    assert outcome(native, body) == outcome(python, body)
