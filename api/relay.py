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
from confluent_kafka import KafkaException, Producer

from api.retention import sweep, sweep_interval_s
from api.settings import Settings
from api.store import NOTIFY_CHANNEL, read_all_from
from schema.events import RecordedEvent
from streams.config import producer_config
from streams.errors import StreamsError
from streams.topics import TopicAdmin

log = logging.getLogger("musketeer.relay")
_LEADER_LOCK_KEY = 0x72656C61  # "rela": any constant shared by every relay works
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
            except Exception as exc:  # noqa: BLE001
                log.warning("relay paused: %s", exc)
                self._stop.wait(2.0)

    def _lead(self) -> None:
        with psycopg.connect(self.settings.database_url, autocommit=True) as conn:
            while not self._stop.is_set():
                got = conn.execute("SELECT pg_try_advisory_lock(%s)", (_LEADER_LOCK_KEY,))
                if got.fetchone()[0]:  # type: ignore[index]
                    break
                self._stop.wait(self.idle_wait_s)
            if self._stop.is_set():
                return
            log.info("relay is leader; publishing to %s", self.settings.events_topic)
            _ensure_topic(self.settings)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            # Idempotence keeps broker order equal to log order through retries.
            producer = Producer(producer_config(self.settings.kafka_bootstrap_servers))
            position = _last_position(conn)
            next_sweep = 0.0
            while not self._stop.is_set():
                position = self._publish_batch(conn, producer, position)
                if time.monotonic() >= next_sweep:
                    self._sweep(conn)
                    next_sweep = time.monotonic() + sweep_interval_s(self.settings.topic_retention_s)

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


def _ensure_topic(settings: Settings) -> None:
    # One partition: consumers must see the log in one global order, not per key.
    TopicAdmin(settings.kafka_bootstrap_servers).create([settings.events_topic], partitions=1)


def _last_position(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute("SELECT position FROM relay_state WHERE name = %s", (_RELAY_NAME,)).fetchone()
    return int(row[0]) if row else 0

