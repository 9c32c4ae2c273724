"""The relayed event log, `<prefix>.events`: its writer (the outbox relay's) and its reader.

The writer publishes committed events in position order to a one-partition topic, keyed by
stream. The reader reads by partition assignment from the beginning (no consumer group: every
daemon must see every event, and group joins are slow on the embedded broker). Delivery is at
least once, so the reader drops repeats by position.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, Producer, TopicPartition

from schema.events import RecordedEvent
from streams.config import Broker, as_broker, consumer_config, producer_config
from streams.errors import BrokerUnavailable, StreamsError
from streams.topics import TopicAdmin

log = logging.getLogger("musketeer.events")


def event_message(record: RecordedEvent) -> bytes:
    """The JSON value of a relayed event."""
    return json.dumps(record.model_dump(mode="json"), separators=(",", ":")).encode()


class EventLogWriter:
    """Publishes recorded events, in the order given, and notices a topic that lost them."""

    def __init__(self, broker: Broker | str, topic: str) -> None:
        self.broker = as_broker(broker)
        self.topic = topic
        # One partition: consumers must see the log in one global order, not per key.
        TopicAdmin(self.broker).create([topic], partitions=1)
        # Idempotence keeps broker order equal to log order through retries. Never
        # auto-create the topic: a broker's default would give it several partitions.
        self._producer = Producer(producer_config(self.broker, **{"allow.auto.create.topics": False}))
        self._probe = Consumer(consumer_config(self.broker))

    def publish(self, records: Sequence[RecordedEvent], timeout_s: float = 30.0) -> None:
        """Send the records and wait until the broker acknowledged every one (StreamsError if not)."""
        errors: list[str] = []
        for record in records:
            self._producer.produce(
                self.topic, key=record.stream_id.encode(), value=event_message(record),
                headers={"event_id": str(record.metadata.get("event_id", "")),
                         "position": str(record.position), "type": record.type},
                on_delivery=lambda err, _msg: errors.append(str(err)) if err else None,
            )
        remaining = self._producer.flush(timeout_s)
        if remaining or errors:
            raise StreamsError(f"broker did not acknowledge {remaining} events: {errors[:3]}")

    def lost(self) -> bool:
        """Whether the topic is gone or empty (asked when something was published before).

        Kafka's offsets only grow, even when retention deletes old messages: an empty
        topic after publishing was recreated, by a broker that restarted without its
        data. Asked before every batch (and about once a second when idle), so only a
        batch already on its way at the restart can reach the new topic unnoticed.
        """
        metadata = self._probe.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return True
        return all(self._probe.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1] == 0
                   for p in metadata.partitions)

    def close(self) -> None:
        """Leave the broker."""
        self._probe.close()


@dataclass(frozen=True)
class LogEvent:
    """One relayed event: where it stands in the log, its stream, type and data."""

    position: int
    stream_id: str
    type: str
    data: dict[str, Any]


class EventFeed:
    """Tail the relayed event log; `poll` returns new events in log order, each once."""

    def __init__(self, broker: Broker | str, topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer(consumer_config(broker))
        self._last_position = 0
        try:
            self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot read {topic} from {broker}: {exc}") from exc

    def poll(self, timeout_s: float = 1.0, max_events: int = 500) -> list[LogEvent]:
        """Events that arrived within `timeout_s` (possibly none)."""
        events: list[LogEvent] = []
        for message in self._consumer.consume(max_events, timeout_s):
            if message.error():
                continue  # end-of-partition notices and transient errors: nothing to read
            event = _parse(message.value())
            if event is None or event.position <= self._last_position:
                continue
            self._last_position = event.position
            events.append(event)
        return events

    def close(self) -> None:
        """Leave the broker."""
        self._consumer.close()

    def __enter__(self) -> EventFeed:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _parse(value: bytes | None) -> LogEvent | None:
    try:
        raw = json.loads(value or b"")
        return LogEvent(int(raw["position"]), str(raw["stream_id"]), str(raw["type"]),
                        dict(raw["data"]))
    except (ValueError, KeyError, TypeError):
        # The topic is ours, but a reader must never die on one bad message.
        log.warning("skipped a malformed message on the events topic")
        return None
