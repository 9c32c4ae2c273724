"""The task aggregate: its state as a fold of its events, and the views built from it."""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from schema.events import (
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RecordedEvent,
    RoundCompleted,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskFailed,
    TaskStarted,
)
from schema.lifecycle import TaskStatus


def user_stream(username: str) -> str:
    """The stream id of a user."""
    return f"user-{username}"


@dataclass(frozen=True)
class Member:
    username: str
    organization: str
    joined_at: datetime
    last_contact_at: datetime | None = None


@dataclass(frozen=True)
class TaskState:
    """A task as its events say it is."""

    task_id: str
    name: str
    creator: str
    status: TaskStatus
    definition: dict[str, Any]
    topology: str
    pom: int
    description: str | None
    broadcast_topic: str
    updates_topic: str
    created_at: datetime
    updated_at: datetime
    version: int
    members: tuple[Member, ...] = field(default_factory=tuple)
    rounds_completed: int = 0
    model_sha256: str | None = None
    keras_sha256: str | None = None
    failure_reason: str | None = None
    keys: dict[str, str] = field(default_factory=dict)
    epsilon: float | None = None
    completion_reason: str | None = None

    @property
    def quorum(self) -> int:
        return int(self.definition["quorum"])

    @property
    def max_participants(self) -> int | None:
        value = self.definition.get("max_participants")
        return int(value) if value is not None else None

    def is_member(self, username: str) -> bool:
        return any(m.username == username for m in self.members)


def _evolve(state: TaskState | None, event: Event, record: RecordedEvent) -> TaskState:
    if isinstance(event, TaskCreated):
        return TaskState(
            task_id=event.task_id, name=event.name, creator=event.creator,
            status=TaskStatus.CREATED, definition=event.definition, topology=event.topology,
            pom=event.pom, description=event.description,
            broadcast_topic=event.broadcast_topic, updates_topic=event.updates_topic,
            created_at=record.recorded_at, updated_at=record.recorded_at, version=record.version,
        )
    if state is None:
        raise ValueError(f"stream {record.stream_id} does not start with TaskCreated")
    state = replace(state, version=record.version, updated_at=record.recorded_at)
    if isinstance(event, ParticipantJoined):
        member = Member(event.username, event.organization, record.recorded_at)
        return replace(state, members=state.members + (member,))
    if isinstance(event, ParticipantLeft):
        kept = tuple(m for m in state.members if m.username != event.username)
        return replace(state, members=kept)
    if isinstance(event, RoundCompleted):
        members = tuple(replace(m, last_contact_at=record.recorded_at)
                        if m.username in event.participants else m for m in state.members)
        state = replace(state, rounds_completed=event.round, members=members,
                        epsilon=event.epsilon if event.epsilon is not None else state.epsilon)
    elif isinstance(event, TaskStarted):
        state = replace(state, keys=dict(event.keys))
    elif isinstance(event, TaskCompleted):
        state = replace(state, model_sha256=event.model_sha256, keras_sha256=event.keras_sha256,
                        completion_reason=event.reason)
    elif isinstance(event, TaskFailed):
        state = replace(state, failure_reason=event.reason)
    status = _STATUS_AFTER.get(type(event))
    return replace(state, status=status) if status else state


_STATUS_AFTER: dict[type[Event], TaskStatus] = {
    TaskStarted: TaskStatus.STARTED,
    TaskCompleted: TaskStatus.COMPLETED,
    TaskFailed: TaskStatus.FAILED,
    TaskDeleted: TaskStatus.DELETED,
}


def fold(records: list[RecordedEvent], state: TaskState | None = None) -> TaskState | None:
    """The task after these events, starting from `state` (None if there are none)."""
    for record in records:
        state = _evolve(state, record.typed(), record)
    return state


class ParticipantView(BaseModel):
    username: str
    organization: str
    joined_at: datetime
    last_contact_at: datetime | None = None


class TopicsView(BaseModel):
    broadcast: str
    updates: str


class TaskView(BaseModel):
    """A task as the API shows it."""

    task_id: str
    name: str
    creator: str
    status: TaskStatus
    definition: dict[str, Any]
    topology: str
    pom: int
    description: str | None
    quorum: int
    max_participants: int | None
    participants: list[ParticipantView]
    participant_count: int
    topics: TopicsView
    version: int
    created_at: datetime
    updated_at: datetime
    rounds_completed: int = 0
    model_sha256: str | None = None
    keras_sha256: str | None = None
    failure_reason: str | None = None
    keys: dict[str, str] = Field(default_factory=dict,
                                 description="each member's signing-key fingerprint, as TaskStarted recorded it")
    epsilon: float | None = Field(default=None, description="differential privacy spent so far (epsilon)")
    completion_reason: str | None = Field(default=None, description="why the task ended before its last round")

    @classmethod
    def of(cls, state: TaskState) -> TaskView:
        """The view of a folded state."""
        return cls(
            task_id=state.task_id, name=state.name, creator=state.creator, status=state.status,
            definition=state.definition, topology=state.topology, pom=state.pom,
            description=state.description, quorum=state.quorum,
            max_participants=state.max_participants,
            participants=[
                ParticipantView(username=m.username, organization=m.organization,
                                joined_at=m.joined_at, last_contact_at=m.last_contact_at)
                for m in state.members
            ],
            participant_count=len(state.members),
            topics=TopicsView(broadcast=state.broadcast_topic, updates=state.updates_topic),
            version=state.version, created_at=state.created_at, updated_at=state.updated_at,
            rounds_completed=state.rounds_completed, model_sha256=state.model_sha256,
            keras_sha256=state.keras_sha256, failure_reason=state.failure_reason, keys=state.keys,
            epsilon=state.epsilon, completion_reason=state.completion_reason,
        )
