"""Shared fixtures: a fresh PostgreSQL database per test session, the event store."""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from psycopg import sql
from psycopg_pool import ConnectionPool

from api.projections import project
from api.store import EventStore
from schema import migrate

# The machine's PostgreSQL (CI starts it before the run); override with
# MUSKETEER_TEST_DATABASE_ADMIN_URL to test against another server.
ADMIN_URL = os.environ.get(
    "MUSKETEER_TEST_DATABASE_ADMIN_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)


def unique(prefix: str) -> str:
    """A name no other test uses: tests are isolated by names, not by clean-ups."""
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def _database_url(name: str) -> str:
    base, _, _ = ADMIN_URL.rpartition("/")
    return f"{base}/{name}"


@pytest.fixture(scope="session")
def database_url() -> Iterator[str]:
    """A database of this test session's own, migrated."""
    name = f"musketeer_test_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    url = _database_url(name)
    with psycopg.connect(url, autocommit=True) as conn:
        migrate.apply(conn)
    yield url
    with psycopg.connect(ADMIN_URL, autocommit=True) as admin:
        admin.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))


@pytest.fixture(scope="session")
def pool(database_url: str) -> Iterator[ConnectionPool]:
    """A connection pool on the session's database."""
    with ConnectionPool(database_url, min_size=1, max_size=12,
                        kwargs={"autocommit": True}) as pool:
        yield pool


@pytest.fixture(scope="session")
def store(pool: ConnectionPool) -> EventStore:
    """The event store with inline projections."""
    return EventStore(pool, projector=project)


@pytest.fixture()
def db(database_url: str) -> Iterator[psycopg.Connection[Any]]:
    """A plain autocommit connection for direct SQL."""
    with psycopg.connect(database_url, autocommit=True) as conn:
        yield conn
