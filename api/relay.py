"""Outbox relay: publish every committed event, in position order, to `<prefix>.events`.

Delivery is at least once: the relay records the last position the broker has
acknowledged, so after a crash it resumes there and may repeat a few events
(consumers de-duplicate by the `event_id` header). Only one relay publishes at
a time: each API process runs one, and they compete for a PostgreSQL advisory
lock held on a dedicated connection for as long as the relay is leader. The
Kafka side (the writer and its lost-topic check) is `streams.eventlog`.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import Any

import psycopg

from api.retention import sweep, sweep_interval_s
from api.settings import Settings
from api.store.postgres import NOTIFY_CHANNEL
from api.store.sql import read_all_from
from streams.errors import StreamsError
from streams.eventlog import EventLogWriter, TopicLost
from streams.topics import TopicAdmin

log = logging.getLogger("musketeer.relay")
LEADER_LOCK_KEY = 0x72656C61  # "rela": any constant shared by every relay works
_RELAY_NAME = "events"


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
            if not self._become_leader(conn):
                return
            log.info("relay is leader; publishing to %s", self.settings.events_topic)
            conn.execute(f"LISTEN {NOTIFY_CHANNEL}")
            writer = EventLogWriter(self.settings.broker, self.settings.events_topic)
            try:
                self._publish_while_leader(conn, writer)
            finally:
                writer.close()

    def _become_leader(self, conn: psycopg.Connection[Any]) -> bool:
        while not self._stop.is_set():
            got = conn.execute("SELECT pg_try_advisory_lock(%s)", (LEADER_LOCK_KEY,))
            if got.fetchone()[0]:  # type: ignore[index]
                return True
            self._stop.wait(self.idle_wait_s)
        return False

    def _publish_while_leader(self, conn: psycopg.Connection[Any], writer: EventLogWriter) -> None:
        position, topic_id = _published(conn)
        next_sweep = 0.0
        while not self._stop.is_set():
            try:
                position, topic_id = self._publish_batch(conn, writer, position, topic_id)
            except TopicLost as exc:
                # The whole log goes out again, after whatever the new topic already holds
                # (consumers drop repeats by event id). The topic is not emptied first: deleting
                # a topic that readers are assigned to can crash their librdkafka (seen here).
                # Position 0 is stored first, so a relay that dies before the log is out again
                # starts over too; leadership starts over with a new producer, since this one
                # may hold idempotence state that a restarted broker no longer knows.
                _store_published(conn, 0, None)
                raise TopicLost(f"{exc}; publishing the log again from the start") from exc
            if time.monotonic() >= next_sweep:
                self._sweep(conn)
                next_sweep = time.monotonic() + sweep_interval_s(self.settings.topic_retention_s)

    def _sweep(self, conn: psycopg.Connection[Any]) -> None:
        # Retention rides on the leader so exactly one process deletes topics;
        # a failure is retried at the next sweep and never stops the relay.
        try:
            sweep(conn, TopicAdmin(self.settings.broker),
                  self.settings.topic_retention_s)
        except StreamsError as exc:
            log.warning("retention sweep failed: %s", exc)

    def _publish_batch(self, conn: psycopg.Connection[Any], writer: EventLogWriter, after: int,
                       published_to: str | None) -> tuple[int, str | None]:
        """Publish the next batch after position `after`; the last position published and the id
        of the topic it is on (checked before the batch, so known even when nothing was new)."""
        topic_id = writer.check(after, published_to)
        records = read_all_from(conn, after, self.batch)
        if not records:
            # Wake on the NOTIFY that every append sends, or poll after a second.
            for _ in conn.notifies(timeout=self.idle_wait_s, stop_after=1):
                pass
            return after, topic_id
        writer.publish(records)
        last = records[-1].position
        _store_published(conn, last, topic_id)
        self.published += len(records)
        return last, topic_id


def _published(conn: psycopg.Connection[Any]) -> tuple[int, str | None]:
    """The last position the broker acknowledged, and the id of the topic it went to."""
    row = conn.execute("SELECT position, topic_id FROM relay_state WHERE name = %s",
                       (_RELAY_NAME,)).fetchone()
    return (int(row[0]), row[1]) if row else (0, None)


def _store_published(conn: psycopg.Connection[Any], position: int, topic_id: str | None) -> None:
    conn.execute(
        "INSERT INTO relay_state (name, position, topic_id) VALUES (%s, %s, %s)"
        " ON CONFLICT (name) DO UPDATE SET position = EXCLUDED.position, topic_id = EXCLUDED.topic_id",
        (_RELAY_NAME, position, topic_id),
    )
