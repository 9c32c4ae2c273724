"""Command handlers: the only code that writes. Each command is one transaction.

A handler loads the aggregate inside a `Session`, decides, appends, and stores the
idempotency record, all in that transaction. The session takes the append lock at its
first write; if another command committed in between, the command runs again (`_run`).
"""

from __future__ import annotations

import hashlib
import json
import logging
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from api.domain import TaskState, TaskView, fold, user_stream
from api.errors import Conflict, Forbidden, NotAuthenticated, NotFound, WriteRace
from api.security import hash_password
from api.settings import Settings
from api.store import NO_STREAM, EventStore, NewEvent, Session, task_stream
from schema.commands import CreateTask, RegisterUser
from schema.events import (
    Event,
    ParticipantJoined,
    ParticipantLeft,
    RecordedEvent,
    TaskCreated,
    TaskDeleted,
    UserRegistered,
)
from schema.lifecycle import TaskStatus, can_transition
from streams.topics import task_topics

log = logging.getLogger("musketeer.api")
# At most this many users' organizations are kept in memory (beyond, they are read each time).
_ORGANIZATIONS_KEPT = 100_000


class TopicPort(Protocol):
    """What the handlers need of the broker: create and delete topics."""

    def create(self, names: list[str]) -> None: ...
    def delete(self, names: list[str]) -> None: ...


@dataclass(frozen=True)
class Context:
    """Who asks, under which request id, and with which idempotency key."""

    actor: str
    request_id: str
    idempotency_key: str | None = None


@dataclass(frozen=True)
class Result:
    """A command's HTTP status and JSON body (what an idempotent retry replays)."""

    status: int
    body: Any


