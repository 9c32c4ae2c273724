"""The event store's contract, shared by every backend: appends, reads, the hash chain, idempotency.

A backend (PostgreSQL in production, memory for unit tests) implements `EventStore` and
`Session`; `tests/test_event_store.py` runs one test class against each, so the tests are the
contract. Everything here that fixes what a stored event *is* (its hash, its metadata) is
written once and used by both.
"""

from __future__ import annotations

import hashlib
import json
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterable, Iterator, Sequence
from contextlib import AbstractContextManager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from typing import Any

from api.errors import IdempotencyKeyReused, VersionConflict
from schema.events import Event, RecordedEvent

ANY = -1
"""Expected version: append whatever the stream's version is."""
NO_STREAM = 0
"""Expected version: the stream must not exist yet."""

GENESIS_HASH = b"\x00" * 32


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
    head, middle = canonical_parts(stream_id, type_name, data, metadata, recorded_at)
    return f"{head}{position}{middle}{version}}}".encode()


def canonical_parts(
    stream_id: str, type_name: str, data: dict[str, Any], metadata: dict[str, Any],
    recorded_at: datetime,
) -> tuple[str, str]:
    """canonical() without the position and version: the text before the position, and the
    text between it and the version (the closing brace follows the version).

    Why split: the PostgreSQL append (schema/migrations/0008_append_function.sql) learns the
    position and version only under the append lock and splices them in there. The keys,
    sorted, are data, metadata, position, recorded_at, stream_id, type, version, so this is
    exactly the sorted-key compact JSON of the whole document.
    """
    head = f'{{"data":{_compact(data)},"metadata":{_compact(metadata)},"position":'
    when = recorded_at.astimezone(UTC).isoformat(timespec="microseconds")
    middle = (f',"recorded_at":{_compact(when)},"stream_id":{_compact(stream_id)},'
              f'"type":{_compact(type_name)},"version":')
    return head, middle


def _compact(value: Any) -> str:
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def chain_hash(prev_hash: bytes, body: bytes) -> bytes:
    """sha256(prev_hash || canonical(event))."""
    return hashlib.sha256(prev_hash + body).digest()


def _normalised(value: dict[str, Any]) -> dict[str, Any]:
    # jsonb re-renders numbers and drops key order; hashing what storage will give
    # back (a JSON round trip, numbers as jsonb renders them) keeps the chain verifiable.
    result: dict[str, Any] = json.loads(json.dumps(value), parse_float=_as_jsonb_renders)
    return result


def _as_jsonb_renders(text: str) -> float | int:
    """A JSON float as it reads back from jsonb, which keeps numbers as decimals.

    jsonb writes a number with a positive exponent out in full digits ("1e+20" comes back
    as 100000000000000000000, an int, and "1.2345678901234567e+19" as
    12345678901234567000), and it has no negative zero. Hashing the Python float instead
    would break the chain at the next verification.
    """
    if "e+" in text.lower():
        return int(Decimal(text))
    number = float(text)
    return 0.0 if number == 0 else number


def seal(new: NewEvent, stream_id: str, version: int, position: int, prev_hash: bytes) -> RecordedEvent:
    """The event as it will be stored: its metadata, its time and its chain hash."""
    record = unsealed(new, stream_id, version)
    digest = chain_hash(prev_hash, canonical(position, stream_id, version, record.type, record.data,
                                             record.metadata, record.recorded_at))
    return record.model_copy(update={"position": position, "hash": digest.hex()})


def unsealed(new: NewEvent, stream_id: str, version: int) -> RecordedEvent:
    """The event as it will be stored, but for its position and hash (0 and "" until known)."""
    data = _normalised(new.event.to_data())
    metadata = {
        "actor": new.actor,
        "request_id": new.request_id,
        "event_id": str(uuid.uuid4()),
        "schema_version": new.event.schema_version,
    }
    return RecordedEvent(position=0, stream_id=stream_id, version=version,
                         type=new.event.type_name(), data=data, metadata=metadata,
                         recorded_at=datetime.now(UTC), hash="")


def check_expected_version(stream_id: str, current: int, expected: int) -> None:
    """Raise VersionConflict unless a stream at `current` may take an append expecting `expected`."""
    if expected != ANY and current != expected:
        raise VersionConflict(
            f"stream '{stream_id}' is at version {current}, expected {expected}",
            {"stream_id": stream_id, "current": current, "expected": expected},
        )


def key_reused(key: str) -> IdempotencyKeyReused:
    """The error for an Idempotency-Key sent again with a different request."""
    return IdempotencyKeyReused("this Idempotency-Key was already used for a different request",
                                {"idempotency_key": key})


@dataclass(frozen=True)
class StoredRow:
    """A stored event with the chain hash of its predecessor, as verification reads it."""

    record: RecordedEvent
    prev_hash: bytes


