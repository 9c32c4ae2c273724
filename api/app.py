"""The FastAPI application: thin routes over the command handlers and queries."""

from __future__ import annotations

import logging
import re
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import datetime
from typing import Annotated, Any

import psycopg
from fastapi import Depends, FastAPI, Header, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from psycopg_pool import ConnectionPool
from starlette.exceptions import HTTPException as StarletteHTTPException

from api import queries
from api.broker import BrokerTopics
from api.domain import TaskView
from api.errors import (
    InvalidInput,
    MusketeerError,
    NotAuthenticated,
    error_body,
    http_status,
)
from api.handlers import Context, Result
from api.projections import project
from api.security import token_owner
from api.settings import Settings
from api.store import EventStore
from api.training import TrainingCommands
from schema import migrate
from schema.commands import (
    CompleteTask,
    CreateTask,
    Credentials,
    FailTask,
    RecordMissed,
    RecordRejection,
    RecordRound,
    RegisterUser,
)
from schema.lifecycle import TaskStatus

log = logging.getLogger("musketeer.api")
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


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
        self.store = EventStore(self.pool, projector=project)
        self.topics = BrokerTopics(settings.kafka_bootstrap_servers)
        self.commands = TrainingCommands(self.store, settings, self.topics)
        self.relay: Any = None

    def start(self) -> None:
        """Open the pool, migrate, start the outbox relay."""
        self.pool.open(wait=False)
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            applied = migrate.apply(conn)
        if applied:
            log.info("applied migrations: %s", ", ".join(applied))
        if self.settings.relay_enabled:
            from api.relay import OutboxRelay

            self.relay = OutboxRelay(self.settings)
            self.relay.start()

    def stop(self) -> None:
        """Stop the relay and close the pool."""
        if self.relay is not None:
            self.relay.stop()
        self.pool.close()


def _services(request: Request) -> Services:
    services: Services = request.app.state.services
    return services


def _bearer_user(
    request: Request,
    credentials: Annotated[HTTPAuthorizationCredentials | None, Depends(HTTPBearer(auto_error=False))],
) -> str:
    if credentials is None:
        raise NotAuthenticated("missing bearer token; get one from POST /v1/auth/token")
    with _services(request).store.connection() as conn:
        username = token_owner(conn, credentials.credentials)
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


def _context(request: Request, actor: str, key: str | None) -> Context:
    return Context(actor=actor, request_id=request.state.request_id, idempotency_key=key)


def _respond(result: Result) -> JSONResponse:
    return JSONResponse(result.body, status_code=result.status)


def _error_response(error: MusketeerError) -> JSONResponse:
    return JSONResponse(error_body(error.code, error.message, error.details),
                        status_code=http_status(error))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MusketeerError)
    async def _domain(request: Request, exc: MusketeerError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": e.get("msg", ""), "type": e.get("type", "")}
            for e in exc.errors()
        ]
        first = details[0] if details else {"loc": [], "msg": "invalid request"}
        where = ".".join(str(p) for p in first["loc"] if p != "body") or "request"
        return _error_response(InvalidInput(f"{where}: {first['msg']}", details))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error in %s %s", request.method, request.url.path)
        body = error_body("internal", "internal error; see the API log",
                          {"request_id": getattr(request.state, "request_id", None)})
        return JSONResponse(body, status_code=500)


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API application (uvicorn: `api.app:create_app --factory`)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        services = Services(settings)
        services.start()
        app.state.services = services
        try:
            yield
        finally:
            services.stop()

    app = FastAPI(
        title="Musketeer API",
        version="1",
        description="Federated learning platform: users, tasks, memberships and the audit log.",
        lifespan=lifespan,
    )

    @app.middleware("http")
    async def request_id(request: Request, call_next: Any) -> Any:
        given = request.headers.get("X-Request-ID", "")
        request.state.request_id = given if _REQUEST_ID.match(given) else uuid.uuid4().hex
        response = await call_next(request)
        response.headers["X-Request-ID"] = request.state.request_id
        return response

    _install_error_handlers(app)
    _add_routes(app)
    return app


