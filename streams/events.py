"""A reader of `<prefix>.events`, the relayed event log, for daemons that react to events.

It reads by partition assignment from the beginning (no consumer group: every
daemon must see every event, and group joins are slow on the embedded broker).
Delivery is at least once, so repeats are dropped by position.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from typing import Any

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaException, TopicPartition

from streams.config import consumer_config
from streams.errors import BrokerUnavailable

log = logging.getLogger("musketeer.events")


@dataclass(frozen=True)
class LogEvent:
    """One relayed event: where it stands in the log, its stream, type and data."""

    position: int
    stream_id: str
    type: str
    data: dict[str, Any]


class EventFeed:
    """Tail the relayed event log; `poll` returns new events in log order, each once."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        self.topic = topic
        self._consumer = Consumer(consumer_config(bootstrap))
        self._last_position = 0
        try:
            self._consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
        except KafkaException as exc:
            raise BrokerUnavailable(f"cannot read {topic} from {bootstrap}: {exc}") from exc

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
