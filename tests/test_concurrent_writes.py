"""Many writers at once on the real PostgreSQL: the log stays one gapless chain in commit order.

The append lock is taken at a command's first write, not its first read (api/store/postgres.py),
so commands decide side by side and a write that finds the log changed under it makes the
handlers run the command again. These tests pin what that must never break: positions are
gapless and handed out in commit order (a reader tailing by position sees every event), the
hash chain verifies, nothing is lost, and racing commands get the answers they would get one
after the other.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from typing import Any

import pytest
from psycopg_pool import ConnectionPool

from api.errors import Conflict
from api.handlers import Context
from api.projections import project
from api.settings import Settings
from api.store import ANY, NewEvent
from api.store.postgres import PostgresEventStore, PostgresSession
from api.training import TrainingCommands
from schema.commands import CreateTask, RegisterUser
from schema.definition import TaskDefinition
from schema.events import ParticipantJoined
from tests.conftest import in_threads, unique

pytestmark = pytest.mark.integration

WRITERS = 16


class CountingStore(PostgresEventStore):
    """The PostgreSQL store, counting the sessions run again with the lock held from the start."""

    def __init__(self, pool: ConnectionPool) -> None:
        super().__init__(pool, projector=project)
        self.exclusive_sessions = 0
        self._count_lock = threading.Lock()

    def session(self, exclusive: bool = False) -> Any:
        if exclusive:
            with self._count_lock:
                self.exclusive_sessions += 1
        return super().session(exclusive)


class NoTopics:
    """The broker's topic admin, doing nothing (these tests are about the log)."""

    def create(self, names: list[str]) -> None:
        pass

    def delete(self, names: list[str]) -> None:
        pass


@pytest.fixture(scope="module")
def wide_pool(database_url: str) -> Iterator[ConnectionPool]:
    """One connection per writer, plus one for the tailing reader."""
    with ConnectionPool(database_url, min_size=WRITERS + 1, max_size=WRITERS + 1,
                        kwargs={"autocommit": True}) as pool:
        yield pool


@pytest.fixture()
def store(wide_pool: ConnectionPool) -> CountingStore:
    return CountingStore(wide_pool)


def tail(store: PostgresEventStore, after: int, stop: threading.Event, seen: list[int]) -> None:
    """Follow the log by position as the relay does, until told to stop and caught up."""
    while True:
        stopping = stop.is_set()
        records = store.read_all(after, 500)
        seen.extend(r.position for r in records)
        after = records[-1].position if records else after
        if stopping and not records:
            return


def joined(name: str) -> NewEvent:
    return NewEvent(ParticipantJoined(username=name, organization="org"), actor=name)


def test_concurrent_appends_are_gapless_in_commit_order_and_chained(store: CountingStore) -> None:
    """16 connections appending at once: a tailing reader sees every position, none twice,
    in order; each writer's events are all there; the chain verifies."""
    start = max((r.position for r in store.read_all(0, 1_000_000)), default=0)
    shared = unique("shared")
    appended: dict[int, list[int]] = {i: [] for i in range(WRITERS)}
    stop, seen = threading.Event(), list[int]()
    reader = threading.Thread(target=tail, args=(store, start, stop, seen))
    reader.start()

    def writer(index: int) -> None:
        own = unique(f"w{index}")
        for k in range(30):
            # Half the appends go to one stream every writer shares, half to the writer's own.
            stream = shared if k % 2 else own
            records = store.append(stream, ANY, [joined(f"w{index}-{k}"), joined(f"w{index}-{k}b")])
            appended[index] += [r.position for r in records]

    try:
        in_threads(WRITERS, writer)
    finally:
        stop.set()
        reader.join()

    every = sorted(p for positions in appended.values() for p in positions)
    assert len(every) == WRITERS * 30 * 2 == len(set(every)), "an append was lost or doubled"
    assert seen == list(range(start + 1, start + len(seen) + 1)), \
        "the tailing reader skipped or repeated a position: positions are not in commit order"
    assert set(every) <= set(seen), "the tailing reader missed committed events"
    versions = [e.version for e in store.read_stream(shared)]
    assert versions == list(range(1, WRITERS * 30 + 1)), "the shared stream's versions have gaps"
    assert store.verify().ok


def register(commands: TrainingCommands, name: str) -> None:
    body = RegisterUser(username=name, password="s3cret-pass", organization="Org")
    commands.register_user(body, Context(actor="anonymous", request_id="test"))


def task_body(name: str) -> CreateTask:
    return CreateTask(name=name, definition=TaskDefinition(quorum=1, rounds=1,  # type: ignore[arg-type]
                                                           model="digits-mlp"))


def commands_on(store: PostgresEventStore, database_url: str) -> TrainingCommands:
    settings = Settings(database_url=database_url, kafka_bootstrap_servers="none", topic_prefix="race",
                        token_ttl_s=60, relay_enabled=False, db_pool_size=WRITERS, topic_retention_s=0)
    return TrainingCommands(store, settings, NoTopics())


