"""Topic names, topic admin and a real produce/consume round trip on the broker."""

from __future__ import annotations

import os
import time
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from infra.errors import PlatformError
from infra.tansu import BrokerProcess, find_free_port, port_in_use, start_broker
from streams.config import consumer_config, producer_config
from streams.errors import BrokerUnavailable
from streams.topics import TopicAdmin, events_topic, task_topics
from tests.conftest import eventually

EXTERNAL = bool(os.environ.get("MUSKETEER_TEST_KAFKA"))


def unique_prefix() -> str:
    """A topic prefix no other test uses: isolation by names, not by clean-ups."""
    return f"t{uuid.uuid4().hex[:10]}"


# --- names and settings (no broker) ---------------------------------------


def test_task_topics_follow_the_design_names() -> None:
    """A task's topics are <prefix>.task.<id>.broadcast and .updates."""
    topics = task_topics("musketeer", "t-42")

    assert topics.broadcast == "musketeer.task.t-42.broadcast"
    assert topics.updates == "musketeer.task.t-42.updates"
    assert events_topic("musketeer") == "musketeer.events"


def test_illegal_topic_name_is_refused() -> None:
    """A task id Kafka cannot carry in a topic name fails before reaching the broker."""
    with pytest.raises(ValueError, match="not a legal topic name"):
        task_topics("musketeer", "a/b")


def test_client_settings_are_durable_and_manual_commit() -> None:
    """Producers wait for all replicas; consumers commit by hand and start at the beginning."""
    producer = producer_config("b:9092", linger_ms=1)
    consumer = consumer_config("b:9092")

    assert producer["acks"] == "all" and producer["enable.idempotence"] is True
    assert producer["message.max.bytes"] > 2 * 1024 * 1024
    assert producer["linger_ms"] == 1
    assert consumer["enable.auto.commit"] is False
    assert consumer["auto.offset.reset"] == "earliest"
    assert consumer["group.id"] != consumer_config("b:9092")["group.id"]


# --- against the broker ---------------------------------------------------


@pytest.mark.integration
def test_create_is_idempotent_and_listed(broker: BrokerProcess) -> None:
    """Creating topics twice is fine; they then exist and are listed."""
    admin = TopicAdmin(broker.bootstrap)
    topics = task_topics(unique_prefix(), "task1")

    admin.create(topics.names())
    admin.create(topics.names())

    assert eventually(lambda: set(topics.names()) <= admin.list())
    assert admin.exists(topics.broadcast)


@pytest.mark.integration
def test_delete_is_idempotent(broker: BrokerProcess) -> None:
    """Deleted topics are gone; deleting again, or an unknown topic, is no error."""
    admin = TopicAdmin(broker.bootstrap)
    topics = task_topics(unique_prefix(), "task1")
    admin.create(topics.names())

    admin.delete(topics.names())
    admin.delete([*topics.names(), f"{unique_prefix()}.never"])

    assert eventually(lambda: not admin.exists(topics.broadcast))


@pytest.mark.integration
def test_produce_and_consume_round_trip(broker: BrokerProcess) -> None:
    """Messages (one above 1 MiB) written with producer_config come back in order via assign()."""
    topic = task_topics(unique_prefix(), "task1").broadcast
    TopicAdmin(broker.bootstrap).create([topic])
    payloads = [os.urandom(1024 * 1024 + 512), b"second", b"third"]
    errors: list[object] = []

    producer = Producer(producer_config(broker.bootstrap))
    for payload in payloads:
        producer.produce(topic, payload, key=b"k", on_delivery=lambda err, _msg: errors.append(err))
    assert producer.flush(15) == 0 and errors == [None, None, None]

    # assign(), not subscribe(): a group join on tansu takes about 23 s.
    consumer = Consumer(consumer_config(broker.bootstrap))
    consumer.assign([TopicPartition(topic, 0, 0)])
    received = _read(consumer, len(payloads))
    consumer.close()

    assert received == payloads


def _read(consumer: Consumer, count: int, timeout_s: float = 15.0) -> list[bytes]:
    received: list[bytes] = []
    deadline = time.monotonic() + timeout_s
    while len(received) < count and time.monotonic() < deadline:
        message = consumer.poll(0.5)
        if message is not None and message.error() is None:
            value = message.value()
            assert value is not None
            received.append(value)
    return received


@pytest.mark.integration
def test_ping_answers_on_the_broker(broker: BrokerProcess) -> None:
    """ping() returns quietly when the broker is there (where nothing listens it raises, below),
    and the broker it reached is the one holding a topic just created."""
    admin = TopicAdmin(broker.bootstrap)
    name = f"{unique_prefix()}.ping"
    admin.create([name])

    admin.ping(timeout_s=5)  # raises BrokerUnavailable if the broker does not answer

    assert admin.exists(name)


def test_ping_unreachable_broker_fails_fast_naming_it() -> None:
    """Nothing listening: BrokerUnavailable at the ping timeout, naming the address and it."""
    address = f"127.0.0.1:{find_free_port()}"

    with pytest.raises(BrokerUnavailable, match=f"{address} did not answer within 1 s"):
        TopicAdmin(address).ping(timeout_s=1.0)


# --- the embedded broker itself -------------------------------------------


@pytest.mark.integration
@pytest.mark.skipif(EXTERNAL, reason="tests the embedded broker")
def test_start_on_a_taken_port_is_refused(broker: BrokerProcess) -> None:
    """Asking for a port that is in use fails at once, naming the port."""
    port = int(broker.bootstrap.rsplit(":", 1)[1])

    with pytest.raises(PlatformError, match=f"port {port}"):
        start_broker(port=port)


@pytest.mark.integration
@pytest.mark.skipif(EXTERNAL, reason="tests the embedded broker")
def test_stopped_broker_frees_its_port(tmp_path: Path) -> None:
    """A broker started on a requested port answers there, and stop() frees the port."""
    port = find_free_port()
    process = start_broker(port=port, log_path=tmp_path / "tansu.log")
    assert process.bootstrap == f"127.0.0.1:{port}" and process.alive()

    process.stop()

    assert not process.alive()
    assert not port_in_use("127.0.0.1", port)
