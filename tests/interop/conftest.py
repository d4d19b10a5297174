"""Fixtures of the interop tests (tests against real IPFIX peers)."""

from __future__ import annotations

import itertools
import os

import pytest

from tests.interop.support import VethPair, need, need_root

_count = itertools.count(1)


@pytest.fixture
def veth_pair():
    """Two fresh network namespaces joined by a veth pair; deleted afterwards."""
    need_root("creates network namespaces")
    need("ip")
    pair = VethPair(f"{os.getpid()}x{next(_count)}")
    try:
        pair.setup()
        yield pair
    finally:
        pair.teardown()
