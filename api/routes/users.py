"""Accounts: register, log in, who am I."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import JSONResponse

from api import queries
from api.deps import CurrentUser, IdempotencyKey, ServicesDep, context, respond
from api.errors import InvalidInput
from schema.commands import Credentials, RegisterUser

router = APIRouter(tags=["users"])

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


@router.post("/v1/users", status_code=201, summary="Register")
def register(body: RegisterUser, request: Request, services: ServicesDep,
             key: IdempotencyKey = None) -> JSONResponse:
    """Create an account; 409 if the name is taken."""
    return respond(services.commands.register_user(body, context(request, "anonymous", key)))


@router.post("/v1/auth/token", summary="Log in", openapi_extra=_TOKEN_BODY)
async def token(request: Request, services: ServicesDep) -> dict[str, Any]:
    """A bearer token, from form fields or JSON `{username, password}`; 401 on a wrong pair."""
    credentials = await _read_credentials(request)
    # argon2 and the database, off the event loop: every other request waits while it runs.
    return await run_in_threadpool(services.accounts.login, credentials.username, credentials.password)


@router.get("/v1/users/me", summary="Who am I")
def me(user: CurrentUser, services: ServicesDep) -> dict[str, Any]:
    """The authenticated user's profile."""
    with services.store.connection() as conn:
        return queries.user_view(conn, user)


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
