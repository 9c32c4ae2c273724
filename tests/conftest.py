"""Shared fixtures: a fresh PostgreSQL database per test session, the event store."""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from api.projections import project
from api.store.postgres import PostgresEventStore
from infra.apiproc import ApiProcess
from infra.apiproc import start_api as start_api_process
from schema import migrate

pytest_plugins = ["tests.conftest_broker"]

# The machine's PostgreSQL (CI starts it before the run); override with
# MUSKETEER_TEST_DATABASE_ADMIN_URL to test against another server.
ADMIN_URL = os.environ.get(
    "MUSKETEER_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


# The fault tests' digits task reaches about 0.9 held-out accuracy; chance is 0.1.
BASELINE_FLOOR = 0.8


def eventually(check: Callable[[], bool], timeout_s: float = 10.0) -> bool:
    """Poll `check` until it holds (True) or `timeout_s` passes (False)."""
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def in_threads(count: int, work: Callable[[int], None]) -> None:
    """Run work(0..count-1) in threads released together; re-raise the first failure."""
    barrier = threading.Barrier(count)
    errors: list[BaseException] = []

    def run(index: int) -> None:
        barrier.wait()
        try:
            work(index)
        except BaseException as exc:  # re-raised once every thread has ended
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]


def unique(prefix: str) -> str:
    """A name no other test uses: tests are isolated by names, not by clean-ups."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test session's own, migrated."""
    url = fresh_database()
    yield url
    drop_database(url)


@pytest.fixture(scope="session")
def pool(database_url: str) -> Iterator[ConnectionPool]:
    """A connection pool on the session's database."""
    with ConnectionPool(database_url, min_size=1, max_size=12,
                        kwargs={"autocommit": True}) as pool:
        yield pool


@pytest.fixture(scope="session")
def store(pool: ConnectionPool) -> PostgresEventStore:
    """The event store with inline projections."""
    return PostgresEventStore(pool, projector=project)


@pytest.fixture()
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection for direct SQL."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn


# --- a real API process --------------------------------------------------------

def start_api(database_url: str, bootstrap: str, tmp_dir: Path, topic_prefix: str,
              **extra_env: str) -> ApiProcess:
    """Start an API process against the given database and broker, on a topic prefix of its own."""
    return start_api_process(database_url, bootstrap, tmp_dir, MUSKETEER_TOPIC_PREFIX=topic_prefix, **extra_env)


@pytest.fixture(scope="session")
def topic_prefix() -> str:
    """A topic prefix of this test session's own."""
    return f"mtest{uuid.uuid4().hex[:8]}"


@pytest.fixture(scope="session")
def api(database_url: str, broker: Any, topic_prefix: str,
        tmp_path_factory: pytest.TempPathFactory) -> Iterator[ApiProcess]:
    """One API process for the session, on the session's database and broker."""
    process = start_api(database_url, broker.bootstrap, tmp_path_factory.mktemp("api"),
                        topic_prefix)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def baseline(api: ApiProcess, broker: Any, topic_prefix: str,
             tmp_path_factory: pytest.TempPathFactory) -> float:
    """The final accuracy of the fault tests' task with no fault (tests/fault_support.py)."""
    # Here, not in a test module: a session fixture imported into several modules would be
    # computed once per module.
    from tests.fault_support import final_accuracy, run_task

    run = run_task(api, broker.bootstrap, topic_prefix, tmp_path_factory.mktemp("baseline"))
    accuracy = final_accuracy(run)
    # A floor: "as good as the baseline" means nothing if the baseline itself learned nothing.
    assert accuracy >= BASELINE_FLOOR, f"the fault-free run reached only {accuracy:.3f}"
    return accuracy


def fresh_database(admin_url: str = ADMIN_URL, prefix: str = "musketeer_test") -> str:
    """A new migrated database of its own (tests that read the whole log, the benches)."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = f"{admin_url.rpartition('/')[0]}/{name}"
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.apply(conn)
    return url


def drop_database(url: str, admin_url: str = ADMIN_URL) -> None:
    """Drop a database made by `fresh_database`."""
    name = url.rpartition("/")[2]
    with psycopg.connect(admin_url, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))
