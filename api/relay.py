"""Outbox relay: publish every committed event, in position order, to `<prefix>.events`.

Delivery is at least once: the relay records the last position the broker has
acknowledged, so after a crash it resumes there and may repeat a few events
(consumers de-duplicate by the `event_id` header). Only one relay publishes at
a time: each API process runs one, and they compete for a PostgreSQL advisory
lock held on a dedicated connection for as long as the relay is leader.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import psycopg
from confluent_kafka import Consumer, KafkaException, Producer, TopicPartition

from api.retention import sweep, sweep_interval_s
from api.settings import Settings
from api.store import NOTIFY_CHANNEL, read_all_from
from schema.events import RecordedEvent
from streams.config import consumer_config, producer_config
from streams.errors import StreamsError
from streams.topics import TopicAdmin

log = logging.getLogger("musketeer.relay")
LEADER_LOCK_KEY = 0x72656C61  # "rela": any constant shared by every relay works
_RELAY_NAME = "events"


def event_message(record: RecordedEvent) -> bytes:
    """The JSON value of a relayed event."""
    return json.dumps(record.model_dump(mode="json"), separators=(",", ":")).encode()


class OutboxRelay:
    """A background thread that tails the log and publishes it."""

    def __init__(self, settings: Settings, batch: int = 500, idle_wait_s: float = 1.0) -> None:
        self.settings = settings
        self.batch = batch
        self.idle_wait_s = idle_wait_s
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="outbox-relay", daemon=True)
        self.published = 0

    def start(self) -> None:
        """Start the relay thread."""
        self._thread.start()

    def stop(self, timeout_s: float = 10.0) -> None:
        """Ask the thread to stop and wait for it."""
        self._stop.set()
        self._thread.join(timeout_s)

    def _run(self) -> None:
        # Any failure (database or broker down) drops leadership and retries
        # after a pause; the stored position makes the retry safe.
        while not self._stop.is_set():
            try:
                self._lead()
            except Exception as exc:
                log.warning("relay paused: %s", exc)
                self._stop.wait(2.0)

    def _lead(self) -> None:
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
                if got.fetchone()[0]:  # type: ignore[index]
                    break
                self._stop.wait(self.idle_wait_s)
            if self._stop.is_set():
                return
            log.info("relay is leader; publishing to %s", self.settings.events_topic)
            _ensure_topic(self.settings)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            # Idempotence keeps broker order equal to log order through retries. Never
            # auto-create the topic: a broker's default would give it several partitions.
            producer = Producer(producer_config(self.settings.kafka_bootstrap_servers,
                                                **{"allow.auto.create.topics": False}))
            topic = _EventsTopic(self.settings)
            try:
                position = _last_position(conn)
                if position and topic.lost():
                    log.warning("topic %s is empty although events up to position %d were "
                                "published (a broker restarted without its data?); publishing "
                                "the log again from the start", self.settings.events_topic, position)
                    position = 0
                next_sweep = 0.0
                while not self._stop.is_set():
                    if position and topic.lost():
                        raise TopicLost(f"topic {self.settings.events_topic} lost its events")
                    position = self._publish_batch(conn, producer, position)
                    if time.monotonic() >= next_sweep:
                        self._sweep(conn)
                        next_sweep = time.monotonic() + sweep_interval_s(self.settings.topic_retention_s)
            finally:
                topic.close()

    def _sweep(self, conn: psycopg.Connection[Any]) -> None:
        # Retention rides on the leader so exactly one process deletes topics;
        # a failure is retried at the next sweep and never stops the relay.
        try:
            sweep(conn, TopicAdmin(self.settings.kafka_bootstrap_servers),
                  self.settings.topic_retention_s)
        except StreamsError as exc:
            log.warning("retention sweep failed: %s", exc)

    def _publish_batch(self, conn: psycopg.Connection[Any], producer: Producer, after: int) -> int:
        records = read_all_from(conn, after, self.batch)
        if not records:
            # Wake on the NOTIFY that every append sends, or poll after a second.
            for _ in conn.notifies(timeout=self.idle_wait_s, stop_after=1):
                pass
            return after
        errors: list[str] = []
        for record in records:
            producer.produce(
                self.settings.events_topic,
                key=record.stream_id.encode(),
                value=event_message(record),
                headers={"event_id": str(record.metadata.get("event_id", "")),
                         "position": str(record.position), "type": record.type},
                on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
            )
        remaining = producer.flush(30)
        if remaining or errors:
            raise KafkaException(f"broker did not acknowledge {remaining} events: {errors[:3]}")
        last = records[-1].position
        conn.execute(
            "INSERT INTO relay_state (name, position) VALUES (%s, %s)"
            " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position",
            (_RELAY_NAME, last),
        )
        self.published += len(records)
        return last


class TopicLost(StreamsError):
    """The events topic no longer holds what was published to it; leadership starts over."""


class _EventsTopic:
    """Asks the broker whether the events topic lost what was published to it."""

    def __init__(self, settings: Settings) -> None:
        self.topic = settings.events_topic
        self._consumer = Consumer(consumer_config(settings.kafka_bootstrap_servers))

    def lost(self) -> bool:
        """Whether the topic is gone or empty (asked when something was published before).

        Kafka's offsets only grow, even when retention deletes old messages: an empty
        topic after publishing was recreated, by a broker that restarted without its
        data. Asked before every batch (and about once a second when idle), so only a
        batch already on its way at the restart can reach the new topic unnoticed.
        """
        metadata = self._consumer.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return True
        return all(self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1] == 0
                   for p in metadata.partitions)

    def close(self) -> None:
        self._consumer.close()


def _ensure_topic(settings: Settings) -> None:
    # One partition: consumers must see the log in one global order, not per key.
    TopicAdmin(settings.kafka_bootstrap_servers).create([settings.events_topic], partitions=1)


def _last_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT position FROM relay_state WHERE name = %s", (_RELAY_NAME,)).fetchone()
    return int(row[0]) if row else 0

