"""The event-store contract, against the real PostgreSQL."""

from __future__ import annotations

import threading
from collections import Counter

import pytest

from api.errors import IdempotencyKeyReused, VersionConflict
from api.replay import replay
from api.store import ANY, NO_STREAM, EventStore, NewEvent
from schema.events import ParticipantJoined, TaskCreated, UserRegistered
from tests.conftest import unique

pytestmark = pytest.mark.integration


def joined(name: str) -> NewEvent:
    return NewEvent(ParticipantJoined(username=name, organization="org"), actor=name)


def test_racing_appends_have_one_winner_per_version(store: EventStore) -> None:
    """8 threads x 200 appends on one stream: one winner per version, no gaps, commit order."""
    stream = unique("race")
    winners: Counter[int] = Counter()
    conflicts = Counter[str]()
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
                    conflicts["lost"] += 1
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
    assert len(events) + conflicts["lost"] == 8 * 200
    assert conflicts["lost"] > 0, "the race never produced a conflict; the test proved nothing"
    positions = [e.position for e in events]
    assert positions == sorted(positions), "positions are not in version (commit) order"
    recorded = [e.recorded_at for e in events]
    assert recorded == sorted(recorded), "commit times disagree with position order"


def test_multi_event_append_is_all_or_nothing(store: EventStore) -> None:
    """A batch whose expected version is stale appends none of its events."""
    stream = unique("batch")
    store.append(stream, NO_STREAM, [joined("a")])
    with pytest.raises(VersionConflict):
        store.append(stream, NO_STREAM, [joined("b"), joined("c")])
    assert [e.data["username"] for e in store.read_stream(stream)] == ["a"]
    store.append(stream, 1, [joined("b"), joined("c")])
    assert [e.version for e in store.read_stream(stream)] == [1, 2, 3]


def test_expected_version_any_always_appends(store: EventStore) -> None:
    """ANY appends at whatever version the stream is."""
    stream = unique("any")
    store.append(stream, ANY, [joined("a")])
    store.append(stream, ANY, [joined("b")])
    assert [e.version for e in store.read_stream(stream)] == [1, 2]


def test_idempotent_retry_appends_nothing_and_returns_first_result(store: EventStore) -> None:
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


def test_rebuilding_projections_gives_identical_rows(store: EventStore, database_url: str) -> None:
    """Drop and replay the projections: every row comes back the same."""
    user, task_id = unique("user"), unique("t").replace("-", "")
    store.append(f"user-{user}", NO_STREAM,
                 [NewEvent(UserRegistered(username=user, organization="Org"), actor=user)])
    created = TaskCreated(task_id=task_id, name=unique("task"), creator=user,
                          definition={"quorum": 2, "rounds": 3}, broadcast_topic="b",
                          updates_topic="u")
    store.append(f"task-{task_id}", NO_STREAM,
                 [NewEvent(created, actor=user), joined("p1"), joined("p2")])

    report = replay(database_url)

    assert report.ok, report.tables
    assert report.tables["tasks"].rows_after >= 1
    assert report.tables["memberships"].rows_after >= 2
    assert all(t.rows_before == t.rows_after for t in report.tables.values())


def test_replay_reports_a_projection_that_drifted(store: EventStore, database_url: str, db) -> None:  # type: ignore[no-untyped-def]
    """A projection row edited behind the log's back is found and repaired by the rebuild."""
    user = unique("drift")
    store.append(f"user-{user}", NO_STREAM,
                 [NewEvent(UserRegistered(username=user, organization="Right"), actor=user)])
    db.execute("UPDATE users SET organization = 'Wrong' WHERE username = %s", (user,))

    report = replay(database_url)

    assert not report.ok
    assert any(user in line and "organization" in line for line in report.tables["users"].differences)
    row = db.execute("SELECT organization FROM users WHERE username = %s", (user,)).fetchone()
    assert row[0] == "Right"


def test_tampering_is_found_at_the_altered_position(store: EventStore, db) -> None:  # type: ignore[no-untyped-def]
    """An SQL UPDATE of one stored event makes verification name that position."""
    stream = unique("tamper")
    records = store.append(stream, NO_STREAM, [joined("a"), joined("b"), joined("c")])
    assert store.verify().ok
    target = records[1].position
    db.execute(
        "UPDATE events SET data = jsonb_set(data, '{username}', '\"mallory\"') WHERE position = %s",
        (target,),
    )
    try:
        report = store.verify()
        assert not report.ok
        assert report.first_bad_position == target
    finally:
        # Put the event back so later tests in this session see a sound chain.
        db.execute(
            "UPDATE events SET data = jsonb_set(data, '{username}', '\"b\"') WHERE position = %s",
            (target,),
        )
    assert store.verify().ok


def test_state_after_first_n_events_is_a_fold(store: EventStore) -> None:
    """Time travel: folding the first N events gives the task as it was then."""
    from api.domain import fold

    task_id = unique("tt").replace("-", "")
    created = TaskCreated(task_id=task_id, name=unique("task"), creator="alice",
                          definition={"quorum": 1, "rounds": 1}, broadcast_topic="b",
                          updates_topic="u")
    store.append(f"task-{task_id}", NO_STREAM, [NewEvent(created, actor="alice"), joined("john"),
                                                 joined("jack")])
    after_two = fold(store.read_stream(f"task-{task_id}", limit=2))
    assert after_two is not None
    assert [m.username for m in after_two.members] == ["john"]
    assert after_two.version == 2
