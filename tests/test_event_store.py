"""The event-store contract: one test class, run against the in-memory and the PostgreSQL store.

Every backend must pass the same tests (racing appends, expected versions, all-or-nothing
batches, idempotency, the hash chain, rebuilding the read models); the tests are the contract.
"""

from __future__ import annotations

import threading
from collections import Counter
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest

from api.domain import fold
from api.errors import IdempotencyKeyReused, VersionConflict
from api.store import ANY, NO_STREAM, EventStore, NewEvent
from api.store.contract import GENESIS_HASH, canonical, chain_hash
from api.store.memory import MemoryEventStore
from schema.events import ParticipantJoined, TaskCreated, UserRegistered
from tests.conftest import unique


def joined(name: str) -> NewEvent:
    return NewEvent(ParticipantJoined(username=name, organization="org"), actor=name)


def registered(user: str, organization: str) -> NewEvent:
    return NewEvent(UserRegistered(username=user, organization=organization), actor=user)


def created(task_id: str, creator: str) -> NewEvent:
    event = TaskCreated(task_id=task_id, name=unique("task"), creator=creator,
                        definition={"quorum": 2, "rounds": 3}, broadcast_topic="b", updates_topic="u")
    return NewEvent(event, actor=creator)


class EventStoreContract:
    """What every event store must do. Subclasses give `store`, `tamper` and `drift`."""

    def tamper(self, store: Any, position: int, username: str) -> None:
        """Change a stored event's data behind the chain's back."""
        raise NotImplementedError

    def drift(self, store: Any, username: str, organization: str) -> None:
        """Change a read-model row behind the log's back."""
        raise NotImplementedError

    def test_racing_appends_have_one_winner_per_version(self, store: EventStore) -> None:
        """8 threads x 200 appends on one stream: one winner per version, no gaps, commit order."""
        stream = unique("race")
        winners: Counter[int] = Counter()
        lost = Counter[str]()
        lock = threading.Lock()
        barrier = threading.Barrier(8)

        def worker(index: int) -> None:
            barrier.wait()
            for attempt in range(200):
                expected = store.read_stream_version(stream)
                try:
                    records = store.append(stream, expected, [joined(f"w{index}-{attempt}")])
                except VersionConflict:
                    with lock:
                        lost["lost"] += 1
                    continue
                with lock:
                    winners[records[0].version] += 1

        threads = [threading.Thread(target=worker, args=(i,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        events = store.read_stream(stream)
        versions = [e.version for e in events]
        assert versions == list(range(1, len(events) + 1)), "versions have gaps"
        assert all(count == 1 for count in winners.values()), "a version was won twice"
        assert sorted(winners) == versions
        assert len(events) + lost["lost"] == 8 * 200
        assert lost["lost"] > 0, "the race never produced a conflict; the test proved nothing"
        positions = [e.position for e in events]
        assert positions == sorted(positions), "positions are not in version (commit) order"
        recorded = [e.recorded_at for e in events]
        assert recorded == sorted(recorded), "commit times disagree with position order"

    def test_positions_follow_commit_order_across_streams(self, store: EventStore) -> None:
        """Appends racing on different streams get consecutive positions, in commit order."""
        streams = [unique("pos") for _ in range(4)]

        def worker(stream: str) -> None:
            for index in range(25):
                store.append(stream, ANY, [joined(f"p{index}")])

        threads = [threading.Thread(target=worker, args=(s,)) for s in streams]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()

        mine = [e for e in store.read_all(0, 1_000_000) if e.stream_id in streams]
        assert len(mine) == 100
        assert [e.recorded_at for e in mine] == sorted(e.recorded_at for e in mine)
        assert store.verify().ok

    def test_multi_event_append_is_all_or_nothing(self, store: EventStore) -> None:
        """A batch whose expected version is stale appends none of its events."""
        stream = unique("batch")
        store.append(stream, NO_STREAM, [joined("a")])
        with pytest.raises(VersionConflict):
            store.append(stream, NO_STREAM, [joined("b"), joined("c")])
        assert [e.data["username"] for e in store.read_stream(stream)] == ["a"]
        store.append(stream, 1, [joined("b"), joined("c")])
        assert [e.version for e in store.read_stream(stream)] == [1, 2, 3]

    def test_a_failed_command_leaves_nothing_behind(self, store: EventStore) -> None:
        """An error after an append inside a session rolls the append and its key back."""
        stream, key = unique("rollback"), unique("key")
        with pytest.raises(RuntimeError), store.session() as session:
            session.append(stream, NO_STREAM, [joined("a")])
            session.remember_response("alice", key, "digest", 201, {})
            raise RuntimeError("the command failed after appending")
        assert store.read_stream(stream) == []
        with store.session() as session:
            assert session.idempotent_response("alice", key, "digest") is None

    def test_expected_version_any_always_appends(self, store: EventStore) -> None:
        """ANY appends at whatever version the stream is."""
        stream = unique("any")
        store.append(stream, ANY, [joined("a")])
        store.append(stream, ANY, [joined("b")])
        assert [e.version for e in store.read_stream(stream)] == [1, 2]

    def test_idempotent_retry_appends_nothing_and_returns_first_result(self, store: EventStore) -> None:
        """A retried command with the same key replays the stored response; the log is unchanged."""
        key, actor = unique("key"), unique("actor")
        stream = unique("idem")

        def command() -> tuple[int, object]:
            with store.session() as session:
                earlier = session.idempotent_response(actor, key, "digest-1")
                if earlier is not None:
                    return earlier
                records = session.append(stream, ANY, [joined("a")])
                body = {"position": records[0].position}
                session.remember_response(actor, key, "digest-1", 201, body)
                return 201, body

        first = command()
        second = command()
        assert first == second
        assert len(store.read_stream(stream)) == 1
        with pytest.raises(IdempotencyKeyReused), store.session() as session:
            session.idempotent_response(actor, key, "another-request")

    def test_rebuilding_the_read_models_gives_identical_rows(self, store: EventStore) -> None:
        """Drop and replay the read models: every row comes back the same."""
        user, task_id = unique("user"), unique("t").replace("-", "")
        store.append(f"user-{user}", NO_STREAM, [registered(user, "Org")])
        store.append(f"task-{task_id}", NO_STREAM, [created(task_id, user), joined("p1"), joined("p2")])
        with store.session() as session:
            assert session.organization(user) == "Org"

        report = store.rebuild()

        assert report.ok, report.differences
        assert report.events >= 4
        with store.session() as session:
            assert session.organization(user) == "Org"

    def test_rebuild_reports_and_repairs_a_drifted_read_model(self, store: EventStore) -> None:
        """A read-model row edited behind the log's back is named, then repaired by the rebuild."""
        user = unique("drift")
        store.append(f"user-{user}", NO_STREAM, [registered(user, "Right")])
        self.drift(store, user, "Wrong")

        report = store.rebuild()

        assert not report.ok
        assert any(user in line and "organization" in line for line in report.differences)
        with store.session() as session:
            assert session.organization(user) == "Right"
        assert store.rebuild().ok

    def test_tampering_is_found_at_the_altered_position(self, store: EventStore) -> None:
        """Changing one stored event makes verification name that position."""
        stream = unique("tamper")
        records = store.append(stream, NO_STREAM, [joined("a"), joined("b"), joined("c")])
        assert store.verify().ok
        target = records[1].position
        self.tamper(store, target, "mallory")
        try:
            report = store.verify()
            assert not report.ok
            assert report.first_bad_position == target
        finally:
            # Put the event back so later tests see a sound chain.
            self.tamper(store, target, "b")
        assert store.verify().ok

    def test_numbers_jsonb_writes_out_in_full_keep_the_chain_sound(self, store: EventStore) -> None:
        """Floats with a positive exponent, and negative zero, verify after storage."""
        task_id = unique("numbers").replace("-", "")
        definition = {"quorum": 2, "rounds": 3, "big": 1e20, "odd": 1.2345678901234567e19,
                      "huge": -1.7976931348623157e308, "zero": -0.0, "small": 1e-07, "one": 1.0}
        event = TaskCreated(task_id=task_id, name=unique("task"), creator="alice", definition=definition,
                            broadcast_topic="b", updates_topic="u")
        [record] = store.append(f"task-{task_id}", NO_STREAM, [NewEvent(event, actor="alice")])
        assert store.verify().ok
        [stored] = store.read_stream(f"task-{task_id}")
        assert stored.data["definition"] == record.data["definition"]
        assert record.data["definition"]["odd"] == 12345678901234567000  # the digits, as stored
        assert record.data["definition"]["big"] == 10**20 and record.data["definition"]["small"] == 1e-07

    def test_state_after_first_n_events_is_a_fold(self, store: EventStore) -> None:
        """Time travel: folding the first N events gives the task as it was then."""
        task_id = unique("tt").replace("-", "")
        store.append(f"task-{task_id}", NO_STREAM, [created(task_id, "alice"), joined("john"),
                                                     joined("jack")])
        after_two = fold(store.read_stream(f"task-{task_id}", limit=2))
        assert after_two is not None
        assert [m.username for m in after_two.members] == ["john"]
        assert after_two.version == 2

    def test_a_tasks_events_are_found_by_its_name(self, store: EventStore) -> None:
        """A session reads a task's stream by the task's name (the Postgres store in one query):
        that stream's events in version order, none of another task's, [] for an unknown name."""
        ours, theirs = unique("mine").replace("-", ""), unique("other").replace("-", "")
        store.append(f"task-{ours}", NO_STREAM, [created(ours, "alice"), joined("john")])
        store.append(f"task-{theirs}", NO_STREAM, [created(theirs, "bob")])
        store.append(f"task-{ours}", 2, [joined("jack")])
        [first, *_] = store.read_stream(f"task-{ours}")
        with store.session() as session:
            found = session.task_events(first.data["name"])
            assert session.task_events("no-such-task") == []
            assert session.task_events("x' OR '1'='1") == []
        assert [(e.stream_id, e.version, e.type) for e in found] == [
            (f"task-{ours}", 1, "TaskCreated"), (f"task-{ours}", 2, "ParticipantJoined"),
            (f"task-{ours}", 3, "ParticipantJoined")]
        assert [e.hash for e in found] == [e.hash for e in store.read_stream(f"task-{ours}")]


class TestMemoryEventStore(EventStoreContract):
    """The contract against the in-memory store (the handlers' unit tests use it)."""

    @pytest.fixture()
    def store(self) -> Iterator[MemoryEventStore]:
        yield MemoryEventStore()

    def tamper(self, store: Any, position: int, username: str) -> None:
        record = next(r for r in store.read_all(0, 1_000_000) if r.position == position)
        store.tamper(position, {**record.data, "username": username})

    def drift(self, store: Any, username: str, organization: str) -> None:
        store.drift(username, organization)


@pytest.mark.integration
class TestPostgresEventStore(EventStoreContract):
    """The contract against PostgreSQL (the `store` fixture of conftest, with its projections)."""

    @pytest.fixture()
    def db(self, database_url: str) -> Iterator[psycopg.Connection[Any]]:
        with psycopg.connect(database_url, autocommit=True) as conn:
            yield conn

    @pytest.fixture(autouse=True)
    def _connection(self, db: psycopg.Connection[Any]) -> None:
        self._db = db

    def tamper(self, store: Any, position: int, username: str) -> None:
        self._db.execute("UPDATE events SET data = jsonb_set(data, '{username}', %s::jsonb)"
                         " WHERE position = %s", (f'"{username}"', position))

    def drift(self, store: Any, username: str, organization: str) -> None:
        self._db.execute("UPDATE users SET organization = %s WHERE username = %s", (organization, username))


    def test_the_database_chains_exactly_as_python_does(self, store: Any, db: psycopg.Connection[Any]) -> None:
        """An exact-version append is chained in SQL (musketeer_append): every hash equals the
        Python reference sha256(prev || canonical(...)) of the record's own values, unicode,
        floats and nesting included, and the records get their positions once committed."""
        stream = unique("task")
        definition = {"quorum": 2, "rounds": 3, "learning_rate": 0.1,
                      "note": "Zürich 漢字 \"quoted\" \\ back", "nested": {"b": [1.5, None], "a": True}}
        event = TaskCreated(task_id=stream, name=unique("naïve-task"), creator="jörg",
                            definition=definition, description="ünïcode ✓",
                            broadcast_topic="b", updates_topic="u")
        before = store.read_all(0, 1_000_000)
        prev = bytes.fromhex(before[-1].hash) if before else GENESIS_HASH

        records = store.append(stream, NO_STREAM, [NewEvent(event, actor="jörg"), joined("ådam")])

        for record in records:
            body = canonical(record.position, record.stream_id, record.version, record.type,
                             record.data, record.metadata, record.recorded_at)
            assert record.hash == chain_hash(prev, body).hex()
            prev = bytes.fromhex(record.hash)
        stored = {r.position: r.hash for r in store.read_all(0, 1_000_000)}
        assert [stored[r.position] for r in records] == [r.hash for r in records]
        assert [r.version for r in records] == [1, 2] and records[1].position == records[0].position + 1
        row = db.execute("SELECT created_position FROM tasks WHERE task_id = %s", (stream,)).fetchone()
        assert row is not None and row[0] == records[0].position
        assert store.verify().ok

    def test_a_command_begins_its_transaction_at_its_first_write(self, store: Any,
                                                                 db: psycopg.Connection[Any]) -> None:
        """Reads before the first write run on their own (no BEGIN round trip for them); from the
        first write on, every write of the command commits together or not at all, an artifact
        (written without the append lock) and an idempotency key included."""
        idle, open_ = psycopg.pq.TransactionStatus.IDLE, psycopg.pq.TransactionStatus.INTRANS
        task, key = unique("artifact"), unique("key")

        def stored() -> tuple[int, int]:
            artifacts = db.execute("SELECT count(*) FROM artifacts WHERE task_id = %s", (task,)).fetchone()
            keys = db.execute("SELECT count(*) FROM idempotency_keys WHERE key = %s", (key,)).fetchone()
            assert artifacts is not None and keys is not None
            return int(artifacts[0]), int(keys[0])

        with pytest.raises(RuntimeError), store.session() as session:
            assert session.task_events(task) == []
            assert session.conn.info.transaction_status == idle
            session.store_artifact(task, "ab" * 32, b"model bytes")
            assert session.conn.info.transaction_status == open_
            session.remember_response("alice", key, "digest", 201, {})
            raise RuntimeError("the command failed after its writes")
        assert stored() == (0, 0)

        with store.session() as session:
            session.store_artifact(task, "ab" * 32, b"model bytes")
            session.remember_response("alice", key, "digest", 201, {})
        assert stored() == (1, 1)
        with store.session() as session:
            assert session.idempotent_response("alice", key, "digest") == (201, {})
            assert session.conn.info.transaction_status == idle

    def test_a_stale_version_is_refused_in_the_database_with_its_details(self, store: Any) -> None:
        """The version check done in SQL reaches the caller as VersionConflict, with the stream,
        its version and the one expected, and stores nothing."""
        stream = unique("stale")
        store.append(stream, NO_STREAM, [joined("a")])

        with pytest.raises(VersionConflict) as refused, store.session(exclusive=True) as session:
            session.append(stream, 5, [joined("b")])

        assert refused.value.details == {"stream_id": stream, "current": 1, "expected": 5}
        assert [e.data["username"] for e in store.read_stream(stream)] == ["a"]
