"""The audit trail: a task's history, a task as it was, the hash chain."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Query

from api import queries
from api.deps import CurrentUser, ServicesDep

router = APIRouter(tags=["audit"])


@router.get("/v1/tasks/{name}/events", response_model=queries.TaskEvents, summary="A task's history")
def events(name: str, user: CurrentUser, services: ServicesDep) -> queries.TaskEvents:
    """The task's events in order (creator and participants only)."""
    with services.store.connection() as conn:
        return queries.task_events(conn, name, user)


@router.get("/v1/tasks/{name}/state", response_model=queries.TaskStateView, summary="A task as it was")
def state(name: str, user: CurrentUser, services: ServicesDep,
          version: Annotated[int, Query(ge=1, le=2**31 - 1)]) -> queries.TaskStateView:
    """The task after its first `version` events (creator and participants only)."""
    with services.store.connection() as conn:
        return queries.task_state(conn, name, user, version)


@router.get("/v1/audit/verify", summary="Verify the hash chain")
def verify(user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
    """Walk the whole log; `first_bad_position` names the first altered event."""
    report = services.store.verify()
    return {"events": report.events, "ok": report.ok, "first_bad_position": report.first_bad_position}
