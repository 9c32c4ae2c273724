"""The client's error types, one per kind of API answer, and the mapping from a response."""

from __future__ import annotations

from typing import Any

import httpx


class ClientError(Exception):
    """An error reported by the API (or the failure to reach it)."""

    def __init__(
        self, message: str, *, status: int | None = None, code: str = "error", details: Any = None
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.details = details

    def __repr__(self) -> str:
        name = type(self).__name__
        return f"{name}(status={self.status!r}, code={self.code!r}, message={self.message!r})"


class AuthenticationError(ClientError):
    """401: no token, a wrong username/password pair, or an expired token."""


class PermissionDenied(ClientError):
    """403: authenticated, but not allowed to do this."""


class NotFoundError(ClientError):
    """404: no such user or task."""


class ConflictError(ClientError):
    """409: the command conflicts with the current state."""


class VersionConflictError(ConflictError):
    """409 version_conflict: someone else changed the task first; re-read and retry."""


class IdempotencyKeyReusedError(ConflictError):
    """409 idempotency_key_reused: the key was already used for a different request."""


class ValidationFailed(ClientError):
    """422: the input was rejected; `details` says which fields and why."""


class ServiceUnavailable(ClientError):
    """503, or the API cannot be reached at all."""


class ServerError(ClientError):
    """5xx: the server failed."""


_BY_CODE: dict[str, type[ClientError]] = {
    "not_authenticated": AuthenticationError,
    "forbidden": PermissionDenied,
    "not_found": NotFoundError,
    "conflict": ConflictError,
    "version_conflict": VersionConflictError,
    "idempotency_key_reused": IdempotencyKeyReusedError,
    "invalid_input": ValidationFailed,
    "unavailable": ServiceUnavailable,
}
_BY_STATUS: dict[int, type[ClientError]] = {
    401: AuthenticationError,
    403: PermissionDenied,
    404: NotFoundError,
    409: ConflictError,
    422: ValidationFailed,
    503: ServiceUnavailable,
}


def error_from_response(response: httpx.Response) -> ClientError:
    """The ClientError for an error response (the API's body, or a framework default)."""
    try:
        body = response.json()
    except ValueError:
        body = None
    code, message, details = _parse_error_body(body)
    status = response.status_code
    cls = _BY_CODE.get(code or "") or _BY_STATUS.get(status)
    if cls is None:
        cls = ServerError if status >= 500 else ClientError
    message = message or response.text.strip() or response.reason_phrase or f"HTTP {status}"
    return cls(message, status=status, code=code or _default_code(status), details=details)


def _parse_error_body(body: Any) -> tuple[str | None, str | None, Any]:
    if not isinstance(body, dict):
        return None, None, None
    if "error" in body or "message" in body:
        return body.get("error"), body.get("message"), body.get("details")
    # FastAPI's own bodies ({"detail": ...}) for errors the app does not translate.
    if "detail" in body:
        detail = body["detail"]
        return (None, detail, None) if isinstance(detail, str) else (None, None, detail)
    # Any other JSON (e.g. /readyz's {"status", "checks"}) is kept whole as details.
    return None, None, body


def _default_code(status: int) -> str:
    return _STATUS_CODE.get(status, "server_error" if status >= 500 else "error")


_STATUS_CODE: dict[int, str] = {
    401: "not_authenticated",
    403: "forbidden",
    404: "not_found",
    409: "conflict",
    422: "invalid_input",
    503: "unavailable",
}


def unreachable(api_url: str, exc: Exception, origin: str | None = None) -> ServiceUnavailable:
    """The error for an API that cannot be reached, with what to do about it."""
    where = f" ({origin})" if origin else ""
    return ServiceUnavailable(
        f"cannot reach the Musketeer API at {api_url}{where} ({type(exc).__name__}: {exc}). "
        "Is the platform running? Start it with `musketeer platform up`, "
        "or point --profile, --api-url or MUSKETEER_API_URL at the right server.",
        status=None,
        code="unreachable",
    )
