"""The project's own error types, and the one table that maps them to HTTP.

Driver errors (psycopg, confluent-kafka) are translated into these where they
are caught; routes never raise HTTPException themselves.
"""

from __future__ import annotations

from typing import Any


class MusketeerError(Exception):
    """Base of every error the platform reports to a caller."""

    code = "error"

    def __init__(self, message: str, details: Any = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = details


class InvalidInput(MusketeerError):
    code = "invalid_input"


class NotAuthenticated(MusketeerError):
    code = "not_authenticated"


class Forbidden(MusketeerError):
    code = "forbidden"


class NotFound(MusketeerError):
    code = "not_found"


class Conflict(MusketeerError):
    code = "conflict"


class VersionConflict(Conflict):
    """An append's expected version did not match the stream."""

    code = "version_conflict"


class WriteRace(VersionConflict):
    """Another command committed between this command's reads and its first write.

    The command handlers run such a command again, this time holding the append lock
    from its first read, so a caller sees it only from a direct append."""


class IdempotencyKeyReused(Conflict):
    code = "idempotency_key_reused"


class Unavailable(MusketeerError):
    """A backing service (PostgreSQL, the broker) cannot be reached."""

    code = "unavailable"


HTTP_STATUS: dict[type[MusketeerError], int] = {
    InvalidInput: 422,
    NotAuthenticated: 401,
    Forbidden: 403,
    NotFound: 404,
    Conflict: 409,
    VersionConflict: 409,
    IdempotencyKeyReused: 409,
    Unavailable: 503,
    MusketeerError: 500,
}


def http_status(error: MusketeerError) -> int:
    """The HTTP status for an error, by its nearest listed type."""
    for cls in type(error).__mro__:
        if cls in HTTP_STATUS:
            return HTTP_STATUS[cls]
    return 500


def error_body(code: str, message: str, details: Any = None) -> dict[str, Any]:
    """The JSON body of every error response."""
    return {"error": code, "message": message, "details": details}
