"""The event store in memory: the same contract as PostgreSQL, for fast unit tests of handlers.

One lock orders every session, as PostgreSQL's table lock does, so positions follow commit
order. A session works on a copy and publishes it only when its block exits cleanly: a
command that fails part-way leaves nothing behind, as a rolled-back transaction does. Its read
models (users and tasks by name) are a fold of the log like the SQL projections, and
`rebuild` recomputes them and compares.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from api.store.contract import (
    GENESIS_HASH,
    ChainReport,
    EventStore,
    NewEvent,
    RebuildReport,
    Session,
    StoredRow,
    check_expected_version,
    key_reused,
    seal,
    walk_chain,
)
from schema.events import MemberKeyRegistered, MemberKeyRevoked, RecordedEvent, TaskCreated, UserRegistered


@dataclass
class ReadModels:
    """What the in-memory backend projects: organisations, task names and signing keys."""

    organizations: dict[str, str] = field(default_factory=dict)
    task_ids: dict[str, str] = field(default_factory=dict)
    keys: dict[str, tuple[str, str]] = field(default_factory=dict)  # fingerprint: (user, status)

    def apply(self, record: RecordedEvent) -> None:
        """Project one event."""
        event = record.typed()
        if isinstance(event, UserRegistered):
            self.organizations[event.username] = event.organization
        elif isinstance(event, TaskCreated):
            # Deleted tasks keep their name, as in the SQL projection: names stay taken.
            self.task_ids[event.name] = event.task_id
        elif isinstance(event, MemberKeyRegistered):
            for fingerprint, (user, status) in list(self.keys.items()):
                if user == event.username and status == "active":
                    self.keys[fingerprint] = (user, "rotated")
            self.keys[event.fingerprint] = (event.username, "active")
        elif isinstance(event, MemberKeyRevoked):
            self.keys[event.fingerprint] = (event.username, "revoked")


@dataclass
class _State:
    rows: list[StoredRow] = field(default_factory=list)
    idempotency: dict[tuple[str, str], tuple[str, int, Any]] = field(default_factory=dict)
    credentials: dict[str, str] = field(default_factory=dict)
    artifacts: dict[tuple[str, str], bytes] = field(default_factory=dict)
    models: ReadModels = field(default_factory=ReadModels)


class MemorySession(Session):
    """A command's view of the store: a private copy, published on success."""

    def __init__(self, state: _State) -> None:
        self.state = state

    def stream_version(self, stream_id: str) -> int:
        return max((r.record.version for r in self.state.rows if r.record.stream_id == stream_id),
                   default=0)

    def read_stream(self, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
        records = [r.record for r in self.state.rows if r.record.stream_id == stream_id]
        return records[:limit] if limit is not None else records

    def append(self, stream_id: str, expected_version: int,
               events: Sequence[NewEvent]) -> list[RecordedEvent]:
        current = self.stream_version(stream_id)
        check_expected_version(stream_id, current, expected_version)
        last = self.state.rows[-1].record if self.state.rows else None
        position = last.position if last else 0
        prev_hash = bytes.fromhex(last.hash) if last else GENESIS_HASH
        recorded = []
        for offset, new in enumerate(events, start=1):
            record = seal(new, stream_id, current + offset, position + offset, prev_hash)
            self.state.rows.append(StoredRow(record, prev_hash))
            self.state.models.apply(record)
            prev_hash = bytes.fromhex(record.hash)
            recorded.append(record)
        return recorded

    def idempotent_response(self, actor: str, key: str, request_hash: str) -> tuple[int, Any] | None:
        stored = self.state.idempotency.get((actor, key))
        if stored is None:
            return None
        if stored[0] != request_hash:
            raise key_reused(key)
        return stored[1], copy.deepcopy(stored[2])

    def remember_response(self, actor: str, key: str, request_hash: str, status_code: int,
                          response: Any) -> None:
        self.state.idempotency[(actor, key)] = (request_hash, status_code, copy.deepcopy(response))

    def task_id(self, name: str) -> str | None:
        return self.state.models.task_ids.get(name)

    def organization(self, username: str) -> str | None:
        return self.state.models.organizations.get(username)

    def active_key(self, username: str) -> str | None:
        return next((fp for fp, (user, status) in self.state.models.keys.items()
                     if user == username and status == "active"), None)

    def key_owner(self, fingerprint: str) -> tuple[str, str] | None:
        return self.state.models.keys.get(fingerprint)

    def add_credentials(self, username: str, password_hash: str) -> None:
        self.state.credentials[username] = password_hash

    def artifact_size(self, task_id: str, sha256: str) -> int | None:
        content = self.state.artifacts.get((task_id, sha256))
        return None if content is None else len(content)

    def store_artifact(self, task_id: str, sha256: str, content: bytes) -> None:
        self.state.artifacts.setdefault((task_id, sha256), content)


class MemoryEventStore(EventStore):
    """The whole log in a Python list, guarded by one lock."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state = _State()

    @contextmanager
    def session(self, exclusive: bool = False) -> Iterator[MemorySession]:
        # The lock orders whole sessions (every one is exclusive), as PostgreSQL's table
        # lock does for writes. The copy is shallow
        # for rows (records are immutable) and deep for the small mutable tables.
        with self._lock:
            draft = _State(list(self._state.rows), dict(self._state.idempotency),
                           dict(self._state.credentials), dict(self._state.artifacts),
                           copy.deepcopy(self._state.models))
            yield MemorySession(draft)
            self._state = draft

    def read_stream(self, stream_id: str, limit: int | None = None) -> list[RecordedEvent]:
        return MemorySession(self._state).read_stream(stream_id, limit)

    def read_stream_version(self, stream_id: str) -> int:
        return MemorySession(self._state).stream_version(stream_id)

    def read_all(self, after: int = 0, limit: int = 1000) -> list[RecordedEvent]:
        return [r.record for r in self._state.rows if r.record.position > after][:limit]

    def verify(self) -> ChainReport:
        return walk_chain(self._state.rows)

    def rebuild(self) -> RebuildReport:
        with self._lock:
            before = self._state.models
            after = ReadModels()
            for row in self._state.rows:
                after.apply(row.record)
            self._state.models = after
        differences = [f"{name}: {key}: {old.get(key)!r} before, {new.get(key)!r} after rebuild"
                       for name, old, new in (("organizations", before.organizations, after.organizations),
                                              ("task_ids", before.task_ids, after.task_ids),
                                              ("keys", before.keys, after.keys))
                       for key in sorted(old.keys() | new.keys()) if old.get(key) != new.get(key)]
        return RebuildReport(len(self._state.rows), differences)

    def tamper(self, position: int, data: dict[str, Any]) -> None:
        """Test hook: change a stored event's data behind the chain's back, as an SQL UPDATE would."""
        with self._lock:
            index = next(i for i, r in enumerate(self._state.rows) if r.record.position == position)
            row = self._state.rows[index]
            self._state.rows[index] = StoredRow(row.record.model_copy(update={"data": data}), row.prev_hash)

    def drift(self, username: str, organization: str) -> None:
        """Test hook: edit a read-model row behind the log's back."""
        self._state.models.organizations[username] = organization
