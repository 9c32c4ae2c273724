"""The event store on PostgreSQL: appends, reads, the hash chain, idempotency.

Every write happens inside a `Session`: one transaction that first takes an
EXCLUSIVE lock on `events`. Why a table lock: the log is a single hash chain
and readers tail it by position, so positions must be handed out in commit
order. The control plane writes little, and a short lock held for the length of
one command is simpler and safer than sequences plus gap detection. Readers are
not blocked (EXCLUSIVE still admits plain SELECTs).
"""

from __future__ import annotations

import hashlib
import json
import uuid
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from api.errors import IdempotencyKeyReused, InvalidInput, Unavailable, VersionConflict
from schema.events import Event, RecordedEvent

ANY = -1
"""Expected version: append whatever the stream's version is."""
NO_STREAM = 0
"""Expected version: the stream must not exist yet."""

GENESIS_HASH = b"\x00" * 32
NOTIFY_CHANNEL = "musketeer_events"

Projector = Callable[[psycopg.Connection[Any], RecordedEvent], None]


@dataclass(frozen=True)
class NewEvent:
    """An event about to be appended, with who caused it and why."""

    event: Event
    actor: str
    request_id: str = field(default_factory=lambda: uuid.uuid4().hex)


def canonical(
    position: int,
    stream_id: str,
    version: int,
    type_name: str,
    data: dict[str, Any],
    metadata: dict[str, Any],
    recorded_at: datetime,
) -> bytes:
    """The bytes an event's hash covers: sorted-key compact JSON of every column."""
    document = {
        "position": position,
        "stream_id": stream_id,
        "version": version,
        "type": type_name,
        "data": data,
        "metadata": metadata,
        "recorded_at": recorded_at.astimezone(UTC).isoformat(timespec="microseconds"),
    }
    return json.dumps(document, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    """sha256(prev_hash || canonical(event))."""
    return hashlib.sha256(prev_hash + body).digest()


def _normalised(value: dict[str, Any]) -> dict[str, Any]:
    # jsonb re-renders numbers and drops key order; hashing what jsonb will give
    # back (a JSON round trip) keeps the chain verifiable after storage.
    result: dict[str, Any] = json.loads(json.dumps(value))
    return result


def _recorded(row: dict[str, Any]) -> RecordedEvent:
    return RecordedEvent(
        position=row["position"],
        stream_id=row["stream_id"],
        version=row["version"],
        type=row["type"],
        data=row["data"],
        metadata=row["metadata"],
        recorded_at=row["recorded_at"],
        hash=bytes(row["hash"]).hex(),
    )


_SELECT = (
    "SELECT position, stream_id, version, type, data, metadata, recorded_at, prev_hash, hash"
    " FROM events"
)


class Session:
    """One command's transaction, holding the append lock."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], projector: Projector | None):
        self.conn = conn
        self._projector = projector

    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event, 0 if the stream is empty."""
        row = self.conn.execute(
            "SELECT max(version) AS v FROM events WHERE stream_id = %s", (stream_id,)
        ).fetchone()
        return int(row["v"]) if row and row["v"] is not None else 0

    def read_stream(self, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
        """The stream's events in version order, the first `limit` of them if given."""
        return read_stream(self.conn, stream_id, limit)

    def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Append events to a stream if it is at `expected_version`; all or nothing."""
        current = self.stream_version(stream_id)
        if expected_version != ANY and current != expected_version:
            raise VersionConflict(
                f"stream '{stream_id}' is at version {current}, expected {expected_version}",
                {"stream_id": stream_id, "current": current, "expected": expected_version},
            )
        last = self.conn.execute(
            "SELECT position, hash FROM events ORDER BY position DESC LIMIT 1"
        ).fetchone()
        position = int(last["position"]) if last else 0
        prev_hash = bytes(last["hash"]) if last else GENESIS_HASH
        recorded: list[RecordedEvent] = []
        for offset, new in enumerate(events, start=1):
            position += 1
            record = self._insert(stream_id, current + offset, position, prev_hash, new)
            prev_hash = bytes.fromhex(record.hash)
            recorded.append(record)
            if self._projector is not None:
                self._projector(self.conn, record)
        self.conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
        return recorded

    def _insert(
        self, stream_id: str, version: int, position: int, prev_hash: bytes, new: NewEvent
    ) -> RecordedEvent:
        type_name = new.event.type_name()
        data = _normalised(new.event.to_data())
        metadata = {
            "actor": new.actor,
            "request_id": new.request_id,
            "event_id": str(uuid.uuid4()),
            "schema_version": new.event.schema_version,
        }
        recorded_at = datetime.now(UTC)
        digest = chain_hash(
            prev_hash,
            canonical(position, stream_id, version, type_name, data, metadata, recorded_at),
        )
        self.conn.execute(
            "INSERT INTO events (position, stream_id, version, type, data, metadata,"
            " recorded_at, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (position, stream_id, version, type_name, Jsonb(data), Jsonb(metadata),
             recorded_at, prev_hash, digest),
        )
        return RecordedEvent(
            position=position, stream_id=stream_id, version=version, type=type_name,
            data=data, metadata=metadata, recorded_at=recorded_at, hash=digest.hex(),
        )

    def idempotent_response(
        self, actor: str, key: str, request_hash: str
    ) -> tuple[int, Any] | None:
        """The stored response of an earlier request with this key, if any."""
        row = self.conn.execute(
            "SELECT request_hash, status_code, response FROM idempotency_keys"
            " WHERE actor = %s AND key = %s",
            (actor, key),
        ).fetchone()
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise IdempotencyKeyReused(
                "this Idempotency-Key was already used for a different request",
                {"idempotency_key": key},
            )
        return int(row["status_code"]), row["response"]

    def remember_response(
        self, actor: str, key: str, request_hash: str, status_code: int, response: Any
    ) -> None:
        """Store a command's response under its key, in the command's transaction."""
        self.conn.execute(
            "INSERT INTO idempotency_keys (actor, key, request_hash, status_code, response)"
            " VALUES (%s, %s, %s, %s, %s)",
            (actor, key, request_hash, status_code, Jsonb(response)),
        )


def read_stream(
    conn: psycopg.Connection[Any], stream_id: str, limit: int | None = None
) -> list[RecordedEvent]:
    """A stream's events in version order (the first `limit` if given)."""
    query = _SELECT + " WHERE stream_id = %s ORDER BY version"
    params: tuple[Any, ...] = (stream_id,)
    if limit is not None:
        query += " LIMIT %s"
        params = (stream_id, limit)
    with conn.cursor(row_factory=dict_row) as cur:
        return [_recorded(row) for row in cur.execute(query, params).fetchall()]


def read_all_from(
    conn: psycopg.Connection[Any], after: int = 0, limit: int = 1000
) -> list[RecordedEvent]:
    """Events after a position, in position order."""
    with conn.cursor(row_factory=dict_row) as cur:
        rows = cur.execute(
            _SELECT + " WHERE position > %s ORDER BY position LIMIT %s", (after, limit)
        ).fetchall()
        return [_recorded(row) for row in rows]


@dataclass(frozen=True)
class ChainReport:
    """The outcome of walking the hash chain."""

    events: int
    ok: bool
    first_bad_position: int | None


def verify_chain(conn: psycopg.Connection[Any], batch: int = 5000) -> ChainReport:
    """Walk the whole log in position order; name the first event whose hash is wrong."""
    prev = GENESIS_HASH
    count = 0
    after = 0
    with conn.cursor(row_factory=dict_row) as cur:
        while True:
            rows = cur.execute(
                _SELECT + " WHERE position > %s ORDER BY position LIMIT %s", (after, batch)
            ).fetchall()
            if not rows:
                return ChainReport(count, True, None)
            for row in rows:
                count += 1
                body = canonical(row["position"], row["stream_id"], row["version"], row["type"],
                                 row["data"], row["metadata"], row["recorded_at"])
                if bytes(row["prev_hash"]) != prev or chain_hash(prev, body) != bytes(row["hash"]):
                    return ChainReport(count, False, int(row["position"]))
                prev = bytes(row["hash"])
                after = int(row["position"])


class EventStore:
    """The log on PostgreSQL, with inline projections applied on every append."""

    def __init__(self, pool: ConnectionPool, projector: Projector | None = None) -> None:
        self.pool = pool
        self._projector = projector

    @contextmanager
    def session(self) -> Iterator[Session]:
        """A transaction holding the append lock; commits when the block exits cleanly."""
        with self.connection() as conn, conn.transaction():
            conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            yield Session(conn, self._projector)

    @contextmanager
    def connection(self) -> Iterator[psycopg.Connection[dict[str, Any]]]:
        """A pooled connection; an unreachable database becomes `Unavailable`."""
        try:
            with self.pool.connection() as conn:
                conn.row_factory = dict_row  # type: ignore[assignment]
                yield conn  # type: ignore[misc]
        except (psycopg.OperationalError, PoolTimeout) as exc:
            raise Unavailable("the database is unavailable; try again shortly") from exc
        except psycopg.DataError as exc:
            # A value the schemas let through but PostgreSQL cannot hold (the NUL character,
            # a number beyond a column's range): the transaction is rolled back, nothing stored.
            reason = (exc.diag.message_primary if exc.diag.message_primary else str(exc)).splitlines()[0]
            raise InvalidInput(f"the request holds a value the database cannot store ({reason}); "
                               "nothing was stored") from exc

    def append(
        self, stream_id: str, expected_version: int, events: Sequence[NewEvent]
    ) -> list[RecordedEvent]:
        """Append in a transaction of its own."""
        with self.session() as session:
            return session.append(stream_id, expected_version, events)

    def read_stream(self, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
        """A stream's events in version order."""
        with self.connection() as conn:
            return read_stream(conn, stream_id, limit)

    def read_stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 if it has no events), without locking."""
        with self.connection() as conn:
            return Session(conn, None).stream_version(stream_id)

    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Events after a position, in position order."""
        with self.connection() as conn:
            return read_all_from(conn, after, limit)

    def verify(self) -> ChainReport:
        """Walk the hash chain."""
        with self.connection() as conn:
            return verify_chain(conn)