def test_racing_joins_on_one_task_all_succeed(store: CountingStore, database_url: str) -> None:
    """16 users join one task at the same moment: every join succeeds (a lost race is run
    again, never shown to the caller as a 409), and the task lists each of them once."""
    commands = commands_on(store, database_url)
    creator, task = unique("creator"), unique("task")
    users = [unique(f"joiner{i}") for i in range(WRITERS)]
    for name in (creator, *users):
        register(commands, name)
    commands.create_task(task_body(task), Context(actor=creator, request_id="test"))

    def join(index: int) -> None:
        commands.join(task, Context(actor=users[index], request_id="t"))

    in_threads(WRITERS, join)

    with store.session() as session:
        task_id = session.task_id(task)
        assert task_id is not None
        members = [e.data["username"] for e in session.read_stream(f"task-{task_id}")[1:]]
    assert sorted(members) == sorted(users)
    assert store.exclusive_sessions > 0, "no join lost a race; the test proved nothing"
    assert store.verify().ok


def test_racing_creates_of_one_name_have_one_winner(store: CountingStore, database_url: str) -> None:
    """16 users create a task of the same name at once: one gets it, the others a Conflict
    saying the name is taken (not a database error), and only one TaskCreated is stored."""
    commands = commands_on(store, database_url)
    users = [unique(f"creator{i}") for i in range(WRITERS)]
    for name in users:
        register(commands, name)
    task = unique("contested")
    outcomes: list[str] = []

    def create(index: int) -> None:
        try:
            commands.create_task(task_body(task), Context(actor=users[index], request_id="t"))
            outcomes.append("created")
        except Conflict as exc:
            outcomes.append("conflict" if "already exists" in exc.message else exc.message)

    in_threads(WRITERS, create)

    assert sorted(outcomes) == ["conflict"] * (WRITERS - 1) + ["created"]
    created = [e for e in store.read_all(0, 1_000_000)
               if e.type == "TaskCreated" and e.data["name"] == task]
    assert len(created) == 1
    assert store.verify().ok


def test_a_session_takes_the_lock_only_when_it_writes(store: CountingStore) -> None:
    """Reads alone never take the append lock; the first write does, and keeps it."""
    with store.session() as session:
        assert isinstance(session, PostgresSession)
        session.stream_version(unique("read"))
        assert not session.locked
        session.append(unique("write"), ANY, [joined("a")])
        assert session.locked


def test_storing_a_model_leaves_the_log_to_other_writers(store: CountingStore) -> None:
    """A model artifact (40 MB at 10M parameters) is written without the append lock: while its
    transaction is still open, another command appends and commits. Before, the upload held the
    lock until its commit, and every command of every task waited about a second per round."""
    task, content = unique("task"), bytes(range(256)) * 20_000
    digest = hashlib.sha256(content).hexdigest()
    with store.session() as session:
        assert isinstance(session, PostgresSession)
        session.store_artifact(task, digest, content)
        session.remember_response(unique("actor"), unique("key"), "request", 201, {"sha256": digest})
        assert not session.locked
        with store.connection() as other:
            held = other.execute(
                "SELECT count(*) AS n FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                " WHERE c.relname = 'events' AND l.mode = 'ExclusiveLock' AND l.pid = %s",
                (session.conn.info.backend_pid,)).fetchone()
        assert held is not None and held["n"] == 0
        beside = store.append(unique("beside"), ANY, [joined("a")])
    with store.session() as session:
        assert session.artifact_size(task, digest) == len(content)
    assert [r.position for r in store.read_all(beside[0].position - 1, 1)] == [beside[0].position]
    assert store.verify().ok


def test_a_model_is_stored_without_pglz_and_read_back_unchanged(store: CountingStore) -> None:
    """Migration 0009: artifacts are compressed with lz4 (or not at all), never with pglz, which
    spent 0.8 s of a 1.2 s insert on a 40 MB model it could not shrink. A compressible artifact
    (a JSON header, then half zeros) shows which method stored it; its bytes come back as sent."""
    header = b'{"arrays":[{"name":"w000","dtype":"<f4","shape":[1000,500]}]}' * 8
    content = header + bytes(range(256)) * 4_000 + bytes(1_000_000)
    task, digest = unique("task"), hashlib.sha256(content).hexdigest()
    with store.session() as session:
        assert isinstance(session, PostgresSession)
        session.store_artifact(task, digest, content)
    with store.connection() as conn:
        row = conn.execute("SELECT pg_column_compression(content) AS method, content FROM artifacts"
                           " WHERE task_id = %s AND sha256 = %s", (task, digest)).fetchone()
    assert row is not None
    assert row["method"] in ("lz4", None), f"stored with {row['method']}"
    assert bytes(row["content"]) == content


def test_an_aborted_pipeline_reports_the_write_that_failed() -> None:
    """Seen once under load in `test_racing_creates_of_one_name_have_one_winner`: the unique
    task name failed in the pipeline, then leaving the pipeline raised PipelineAborted over
    it, which `connection()` took for an outage (a 503 instead of a retried race). The store
    now raises the write's own error; anything else passes through unchanged."""
    import psycopg

    from api.store.postgres import write_error

    unique_row = psycopg.errors.UniqueViolation("duplicate key value violates unique constraint")
    aborted = psycopg.errors.PipelineAborted("pipeline aborted")
    aborted.__context__ = unique_row
    assert write_error(aborted) is unique_row

    alone = psycopg.errors.PipelineAborted("pipeline aborted")
    assert write_error(alone) is alone
    outage = psycopg.OperationalError("server closed the connection")
    outage.__context__ = unique_row
    assert write_error(outage) is outage
    assert write_error(unique_row) is unique_row
