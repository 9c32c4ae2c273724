"""Reading payloads from topics: frames reassembled, verified, and handed over one by one.

The reader reads by partition assignment (no consumer group) and turns everything it cannot
use into a Rejected delivery instead of an exception, so one bad message never stops a
participant or the aggregator. It notices topics that a restarted broker lost, and reads them
again from the start.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from types import TracebackType
from typing import Any, Self

from confluent_kafka import OFFSET_BEGINNING, Consumer, KafkaError, KafkaException, Message, TopicPartition

from schema.envelope import Envelope, EnvelopeError
from streams.config import Broker, as_broker, consumer_config
from streams.errors import UNREACHABLE, BrokerUnavailable, StreamsError
from streams.framing import FrameError, Payload, Reassembler
from streams.topics import TopicAdmin

_LOG = logging.getLogger("streams.kafka")

# Reader settings on top of consumer_config:
_READER_OVERRIDES: dict[str, Any] = {
    # Room for several 1 MiB frames per partition per fetch, so a large
    # payload streams in without one round trip per frame.
    "max.partition.fetch.bytes": 8 * 1024 * 1024,
    "fetch.max.bytes": 64 * 1024 * 1024,
    # librdkafka's prefetch queue per reader: it bounds the memory of frames fetched ahead of
    # poll(). Its default, 64 MiB, was more than the whole of a 10M-parameter aggregator's
    # budget beside its running sums; at 16 MiB a full queue made the reader wait out
    # librdkafka's 1 s fetch.queue.backoff.ms before fetching again (10M x 8: 3.8-3.9 ->
    # 5.0-5.3 s a round), so the backoff is 10 ms. With _CONSUME_BATCH at 4 the memory the
    # rounds add went from 124-128 to 104-105 MiB at 10M x 8, 3.6-3.8 s a round either way.
    "queued.max.messages.kbytes": 16 * 1024,
    "fetch.queue.backoff.ms": 10,
    # tansu 0.6 does not answer a waiting fetch as soon as data arrives (Kafka does): a
    # message produced while a reader waited reached it after a median 77 ms, at most 232,
    # with librdkafka's 500 ms wait, and 11 / 51 ms with 100 ms; each hop of a round
    # (weights out, updates back) paid that. At 100 ms (bench/round_bench.py, two
    # runs each): 1M params x 2 / x 8 0.27-0.39 / 0.34-0.43 -> 0.16 / 0.27-0.31 s a round,
    # 10M x 2 / x 8 1.06-1.26 / 2.90-3.19 -> 0.97-1.04 / 2.42-2.61 s. 20 ms bought no more,
    # and an idle reader costs the broker more the shorter the wait: 32 idle readers took
    # 5 % (500 ms), 12 % (100 ms), 34 % (20 ms) of a core of tansu. The frame tansu sometimes
    # skips under concurrent appends (seen more often at short waits) is read again: see
    # _GAP_REREADS.
    "fetch.wait.max.ms": 100,
    "logger": _LOG,
}
# Frames taken from librdkafka per consume() call: at most ~4 MiB of chunk
# values alive in Python at once.
_CONSUME_BATCH = 4
# poll() hands over payloads until their sizes pass this, then keeps the
# frames it fetched for the next call: small payloads come in batches, large
# ones one at a time.
_DELIVER_BYTES = 8 * 1024 * 1024
# Longest single wait inside poll(): an incomplete payload's expiry is noticed
# within this, even during a long poll().
_WAIT_SLICE_S = 0.5
# Our topics' offsets are contiguous (no compaction, no transactions), yet with several
# producers appending to one partition, tansu 0.6 sometimes hands a reader a frame past one it
# has not yet shown: the skipped frame is on the topic (a fresh reader gets it), and without it
# the payload expired after its timeout and the round went on without that sender. A reader
# that sees an offset jump goes back to the first offset it has not seen, this many times per
# gap; a gap still there after that is taken as real (a topic compacted on a real Kafka).
_GAP_REREADS = 5


@dataclass(frozen=True)
class Received:
    """A complete, verified payload; offset is that of the frame that completed it."""

    payload: Payload
    topic: str
    partition: int
    offset: int


@dataclass(frozen=True)
class Rejected:
    """A frame or payload that was refused, and why; offset is that of the frame that showed it."""

    reason: str
    envelope: Envelope | None
    topic: str
    partition: int
    offset: int


Delivery = Received | Rejected


@dataclass(frozen=True)
class _Where:
    topic: str
    partition: int
    offset: int


class PayloadReader:
    """Reads payloads from every partition of some topics, by assignment rather than a group."""

    def __init__(self, broker: Broker | str, topics: list[str], *, from_beginning: bool = True,
                 reassembler: Reassembler | None = None, timeout_s: float = 10.0,
                 verifier: Callable[[Envelope], str | None] | None = None) -> None:
        self.broker = as_broker(broker)
        self.bootstrap = self.broker.bootstrap
        self.reassembler = reassembler if reassembler is not None else Reassembler(verifier=verifier)
        # Where each pending payload's first frame was read: an expired
        # payload is reported there.
        self._first_seen: dict[str, tuple[Envelope, _Where]] = {}
        # Frames taken from librdkafka but not yet handled: poll() stops after
        # a large payload completes, so only one is in memory at a time.
        self._backlog: deque[Message] = deque()
        self._consumer = Consumer(consumer_config(self.broker, **_READER_OVERRIDES))
        self._closed = False
        # When the last frame came (monotonic): a reader that is receiving frames reads a live
        # topic, so callers ask the broker whether it lost the topic only once frames stop.
        self.last_frame_at = time.monotonic()
        self._topics = list(topics)
        self.resets = 0
        # The next offset expected on each (topic, partition), and how often each gap was re-read.
        self._expected: dict[tuple[str, int], int] = {}
        self._rereads: dict[tuple[str, int, int], int] = {}
        self.gaps_reread = 0
        self._admin: TopicAdmin | None = None
        try:
            self._assigned = self._partitions(topics, from_beginning, timeout_s)
            self._consumer.assign(self._assigned)
        except BaseException:
            self._consumer.close()
            raise
        # The ids of the topics as we start reading them (see detect_reset).
        self._topic_ids = self._read_topic_ids()

    def _partitions(self, topics: list[str], from_beginning: bool, timeout_s: float) -> list[TopicPartition]:
        # assign(), not subscribe(): every reader must see every message (a
        # shared group would split them), and a group join on tansu takes ~23 s.
        assigned = []
        for topic in topics:
            for partition in self._partition_ids(topic, timeout_s):
                offset = OFFSET_BEGINNING if from_beginning else self._end(topic, partition, timeout_s)
                assigned.append(TopicPartition(topic, partition, offset))
        return assigned

    def _partition_ids(self, topic: str, timeout_s: float) -> list[int]:
        try:
            metadata = self._consumer.list_topics(topic, timeout=timeout_s).topics[topic]
        except KafkaException as exc:
            raise self._translate(exc, f"list partitions of topic {topic!r}", timeout_s) from exc
        if metadata.error is not None or not metadata.partitions:
            raise StreamsError(f"topic {topic!r} on broker {self.bootstrap} cannot be read: "
                               f"{metadata.error or 'no partitions'}")
        return sorted(metadata.partitions)

    def _end(self, topic: str, partition: int, timeout_s: float) -> int:
        # The high watermark now, not OFFSET_END: OFFSET_END is resolved at
        # the first fetch, and would skip what is written in between.
        try:
            _low, high = self._consumer.get_watermark_offsets(TopicPartition(topic, partition), timeout=timeout_s)
        except KafkaException as exc:
            raise self._translate(exc, f"find the end of topic {topic!r}", timeout_s) from exc
        return int(high)

    def detect_reset(self, timeout_s: float = 2.0) -> bool:
        """Whether a topic was lost (a broker restart without storage); if so read it anew.

        A topic that vanished, that has another id than when we started reading it,
        or whose end now lies before our position, was recreated: every reader starts
        it again from the beginning. (The id catches a recreated topic that others
        have already written past our old position.)
        """
        lost = False
        for partition in self._assigned:
            probe = TopicPartition(partition.topic, partition.partition)
            try:
                _low, high = self._consumer.get_watermark_offsets(probe, timeout=timeout_s)
                position = self._consumer.position([probe])[0].offset
            except KafkaException as exc:
                if _unanswered(exc):
                    # A broker too busy to answer in time (32 participants' updates arriving)
                    # has not lost anything: starting over would re-read every topic, and
                    # its own calls would time out as well. Ask again at the next check.
                    return False
                lost = True
                continue
            if position >= 0 and high < position:
                lost = True
        if not lost and self._topic_ids:
            now = self._read_topic_ids()
            lost = bool(now) and any(now.get(t) != self._topic_ids.get(t) for t in self._topics)
        if lost:
            self._start_over()
        return lost

    def _read_topic_ids(self) -> dict[str, str | None]:
        # Empty when the broker cannot say (down, or too old to give topic ids):
        # the offsets check above still applies.
        try:
            if self._admin is None:
                self._admin = TopicAdmin(self.broker, timeout_s=5)
            return self._admin.ids(self._topics)
        except StreamsError as exc:
            _LOG.debug("could not read the ids of topics %s: %s", self._topics, exc)
            return {}

    def _start_over(self) -> None:
        # Recreate the topics, then read them with a brand-new consumer: the old one
        # keeps metadata of the lost topics and would not fetch from the new ones.
        TopicAdmin(self.broker).create(self._topics)
        self._consumer.close()
        self._consumer = Consumer(consumer_config(self.broker, **_READER_OVERRIDES))
        # As at start-up: metadata first (list_topics), then assign from the beginning.
        self._assigned = self._partitions(self._topics, True, 10.0)
        self._consumer.assign(self._assigned)
        self._first_seen.clear()
        self._backlog.clear()
        self._expected.clear()
        self.reassembler.clear()
        self._topic_ids = self._read_topic_ids()
        self.resets += 1
        _LOG.warning("topics %s were recreated on %s; reading them from the start",
                     ", ".join(self._topics), self.bootstrap)

    def _translate(self, exc: KafkaException, what: str, timeout_s: float) -> StreamsError:
        error = exc.args[0]
        if isinstance(error, KafkaError) and error.code() in UNREACHABLE:
            return BrokerUnavailable(f"broker at {self.bootstrap} did not answer within "
                                     f"{timeout_s:g} s (could not {what})")
        return StreamsError(f"could not {what} on broker {self.bootstrap}: {error}")

    def poll(self, timeout_s: float) -> list[Delivery]:
        """Deliveries that are ready within `timeout_s`; returns early once there is at least one."""
        deadline = time.monotonic() + timeout_s
        deliveries = self._expired()
        while not deliveries:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            if not self._backlog:
                self._backlog.extend(self._next_messages(min(remaining, _WAIT_SLICE_S)))
            delivered = 0
            while self._backlog and delivered <= _DELIVER_BYTES:
                for delivery in self._handle(self._backlog.popleft()):
                    deliveries.append(delivery)
                    if isinstance(delivery, Received):
                        delivered += delivery.payload.payload_size
            deliveries += self._expired()
        return deliveries

    def _next_messages(self, wait_s: float) -> list[Message]:
        # consume(n, t) waits until it has n messages or t has passed: wait
        # for one only, then take whatever else is already fetched.
        first = self._consumer.consume(1, wait_s)
        if not first:
            return first
        self.last_frame_at = time.monotonic()
        return first + self._consumer.consume(_CONSUME_BATCH - 1, 0)

    def _handle(self, message: Message) -> list[Delivery]:
        error = message.error()
        if error is not None:
            if error.fatal():
                raise StreamsError(f"reader on broker {self.bootstrap} failed: {error.str()}")
            # Transient errors (a broker hiccup) are librdkafka's to retry.
            _LOG.warning("reader on broker %s: %s", self.bootstrap, error.str())
            return []
        where = _Where(message.topic() or "", message.partition() or 0, message.offset() or 0)
        if not self._in_sequence(where):
            return []
        try:
            envelope = Envelope.from_headers(message.headers())
        except EnvelopeError as exc:
            return [_rejected(str(exc), None, where)]
        return self._add(envelope, message.value(), where)

    def _in_sequence(self, where: _Where) -> bool:
        """False if frames before this one were skipped: the partition is then read again from the
        first one missing (see _GAP_REREADS), and this frame and those fetched after it wait."""
        key = (where.topic, where.partition)
        expected = self._expected.get(key)
        if expected is not None and where.offset > expected:
            gap = (*key, expected)
            tries = self._rereads.get(gap, 0)
            if tries < _GAP_REREADS:
                try:
                    self._consumer.seek(TopicPartition(where.topic, where.partition, expected))
                except KafkaException as exc:
                    _LOG.warning("could not go back to offset %d of %s[%d] (%s); reading on",
                                 expected, where.topic, where.partition, exc)
                else:
                    self._rereads[gap] = tries + 1
                    self.gaps_reread += 1
                    _LOG.warning("%s[%d]: offsets %d-%d were skipped; reading them again",
                                 where.topic, where.partition, expected, where.offset - 1)
                    # Fetched after the gap: they come again after the frames it held.
                    self._backlog = deque(m for m in self._backlog if (m.topic(), m.partition()) != key)
                    return False
            else:
                del self._rereads[gap]  # taken as a real gap: nothing more to remember of it
                _LOG.warning("%s[%d]: offsets %d-%d are still missing after %d tries; reading on",
                             where.topic, where.partition, expected, where.offset - 1, tries)
        if expected is None or where.offset >= expected:
            self._expected[key] = where.offset + 1
            self._rereads.pop((*key, where.offset), None)  # that gap, if it was one, is filled
        return True

    def _add(self, envelope: Envelope, value: bytes | None, where: _Where) -> list[Delivery]:
        message_id = envelope.message_id
        try:
            payload = self.reassembler.add(envelope, value if value is not None else b"")
        except FrameError as exc:
            return [_rejected(str(exc), envelope, where)]
        finally:
            # Keep the first frame's place only while the payload is pending.
            if self.reassembler.is_pending(message_id):
                self._first_seen.setdefault(message_id, (envelope, where))
            else:
                self._first_seen.pop(message_id, None)
        if payload is None:
            return []
        return [Received(payload, where.topic, where.partition, where.offset)]

    def _expired(self) -> list[Delivery]:
        rejected: list[Delivery] = []
        for message_id in self.reassembler.expire():
            # A reassembler shared with other code may expire ids we never saw.
            envelope, where = self._first_seen.pop(message_id, (None, _Where("", -1, -1)))
            reason = (f"message {message_id}: incomplete after {self.reassembler.timeout_s:g} s "
                      f"without a new chunk; expired")
            rejected.append(_rejected(reason, envelope, where))
        return rejected

    def forget(self, message_id: str) -> None:
        """Deliver the next copy of this payload, which would be dropped as a repeat: its first
        was put aside unread."""
        self.reassembler.forget(message_id)

    def close(self) -> None:
        """Leave the broker; the reader cannot be used afterwards (closing twice is fine)."""
        if not self._closed:
            self._closed = True
            self._consumer.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 traceback: TracebackType | None) -> None:
        self.close()


def _unanswered(exc: KafkaException) -> bool:
    """Whether the broker did not answer (timeout, no connection), as opposed to answering no."""
    error = exc.args[0] if exc.args else None
    return isinstance(error, KafkaError) and error.code() in UNREACHABLE


def _rejected(reason: str, envelope: Envelope | None, where: _Where) -> Rejected:
    return Rejected(reason, envelope, where.topic, where.partition, where.offset)
