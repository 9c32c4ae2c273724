"""What runs on a user's machine: the typed HTTP client with its errors and retries, the
profile, saved credentials, and the user-facing `musketeer` commands.

Imports: schema only (plus httpx, typer, rich). Notebooks: `from client import MusketeerClient`.
"""

from client.contributions import Contribution, ContributionReport
from client.errors import (
    AuthenticationError,
    ClientError,
    ConflictError,
    IdempotencyKeyReusedError,
    NotFoundError,
    PermissionDenied,
    ServerError,
    ServiceUnavailable,
    ValidationFailed,
    VersionConflictError,
)
from client.http import MusketeerClient
from client.models import (
    MemberKeyInfo,
    ModelInfo,
    Participant,
    Round,
    StoredModel,
    Task,
    TaskEvent,
    TaskPage,
    TaskState,
    Token,
    Topics,
    User,
    VerifyReport,
)
from client.retry import RetryPolicy

__all__ = [
    "AuthenticationError",
    "ClientError",
    "ConflictError",
    "Contribution",
    "ContributionReport",
    "IdempotencyKeyReusedError",
    "MemberKeyInfo",
    "ModelInfo",
    "MusketeerClient",
    "NotFoundError",
    "Participant",
    "PermissionDenied",
    "RetryPolicy",
    "Round",
    "ServerError",
    "ServiceUnavailable",
    "StoredModel",
    "Task",
    "TaskEvent",
    "TaskPage",
    "TaskState",
    "Token",
    "Topics",
    "User",
    "ValidationFailed",
    "VerifyReport",
    "VersionConflictError",
]
