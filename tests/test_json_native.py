"""The json sink's C line encoder writes exactly the lines ``encode_line`` makes, or the same error."""

from __future__ import annotations

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flowscope.plugins.sinks import json as sink

pytestmark = pytest.mark.skipif(sink.EXTENSION is None, reason="the C encoder is not built (no compiler?)")

CHARS = [*'ab<>&\u2028\u2029\u2013é"\\ \x00\x01\x08\x0b\x1f\x7f\n\t\r\f{}:,', "\ud800", "\U0001f600", "\uffff"]
texts = st.text(alphabet=st.sampled_from(CHARS), max_size=6)
numbers = st.one_of(
    st.integers(min_value=-(2**65), max_value=2**65),
    st.sampled_from([2**63 - 1, 2**63, 2**64 - 1, 2**64, -(2**63), -(2**63) - 1]),
)
scalars = st.one_of(numbers, texts, st.booleans(), st.none(), st.floats(allow_nan=True), st.binary(max_size=3))
values = st.one_of(scalars, st.dictionaries(texts, scalars, max_size=2), st.lists(scalars, max_size=2))
records = st.one_of(
    st.dictionaries(st.one_of(texts, st.integers(-3, 3)), values, max_size=6),
    st.dictionaries(st.sampled_from(["a", "b", "c", "é", "<k>", "z"]), scalars, max_size=6),  # recurring layouts
)
SHARED = sink._Text(native=True)  # its kept key orders carry over from one example to the next


def lines(text: sink._Text, batch: list, timestamp: str) -> object:
    try:
        view = text.fill(batch, timestamp)
    except Exception as exc:
        return type(exc).__name__, str(exc)
    data = bytes(view)
    view.release()
    return data


@settings(max_examples=1000, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(records, max_size=8), st.sampled_from(["2026-11-26T15:00:00Z", "x<y", "\ud800"]))
def test_native_and_python_lines_agree(batch, timestamp):
    assert lines(SHARED, batch, timestamp) == lines(sink._Text(native=False), batch, timestamp)


def test_repeated_value_objects_and_edited_records_give_the_same_lines():
    """The encoder copies the JSON of a value that is the very object it wrote last under that key; values
    that change, records with deleted or re-added keys, and objects shared by many records stay exact."""
    shared = ["pod-<a>", "shop", 443, 2**40, "é", None, True]
    batches = []
    for round_ in range(4):
        batch = []
        for i in range(50):
            record = {"name": shared[i % 2], "port": shared[2 + i % 2], "text": shared[4], "gone": 1, "flag": shared[6]}
            record["changing"] = f"value-{i % 3}-{round_}"
            if i % 5 == 0:
                del record["gone"]  # a table with a deleted entry
            if i % 7 == 0:
                record["gone"] = shared[5]  # ... and the key back, last
            batch.append(record)
        batches.append(batch)
    native = sink._Text(native=True)
    for batch in batches:
        assert lines(native, batch, "2026-11-26T15:00:00Z") == lines(
            sink._Text(native=False), batch, "2026-11-26T15:00:00Z"
        )
