"""Pytest plugin: a session-scoped `broker` fixture (embedded tansu, or a real Kafka).

Enable it from tests/conftest.py with `pytest_plugins = ["tests.conftest_broker"]`.
Set MUSKETEER_TEST_KAFKA=host:port to run the same tests against a real Kafka.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from infra.tansu import BrokerProcess, start_broker
from streams.topics import TopicAdmin


@pytest.fixture(scope="session")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[BrokerProcess]:
    """The session's broker: tansu on a free port, stopped at the end (pid 0 if external)."""
    external = os.environ.get("MUSKETEER_TEST_KAFKA")
    if external:
        # Fail the session at once, with the address, rather than every test on a timeout.
        TopicAdmin(external).ping(timeout_s=10)
        yield BrokerProcess(bootstrap=external, pid=0)
        return
    process = start_broker(log_path=tmp_path_factory.mktemp("broker") / "tansu.log")
    yield process
    process.stop()
