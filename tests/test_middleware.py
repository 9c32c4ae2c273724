"""The request middleware: every request gets a request id, echoed back, and is timed."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

from fastapi import FastAPI, Request
from fastapi.testclient import TestClient

from api.middleware import RequestMiddleware


@dataclass
class RecordingMetrics:
    """The process's Metrics, as a list of (path template, status) observed."""

    seen: list[tuple[str, int]] = field(default_factory=list)

    def observe(self, request: Request, status: int, seconds: float) -> None:
        assert seconds >= 0
        self.seen.append((str(getattr(request.scope.get("route"), "path", "unmatched")), status))


def app_with(metrics: RecordingMetrics) -> FastAPI:
    app = FastAPI()
    app.add_middleware(RequestMiddleware)
    app.state.services = SimpleNamespace(metrics=metrics)

    @app.get("/echo/{word}")
    def echo(word: str, request: Request) -> dict[str, Any]:
        return {"request_id": request.state.request_id}

    return app


def test_a_sane_request_id_is_kept_and_echoed() -> None:
    """A caller's X-Request-ID reaches the route and comes back on the response."""
    with TestClient(app_with(RecordingMetrics())) as client:
        response = client.get("/echo/hi", headers={"X-Request-ID": "trace-42.a_b"})
    assert response.json() == {"request_id": "trace-42.a_b"}
    assert response.headers["X-Request-ID"] == "trace-42.a_b"


def test_a_missing_or_unsafe_request_id_is_replaced() -> None:
    """No header, or one with characters a log line should not carry, gets a fresh id."""
    with TestClient(app_with(RecordingMetrics())) as client:
        plain = client.get("/echo/hi")
        unsafe = client.get("/echo/hi", headers={"X-Request-ID": "bad id\twith spaces"})
    for response in (plain, unsafe):
        assert re.fullmatch(r"[0-9a-f]{32}", response.headers["X-Request-ID"])
        assert response.json()["request_id"] == response.headers["X-Request-ID"]
    assert plain.headers["X-Request-ID"] != unsafe.headers["X-Request-ID"]


def test_every_request_is_observed_by_route_and_status() -> None:
    """The metrics see the route template and the status sent, 404s included."""
    metrics = RecordingMetrics()
    with TestClient(app_with(metrics)) as client:
        client.get("/echo/one")
        client.get("/nowhere")
    assert metrics.seen == [("/echo/{word}", 200), ("unmatched", 404)]