@dataclass(frozen=True)
class ChainReport:
    """The outcome of walking the hash chain."""

    events: int
    ok: bool
    first_bad_position: int | None


def walk_chain(rows: Iterable[StoredRow]) -> ChainReport:
    """Check every row against its predecessor, in position order; name the first bad one."""
    prev, count = GENESIS_HASH, 0
    for row in rows:
        count += 1
        r = row.record
        body = canonical(r.position, r.stream_id, r.version, r.type, r.data, r.metadata, r.recorded_at)
        if row.prev_hash != prev or chain_hash(prev, body).hex() != r.hash:
            return ChainReport(count, False, r.position)
        prev = bytes.fromhex(r.hash)
    return ChainReport(count, True, None)


@dataclass(frozen=True)
class RebuildReport:
    """A rebuild of the read models from the log: how many events, and what differed before."""

    events: int
    differences: list[str]

    @property
    def ok(self) -> bool:
        return not self.differences


# A task's events form the stream "task-<task id>".
TASK_STREAM_PREFIX = "task-"


def task_stream(task_id: str) -> str:
    """The stream id of a task."""
    return f"{TASK_STREAM_PREFIX}{task_id}"


class Session(ABC):
    """One command's transaction: what a handler may read and write, all committed together."""

    @abstractmethod
    def stream_version(self, stream_id: str) -> int:
        """The version of the stream's last event, 0 if the stream is empty."""

    @abstractmethod
    def read_stream(self, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
        """The stream's events in version order, the first `limit` of them if given."""

    @abstractmethod
    def append(self, stream_id: str, expected_version: int,
               events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """Append events to a stream if it is at `expected_version` (VersionConflict if not)."""

    @abstractmethod
    def idempotent_response(self, actor: str, key: str, request_hash: str) -> tuple[int, Any] | None:
        """The stored response of an earlier request with this key (IdempotencyKeyReused if
        the key was used for another request)."""

    @abstractmethod
    def remember_response(self, actor: str, key: str, request_hash: str, status_code: int,
                          response: Any) -> None:
        """Store a command's response under its key, in the command's transaction."""

    # The few read-model lookups and side tables a command needs, in its transaction.

    @abstractmethod
    def task_id(self, name: str) -> str | None:
        """The id of the task with this name, if any."""

    def task_events(self, name: str) -> list[RecordedEvent]:
        """The events of the task with this name in version order; [] if there is no such task."""
        task_id = self.task_id(name)
        return self.read_stream(task_stream(task_id)) if task_id else []

    @abstractmethod
    def organization(self, username: str) -> str | None:
        """The organisation of a registered user, None if there is no such user."""

    @abstractmethod
    def active_key(self, username: str) -> str | None:
        """The fingerprint of the user's current signing key, if they have one."""

    @abstractmethod
    def key_owner(self, fingerprint: str) -> tuple[str, str] | None:
        """(username, status) of a registered key, None if no one registered it."""

    @abstractmethod
    def add_credentials(self, username: str, password_hash: str) -> None:
        """Keep a new user's password hash beside the log (never in it)."""

    @abstractmethod
    def artifact_size(self, task_id: str, sha256: str) -> int | None:
        """The size of the task's stored artifact with this digest, if there is one."""

    @abstractmethod
    def store_artifact(self, task_id: str, sha256: str, content: bytes) -> None:
        """Keep model bytes under their digest (a repeat is a no-op).

        It takes no append lock (a blob is not part of the chain), so a command that stores
        one must append nothing after it."""


class EventStore(ABC):
    """The log: sessions for commands, plus reads and checks outside any command."""

    @abstractmethod
    def session(self, exclusive: bool = False) -> AbstractContextManager[Session]:
        """A transaction that orders appends; it commits when the block exits cleanly.

        It may take the append lock only at its first write; a write that finds the log
        changed under what the block read raises `WriteRace`. `exclusive=True` holds the
        lock from the start, so no other command can commit in between.
        """

    def append(self, stream_id: str, expected_version: int,
               events: Sequence[NewEvent]) -> list[RecordedEvent]:
        """Append in a transaction of its own."""
        with self.session() as session:
            return session.append(stream_id, expected_version, events)

    @abstractmethod
    def read_stream(self, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
        """A stream's events in version order."""

    @abstractmethod
    def read_stream_version(self, stream_id: str) -> int:
        """The stream's current version (0 if it has no events), without ordering appends."""

    @abstractmethod
    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        """Events after a position, in position order."""

    @abstractmethod
    def verify(self) -> ChainReport:
        """Walk the hash chain."""

    @abstractmethod
    def rebuild(self) -> RebuildReport:
        """Drop the read models, replay the whole log into them, and say what differed."""

    def iterate_all(self, batch: int = 1000) -> Iterator[RecordedEvent]:
        """Every event in position order, read in batches."""
        after = 0
        while records := self.read_all(after, batch):
            yield from records
            after = records[-1].position