def request_digest(command: str, payload: Any) -> str:
    """A fingerprint of a request, so a reused key with another body is caught."""
    text = json.dumps({"command": command, "payload": payload}, sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()


def load_task(session: Session, name: str) -> TaskState:
    """The task's state folded from its events; NotFound if no such task."""
    state = fold(session.task_events(name))
    if state is None:
        raise NotFound(f"task '{name}' does not exist", {"task": name})
    return state


def require_transition(state: TaskState, target: TaskStatus, action: str) -> None:
    """Raise Conflict unless the lifecycle table allows the move."""
    if not can_transition(state.status, target):
        raise Conflict(
            f"cannot {action} task '{state.name}': it is {state.status.value}",
            {"task": state.name, "status": state.status.value},
        )


class Commands:
    """The platform's command side."""

    def __init__(self, store: EventStore, settings: Settings, topics: TopicPort) -> None:
        self.store = store
        self.settings = settings
        self.topics = topics
        # username -> organization. UserRegistered sets it once and no event changes or
        # removes it, so a value read once holds for good; keeping it saves a join a round trip.
        self._organizations: dict[str, str] = {}

    def _run(
        self, ctx: Context, command: str, payload: Any, decide: Callable[[Session], Result],
        exclusive: bool = False,
    ) -> Result:
        """Run `decide` in one transaction. `exclusive`: hold the append lock from the first
        read, for a command whose decision reads other streams than the one it appends to
        (a write race is seen only on the stream appended to)."""
        digest = request_digest(command, payload)
        if exclusive:
            return self._attempt(ctx, digest, decide, exclusive=True)
        try:
            return self._attempt(ctx, digest, decide, exclusive=False)
        except WriteRace:
            # Another command committed between our reads and our first write. Decide
            # again, holding the append lock from the first read: nothing can change
            # under it, so this second attempt cannot race (and `decide` must not keep
            # state between attempts).
            return self._attempt(ctx, digest, decide, exclusive=True)

    def _attempt(
        self, ctx: Context, digest: str, decide: Callable[[Session], Result], exclusive: bool
    ) -> Result:
        with self.store.session(exclusive) as session:
            if ctx.idempotency_key:
                earlier = session.idempotent_response(ctx.actor, ctx.idempotency_key, digest)
                if earlier is not None:
                    return Result(*earlier)
            result = decide(session)
            if ctx.idempotency_key:
                session.remember_response(
                    ctx.actor, ctx.idempotency_key, digest, result.status, result.body
                )
            return result

    def _event(self, ctx: Context, event: Event) -> NewEvent:
        return NewEvent(event=event, actor=ctx.actor, request_id=ctx.request_id)

    def register_user(self, command: RegisterUser, ctx: Context) -> Result:
        """Create an account: a UserRegistered event plus the credential row."""
        password_hash = hash_password(command.password)
        payload = {"username": command.username, "organization": command.organization}

        def decide(session: Session) -> Result:
            stream = user_stream(command.username)
            if session.stream_version(stream) != 0:
                raise Conflict(f"user '{command.username}' already exists")
            event = UserRegistered(username=command.username, organization=command.organization)
            records = session.append(stream, NO_STREAM, [self._event(ctx, event)])
            session.add_credentials(command.username, password_hash)
            body = {**payload, "created_at": records[0].recorded_at.isoformat()}
            return Result(201, body)

        return self._run(ctx, "register_user", payload, decide)

    def create_task(self, command: CreateTask, ctx: Context) -> Result:
        """Define a task; its two data-plane topics are created first."""
        payload = command.model_dump(mode="json")
        task_id = uuid.uuid4().hex[:16]
        topics = task_topics(self.settings.topic_prefix, task_id)

        def decide(session: Session) -> Result:
            if session.task_id(command.name):
                raise Conflict(f"a task named '{command.name}' already exists")
            self._organization(session, ctx.actor)  # the creator must still be a registered user
            event = TaskCreated(
                task_id=task_id, name=command.name, creator=ctx.actor,
                definition=command.definition.to_json(), topology=command.topology,
                pom=command.pom, description=command.description,
                broadcast_topic=topics.broadcast, updates_topic=topics.updates,
            )
            records = session.append(task_stream(task_id), NO_STREAM, [self._event(ctx, event)])
            state = fold(records)
            assert state is not None
            return Result(201, TaskView.of(state).model_dump(mode="json"))

        with self.store.session() as session:
            # Cheap pre-checks so a plain duplicate or a retry does not touch the broker.
            if ctx.idempotency_key:
                digest = request_digest("create_task", payload)
                earlier = session.idempotent_response(ctx.actor, ctx.idempotency_key, digest)
                if earlier is not None:
                    return Result(*earlier)
            if session.task_id(command.name):
                raise Conflict(f"a task named '{command.name}' already exists")
        # Topics are created outside the transaction (a broker call must not hold
        # the append lock); if the append then fails they are removed again.
        self.topics.create([topics.broadcast, topics.updates])
        try:
            return self._run(ctx, "create_task", payload, decide)
        except Exception:
            _best_effort(lambda: self.topics.delete([topics.broadcast, topics.updates]))
            raise

    def join(self, name: str, ctx: Context) -> Result:
        """Join a task as a participant."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            if state.creator == ctx.actor:
                raise Forbidden(f"you created task '{name}'; its creator cannot join it")
            if state.status != TaskStatus.CREATED:
                raise Conflict(f"task '{name}' is {state.status.value}; it no longer takes joins")
            if state.is_member(ctx.actor):
                raise Conflict(f"you have already joined task '{name}'")
            cap = state.max_participants
            if cap is not None and len(state.members) >= cap:
                raise Conflict(f"task '{name}' is full ({cap} participants)")
            organization = self._organization(session, ctx.actor)
            event = ParticipantJoined(username=ctx.actor, organization=organization)
            return self._append_and_view(session, state, ctx, event)

        return self._run(ctx, f"join:{name}", {}, decide)

    def leave(self, name: str, ctx: Context) -> Result:
        """Leave a task before it starts."""

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            if not state.is_member(ctx.actor):
                raise Forbidden(f"you are not a participant of task '{name}'")
            if state.status != TaskStatus.CREATED:
                raise Conflict(f"task '{name}' is {state.status.value}; it can no longer be left")
            event = ParticipantLeft(username=ctx.actor)
            return self._append_and_view(session, state, ctx, event)

        return self._run(ctx, f"leave:{name}", {}, decide)

    def delete(self, name: str, ctx: Context) -> Result:
        """Delete a task (creator only); its topics are removed after the commit.

        A task that ever started keeps its topics until the retention sweep: daemons
        may still be reading them (until they notice the deletion, or finish saving the
        final model), and pulling a topic from under a reader can crash it (librdkafka
        on the embedded broker). Only a CREATED task, which nobody reads yet, loses them
        at once.
        """
        was_running: list[bool] = []

        def decide(session: Session) -> Result:
            state = load_task(session, name)
            if state.creator != ctx.actor:
                raise Forbidden(f"only the creator of task '{name}' may delete it")
            require_transition(state, TaskStatus.DELETED, "delete")
            was_running[:] = [state.status != TaskStatus.CREATED]  # once, even if run again
            return self._append_and_view(session, state, ctx, TaskDeleted())

        result = self._run(ctx, f"delete:{name}", {}, decide)
        # Only when decide ran: an idempotent replay says nothing of the task's past, and the
        # first call already removed the topics (or left them to the retention sweep).
        if was_running == [False]:
            topics = result.body["topics"]
            _best_effort(lambda: self.topics.delete([topics["broadcast"], topics["updates"]]))
        return result

    def _append_and_view(
        self, session: Session, state: TaskState, ctx: Context, event: Event
    ) -> Result:
        records = session.append(task_stream(state.task_id), state.version, [self._event(ctx, event)])
        return self._view(state, records)

    def _organization(self, session: Session, username: str) -> str:
        organization = self._organizations.get(username)
        if organization is None:
            organization = session.organization(username)
            if organization is None:
                raise NotAuthenticated(f"user '{username}' does not exist")
            if len(self._organizations) < _ORGANIZATIONS_KEPT:
                self._organizations[username] = organization
        return organization

    def _view(self, state: TaskState, appended: list[RecordedEvent]) -> Result:
        # The append checked that `state` is the whole stream before it, so folding the new
        # events onto it gives the task without reading the stream again under the lock.
        new_state = fold(appended, state)
        assert new_state is not None
        return Result(200, TaskView.of(new_state).model_dump(mode="json"))


def _best_effort(action: Callable[[], None]) -> None:
    # Topic clean-up is housekeeping: the command already succeeded or failed
    # on its own terms, and a leftover topic is trimmed by retention later.
    try:
        action()
    except Exception:
        log.warning("topic clean-up failed", exc_info=True)
