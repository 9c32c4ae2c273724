"""The outbox relay: every committed event reaches `<prefix>.events` once, in order."""

from __future__ import annotations

import json
import os
import re
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import psycopg
import pytest
from confluent_kafka import Consumer, TopicPartition
from psycopg_pool import ConnectionPool

from api.projections import project
from api.relay import LEADER_LOCK_KEY
from api.store import ANY, EventStore, NewEvent
from api.store.postgres import PostgresEventStore
from infra.procs import find_free_port
from infra.tansu import start_broker
from schema.events import ParticipantJoined
from streams.config import consumer_config
from streams.eventlog import EventLogWriter, TopicLost
from streams.topics import TopicAdmin
from tests.conftest import drop_database, fresh_database, start_api, unique

pytestmark = pytest.mark.integration


@pytest.fixture()
def own_database() -> Iterator[str]:
    url = fresh_database()
    yield url
    drop_database(url)


def append_events(store: EventStore, count: int, pause_s: float = 0.0) -> None:
    for i in range(count):
        event = ParticipantJoined(username=f"user{i}", organization="org")
        store.append(unique("stream"), ANY, [NewEvent(event, actor="relay-test")])
        if pause_s:
            time.sleep(pause_s)


def read_topic(bootstrap: str, topic: str, expected: int, timeout_s: float = 60) -> list[Any]:
    """Every message on the topic until `expected` distinct positions are seen."""
    consumer = Consumer(consumer_config(bootstrap))
    consumer.assign([TopicPartition(topic, 0, 0)])
    messages: list[Any] = []
    distinct: set[int] = set()
    deadline = time.monotonic() + timeout_s
    try:
        while len(distinct) < expected and time.monotonic() < deadline:
            message = consumer.poll(0.5)
            if message is None or message.error():
                continue
            headers = dict(message.headers() or [])
            value = json.loads(message.value())
            messages.append((value["position"], headers["event_id"].decode(), message.key().decode(),
                             value))
            distinct.add(value["position"])
        # Drain anything that follows (late duplicates), briefly.
        end = time.monotonic() + 2
        while time.monotonic() < end:
            message = consumer.poll(0.2)
            if message is not None and not message.error():
                value = json.loads(message.value())
                messages.append((value["position"], dict(message.headers())["event_id"].decode(),
                                 message.key().decode(), value))
    finally:
        consumer.close()
    return messages


def assert_complete_and_ordered(messages: list[Any], total: int) -> int:
    """Each position 1..total appears, first sightings in order; repeats carry the same id."""
    first_ids: dict[int, str] = {}
    order: list[int] = []
    for position, event_id, _key, _value in messages:
        if position in first_ids:
            assert first_ids[position] == event_id, f"position {position} repeated with another id"
            continue
        first_ids[position] = event_id
        order.append(position)
    assert order == list(range(1, total + 1)), "events missing or out of order"
    return len(messages) - total


def test_every_event_is_published_once_in_order(own_database: str, broker: Any,
                                                tmp_path: Path) -> None:
    """A plain consumer sees each committed event once, keyed by stream, in position order."""
    prefix = unique("relay").replace("-", "")
    api = start_api(own_database, broker.bootstrap, tmp_path, prefix)
    try:
        with ConnectionPool(own_database, kwargs={"autocommit": True}) as pool:
            store = PostgresEventStore(pool, projector=project)
            append_events(store, 120)
            messages = read_topic(broker.bootstrap, f"{prefix}.events", 120)
        duplicates = assert_complete_and_ordered(messages, 120)
        assert duplicates == 0
        assert all(key.startswith("stream-") for _p, _i, key, _v in messages)
        assert messages[0][3]["type"] == "ParticipantJoined" and len(messages[0][3]["hash"]) == 64
    finally:
        api.stop()


def test_sigkill_of_the_api_loses_and_reorders_nothing(own_database: str, broker: Any,
                                                       tmp_path: Path) -> None:
    """Events committed before, during and after a SIGKILL of the API all arrive, in order."""
    prefix = unique("kill").replace("-", "")
    api = start_api(own_database, broker.bootstrap, tmp_path, prefix)
    try:
        with ConnectionPool(own_database, kwargs={"autocommit": True}) as pool:
            store = PostgresEventStore(pool, projector=project)
            writer = threading.Thread(target=append_events, args=(store, 300, 0.005))
            writer.start()
            time.sleep(0.6)  # the relay is now mid-stream
            assert writer.is_alive(), "the writer finished before the kill; nothing was tested"
            api.kill()
            time.sleep(0.5)  # commits go on while no relay runs
            api.restart()
            writer.join()
            append_events(store, 50)
            messages = read_topic(broker.bootstrap, f"{prefix}.events", 350)
        assert_complete_and_ordered(messages, 350)
    finally:
        api.stop()


def test_only_one_of_two_api_processes_relays(own_database: str, broker: Any,
                                              tmp_path: Path) -> None:
    """Two API processes on one database: one relay leads; when it dies the other takes over."""
    prefix = unique("pair").replace("-", "")
    first = start_api(own_database, broker.bootstrap, tmp_path, prefix)
    second = start_api(own_database, broker.bootstrap, tmp_path, prefix)
    try:
        with ConnectionPool(own_database, kwargs={"autocommit": True}) as pool:
            store = PostgresEventStore(pool, projector=project)
            append_events(store, 60)
            messages = read_topic(broker.bootstrap, f"{prefix}.events", 60)
            assert assert_complete_and_ordered(messages, 60) == 0, "both relays published"
            leading = relay_leader(own_database, [first, second])
            leading.kill()
            append_events(store, 40)
            messages = read_topic(broker.bootstrap, f"{prefix}.events", 100)
        assert_complete_and_ordered(messages, 100)
        survivor = second if leading is first else first
        assert relay_leader(own_database, [survivor]) is survivor
    finally:
        first.stop()
        second.stop()


