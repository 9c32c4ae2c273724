"""What the HTTP API returns, as the client sees it.

Every model allows extra fields, so a newer server adding a field never breaks
an older client; fields the client does not strictly need have defaults.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from schema.lifecycle import TaskStatus


class _ApiModel(BaseModel):
    model_config = ConfigDict(extra="allow")


class User(_ApiModel):
    """A registered user."""

    username: str
    organization: str | None = None
    created_at: datetime | None = None


class Token(_ApiModel):
    """A bearer token issued by `POST /v1/auth/token`."""

    # repr=False: the token must not show up in notebooks, logs or tracebacks.
    access_token: str = Field(repr=False)
    token_type: str = "bearer"
    expires_in: float | None = None


class Participant(_ApiModel):
    """A member of a task."""

    username: str
    organization: str | None = None
    joined_at: datetime | None = None
    last_contact_at: datetime | None = None


class Topics(_ApiModel):
    """The task's two Kafka topics (data plane)."""

    broadcast: str | None = None
    updates: str | None = None


class Task(_ApiModel):
    """The task view returned by the task endpoints."""

    task_id: str
    name: str
    creator: str
    status: TaskStatus
    definition: dict[str, Any] = Field(default_factory=dict)
    topology: str = "STAR"
    pom: int = 1
    description: str | None = None
    quorum: int | None = None
    max_participants: int | None = None
    participants: list[Participant] = Field(default_factory=list)
    participant_count: int = 0
    topics: Topics = Field(default_factory=Topics)
    version: int = 0
    created_at: datetime | None = None
    updated_at: datetime | None = None
    rounds_completed: int = 0
    model_sha256: str | None = None
    keras_sha256: str | None = None
    failure_reason: str | None = None
    keys: dict[str, str] = Field(default_factory=dict)
    epsilon: float | None = None
    completion_reason: str | None = None

    @property
    def rounds(self) -> int | None:
        """Federated rounds, in either spelling the definition may use."""
        value = self.definition.get("rounds", self.definition.get("round"))
        return value if isinstance(value, int) else None

    @property
    def effective_quorum(self) -> int | None:
        """The quorum, from the view or else from the definition."""
        if self.quorum is not None:
            return self.quorum
        value = self.definition.get("quorum")
        return value if isinstance(value, int) else None


class TaskState(Task):
    """A task as it was after its first `as_of_version` events."""

    as_of_version: int


class TaskPage(_ApiModel):
    """One page of `GET /v1/tasks`, newest first."""

    items: list[Task] = Field(default_factory=list)
    next_cursor: str | None = None


class TaskEvent(_ApiModel):
    """One event of a task's stream, as the history endpoint shows it."""

    position: int
    version: int
    type: str
    data: dict[str, Any] = Field(default_factory=dict)
    actor: str | None = None
    recorded_at: datetime | None = None
    hash: str | None = None


class VerifyReport(_ApiModel):
    """The result of walking the event log's hash chain."""

    events: int
    ok: bool
    first_bad_position: int | None = None


class Round(_ApiModel):
    """A completed round: who contributed, metrics, the model's digest."""

    round: int
    participants: list[str] = Field(default_factory=list)
    samples: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    model_sha256: str
    duration_s: float | None = None
    recorded_at: datetime | None = None
    epsilon: float | None = None


class StoredModel(_ApiModel):
    """A model artifact the API stored."""

    sha256: str
    size: int
    round: int | None = None
    final: bool = False


class ModelInfo(_ApiModel):
    """A trained model and its lineage: which task, rounds and participants produced it."""

    task: str
    task_id: str
    creator: str
    model_sha256: str
    keras_sha256: str | None = None
    size: int
    rounds: list[Round] = Field(default_factory=list)
    participants: list[str] = Field(default_factory=list)
    completed_at: datetime | None = None


class MemberKeyInfo(_ApiModel):
    """A member's signing key, as the API shows it (the public half only)."""

    username: str
    fingerprint: str
    public_key: str
    status: str
    registered_at: datetime | None = None
    revoked_at: datetime | None = None
