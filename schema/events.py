"""Every event type the platform records, each with a schema version.

An event's `data` is the model's JSON; its `type` is the class name. Old stored
versions are upcast in `upcast` before they are parsed, so a reader only ever
sees the current shape.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any, ClassVar

from pydantic import BaseModel, ConfigDict, Field


class Event(BaseModel):
    """Base of every domain event."""

    model_config = ConfigDict(extra="forbid", frozen=True)
    schema_version: ClassVar[int] = 1

    @classmethod
    def type_name(cls) -> str:
        """The name stored in the `type` column."""
        return cls.__name__

    def to_data(self) -> dict[str, Any]:
        """The JSON stored in the `data` column."""
        return self.model_dump(mode="json")


class UserRegistered(Event):
    """A person got an account (credentials are kept apart, never in the log)."""

    username: str
    organization: str


class MemberKeyRegistered(Event):
    """A user registered a signing key; it speaks for them in tasks started from now on.

    A key registered while another is active rotates it: the old key still verifies the
    tasks that recorded it at their start, new tasks record the new one.
    """

    username: str
    fingerprint: str
    public_key: str = Field(description="Ed25519 public key, base64 of the 32 raw bytes")
    replaces: str | None = Field(default=None, description="fingerprint of the key it rotates out")


class MemberKeyRevoked(Event):
    """A user withdrew a key (lost or compromised): nothing signed with it is believed any more."""

    username: str
    fingerprint: str
    reason: str | None = None


class TaskCreated(Event):
    """A data scientist defined a federated task."""

    task_id: str
    name: str
    creator: str
    definition: dict[str, Any]
    topology: str = "STAR"
    pom: int = 1
    description: str | None = None
    broadcast_topic: str
    updates_topic: str


class ParticipantJoined(Event):
    """A data owner joined a task."""

    username: str
    organization: str


class ParticipantLeft(Event):
    """A participant left a task before it started."""

    username: str


class TaskStarted(Event):
    """The aggregator started training: who takes part, and the keys that speak for each.

    `keys` maps the creator and every participant to the fingerprint of the signing key in force
    when the task started; the data plane believes a message only when that key signed it.
    """

    participants: list[str] = Field(default_factory=list)
    keys: dict[str, str] = Field(default_factory=dict)


class RoundCompleted(Event):
    """The aggregator closed a round: who contributed, the metrics, the new model's digest."""

    round: int
    participants: list[str]
    samples: dict[str, int] = Field(default_factory=dict)
    metrics: dict[str, float] = Field(default_factory=dict)
    eval_metrics: dict[str, float] = Field(default_factory=dict)
    model_sha256: str
    duration_s: float | None = None
    epsilon: float | None = None


class ParticipantMissedRound(Event):
    """A round closed at its deadline without this participant's update."""

    round: int
    username: str


class UpdateRejected(Event):
    """An update (or a frame of one) was refused, and why; the round goes on without it."""

    round: int
    sender: str
    reason: str
    message_id: str | None = None


class ContributionsAssessed(Event):
    """The aggregator valued what each participant's update was worth to a round.

    `values` are in units of `metric` (accuracy, R²) on the evaluation data `data`; `baseline`
    is the round's starting model and `total` everyone's updates together.
    """

    round: int
    method: str
    metric: str
    values: dict[str, float]
    baseline: float
    total: float
    data: str
    permutations: int | None = None


class TaskCompleted(Event):
    """Training finished; the final model has this digest, its .keras export that one, and (if it
    ended before its last round) the reason."""

    model_sha256: str | None = None
    keras_sha256: str | None = None
    reason: str | None = None


class TaskFailed(Event):
    """Training stopped for good, with the reason."""

    reason: str


class TaskDeleted(Event):
    """The creator deleted the task; its topics are removed."""

    reason: str | None = None


EVENT_TYPES: dict[str, type[Event]] = {
    cls.type_name(): cls
    for cls in (
        UserRegistered,
        MemberKeyRegistered,
        MemberKeyRevoked,
        TaskCreated,
        ParticipantJoined,
        ParticipantLeft,
        TaskStarted,
        RoundCompleted,
        ParticipantMissedRound,
        UpdateRejected,
        ContributionsAssessed,
        TaskCompleted,
        TaskFailed,
        TaskDeleted,
    )
}


class UnknownEventType(ValueError):
    """A stored event names a type this code does not know."""


def upcast(type_name: str, version: int, data: dict[str, Any]) -> dict[str, Any]:
    """Bring stored `data` of an older schema version to the current shape."""
    # Only version 1 exists so far; each future bump adds one step here, and
    # tests/fixtures keeps one stored sample per historical version.
    return data


def parse_event(type_name: str, data: dict[str, Any], version: int = 1) -> Event:
    """Rebuild a typed event from its stored form."""
    cls = EVENT_TYPES.get(type_name)
    if cls is None:
        raise UnknownEventType(f"unknown event type '{type_name}'")
    return cls.model_validate(upcast(type_name, version, data))


class RecordedEvent(BaseModel):
    """An event as stored: its place in the log, its metadata and its hash."""

    position: int
    stream_id: str
    version: int
    type: str
    data: dict[str, Any]
    metadata: dict[str, Any]
    recorded_at: datetime
    hash: str = Field(description="sha256 chain hash, hex")

    def typed(self) -> Event:
        """The typed domain event."""
        return parse_event(self.type, self.data, int(self.metadata.get("schema_version", 1)))