def relay_leader(database_url: str, apis: list[Any], timeout_s: float = 30) -> Any:
    """The API process whose relay holds the leader's advisory lock (found by its connection)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        with psycopg.connect(database_url, autocommit=True) as conn:
            row = conn.execute(
                "SELECT a.client_port FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid"
                " WHERE l.locktype = 'advisory' AND l.granted AND l.classid = 0 AND l.objid = %s"
                " AND l.database = (SELECT oid FROM pg_database WHERE datname = current_database())",
                (LEADER_LOCK_KEY,)).fetchone()
        if row is not None:
            for api in apis:
                ports = {c.laddr.port for c in psutil.Process(api.popen.pid).net_connections("tcp")}
                if row[0] in ports:
                    return api
        time.sleep(0.2)
    raise AssertionError("no API process holds the relay's leader lock")


def test_a_broker_that_restarts_empty_gets_the_whole_log_again(own_database: str, tmp_path: Path) -> None:
    """The embedded broker keeps nothing: once it is back, the relay publishes the log from the
    start, so a new consumer of `<prefix>.events` again sees every event, in order."""
    if os.environ.get("MUSKETEER_TEST_KAFKA"):
        pytest.skip("this test kills the embedded broker; a real Kafka is not ours to kill")
    port = find_free_port()
    broker = start_broker(port=port, log_path=tmp_path / "tansu.log")
    prefix = unique("reset").replace("-", "")
    api = start_api(own_database, broker.bootstrap, tmp_path, prefix)
    try:
        with ConnectionPool(own_database, kwargs={"autocommit": True}) as pool:
            store = PostgresEventStore(pool, projector=project)
            append_events(store, 40)
            assert_complete_and_ordered(read_topic(broker.bootstrap, f"{prefix}.events", 40), 40)
            os.kill(broker.pid, signal.SIGKILL)
            broker.stop()
            broker = start_broker(port=port, log_path=tmp_path / "tansu-2.log")
            append_events(store, 30)
            messages = read_topic(broker.bootstrap, f"{prefix}.events", 70, timeout_s=90)
        assert_complete_and_ordered(messages, 70)
    finally:
        api.stop()
        broker.stop()


def recreate(bootstrap: str, topic: str) -> None:
    """What a broker that restarted without its data does to a topic: the same name, empty."""
    admin = TopicAdmin(bootstrap)
    admin.delete([topic])
    admin.create([topic], partitions=1)


def test_the_writer_tells_a_recreated_topic_by_its_id_and_by_its_offsets(own_database: str,
                                                                         broker: Any) -> None:
    """Before a batch, the topic's id; after it, the offsets the broker gave back, which catch
    a batch already on its way when the topic was created again."""
    topic = f"{unique('writer').replace('-', '')}.events"
    with ConnectionPool(own_database, kwargs={"autocommit": True}) as pool:
        store = PostgresEventStore(pool, projector=project)
        append_events(store, 15)
        records = store.read_all()
    writer = EventLogWriter(broker.bootstrap, topic)
    try:
        first = writer.check(0, None)
        writer.publish(records[:10])
        assert writer.check(10, first) == first
        assert writer.check(10, None) == first  # a position stored without an id: not empty, so whole
        recreate(broker.bootstrap, topic)
        with pytest.raises(TopicLost, match=re.escape(f"its id changed from {first} to ")):
            writer.check(10, first)
        with pytest.raises(TopicLost, match="is empty although 10 events were published"):
            writer.check(10, None)
        with pytest.raises(TopicLost, match="offset 0, but offsets up to 9 had been written"):
            writer.publish(records[10:])
    finally:
        writer.close()
    messages = read_topic(broker.bootstrap, topic, 5)
    assert [m[0] for m in messages] == [11, 12, 13, 14, 15], "the batch did not land on the new topic"


def test_a_relay_that_finds_a_stray_batch_on_a_recreated_topic_publishes_the_log_again(
        own_database: str, broker: Any, tmp_path: Path) -> None:
    """A relay killed after its batch landed on a recreated topic, before it stored the batch's
    position: the topic is not empty, so it passed for whole, and events 1-40 were never on it.
    The next relay must see that it is another topic (its id) and publish the whole log again,
    so that a reader from the start sees every event, the log in order after the stray batch."""
    prefix = unique("stray").replace("-", "")
    topic = f"{prefix}.events"
    api = start_api(own_database, broker.bootstrap, tmp_path, prefix)
    try:
        with ConnectionPool(own_database, kwargs={"autocommit": True}) as pool:
            store = PostgresEventStore(pool, projector=project)
            append_events(store, 40)
            assert_complete_and_ordered(read_topic(broker.bootstrap, topic, 40), 40)
            api.stop()
            append_events(store, 5)
            recreate(broker.bootstrap, topic)
            stray = EventLogWriter(broker.bootstrap, topic)
            try:
                stray.publish(store.read_all(after=40))
            finally:
                stray.close()
            api.restart()
            append_events(store, 5)
            messages = read_topic(broker.bootstrap, topic, 50, timeout_s=90)
        positions = [m[0] for m in messages]
        assert positions[:5] == [41, 42, 43, 44, 45]
        assert positions[5:] == list(range(1, 51)), "the log was not published again, whole and in order"
        assert_complete_and_ordered(messages[5:], 50)  # and each repeat carries the same event id
        assert "publishing the log again from the start" in api.log_path.read_text()
    finally:
        api.stop()
