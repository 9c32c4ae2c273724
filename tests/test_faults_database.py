"""Fault injection, PostgreSQL: SIGKILL the (embedded) database mid-round and start it again."""

from __future__ import annotations

import shutil
import signal
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import psutil
import psycopg
import pytest

from infra.postgres import postgres_pid, start_postgres, stop_postgres
from schema import migrate
from tests.conftest import start_api
from tests.fault_support import Run, assert_recovered, run_task

pytestmark = pytest.mark.integration


def kill_postgres(pgdata: Path) -> None:
    """SIGKILL the postmaster and every backend: a crash, not a shutdown."""
    pid = postgres_pid(pgdata)
    assert pid is not None
    server = psutil.Process(pid)
    server.send_signal(signal.SIGSTOP)  # frozen: it starts no new backend meanwhile
    for process in [*server.children(recursive=True), server]:
        try:
            process.send_signal(signal.SIGKILL)
        except psutil.NoSuchProcess:
            pass  # a backend that exited on its own between listing and killing
    psutil.wait_procs([server], timeout=10)


def test_a_killed_database_restarts_and_nothing_is_lost_or_doubled(
    baseline: float, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """While PostgreSQL is down the API says 503 and why; afterwards the task completes intact."""
    # Not tmp_path: as root, the embedded server runs as another user who must enter it.
    root = Path(tempfile.mkdtemp(prefix="musketeer-pgfault-"))
    pgdata = root / "postgres"
    url, _ = start_postgres(pgdata)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.apply(conn)
    api = start_api(url, broker.bootstrap, tmp_path, topic_prefix)
    seen_while_down: dict[str, Any] = {}
    before: list[Any] = []

    def fault(run: Run) -> None:
        before.extend(run.people["alice"].client.task_events(run.name))
        kill_postgres(pgdata)
        time.sleep(1)
        token = run.people["alice"].client.token
        seen_while_down["ready"] = httpx.get(f"{api.url}/readyz", timeout=30)
        seen_while_down["task"] = httpx.get(f"{api.url}/v1/tasks/{run.name}", timeout=30,
                                            headers={"Authorization": f"Bearer {token}"})
        time.sleep(2)
        start_postgres(pgdata)

    try:
        run = run_task(api, broker.bootstrap, topic_prefix, tmp_path, fault)
        ready, task = seen_while_down["ready"], seen_while_down["task"]
        assert ready.status_code == 503 and "database" in ready.json()["checks"]
        assert ready.json()["checks"]["database"] != "ok"
        assert task.status_code == 503 and task.json()["error"] == "unavailable"
        assert "database" in task.json()["message"]
        assert_recovered(run, baseline)
        after = run.people["alice"].client.task_events(run.name)
        assert [e.hash for e in after[:len(before)]] == [e.hash for e in before]
    finally:
        api.stop()
        stop_postgres(pgdata)
        shutil.rmtree(root, ignore_errors=True)
