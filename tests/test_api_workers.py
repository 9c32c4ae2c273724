"""An API served by several uvicorn worker processes keeps the log one gapless chain.

Why this needs its own test: the append lock is a PostgreSQL table lock, so it orders writers
of different processes as it orders the connections of one; these tests pin that through HTTP,
with commands racing in two workers at once.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest
from psycopg_pool import ConnectionPool

from api.store.postgres import PostgresEventStore
from infra.apiproc import ApiProcess
from infra.apiproc import start_api as start_api_process
from infra.errors import PlatformError
from tests.conftest import drop_database, fresh_database, in_threads, unique

pytestmark = pytest.mark.integration

JOINERS = 8
PASSWORD = "workers-password"


@pytest.fixture()
def two_workers(broker: Any, tmp_path: Path) -> Iterator[tuple[ApiProcess, str]]:
    """An API of two worker processes on a database of its own."""
    database = fresh_database()
    process = start_api_process(database, broker.bootstrap, tmp_path, workers=2,
                                MUSKETEER_TOPIC_PREFIX=unique("wrk").replace("-", ""))
    try:
        yield process, database
    finally:
        process.stop()
        drop_database(database)


def member(url: str, name: str) -> httpx.Client:
    """A registered, logged-in user's HTTP client."""
    http = httpx.Client(base_url=url, timeout=60)
    http.post("/v1/users", json={"username": name, "password": PASSWORD,
                                 "organization": f"org-{name}"}).raise_for_status()
    token = http.post("/v1/auth/token", data={"username": name, "password": PASSWORD})
    http.headers["Authorization"] = f"Bearer {token.raise_for_status().json()['access_token']}"
    return http


def test_racing_commands_in_two_workers_keep_one_gapless_chain(two_workers: tuple[ApiProcess, str]) -> None:
    """Joins of one task and creates of tasks, all at once over two workers: every command
    succeeds once, positions run 1..n in order without a gap, and the hash chain verifies."""
    process, database = two_workers
    creator = member(process.url, unique("owner"))
    creator.post("/v1/tasks", json={"name": "shared", "definition": {
        "quorum": 1, "rounds": 1, "model": "digits-mlp"}}).raise_for_status()
    names = [unique(f"j{i}") for i in range(JOINERS)]
    joiners = [member(process.url, name) for name in names]

    def act(i: int) -> None:
        # Half join the one task (a race on one stream), half create a task of their own.
        if i % 2:
            joiners[i].post("/v1/tasks/shared/join").raise_for_status()
        else:
            joiners[i].post("/v1/tasks", json={"name": f"own-{i}", "definition": {
                "quorum": 1, "rounds": 1, "model": "digits-mlp"}}).raise_for_status()

    in_threads(JOINERS, act)

    task = creator.get("/v1/tasks/shared").raise_for_status().json()
    with ConnectionPool(database, min_size=1, max_size=1, kwargs={"autocommit": True}) as pool:
        store = PostgresEventStore(pool)
        positions = [r.position for r in store.iterate_all()]
        report = store.verify()
    assert sorted(p["username"] for p in task["participants"]) == sorted(names[1::2])
    assert positions == list(range(1, len(positions) + 1))
    assert report.ok, report
    with psycopg.connect(database) as conn:
        created = conn.execute("SELECT count(*) FROM events WHERE type = 'TaskCreated'").fetchone()
    assert created is not None and created[0] == 1 + JOINERS // 2


def test_a_worker_count_below_one_is_refused(tmp_path: Path) -> None:
    """`workers=0` is a clear start-up error, not a uvicorn that serves nothing."""
    with pytest.raises(PlatformError, match="at least one worker"):
        start_api_process("postgresql://unused", "127.0.0.1:1", tmp_path, workers=0)


def test_the_api_is_served_by_httptools_on_uvloop() -> None:
    """uvicorn's defaults ("auto", as infra.apiproc starts it) resolve to the C parser and
    libuv loop the project depends on; without them it falls back to h11 on asyncio, and the
    API spends about 15 % more CPU per join (pyproject.toml, bench/api_bench.py)."""
    from uvicorn.loops.auto import auto_loop_factory
    from uvicorn.protocols.http.auto import AutoHTTPProtocol

    assert AutoHTTPProtocol.__name__ == "HttpToolsProtocol"
    loop = auto_loop_factory()()
    try:
        assert type(loop).__module__.startswith("uvloop")
    finally:
        loop.close()
