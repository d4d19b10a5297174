import pytest

from tests import helpers


@pytest.fixture(autouse=True)
def _reset_collected():
    helpers.COLLECTED.clear()
    helpers.EVENTS.clear()
    helpers.GATE.clear()
    yield
