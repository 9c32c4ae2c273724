"""Tasks: create, list, show, join, leave, delete."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse

from api import queries
from api.deps import CurrentUser, IdempotencyKey, ServicesDep, context, respond
from api.domain import TaskView
from schema.commands import CreateTask
from schema.lifecycle import TaskStatus

router = APIRouter(tags=["tasks"])


@router.post("/v1/tasks", status_code=201, response_model=TaskView, summary="Create a task")
def create_task(body: CreateTask, request: Request, user: CurrentUser,
                services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
    """Define a federated task; its two Kafka topics are created with it."""
    return respond(services.commands.create_task(body, context(request, user, key)))


@router.get("/v1/tasks", response_model=queries.TaskPage, summary="List tasks")
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
    filters = queries.TaskFilter(status, pom, search, creator, joined, created_after, limit, cursor)
    with services.store.connection() as conn:
        return queries.list_tasks(conn, filters, user)


@router.get("/v1/tasks/{name}", response_model=TaskView, summary="Show a task")
def get_task(name: str, user: CurrentUser, services: ServicesDep) -> TaskView:
    """A task with its status, creator, definition, participants and topics."""
    with services.store.connection() as conn:
        return queries.get_task(conn, name)


@router.post("/v1/tasks/{name}/join", response_model=TaskView, summary="Join a task")
def join(name: str, request: Request, user: CurrentUser, services: ServicesDep,
         key: IdempotencyKey = None) -> JSONResponse:
    """Become a participant; 409 if already joined, full, or no longer CREATED."""
    return respond(services.commands.join(name, context(request, user, key)))


@router.post("/v1/tasks/{name}/leave", response_model=TaskView, summary="Leave a task")
def leave(name: str, request: Request, user: CurrentUser, services: ServicesDep,
          key: IdempotencyKey = None) -> JSONResponse:
    """Stop being a participant; only while the task is CREATED."""
    return respond(services.commands.leave(name, context(request, user, key)))


@router.delete("/v1/tasks/{name}", response_model=TaskView, summary="Delete a task")
def delete(name: str, request: Request, user: CurrentUser, services: ServicesDep,
           key: IdempotencyKey = None) -> JSONResponse:
    """Delete a task (its creator only); its topics are removed."""
    return respond(services.commands.delete(name, context(request, user, key)))
