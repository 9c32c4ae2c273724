"""Liveness and readiness."""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import JSONResponse, Response

from api.deps import ServicesDep
from api.errors import MusketeerError

router = APIRouter(tags=["ops"])


@router.get("/healthz", summary="Liveness")
def healthz() -> dict[str, str]:
    """The process is up."""
    return {"status": "ok"}


@router.get("/metrics", include_in_schema=False)
def metrics(services: ServicesDep) -> Response:
    """Prometheus metrics: request latency by route, commands, events, rounds, rejections, gauges."""
    return services.metrics.render()


@router.get("/readyz", summary="Readiness: PostgreSQL and the broker")
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