def _add_routes(app: FastAPI) -> None:
    @app.get("/healthz", tags=["ops"], summary="Liveness")
    def healthz() -> dict[str, str]:
        """The process is up."""
        return {"status": "ok"}

    @app.get("/readyz", tags=["ops"], summary="Readiness: PostgreSQL and the broker")
    def readyz(services: ServicesDep) -> JSONResponse:
        """Ready when PostgreSQL and the broker both answer; otherwise 503 saying why."""
        checks: dict[str, str] = {}
        try:
            with services.store.connection() as conn:
                conn.execute("SELECT 1")
            checks["database"] = "ok"
        except MusketeerError as exc:
            checks["database"] = exc.message
        try:
            services.topics.ping()
            checks["broker"] = "ok"
        except MusketeerError as exc:
            checks["broker"] = exc.message
        ready = all(v == "ok" for v in checks.values())
        body = {"status": "ready" if ready else "not ready", "checks": checks}
        return JSONResponse(body, status_code=200 if ready else 503)

    @app.post("/v1/users", status_code=201, tags=["users"], summary="Register")
    def register(body: RegisterUser, request: Request, services: ServicesDep,
                 key: IdempotencyKey = None) -> JSONResponse:
        """Create an account; 409 if the name is taken."""
        return _respond(services.commands.register_user(body, _context(request, "anonymous", key)))

    @app.post("/v1/auth/token", tags=["users"], summary="Log in", openapi_extra=_TOKEN_BODY)
    async def token(request: Request, services: ServicesDep) -> dict[str, Any]:
        """A bearer token, from form fields or JSON `{username, password}`; 401 on a wrong pair."""
        credentials = await _read_credentials(request)
        return services.commands.login(credentials.username, credentials.password)

    @app.get("/v1/users/me", tags=["users"], summary="Who am I")
    def me(user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
        """The authenticated user's profile."""
        with services.store.connection() as conn:
            return queries.user_view(conn, user)

    @app.post("/v1/tasks", status_code=201, response_model=TaskView, tags=["tasks"],
              summary="Create a task")
    def create_task(body: CreateTask, request: Request, user: CurrentUser,
                    services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
        """Define a federated task; its two Kafka topics are created with it."""
        return _respond(services.commands.create_task(body, _context(request, user, key)))

    @app.get("/v1/tasks", response_model=queries.TaskPage, tags=["tasks"], summary="List tasks")
    def list_tasks(
        user: CurrentUser,
        services: ServicesDep,
        status: TaskStatus | None = None,
        pom: Annotated[int | None, Query(ge=1, le=6)] = None,
        search: Annotated[str | None, Query(max_length=200)] = None,
        creator: Annotated[str | None, Query(max_length=64)] = None,
        joined: bool | None = None,
        created_after: datetime | None = None,
        limit: Annotated[int, Query(ge=1, le=200)] = 50,
        cursor: Annotated[str | None, Query(max_length=100)] = None,
    ) -> queries.TaskPage:
        """Tasks newest first, filtered; follow `next_cursor` for the next page."""
        filters = queries.TaskFilter(status, pom, search, creator, joined, created_after,
                                     limit, cursor)
        with services.store.connection() as conn:
            return queries.list_tasks(conn, filters, user)

    @app.get("/v1/tasks/{name}", response_model=TaskView, tags=["tasks"], summary="Show a task")
    def get_task(name: str, user: CurrentUser, services: ServicesDep) -> TaskView:
        """A task with its status, creator, definition, participants and topics."""
        with services.store.connection() as conn:
            return queries.get_task(conn, name)

    @app.post("/v1/tasks/{name}/join", response_model=TaskView, tags=["tasks"],
              summary="Join a task")
    def join(name: str, request: Request, user: CurrentUser, services: ServicesDep,
             key: IdempotencyKey = None) -> JSONResponse:
        """Become a participant; 409 if already joined, full, or no longer CREATED."""
        return _respond(services.commands.join(name, _context(request, user, key)))

    @app.post("/v1/tasks/{name}/leave", response_model=TaskView, tags=["tasks"],
              summary="Leave a task")
    def leave(name: str, request: Request, user: CurrentUser, services: ServicesDep,
              key: IdempotencyKey = None) -> JSONResponse:
        """Stop being a participant; only while the task is CREATED."""
        return _respond(services.commands.leave(name, _context(request, user, key)))

    @app.delete("/v1/tasks/{name}", response_model=TaskView, tags=["tasks"],
                summary="Delete a task")
    def delete(name: str, request: Request, user: CurrentUser, services: ServicesDep,
               key: IdempotencyKey = None) -> JSONResponse:
        """Delete a task (its creator only); its topics are removed."""
        return _respond(services.commands.delete(name, _context(request, user, key)))

    @app.get("/v1/tasks/{name}/events", response_model=queries.TaskEvents, tags=["audit"],
             summary="A task's history")
    def events(name: str, user: CurrentUser, services: ServicesDep) -> queries.TaskEvents:
        """The task's events in order (creator and participants only)."""
        with services.store.connection() as conn:
            return queries.task_events(conn, name, user)

    @app.get("/v1/tasks/{name}/state", response_model=queries.TaskStateView, tags=["audit"],
             summary="A task as it was")
    def state(name: str, user: CurrentUser, services: ServicesDep,
              version: Annotated[int, Query(ge=1, le=2**31 - 1)]) -> queries.TaskStateView:
        """The task after its first `version` events (creator and participants only)."""
        with services.store.connection() as conn:
            return queries.task_state(conn, name, user, version)

    _add_training_routes(app)

    @app.get("/v1/audit/verify", tags=["audit"], summary="Verify the hash chain")
    def verify(user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
        """Walk the whole log; `first_bad_position` names the first altered event."""
        report = services.store.verify()
        return {"events": report.events, "ok": report.ok,
                "first_bad_position": report.first_bad_position}


def _add_training_routes(app: FastAPI) -> None:
    @app.post("/v1/tasks/{name}/start", response_model=TaskView, tags=["training"],
              summary="Start training (aggregator)")
    def start(name: str, request: Request, user: CurrentUser, services: ServicesDep,
              key: IdempotencyKey = None) -> JSONResponse:
        """Record TaskStarted once the quorum has joined (the creator only)."""
        return _respond(services.commands.start(name, _context(request, user, key)))

    @app.post("/v1/tasks/{name}/rounds", response_model=TaskView, tags=["training"],
              summary="Record a completed round (aggregator)")
    def record_round(name: str, body: RecordRound, request: Request, user: CurrentUser,
                     services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
        """Record the next round; its model must be stored first; a repeat is 409."""
        return _respond(services.commands.record_round(name, body, _context(request, user, key)))

    @app.get("/v1/tasks/{name}/rounds", response_model=queries.Rounds, tags=["training"],
             summary="A task's rounds")
    def rounds(name: str, user: CurrentUser, services: ServicesDep) -> queries.Rounds:
        """Completed rounds with metrics and model digests (creator and participants)."""
        with services.store.connection() as conn:
            return queries.task_rounds(conn, name, user)

    @app.post("/v1/tasks/{name}/missed", response_model=TaskView, tags=["training"],
              summary="Record participants a round closed without (aggregator)")
    def missed(name: str, body: RecordMissed, request: Request, user: CurrentUser,
               services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
        """One ParticipantMissedRound per participant, for the round now closing."""
        return _respond(services.commands.record_missed(name, body, _context(request, user, key)))

    @app.post("/v1/tasks/{name}/rejections", response_model=TaskView, tags=["training"],
              summary="Record a rejected update (aggregator)")
    def reject(name: str, body: RecordRejection, request: Request, user: CurrentUser,
               services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
        """Record an UpdateRejected event with the reason."""
        return _respond(services.commands.reject_update(name, body, _context(request, user, key)))

    @app.put("/v1/tasks/{name}/model", status_code=201, tags=["training"],
             summary="Store a model artifact (aggregator)",
             openapi_extra={"requestBody": {"required": True, "content": {
                 "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}})
    async def store_model(
        name: str, request: Request, user: CurrentUser, services: ServicesDep,
        round: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
        final: bool = False, key: IdempotencyKey = None,
    ) -> JSONResponse:
        """Upload model bytes (the codec's payload); returns its sha256."""
        content = await request.body()
        context = _context(request, user, key)
        result = await run_in_threadpool(services.commands.store_model, name, content, round,
                                         final, context)
        return _respond(result)

    @app.get("/v1/tasks/{name}/model", tags=["training"], summary="Download a task's model",
             responses={200: {"content": {"application/octet-stream": {}}}})
    def get_model(name: str, user: CurrentUser, services: ServicesDep,
                  sha256: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None) -> Response:
        """The final model (or the stored artifact `sha256`); its digest is in X-Model-SHA256."""
        with services.store.connection() as conn:
            digest, content = queries.model_bytes(conn, name, user, sha256)
        return Response(content, media_type="application/octet-stream",
                        headers={"X-Model-SHA256": digest})

    @app.post("/v1/tasks/{name}/complete", response_model=TaskView, tags=["training"],
              summary="Complete a task (aggregator)")
    def complete(name: str, body: CompleteTask, request: Request, user: CurrentUser,
                 services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
        """Record TaskCompleted with the final model's digest."""
        return _respond(services.commands.complete(name, body, _context(request, user, key)))

    @app.post("/v1/tasks/{name}/fail", response_model=TaskView, tags=["training"],
              summary="Fail a task (aggregator)")
    def fail(name: str, body: FailTask, request: Request, user: CurrentUser,
             services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
        """Record TaskFailed with the reason."""
        return _respond(services.commands.fail(name, body, _context(request, user, key)))

    @app.get("/v1/models", response_model=queries.Models, tags=["training"],
             summary="My trained models")
    def models(user: CurrentUser, services: ServicesDep) -> queries.Models:
        """Final models of tasks you created or joined: digest, size and lineage."""
        with services.store.connection() as conn:
            return queries.user_models(conn, user)


_CREDENTIALS_SCHEMA = {
    "type": "object",
    "required": ["username", "password"],
    "properties": {"username": {"type": "string", "maxLength": 64},
                   "password": {"type": "string", "maxLength": 1024}},
}
_TOKEN_BODY = {
    "requestBody": {
        "required": True,
        "content": {
            "application/x-www-form-urlencoded": {"schema": _CREDENTIALS_SCHEMA},
            "application/json": {"schema": _CREDENTIALS_SCHEMA},
        },
    }
}


async def _read_credentials(request: Request) -> Credentials:
    content_type = request.headers.get("content-type", "")
    try:
        if content_type.startswith("application/json"):
            raw: Any = await request.json()
        else:
            form = await request.form()
            raw = {"username": form.get("username"), "password": form.get("password")}
        return Credentials.model_validate(raw)
    except (ValueError, TypeError) as exc:
        raise InvalidInput(
            "send username and password as form fields or JSON {username, password}"
        ) from exc
