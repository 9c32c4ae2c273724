"""What routes depend on: the process's services, the authenticated user, the idempotency key."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Annotated, Any

import psycopg
from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool
from starlette.concurrency import run_in_threadpool

from api.errors import NotAuthenticated
from api.handlers import Context, Result
from api.metrics import Metrics
from api.projections import project
from api.relay import OutboxRelay
from api.security import Accounts, TokenCache
from api.settings import Settings
from api.store.postgres import PostgresEventStore
from api.topics import BrokerTopics
from api.training import TrainingCommands
from schema import migrate

log = logging.getLogger("musketeer.api")


class Services:
    """What the routes need, built once per process."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.pool = ConnectionPool(
            settings.database_url, min_size=1, max_size=settings.db_pool_size,
            # A short wait for a connection: with the database down, callers get a
            # prompt 503 (and retry) rather than hanging on the pool.
            open=False, timeout=3, kwargs={"autocommit": True},
        )
        self.metrics = Metrics(self.connection_for_metrics)
        self.store = PostgresEventStore(self.pool, projector=project, on_commit=self.metrics.appended)
        self.topics = BrokerTopics(settings.broker)
        self.commands = TrainingCommands(self.store, settings, self.topics)
        self.tokens = TokenCache(settings.database_url)
        self.accounts = Accounts(self.store.connection, settings.token_ttl_s, self.tokens)
        self.relay: OutboxRelay | None = None

    @contextmanager
    def connection_for_metrics(self) -> Iterator[psycopg.Connection[Any]]:
        """A pooled connection for the scrape-time gauges."""
        with self.store.connection() as conn:
            yield conn

    def start(self) -> None:
        """Open the pool, migrate, start the outbox relay."""
        self.pool.open(wait=False)
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            applied = migrate.apply(conn)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        self.tokens.start()  # after the migrations: its trigger must exist
        if self.settings.relay_enabled:
            self.relay = OutboxRelay(self.settings)
            self.relay.start()

    def stop(self) -> None:
        """Stop the relay and close the pool."""
        if self.relay is not None:
            self.relay.stop()
        self.tokens.stop()
        self.pool.close()


async def _services(request: Request) -> Services:
    # async: FastAPI runs a plain `def` dependency in the thread pool, a hop (two thread
    # switches) per request for what is an attribute read.
    return _services_of(request)


def _services_of(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


async def _bearer_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> str:
    if credentials is None:
        raise NotAuthenticated("missing bearer token; get one from POST /v1/auth/token")
    # async, like _services: a token this process has checked is answered from memory on the
    # event loop (api.security.TokenCache); only another one goes to the database, on the
    # thread pool. A plain `def` would cost every request a hop to the pool and back.
    accounts = _services_of(request).accounts
    token = credentials.credentials
    username = accounts.cached_owner(token) or await run_in_threadpool(accounts.owner, token)
    if username is None:
        raise NotAuthenticated("the token is unknown or has expired; log in again")
    return username


ServicesDep = Annotated[Services, Depends(_services)]
CurrentUser = Annotated[str, Depends(_bearer_user)]
IdempotencyKey = Annotated[
    str | None,
    Header(alias="Idempotency-Key", max_length=200,
           description="retrying with the same key returns the first result and changes nothing"),
]


def context(request: Request, actor: str, key: str | None) -> Context:
    """Who asks, under which request id and idempotency key."""
    return Context(actor=actor, request_id=request.state.request_id, idempotency_key=key)


def respond(result: Result) -> JSONResponse:
    """A command's result as the HTTP response."""
    return JSONResponse(result.body, status_code=result.status)
