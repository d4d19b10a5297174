import pytest

from tests import helpers
from tests.kafka_support import Tansu


@pytest.fixture(scope="session")
def chdb_engine(tmp_path_factory):
    """The one chDB directory of the test process (chDB serves one directory per process), held open.

    Tests that use it keep to a database of their own.
    """
    import clickhouse_connect

    path = tmp_path_factory.mktemp("chdb")
    keeper = clickhouse_connect.get_client(interface="chdb", path=str(path))
    yield path
    keeper.close()


@pytest.fixture(autouse=True)
def _reset_collected():
    helpers.COLLECTED.clear()
    helpers.EVENTS.clear()
    helpers.GATE.clear()
    yield


@pytest.fixture
def tansu(tmp_path):
    """A Kafka-protocol broker (Tansu) of the test's own, stopped after it."""
    broker = Tansu(tmp_path / "tansu.log")
    broker.start()
    yield broker
    broker.stop()
