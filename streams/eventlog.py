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


class TopicLost(StreamsError):
    """The events topic no longer holds what was published to it (a broker restarted empty)."""


class EventLogWriter:
    """Publishes recorded events, in the order given, and notices a topic that lost them.

    A broker that restarted without its data creates the topic again under the same name.
    Two things give that away: the topic's id, which is new, and the offsets the broker
    gives back, which start again from 0 (Kafka's offsets only grow, even when retention
    deletes old messages).
    """

    def __init__(self, broker: Broker | str, topic: str) -> None:
        self.broker = as_broker(broker)
        self.topic = topic
        self._admin = TopicAdmin(self.broker)
        # One partition: consumers must see the log in one global order, not per key.
        self._admin.create([topic], partitions=1)
        # Idempotence keeps broker order equal to log order through retries. Never
        # auto-create the topic: a broker's default would give it several partitions.
        self._producer = Producer(producer_config(self.broker, **{"allow.auto.create.topics": False}))
        self._probe = Consumer(consumer_config(self.broker))
        # A batch landing below this offset landed on a recreated topic. Some brokers (tansu)
        # report the last batch's first offset + 1 as the end: that understates the end, so
        # it can only make this check miss, never raise on a topic that is whole.
        self._next_offset = self._end_offset() or 0

    def check(self, published: int, published_to: str | None) -> str:
        """The topic's id, once it is clear that the `published` events went to this topic.

        `published_to` is the id of the topic they went to (None if unknown: positions
        stored by an older relay). TopicLost if the topic is gone or has another id; with
        no id to compare, if it is empty although something was published.
        """
        current = self._admin.ids([self.topic]).get(self.topic)
        if current is None:
            raise TopicLost(f"topic {self.topic} is gone")
        if published and published_to is not None and current != published_to:
            raise TopicLost(f"topic {self.topic} was created again (its id changed from "
                            f"{published_to} to {current}; a broker restarted without its data?)")
        if published and published_to is None and not self._end_offset():
            raise TopicLost(f"topic {self.topic} is empty although {published} events were "
                            "published to it (a broker restarted without its data?)")
        return current

    def publish(self, records: Sequence[RecordedEvent], timeout_s: float = 30.0) -> None:
        """Send the records and wait until the broker acknowledged every one (StreamsError if not).

        TopicLost if they landed on a recreated topic: the offsets the broker gives back
        catch a batch already on its way when the broker restarted, which `check` before
        the batch cannot.
        """
        errors: list[str] = []
        offsets: list[int] = []

        def delivered(err: Any, message: Any) -> None:
            if err:
                errors.append(str(err))
            else:
                offsets.append(message.offset())

        for record in records:
            self._producer.produce(
                self.topic, key=record.stream_id.encode(), value=event_message(record),
                headers={"event_id": str(record.metadata.get("event_id", "")),
                         "position": str(record.position), "type": record.type},
                on_delivery=delivered,
            )
        remaining = self._producer.flush(timeout_s)
        if remaining or errors:
            raise StreamsError(f"broker did not acknowledge {remaining} events: {errors[:3]}")
        if not offsets:
            return
        expected, self._next_offset = self._next_offset, max(offsets) + 1
        if min(offsets) < expected:
            raise TopicLost(f"topic {self.topic} took events at offset {min(offsets)}, but offsets up "
                            f"to {expected - 1} had been written to it: it was created again (a "
                            "broker restarted without its data?)")

    def _end_offset(self) -> int | None:
        """The topic's end offset (None if the topic is gone)."""
        metadata = self._probe.list_topics(self.topic, timeout=10).topics.get(self.topic)
        if metadata is None or metadata.error is not None or not metadata.partitions:
            return None
        return sum(self._probe.get_watermark_offsets(TopicPartition(self.topic, p), timeout=10)[1]
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
