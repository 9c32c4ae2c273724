"""Training: the aggregator's commands (start, rounds, models, rejections, end) and their reads."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Query, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse, Response

from api import queries
from api.contributions import Contributions, task_contributions
from api.deps import CurrentUser, IdempotencyKey, ServicesDep, context, respond
from api.domain import TaskView
from api.errors import InvalidInput
from api.training import MAX_MODEL_BYTES
from schema.commands import (
    CompleteTask,
    FailTask,
    RecordContributions,
    RecordMissed,
    RecordRejection,
    RecordRound,
)

router = APIRouter(tags=["training"])
_BINARY_BODY = {"requestBody": {"required": True, "content": {
    "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}}}}


@router.post("/v1/tasks/{name}/start", response_model=TaskView, summary="Start training (aggregator)")
def start(name: str, request: Request, user: CurrentUser, services: ServicesDep,
          key: IdempotencyKey = None) -> JSONResponse:
    """Record TaskStarted once the quorum has joined (the creator only)."""
    return respond(services.commands.start(name, context(request, user, key)))


@router.post("/v1/tasks/{name}/rounds", response_model=TaskView,
             summary="Record a completed round (aggregator)")
def record_round(name: str, body: RecordRound, request: Request, user: CurrentUser,
                 services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
    """Record the next round; its model must be stored first; a repeat is 409."""
    return respond(services.commands.record_round(name, body, context(request, user, key)))


@router.get("/v1/tasks/{name}/rounds", response_model=queries.Rounds, summary="A task's rounds")
def rounds(name: str, user: CurrentUser, services: ServicesDep) -> queries.Rounds:
    """Completed rounds with metrics and model digests (creator and participants)."""
    with services.store.connection() as conn:
        return queries.task_rounds(conn, name, user)


@router.post("/v1/tasks/{name}/missed", response_model=TaskView,
             summary="Record participants a round closed without (aggregator)")
def missed(name: str, body: RecordMissed, request: Request, user: CurrentUser,
           services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
    """One ParticipantMissedRound per participant, for the round now closing."""
    return respond(services.commands.record_missed(name, body, context(request, user, key)))


@router.post("/v1/tasks/{name}/rejections", response_model=TaskView,
             summary="Record a rejected update (aggregator)")
def reject(name: str, body: RecordRejection, request: Request, user: CurrentUser,
           services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
    """Record an UpdateRejected event with the reason."""
    return respond(services.commands.reject_update(name, body, context(request, user, key)))


@router.put("/v1/tasks/{name}/model", status_code=201, summary="Store a model artifact (aggregator)",
            openapi_extra=_BINARY_BODY)
async def store_model(
    name: str, request: Request, user: CurrentUser, services: ServicesDep,
    round: Annotated[int | None, Query(ge=0, le=2**31 - 1)] = None,
    final: bool = False, key: IdempotencyKey = None,
) -> JSONResponse:
    """Upload model bytes (the codec's payload); returns its sha256."""
    content = await _capped_body(request, MAX_MODEL_BYTES)
    result = await run_in_threadpool(services.commands.store_model, name, content, round, final,
                                     context(request, user, key))
    return respond(result)


async def _capped_body(request: Request, limit: int) -> bytes:
    """The body, refused once it passes `limit` bytes: an oversized upload never fills memory."""
    declared = request.headers.get("content-length", "")
    too_large = InvalidInput(f"the model is larger than {limit} bytes")
    if declared.isdigit() and int(declared) > limit:
        raise too_large  # said before a byte of it is read
    parts, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            raise too_large
        parts.append(chunk)
    return b"".join(parts)


@router.get("/v1/tasks/{name}/model", summary="Download a task's model",
            responses={200: {"content": {"application/octet-stream": {}}}})
def get_model(name: str, user: CurrentUser, services: ServicesDep,
              sha256: Annotated[str | None, Query(pattern="^[0-9a-f]{64}$")] = None,
              format: Annotated[Literal["bundle", "keras"], Query(
                  description="keras: the .keras file to take away (standardisation inside); "
                              "bundle: the data plane's format")] = "bundle") -> Response:
    """The final model (or the stored artifact `sha256`); its digest is in X-Model-SHA256."""
    with services.store.connection() as conn:
        digest, content = queries.model_bytes(conn, name, user, sha256, keras=format == "keras")
    return model_response(name, digest, content, format)


def model_response(name: str, digest: str, content: bytes, format: str) -> Response:
    """Model bytes as a download, the digest in X-Model-SHA256 and a file name to save them as."""
    suffix = "keras" if format == "keras" else "bundle"
    headers = {"X-Model-SHA256": digest,
               "Content-Disposition": f'attachment; filename="{name}.{suffix}"'}
    return Response(content, media_type="application/octet-stream", headers=headers)


@router.post("/v1/tasks/{name}/complete", response_model=TaskView, summary="Complete a task (aggregator)")
def complete(name: str, body: CompleteTask, request: Request, user: CurrentUser,
             services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
    """Record TaskCompleted with the final model's digest."""
    return respond(services.commands.complete(name, body, context(request, user, key)))


@router.post("/v1/tasks/{name}/fail", response_model=TaskView, summary="Fail a task (aggregator)")
def fail(name: str, body: FailTask, request: Request, user: CurrentUser,
         services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
    """Record TaskFailed with the reason."""
    return respond(services.commands.fail(name, body, context(request, user, key)))


@router.get("/v1/models", response_model=queries.Models, summary="My trained models")
def models(user: CurrentUser, services: ServicesDep) -> queries.Models:
    """Final models of tasks you created or joined: digest, size and lineage."""
    with services.store.connection() as conn:
        return queries.user_models(conn, user)


@router.post("/v1/tasks/{name}/contributions", response_model=TaskView,
             summary="Record contribution values of a round (aggregator)")
def record_contributions(name: str, body: RecordContributions, request: Request, user: CurrentUser,
                         services: ServicesDep, key: IdempotencyKey = None) -> JSONResponse:
    """Record ContributionsAssessed for a recorded round: what each participant's update was worth."""
    return respond(services.commands.record_contributions(name, body, context(request, user, key)))


@router.get("/v1/tasks/{name}/contributions", response_model=Contributions,
            summary="What each participant's data was worth")
def contributions(name: str, user: CurrentUser, services: ServicesDep) -> Contributions:
    """Contribution values per round and summed per participant (creator and participants)."""
    with services.store.connection() as conn:
        return task_contributions(conn, name, user)
