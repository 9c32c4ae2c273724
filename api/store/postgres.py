"""The event store on PostgreSQL: appends, reads, the hash chain, idempotency.

Every write happens inside a `PostgresSession`: one transaction that takes an
EXCLUSIVE lock on `events` before its first write and holds it to the commit (a
model artifact, a blob outside the chain, is written without it: `store_artifact`).
The transaction begins at that first write too: the reads before it are single
statements, each with its own snapshot, as they would be inside a READ COMMITTED
transaction, and a BEGIN sent on its own cost a round trip for nothing. Why a
table lock: the log is a single hash chain and readers tail it by position, so
positions must be handed out in commit order, and each event's hash chains on the
previous position's. A lock held from the first write to the commit is simpler and
safer than sequences plus gap detection. Readers are not blocked (EXCLUSIVE still
admits plain SELECTs).

Why from the first write and not from the start of the command: a command's reads
(load the task, fold it, look up the user) then run beside other commands instead
of queueing behind them. What they read may change before the lock is taken; the
write itself notices (the stream's version moved, or a unique row now exists) and
the session raises `WriteRace`, on which the handlers run the command again with
`session(exclusive=True)`, which takes the lock before the first read, as every
session did before.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Generator, Iterator, Sequence
from contextlib import ExitStack, contextmanager
from typing import Any

import psycopg
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import ConnectionPool, PoolTimeout

from api.errors import InvalidInput, Unavailable, VersionConflict, WriteRace
from api.replay import replay_in
from api.store.contract import (
    ANY,
    GENESIS_HASH,
    ChainReport,
    EventStore,
    NewEvent,
    RebuildReport,
    Session,
    canonical_parts,
    check_expected_version,
    key_reused,
    seal,
    unsealed,
)
from api.store.sql import read_all_from, read_stream, read_task_stream, verify_chain
from schema.events import RecordedEvent

NOTIFY_CHANNEL = "musketeer_events"
# The stream's version and the log's last position and hash, in one round trip.
_HEAD = (
    "SELECT coalesce((SELECT max(version) FROM events WHERE stream_id = %s), 0) AS version,"
    " last.position, last.hash FROM (SELECT 1) AS one LEFT JOIN LATERAL"
    " (SELECT position, hash FROM events ORDER BY position DESC LIMIT 1) AS last ON true"
)

# The arrays go in binary (%b): in text, psycopg escaped every quote of each event's JSON with
# a regular expression, 0.19 s of a 2.1 s profile of 400 joins.
_APPEND = "SELECT out_position, out_hash FROM musketeer_append(%s, %s, %b, %b, %b, %b, %b, %b)"
# The SQLSTATE musketeer_append raises when the stream is not at the expected version.
_VERSION_CONFLICT = "MU409"

Projector = Callable[[psycopg.Connection[Any], RecordedEvent], None]


class PostgresSession(Session):
    """One command's transaction; it takes the append lock at its first write."""

    def __init__(self, conn: psycopg.Connection[dict[str, Any]], projector: Projector | None,
                 scope: ExitStack | None = None):
        self.conn = conn
        self._projector = projector
        # Where the transaction and the pipeline are entered, to be left after the command
        # (None: a session that only reads, outside any transaction).
        self._scope = scope
        self.appended: list[RecordedEvent] = []
        self.locked = False
        self._begun = False
        # Appends sent to musketeer_append whose positions and hashes arrive with the COMMIT.
        self._pending: list[tuple[psycopg.Cursor[Any], list[RecordedEvent]]] = []

    def lock(self) -> None:
        """Take the append lock (once) and keep it until the transaction ends.

        Every write that may be followed by an append goes through here first, so a
        writer never holds row locks while it waits for the table lock (no deadlock), and
        the position read next is the last committed one: positions follow commit order.
        The writes that skip it (`store_artifact`, and `remember_response` in a command
        that appended nothing) are the last a command makes: nothing after them waits.
        """
        if not self.locked:
            self._start_writing()
            self.conn.execute("LOCK TABLE events IN EXCLUSIVE MODE")
            self.locked = True

    def _start_writing(self) -> None:
        # From the lock on, statements queue in a pipeline: a read still waits for its
        # answer, but the writes are sent with the COMMIT (see `PostgresEventStore.session`),
        # and so are the BEGIN and the LOCK.
        if self._scope is not None:
            self._scope.enter_context(self.conn.pipeline())
        self._begin()

    def _begin(self) -> None:
        """Begin the command's transaction (once), at its first write; it commits as the scope
        is left without an error (`_committed` rolls back otherwise).

        A plain BEGIN and not psycopg's `transaction()`: that one waits for the BEGIN's answer
        even in a pipeline, a round trip per command.
        """
        if not self._begun and self._scope is not None:
            self.conn.execute("BEGIN")
            self._scope.push(self._commit)
            self._begun = True

    def _commit(self, error_type: type[BaseException] | None, *_: object) -> bool:
        if error_type is None:
            self.conn.execute("COMMIT")
        return False

    def stream_version(self, stream_id: str) -> int:
        row = self.conn.execute(
            "SELECT max(version) AS v FROM events WHERE stream_id = %s", (stream_id,)
        ).fetchone()
        return int(row["v"]) if row and row["v"] is not None else 0

    def read_stream(self, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
        return read_stream(self.conn, stream_id, limit)

    def append(self, stream_id: str, expected_version: int,
               events: Sequence[NewEvent]) -> list[RecordedEvent]:
        if expected_version == ANY or self._scope is None:
            return self._append_reading_head(stream_id, expected_version, events)
        # Round trips under the lock are what every other writer waits for, so none is
        # awaited here: musketeer_append (schema/migrations/0008_append_function.sql) takes
        # the lock, reads the head, chains and inserts in the server, and its answer comes
        # back with the COMMIT. Until then the records carry position 0 and no hash (the
        # projections find the position in SQL; `settle` fills both in after the commit).
        if not self.locked:
            # musketeer_append's first statement takes the lock: no LOCK of our own before it.
            self._start_writing()
            self.locked = True
        recorded = [unsealed(new, stream_id, expected_version + offset)
                    for offset, new in enumerate(events, start=1)]
        parts = [canonical_parts(r.stream_id, r.type, r.data, r.metadata, r.recorded_at)
                 for r in recorded]
        cursor = self.conn.cursor()
        cursor.execute(_APPEND, (
            stream_id, expected_version, [r.type for r in recorded],
            [Jsonb(r.data) for r in recorded], [Jsonb(r.metadata) for r in recorded],
            [r.recorded_at for r in recorded], [head for head, _ in parts],
            [middle for _, middle in parts]))
        self._pending.append((cursor, recorded))
        return self._project(recorded)

    def settle(self) -> None:
        """After the commit: give the records appended here their positions and hashes."""
        for cursor, recorded in self._pending:
            rows = cursor.fetchall()
            for record, row in zip(recorded, rows, strict=True):
                record.position = int(row["out_position"])
                record.hash = bytes(row["out_hash"]).hex()
        self._pending.clear()

    def _append_reading_head(self, stream_id: str, expected_version: int,
                             events: Sequence[NewEvent]) -> list[RecordedEvent]:
        # An append at ANY version (its versions are known only under the lock) or outside
        # a pipelined session: read the head, chain in Python, insert.
        self.lock()
        head = self.conn.execute(_HEAD, (stream_id,)).fetchone()
        assert head is not None  # the query always returns one row
        current = int(head["version"])
        check_expected_version(stream_id, current, expected_version)
        position = int(head["position"] or 0)
        prev_hash = bytes(head["hash"]) if head["hash"] is not None else GENESIS_HASH
        recorded: list[RecordedEvent] = []
        for offset, new in enumerate(events, start=1):
            record = seal(new, stream_id, current + offset, position + offset, prev_hash)
            self._insert(record, prev_hash)
            prev_hash = bytes.fromhex(record.hash)
            recorded.append(record)
        return self._project(recorded)

    def _project(self, recorded: list[RecordedEvent]) -> list[RecordedEvent]:
        if self._projector is not None:
            for record in recorded:
                self._projector(self.conn, record)
        self.conn.execute(f"NOTIFY {NOTIFY_CHANNEL}")
        self.appended.extend(recorded)
        return recorded

    def _insert(self, record: RecordedEvent, prev_hash: bytes) -> None:
        self.conn.execute(
            "INSERT INTO events (position, stream_id, version, type, data, metadata,"
            " recorded_at, prev_hash, hash) VALUES (%s, %s, %s, %s, %s, %s, %s, %s, %s)",
            (record.position, record.stream_id, record.version, record.type, Jsonb(record.data),
             Jsonb(record.metadata), record.recorded_at, prev_hash, bytes.fromhex(record.hash)),
        )

    def idempotent_response(self, actor: str, key: str, request_hash: str) -> tuple[int, Any] | None:
        row = self.conn.execute(
            "SELECT request_hash, status_code, response FROM idempotency_keys"
            " WHERE actor = %s AND key = %s",
            (actor, key),
        ).fetchone()
        if row is None:
            return None
        if row["request_hash"] != request_hash:
            raise key_reused(key)
        return int(row["status_code"]), row["response"]

    def remember_response(self, actor: str, key: str, request_hash: str, status_code: int,
                          response: Any) -> None:
        # The last write of a command (see `Commands._attempt`). After an append it runs under
        # the lock; in a command that appended nothing it needs none, and since nothing follows
        # it, this transaction never waits for the lock while holding the row.
        self._begin()
        self.conn.execute(
            "INSERT INTO idempotency_keys (actor, key, request_hash, status_code, response)"
            " VALUES (%s, %s, %s, %s, %s)",
            (actor, key, request_hash, status_code, Jsonb(response)),
        )

    def task_id(self, name: str) -> str | None:
        row = self.conn.execute("SELECT task_id FROM tasks WHERE name = %s", (name,)).fetchone()
        return str(row["task_id"]) if row else None

    def task_events(self, name: str) -> list[RecordedEvent]:
        return read_task_stream(self.conn, name)

    def organization(self, username: str) -> str | None:
        row = self.conn.execute(
            "SELECT organization FROM users WHERE username = %s", (username,)
        ).fetchone()
        return str(row["organization"]) if row else None

    def active_key(self, username: str) -> str | None:
        row = self.conn.execute(
            "SELECT fingerprint FROM member_keys WHERE username = %s AND status = 'active'", (username,)
        ).fetchone()
        return str(row["fingerprint"]) if row else None

    def key_owner(self, fingerprint: str) -> tuple[str, str] | None:
        row = self.conn.execute(
            "SELECT username, status FROM member_keys WHERE fingerprint = %s", (fingerprint,)
        ).fetchone()
        return (str(row["username"]), str(row["status"])) if row else None

    def add_credentials(self, username: str, password_hash: str) -> None:
        self.lock()
        self.conn.execute("INSERT INTO credentials (username, password_hash) VALUES (%s, %s)",
                          (username, password_hash))

    def artifact_size(self, task_id: str, sha256: str) -> int | None:
        row = self.conn.execute(
            "SELECT size FROM artifacts WHERE sha256 = %s AND task_id = %s", (sha256, task_id)
        ).fetchone()
        return int(row["size"]) if row else None

    def store_artifact(self, task_id: str, sha256: str, content: bytes) -> None:
        # No append lock: an artifact is a blob outside the chain, and writing 40 MB under the
        # lock stalled every command of every task for the second it took (several at 200 MB).
        # The one wait it can meet is on another upload of the same blob, and that transaction
        # never waits for the lock (store_model appends nothing), so no wait closes a cycle.
        self._begin()
        self.conn.execute(
            "INSERT INTO artifacts (sha256, task_id, size, content) VALUES (%s, %s, %s, %s)"
            " ON CONFLICT (task_id, sha256) DO NOTHING",
            (sha256, task_id, len(content), content),
        )


def _committed(conn: psycopg.Connection[dict[str, Any]], projector: Projector | None,
               exclusive: bool) -> Generator[PostgresSession, None, PostgresSession]:
    """Yield a session; commit its transaction (begun at its first write), the queued writes
    with the COMMIT.

    Why the order: the session enters the pipeline at its lock, before the transaction, so
    the transaction is left first and its COMMIT queues behind the writes; leaving the
    pipeline then sends BEGIN, LOCK, the writes and the COMMIT in one round trip, and the
    lock is released there without waiting for this thread to run Python again.
    """
    try:
        with ExitStack() as scope:
            session = PostgresSession(conn, projector, scope)
            if exclusive:
                session.lock()
            yield session
        session.settle()
    except BaseException as exc:
        # A command that failed after its first write, or a write that failed in the pipeline,
        # leaves the transaction open or aborted: roll it back.
        if conn.info.transaction_status in (psycopg.pq.TransactionStatus.INTRANS,
                                            psycopg.pq.TransactionStatus.INERROR):
            conn.rollback()
        cause = _version_conflict(write_error(exc))
        if cause is not exc:
            raise cause from None
        raise
    return session


def write_error(exc: BaseException) -> BaseException:
    """The error that says what went wrong in a pipelined transaction.

    Leaving the pipeline after a failed write may raise PipelineAborted over the write's own
    error (say, a unique row another command committed first, which is a race to retry): that
    one is the cause, and the aborted pipeline is no outage of the database.
    """
    cause = exc.__context__
    if (isinstance(exc, psycopg.errors.PipelineAborted) and isinstance(cause, psycopg.Error)
            and not isinstance(cause, psycopg.errors.PipelineAborted)):
        return cause
    return exc


def _version_conflict(exc: BaseException) -> BaseException:
    """musketeer_append's refusal of a stream not at the expected version, as VersionConflict."""
    if isinstance(exc, psycopg.Error) and exc.sqlstate == _VERSION_CONFLICT:
        details = json.loads(exc.diag.message_detail or "{}")
        return VersionConflict(exc.diag.message_primary or "version conflict", details)
    return exc


def _race(exc: Exception) -> WriteRace:
    # A unique row (a task name, a key) another command committed after this one looked.
    if isinstance(exc, VersionConflict):
        return WriteRace(exc.message, exc.details)
    return WriteRace("another command wrote the same row first; try again")


class PostgresEventStore(EventStore):
    """The log on PostgreSQL, with inline projections applied on every append."""

    def __init__(self, pool: ConnectionPool, projector: Projector | None = None,
                 on_commit: Callable[[list[RecordedEvent]], None] | None = None) -> None:
        self.pool = pool
        self._projector = projector
        # Told of every committed append (metrics); never of one that rolled back.
        self._on_commit = on_commit

    @contextmanager
    def session(self, exclusive: bool = False) -> Iterator[PostgresSession]:
        try:
            with self.connection() as conn:
                session = yield from _committed(conn, self._projector, exclusive)
        except (VersionConflict, psycopg.errors.UniqueViolation) as exc:
            # A unique row written by another command is found at the commit at the latest.
            if exclusive or isinstance(exc, WriteRace):
                raise
            raise _race(exc) from exc
        # Reached only when the transaction committed (an exception skips it).
        if self._on_commit is not None and session.appended:
            self._on_commit(session.appended)

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

    def read_stream(self, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
        with self.connection() as conn:
            return read_stream(conn, stream_id, limit)

    def read_stream_version(self, stream_id: str) -> int:
        with self.connection() as conn:
            return PostgresSession(conn, None).stream_version(stream_id)

    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        with self.connection() as conn:
            return read_all_from(conn, after, limit)

    def verify(self) -> ChainReport:
        with self.connection() as conn:
            return verify_chain(conn)

    def rebuild(self) -> RebuildReport:
        with self.connection() as conn, conn.transaction():
            report = replay_in(conn)
        differences = [f"{table}: {line}" for table, diff in sorted(report.tables.items())
                       for line in diff.differences]
        return RebuildReport(report.events, differences)
