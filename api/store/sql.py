"""Reads of the `events` table shared by the store, the projections, the queries and the relay."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import psycopg
from psycopg.rows import dict_row

from api.store.contract import TASK_STREAM_PREFIX, ChainReport, StoredRow, walk_chain
from schema.events import RecordedEvent

Conn = psycopg.Connection[Any]
_SELECT = (
    "SELECT position, stream_id, version, type, data, metadata, recorded_at, prev_hash, hash"
    " FROM events"
)


def _recorded(row: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        position=row["position"], stream_id=row["stream_id"], version=row["version"],
        type=row["type"], data=row["data"], metadata=row["metadata"],
        recorded_at=row["recorded_at"], hash=bytes(row["hash"]).hex(),
    )


def read_stream(conn: Conn, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
    """A stream's events in version order (the first `limit` if given)."""
    query = _SELECT + " WHERE stream_id = %s ORDER BY version"
    params: tuple[Any, ...] = (stream_id,)
    if limit is not None:
        query += " LIMIT %s"
        params = (stream_id, limit)
    with conn.cursor(row_factory=dict_row) as cur:
        return [_recorded(row) for row in cur.execute(query, params).fetchall()]


def read_task_stream(conn: Conn, name: str) -> list[RecordedEvent]:
    """The events of the task with this name, in version order ([] if none), in one round trip."""
    query = (_SELECT + " WHERE stream_id = (SELECT %s || task_id FROM tasks WHERE name = %s)"
             " ORDER BY version")
    with conn.cursor(row_factory=dict_row) as cur:
        return [_recorded(row) for row in cur.execute(query, (TASK_STREAM_PREFIX, name)).fetchall()]


def read_all_from(conn: Conn, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
    """Events after a position, in position order."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(_SELECT + " WHERE position > %s ORDER BY position LIMIT %s",
                           (after, limit)).fetchall()
        return [_recorded(row) for row in rows]


def _stored_rows(conn: Conn, batch: int) -> Iterator[StoredRow]:
    after = 0
    with conn.cursor(row_factory=dict_row) as cur:
        while rows := cur.execute(_SELECT + " WHERE position > %s ORDER BY position LIMIT %s",
                                  (after, batch)).fetchall():
            for row in rows:
                yield StoredRow(_recorded(row), bytes(row["prev_hash"]))
            after = int(rows[-1]["position"])


def verify_chain(conn: Conn, batch: int = 5000) -> ChainReport:
    """Walk the whole log in position order; name the first event whose hash is wrong."""
    return walk_chain(_stored_rows(conn, batch))
