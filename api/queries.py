"""The read side: task list, detail, history and time travel, served from projections and the log."""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import psycopg
from pydantic import BaseModel, Field

from api.domain import ParticipantView, TaskView, TopicsView, fold
from api.errors import Forbidden, InvalidInput, NotFound
from api.store import task_stream
from api.store.sql import read_stream
from schema.lifecycle import TaskStatus

Conn = psycopg.Connection[Any]


@dataclass(frozen=True)
class TaskFilter:
    """What `GET /v1/tasks` may narrow by."""

    status: TaskStatus | None = None
    pom: int | None = None
    search: str | None = None
    creator: str | None = None
    joined: bool | None = None
    created_after: datetime | None = None
    limit: int = 50
    cursor: str | None = None


class TaskPage(BaseModel):
    items: list[TaskView]
    next_cursor: str | None


class TaskEventView(BaseModel):
    position: int
    version: int
    type: str
    data: dict[str, Any]
    actor: str
    recorded_at: datetime
    hash: str


class TaskEvents(BaseModel):
    items: list[TaskEventView]


class TaskStateView(TaskView):
    as_of_version: int


def encode_cursor(position: int) -> str:
    """An opaque cursor for keyset paging."""
    return base64.urlsafe_b64encode(f"p{position}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> int:
    """The position a cursor stands for; InvalidInput if it is not ours."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode()
        if not raw.startswith("p"):
            raise ValueError(raw)
        return int(raw[1:])
    except (ValueError, binascii.Error, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not valid; use next_cursor from a previous page",
                           {"cursor": cursor}) from exc


def _where(filters: TaskFilter, viewer: str) -> tuple[str, list[Any]]:
    clauses: list[str] = []
    params: list[Any] = []
    simple = (("status", filters.status and filters.status.value), ("pom", filters.pom),
              ("creator", filters.creator))
    for column, value in simple:
        if value is not None:
            clauses.append(f"{column} = %s")
            params.append(value)
    if filters.search:
        clauses.append("(name ILIKE %s OR coalesce(description, '') ILIKE %s)")
        pattern = "%" + filters.search.replace("\\", "\\\\").replace("%", r"\%").replace("_", r"\_") + "%"
        params += [pattern, pattern]
    if filters.joined is not None:
        negation = "" if filters.joined else "NOT "
        clauses.append(f"task_id {negation}IN (SELECT task_id FROM memberships WHERE username = %s)")
        params.append(viewer)
    if filters.created_after is not None:
        clauses.append("created_at > %s")
        params.append(filters.created_after)
    if filters.cursor:
        clauses.append("created_position < %s")
        params.append(decode_cursor(filters.cursor))
    return (" WHERE " + " AND ".join(clauses)) if clauses else "", params


def _members(conn: Conn, task_ids: list[str]) -> dict[str, list[ParticipantView]]:
    members: dict[str, list[ParticipantView]] = {task_id: [] for task_id in task_ids}
    rows = conn.execute(
        "SELECT task_id, username, organization, joined_at, last_contact_at FROM memberships"
        " WHERE task_id = ANY(%s) ORDER BY joined_at, username",
        (task_ids,),
    ).fetchall()
    for row in rows:
        members[row["task_id"]].append(
            ParticipantView(username=row["username"], organization=row["organization"],
                            joined_at=row["joined_at"], last_contact_at=row["last_contact_at"])
        )
    return members


def _view(row: dict[str, Any], participants: list[ParticipantView]) -> TaskView:
    return TaskView(
        task_id=row["task_id"], name=row["name"], creator=row["creator"],
        status=TaskStatus(row["status"]), definition=row["definition"],
        topology=row["topology"], pom=row["pom"], description=row["description"],
        quorum=row["quorum"], max_participants=row["max_participants"],
        participants=participants, participant_count=row["participant_count"],
        topics=TopicsView(broadcast=row["broadcast_topic"], updates=row["updates_topic"]),
        version=row["version"], created_at=row["created_at"], updated_at=row["updated_at"],
        rounds_completed=row["rounds_completed"], model_sha256=row["model_sha256"],
        keras_sha256=row["keras_sha256"], failure_reason=row["failure_reason"], keys=row["keys"],
        epsilon=row["epsilon"], completion_reason=row["completion_reason"],
    )


def list_tasks(conn: Conn, filters: TaskFilter, viewer: str) -> TaskPage:
    """A page of tasks, newest first, with a cursor to the next page."""
    where, params = _where(filters, viewer)
    rows = conn.execute(
        f"SELECT * FROM tasks{where} ORDER BY created_position DESC LIMIT %s",
        [*params, filters.limit + 1],
    ).fetchall()
    page, more = rows[: filters.limit], len(rows) > filters.limit
    members = _members(conn, [row["task_id"] for row in page])
    items = [_view(row, members[row["task_id"]]) for row in page]
    next_cursor = encode_cursor(page[-1]["created_position"]) if more else None
    return TaskPage(items=items, next_cursor=next_cursor)


def get_task(conn: Conn, name: str) -> TaskView:
    """One task from the projection; NotFound if there is none."""
    row = conn.execute("SELECT * FROM tasks WHERE name = %s", (name,)).fetchone()
    if row is None:
        raise NotFound(f"task '{name}' does not exist", {"task": name})
    return _view(row, _members(conn, [row["task_id"]])[row["task_id"]])


def require_insider(conn: Conn, name: str, viewer: str) -> str:
    """The task's id if the viewer created or joined it; Forbidden otherwise."""
    task = get_task(conn, name)
    if task.creator != viewer and all(p.username != viewer for p in task.participants):
        raise Forbidden(f"only the creator and participants of task '{name}' may see its history")
    return task.task_id


def task_events(conn: Conn, name: str, viewer: str) -> TaskEvents:
    """The task's events in order, for its creator and participants."""
    task_id = require_insider(conn, name, viewer)
    records = read_stream(conn, task_stream(task_id))
    return TaskEvents(items=[
        TaskEventView(position=r.position, version=r.version, type=r.type, data=r.data,
                      actor=str(r.metadata.get("actor", "")), recorded_at=r.recorded_at,
                      hash=r.hash)
        for r in records
    ])


def task_state(conn: Conn, name: str, viewer: str, version: int) -> TaskStateView:
    """The task as it was after its first `version` events."""
    task_id = require_insider(conn, name, viewer)
    state = fold(read_stream(conn, task_stream(task_id), limit=version))
    if state is None or state.version < version:
        current = state.version if state else 0
        raise NotFound(f"task '{name}' has only {current} events; version {version} does not exist",
                       {"task": name, "version": version, "latest": current})
    return TaskStateView(**TaskView.of(state).model_dump(), as_of_version=state.version)


def user_view(conn: Conn, username: str) -> dict[str, Any]:
    """A user's public profile."""
    row = conn.execute(
        "SELECT username, organization, created_at FROM users WHERE username = %s", (username,)
    ).fetchone()
    if row is None:
        raise NotFound(f"user '{username}' does not exist")
    return dict(row)


class RoundView(BaseModel):
    round: int
    participants: list[str]
    samples: dict[str, int]
    metrics: dict[str, float]
    eval_metrics: dict[str, float]
    model_sha256: str
    duration_s: float | None
    recorded_at: datetime
    epsilon: float | None = None


class Rounds(BaseModel):
    items: list[RoundView]


class ModelView(BaseModel):
    """A trained model and where it came from."""

    task: str
    task_id: str
    creator: str
    model_sha256: str
    keras_sha256: str | None = None
    size: int
    rounds: list[RoundView]
    participants: list[str]
    completed_at: datetime


class Models(BaseModel):
    items: list[ModelView]


def _rounds(conn: Conn, task_id: str) -> list[RoundView]:
    rows = conn.execute("SELECT * FROM rounds WHERE task_id = %s ORDER BY round", (task_id,))
    return [RoundView.model_validate(dict(row)) for row in rows.fetchall()]


def task_rounds(conn: Conn, name: str, viewer: str) -> Rounds:
    """The task's completed rounds, for its creator and participants."""
    return Rounds(items=_rounds(conn, require_insider(conn, name, viewer)))


def model_bytes(conn: Conn, name: str, viewer: str, sha256: str | None,
                keras: bool = False) -> tuple[str, bytes]:
    """The final model of a task (or the stored artifact with `sha256`), for insiders.

    `keras` picks the final model's `.keras` export (what users take away) over the bundle.
    """
    task_id = require_insider(conn, name, viewer)
    task = get_task(conn, name)
    digest = sha256 or (task.keras_sha256 if keras else task.model_sha256)
    if digest is None:
        what = "no .keras export of its final model" if keras and task.model_sha256 else "no final model"
        raise NotFound(f"task '{name}' has {what} yet")
    row = conn.execute("SELECT content FROM artifacts WHERE sha256 = %s AND task_id = %s",
                       (digest, task_id)).fetchone()
    if row is None:
        raise NotFound(f"task '{name}' has no model with digest {digest}")
    return digest, bytes(row["content"])


def user_models(conn: Conn, viewer: str) -> Models:
    """The final models of the tasks the viewer created or took part in, with their lineage."""
    rows = conn.execute(
        "SELECT t.*, a.size FROM tasks t JOIN artifacts a"
        " ON a.task_id = t.task_id AND a.sha256 = t.model_sha256"
        " WHERE t.status = 'COMPLETED' AND (t.creator = %s OR t.task_id IN"
        " (SELECT task_id FROM memberships WHERE username = %s)) ORDER BY t.created_position DESC",
        (viewer, viewer),
    ).fetchall()
    members = _members(conn, [row["task_id"] for row in rows])
    return Models(items=[
        ModelView(task=row["name"], task_id=row["task_id"], creator=row["creator"],
                  model_sha256=row["model_sha256"], keras_sha256=row["keras_sha256"],
                  size=row["size"],
                  rounds=_rounds(conn, row["task_id"]),
                  participants=[m.username for m in members[row["task_id"]]],
                  completed_at=row["updated_at"])
        for row in rows
    ])


class KeyView(BaseModel):
    """A member's signing key."""

    username: str
    fingerprint: str
    public_key: str = Field(description="Ed25519 public key, base64 of the 32 raw bytes")
    status: str = Field(description="active, rotated (a newer key replaced it) or revoked")
    registered_at: datetime | None = None
    revoked_at: datetime | None = None


class Keys(BaseModel):
    items: list[KeyView]


def user_keys(conn: Conn, username: str) -> Keys:
    """A user's keys, newest first."""
    rows = conn.execute("SELECT * FROM member_keys WHERE username = %s ORDER BY registered_at DESC",
                        (username,)).fetchall()
    return Keys(items=[KeyView.model_validate(dict(row)) for row in rows])


def task_keys(conn: Conn, name: str, viewer: str) -> Keys:
    """The keys TaskStarted recorded for the task's members, with their status now (insiders only)."""
    task_id = require_insider(conn, name, viewer)
    rows = conn.execute(
        "SELECT k.* FROM tasks t, jsonb_each_text(t.keys) AS m(username, fingerprint)"
        " JOIN member_keys k ON k.fingerprint = m.fingerprint AND k.username = m.username"
        " WHERE t.task_id = %s ORDER BY k.username", (task_id,)).fetchall()
    return Keys(items=[KeyView.model_validate(dict(row)) for row in rows])
