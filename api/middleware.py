"""The one middleware: a request id on every request and response, and its latency in the metrics.

Plain ASGI rather than Starlette's `BaseHTTPMiddleware` (`app.middleware("http")`): that one
runs each request in an extra task with memory streams between them, a cost every request
paid twice (once per middleware) on the event loop that all requests share.
"""

from __future__ import annotations

import re
import time
import uuid
from typing import Any

from starlette.datastructures import MutableHeaders
from starlette.requests import Request
from starlette.types import ASGIApp, Message, Receive, Scope, Send

_REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,100}$")


def request_id(scope: Scope) -> str:
    """The caller's X-Request-ID if it is sane, else a new one."""
    for name, value in scope["headers"]:
        if name == b"x-request-id":
            given = value.decode("latin-1")
            return given if _REQUEST_ID.match(given) else uuid.uuid4().hex
    return uuid.uuid4().hex


class RequestMiddleware:
    """Sets `request.state.request_id`, echoes it as X-Request-ID, and times the request."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        rid = request_id(scope)
        scope.setdefault("state", {})["request_id"] = rid
        started = time.perf_counter()
        status: list[int] = []

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                MutableHeaders(scope=message)["X-Request-ID"] = rid
            await send(message)

        await self.app(scope, receive, send_with_id)
        _observe(scope, status[0] if status else 500, time.perf_counter() - started)


def _observe(scope: Scope, status: int, seconds: float) -> None:
    services: Any = getattr(scope["app"].state, "services", None)
    if services is not None:
        services.metrics.observe(Request(scope), status, seconds)
