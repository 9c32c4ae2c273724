"""Signing keys: a member's own keys (register or rotate, list, revoke) and the keys of a task."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Request
from fastapi.responses import JSONResponse

from api import queries
from api.deps import CurrentUser, IdempotencyKey, ServicesDep, context, respond
from schema.commands import RegisterKey

router = APIRouter(tags=["keys"])
Fingerprint = Annotated[str, Path(pattern="^[0-9a-f]{64}$", description="hex sha256 of the public key")]


@router.put("/v1/users/me/keys", status_code=201, summary="Register or rotate my signing key")
def register_key(body: RegisterKey, request: Request, user: CurrentUser, services: ServicesDep,
                 key: IdempotencyKey = None) -> JSONResponse:
    """Make this Ed25519 public key your current one (201; 200 if it already is); the previous key
    is rotated out and still verifies the tasks that recorded it."""
    return respond(services.commands.register_key(body, context(request, user, key)))


@router.get("/v1/users/me/keys", response_model=queries.Keys, summary="My signing keys")
def my_keys(user: CurrentUser, services: ServicesDep) -> queries.Keys:
    """Your keys, newest first, with their status."""
    with services.store.connection() as conn:
        return queries.user_keys(conn, user)


@router.delete("/v1/users/me/keys/{fingerprint}", summary="Revoke one of my signing keys")
def revoke_key(fingerprint: Fingerprint, request: Request, user: CurrentUser, services: ServicesDep,
               key: IdempotencyKey = None) -> JSONResponse:
    """Nothing signed with this key is believed from now on, in any task."""
    return respond(services.commands.revoke_key(fingerprint, context(request, user, key)))


@router.get("/v1/tasks/{name}/keys", response_model=queries.Keys, summary="The keys of a task's members")
def task_keys(name: str, user: CurrentUser, services: ServicesDep) -> queries.Keys:
    """The key TaskStarted recorded for the creator and each participant, with its status now
    (creator and participants only)."""
    with services.store.connection() as conn:
        return queries.task_keys(conn, name, user)
