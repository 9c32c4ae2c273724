"""Inline projections: users, tasks, memberships, kept in the append transaction.

Each handler is a small SQL change driven by one event. `rebuild` drops the rows
and replays the log through the same handlers, so a rebuild is the definition
of what the rows must be.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import psycopg
from psycopg.types.json import Jsonb

from api.store.contract import TASK_STREAM_PREFIX
from api.store.sql import read_all_from
from schema.events import (
    ContributionsAssessed,
    Event,
    MemberKeyRegistered,
    MemberKeyRevoked,
    ParticipantJoined,
    ParticipantLeft,
    RecordedEvent,
    RoundCompleted,
    TaskCompleted,
    TaskCreated,
    TaskDeleted,
    TaskFailed,
    TaskStarted,
    UserRegistered,
)
from schema.lifecycle import TaskStatus

Conn = psycopg.Connection[Any]
PROJECTION_TABLES: tuple[str, ...] = ("users", "tasks", "memberships", "rounds", "member_keys",
                                     "contributions")


# The event's position, read from the log rather than taken from the record: an append
# sends the projections before its position is known (api/store/postgres.py), and the
# event's row, inserted earlier in the same transaction, already holds it.
_POSITION = "(SELECT position FROM events WHERE stream_id = %s AND version = %s)"


def _task_id(record: RecordedEvent) -> str:
    return record.stream_id.removeprefix(TASK_STREAM_PREFIX)


def _user_registered(conn: Conn, event: UserRegistered, record: RecordedEvent) -> None:
    conn.execute(
        "INSERT INTO users (username, organization, created_at, position)"
        f" VALUES (%s, %s, %s, {_POSITION})",
        (event.username, event.organization, record.recorded_at, record.stream_id, record.version),
    )


def _key_registered(conn: Conn, event: MemberKeyRegistered, record: RecordedEvent) -> None:
    conn.execute("UPDATE member_keys SET status = 'rotated' WHERE username = %s AND status = 'active'",
                  (event.username,))
    conn.execute(
        "INSERT INTO member_keys (fingerprint, username, public_key, status, registered_at)"
        " VALUES (%s, %s, %s, 'active', %s)",
        (event.fingerprint, event.username, event.public_key, record.recorded_at),
    )


def _key_revoked(conn: Conn, event: MemberKeyRevoked, record: RecordedEvent) -> None:
    conn.execute("UPDATE member_keys SET status = 'revoked', revoked_at = %s WHERE fingerprint = %s",
                 (record.recorded_at, event.fingerprint))


def _task_started(conn: Conn, event: TaskStarted, record: RecordedEvent) -> None:
    conn.execute("UPDATE tasks SET keys = %s WHERE task_id = %s", (Jsonb(event.keys), _task_id(record)))
    _touch(conn, record, status=TaskStatus.STARTED)


def _task_created(conn: Conn, event: TaskCreated, record: RecordedEvent) -> None:
    conn.execute(
        "INSERT INTO tasks (task_id, name, creator, status, definition, topology, pom,"
        " description, quorum, max_participants, broadcast_topic, updates_topic,"
        " participant_count, version, created_position, created_at, updated_at)"
        f" VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, %s, 0, %s, {_POSITION}, %s, %s)",
        (event.task_id, event.name, event.creator, TaskStatus.CREATED.value,
         Jsonb(event.definition), event.topology, event.pom, event.description,
         event.definition["quorum"], event.definition.get("max_participants"),
         event.broadcast_topic, event.updates_topic, record.version, record.stream_id,
         record.version, record.recorded_at, record.recorded_at),
    )


def _participant_joined(conn: Conn, event: ParticipantJoined, record: RecordedEvent) -> None:
    conn.execute(
        "INSERT INTO memberships (task_id, username, organization, joined_at)"
        " VALUES (%s, %s, %s, %s)",
        (_task_id(record), event.username, event.organization, record.recorded_at),
    )
    _touch(conn, record, count_delta=1)


def _participant_left(conn: Conn, event: ParticipantLeft, record: RecordedEvent) -> None:
    conn.execute(
        "DELETE FROM memberships WHERE task_id = %s AND username = %s",
        (_task_id(record), event.username),
    )
    _touch(conn, record, count_delta=-1)


def _round_completed(conn: Conn, event: RoundCompleted, record: RecordedEvent) -> None:
    conn.execute(
        "INSERT INTO rounds (task_id, round, participants, samples, metrics, eval_metrics,"
        " model_sha256, duration_s, recorded_at, epsilon) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (_task_id(record), event.round, Jsonb(event.participants), Jsonb(event.samples),
         Jsonb(event.metrics), Jsonb(event.eval_metrics), event.model_sha256, event.duration_s,
         record.recorded_at, event.epsilon),
    )
    conn.execute("UPDATE tasks SET rounds_completed = %s, epsilon = coalesce(%s, epsilon) WHERE task_id = %s",
                 (event.round, event.epsilon, _task_id(record)))
    conn.execute("UPDATE memberships SET last_contact_at = %s"
                 " WHERE task_id = %s AND username = ANY(%s)",
                 (record.recorded_at, _task_id(record), event.participants))
    _touch(conn, record)


def _contributions_assessed(conn: Conn, event: ContributionsAssessed, record: RecordedEvent) -> None:
    conn.execute(
        "INSERT INTO contributions (task_id, round, method, metric, contributions, baseline, total,"
        " data, permutations, recorded_at) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s, %s)",
        (_task_id(record), event.round, event.method, event.metric, Jsonb(event.values),
         event.baseline, event.total, event.data, event.permutations, record.recorded_at),
    )
    _touch(conn, record)


def _task_completed(conn: Conn, event: TaskCompleted, record: RecordedEvent) -> None:
    conn.execute("UPDATE tasks SET model_sha256 = %s, keras_sha256 = %s, completion_reason = %s WHERE task_id = %s",
                 (event.model_sha256, event.keras_sha256, event.reason, _task_id(record)))
    _touch(conn, record, status=TaskStatus.COMPLETED)


def _task_failed(conn: Conn, event: TaskFailed, record: RecordedEvent) -> None:
    conn.execute("UPDATE tasks SET failure_reason = %s WHERE task_id = %s",
                 (event.reason, _task_id(record)))
    _touch(conn, record, status=TaskStatus.FAILED)


def _status_setter(status: TaskStatus) -> Callable[[Conn, Event, RecordedEvent], None]:
    def set_status(conn: Conn, event: Event, record: RecordedEvent) -> None:
        _touch(conn, record, status=status)

    return set_status


def _touch(
    conn: Conn, record: RecordedEvent, count_delta: int = 0, status: TaskStatus | None = None
) -> None:
    conn.execute(
        "UPDATE tasks SET version = %s, updated_at = %s,"
        " participant_count = participant_count + %s, status = coalesce(%s, status)"
        " WHERE task_id = %s",
        (record.version, record.recorded_at, count_delta,
         status.value if status else None, _task_id(record)),
    )


_HANDLERS: dict[type[Event], Callable[[Conn, Any, RecordedEvent], None]] = {
    UserRegistered: _user_registered,
    MemberKeyRegistered: _key_registered,
    MemberKeyRevoked: _key_revoked,
    TaskCreated: _task_created,
    ParticipantJoined: _participant_joined,
    ParticipantLeft: _participant_left,
    TaskStarted: _task_started,
    RoundCompleted: _round_completed,
    ContributionsAssessed: _contributions_assessed,
    TaskCompleted: _task_completed,
    TaskFailed: _task_failed,
    TaskDeleted: _status_setter(TaskStatus.DELETED),
}


def project(conn: Conn, record: RecordedEvent) -> None:
    """Apply one recorded event to the read models."""
    event = record.typed()
    handler = _HANDLERS.get(type(event))
    if handler is not None:
        handler(conn, event, record)
    elif record.stream_id.startswith(TASK_STREAM_PREFIX):
        _touch(conn, record)


def rebuild(conn: Conn, batch: int = 2000) -> int:
    """Drop every projection row and replay the whole log; return events replayed."""
    conn.execute("TRUNCATE " + ", ".join(PROJECTION_TABLES))
    count = 0
    after = 0
    while True:
        records = read_all_from(conn, after, batch)
        if not records:
            return count
        for record in records:
            project(conn, record)
        count += len(records)
        after = records[-1].position
