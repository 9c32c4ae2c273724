"""The FastAPI application: middleware, the one error table, and one router per area."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from anyio import to_thread
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from api.deps import Services
from api.errors import InvalidInput, MusketeerError, error_body, http_status
from api.middleware import RequestMiddleware
from api.routes import audit, dashboard, docs, keys, ops, tasks, training, users
from api.settings import Settings

log = logging.getLogger("musketeer.api")


def create_app(settings: Settings | None = None) -> FastAPI:
    """The API application (uvicorn: `api.app:create_app --factory`)."""
    settings = settings or Settings.from_env()

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        # Blocking handlers run on anyio's thread pool; its size is the process's, set here once.
        to_thread.current_default_thread_limiter().total_tokens = settings.api_threads
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
        docs_url=None,  # served by api/routes/docs.py from local assets, not a CDN
        redoc_url=None,
    )
    app.add_middleware(RequestMiddleware)
    _install_error_handlers(app)
    for router in (ops.router, users.router, keys.router, tasks.router, audit.router, training.router,
                   dashboard.router):
        app.include_router(router)
    docs.install(app)
    return app


def plain_message(message: str) -> str:
    """A validation message without pydantic's "Value error, " prefix (our messages say what)."""
    return message.removeprefix("Value error, ")


def _error_response(error: MusketeerError) -> JSONResponse:
    return JSONResponse(error_body(error.code, error.message, error.details), status_code=http_status(error))


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(MusketeerError)
    async def _domain(request: Request, exc: MusketeerError) -> JSONResponse:
        return _error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        details = [
            {"loc": list(e.get("loc", ())), "msg": plain_message(e.get("msg", "")), "type": e.get("type", "")}
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
