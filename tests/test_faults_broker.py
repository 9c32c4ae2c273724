"""Fault injection, broker: SIGKILL the embedded broker mid-round; it comes back empty."""

from __future__ import annotations

import os
import signal
from pathlib import Path
from typing import Any

import pytest

from infra.procs import find_free_port
from infra.tansu import start_broker
from tests.conftest import start_api
from tests.fault_support import Run, assert_recovered, run_task

pytestmark = pytest.mark.integration


def test_a_killed_broker_restarts_and_the_daemons_rebuild_the_topics(
    baseline: float, database_url: str, topic_prefix: str, tmp_path: Path
) -> None:
    """The embedded broker keeps nothing: the daemons recreate the topics and redo the round."""
    if os.environ.get("MUSKETEER_TEST_KAFKA"):
        pytest.skip("this test kills the embedded broker; a real Kafka is not ours to kill")
    port = find_free_port()
    broker = start_broker(port=port, log_path=tmp_path / "tansu.log")
    api = start_api(database_url, broker.bootstrap, tmp_path, topic_prefix)
    holder: dict[str, Any] = {"broker": broker}

    def fault(run: Run) -> None:
        os.kill(holder["broker"].pid, signal.SIGKILL)
        holder["broker"].stop()
        holder["broker"] = start_broker(port=port, log_path=tmp_path / "tansu-2.log")

    try:
        run = run_task(api, broker.bootstrap, topic_prefix, tmp_path, fault)
        assert_recovered(run, baseline)
        logs = "".join(p.read_text() for p in run.logs.values())
        assert "lost the task's topics" in logs
    finally:
        api.stop()
        holder["broker"].stop()
