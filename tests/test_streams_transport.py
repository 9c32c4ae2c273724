"""Payloads over the real broker: 200 MB in 1 MiB frames, and every bad frame a Rejected, never a crash."""

from __future__ import annotations

import hashlib
import os
import signal
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from infra.tansu import BrokerProcess, find_free_port, start_broker
from schema.envelope import MAX_CHUNK_BYTES, Envelope
from streams.config import consumer_config, producer_config
from streams.errors import StreamsError
from streams.framing import Reassembler, split
from streams.reader import Delivery, PayloadReader, Received, Rejected
from streams.topics import TopicAdmin
from streams.writer import PayloadWriter

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
SEND: dict[str, Any] = {"task_id": "task-1", "round": 1, "kind": "weights", "sender": "alice"}


@pytest.fixture()
def topic(broker: BrokerProcess) -> str:
    """A fresh topic of this test's own: isolation by names, not clean-ups."""
    name = f"t{uuid.uuid4().hex[:10]}.payloads"
    TopicAdmin(broker.bootstrap).create([name])
    return name


@pytest.fixture(scope="module")
def writer(broker: BrokerProcess) -> PayloadWriter:
    """One writer for the module: its first send pays a connection set-up of about 0.5 s."""
    return PayloadWriter(broker.bootstrap)


@pytest.fixture()
def reader(broker: BrokerProcess, topic: str) -> Iterator[PayloadReader]:
    """A reader of the test's topic from its beginning, with a short expiry."""
    with PayloadReader(broker.bootstrap, [topic], reassembler=Reassembler(timeout_s=1.0)) as reader:
        yield reader


def read_until(reader: PayloadReader, done: Callable[[list[Delivery]], bool],
               timeout_s: float = 20.0) -> list[Delivery]:
    """Poll until `done(deliveries so far)` or the timeout; every delivery, in order."""
    deliveries: list[Delivery] = []
    deadline = time.monotonic() + timeout_s
    while not done(deliveries) and time.monotonic() < deadline:
        deliveries += reader.poll(0.5)
    return deliveries


def received(deliveries: list[Delivery]) -> list[Received]:
    """The payloads among the deliveries."""
    return [d for d in deliveries if isinstance(d, Received)]


def rejected(deliveries: list[Delivery]) -> list[Rejected]:
    """The rejections among the deliveries."""
    return [d for d in deliveries if isinstance(d, Rejected)]


def produce_raw(bootstrap: str, topic: str, frames: list[tuple[list[tuple[str, bytes]] | None, bytes]]) -> None:
    """Write frames exactly as given (headers, value), bypassing PayloadWriter."""
    producer = Producer(producer_config(bootstrap))
    for headers, value in frames:
        producer.produce(topic, value, b"forger", headers=None if headers is None else [*headers])
    assert producer.flush(15) == 0


def forged_frames(payload: bytes, **changes: Any) -> list[tuple[list[tuple[str, bytes]] | None, bytes]]:
    """The frames of `payload` (1 KiB chunks) as raw (headers, value) pairs."""
    frames = split(payload=payload, chunk_size=1024, **{**SEND, **changes})
    return [(envelope.to_headers(), bytes(chunk)) for envelope, chunk in frames]


# --- large payloads -----------------------------------------------------------------


def test_200_mb_payload_round_trips_in_frames_of_at_most_1_mib(broker: BrokerProcess, topic: str,
                                                                writer: PayloadWriter) -> None:
    """A 200 MB payload arrives whole and verified; on the wire no frame exceeds 1 MiB."""
    payload = np.random.default_rng(200).bytes(200 * MiB)
    digest = hashlib.sha256(payload).hexdigest()

    message_id = writer.send(topic, payload=payload, **SEND)
    with PayloadReader(broker.bootstrap, [topic]) as reader:
        deliveries = read_until(reader, lambda got: bool(got), timeout_s=60)

    assert [type(d) for d in deliveries] == [Received]
    got = received(deliveries)[0].payload
    assert got.message_id == message_id and got.payload_sha256 == digest
    assert hashlib.sha256(got.data).hexdigest() == digest and bytes(got.data) == payload
    del got, deliveries
    frames = wire_frames(broker.bootstrap, topic, expected=-(-len(payload) // MAX_CHUNK_BYTES))
    assert all(envelope.payload_sha256 == digest for envelope, _ in frames)
    assert max(length for _, length in frames) <= min(MAX_CHUNK_BYTES, MiB)
    assert sum(length for _, length in frames) == len(payload)


def test_large_payloads_are_handed_over_one_per_poll_and_small_ones_in_batches(
        broker: BrokerProcess, topic: str, writer: PayloadWriter) -> None:
    """Three 12 MiB payloads whose last frames arrive together still come out one per poll(),
    so the reader never holds more than one of them; ten small ones may share a poll."""
    large = [np.random.default_rng(i).bytes(12 * MiB) for i in range(3)]
    producer = Producer(producer_config(broker.bootstrap))
    streams = [split(payload=p, chunk_size=MAX_CHUNK_BYTES, **SEND) for p in large]
    for group in zip(*streams, strict=True):  # interleaved, as from concurrent senders
        for envelope, chunk in group:
            producer.produce(topic, bytes(chunk), b"k", headers=envelope.to_headers())
    assert producer.flush(30) == 0
    for i in range(10):
        writer.send(topic, payload=f"small {i}".encode(), **SEND)

    polls: list[list[Received]] = []
    with PayloadReader(broker.bootstrap, [topic]) as reader:
        while sum(map(len, polls)) < 13:
            got = received(read_until(reader, bool, timeout_s=30))
            assert got, f"nothing more after {sum(map(len, polls))} payloads"
            polls.append(got)

    sizes = [[r.payload.payload_size for r in batch] for batch in polls]
    assert all(len(batch) == 1 for batch in sizes if max(batch) > MiB), sizes
    assert sorted(bytes(r.payload.data) for batch in polls for r in batch if r.payload.payload_size > MiB) \
        == sorted(large)
    assert any(len(batch) > 1 for batch in sizes), sizes


def wire_frames(bootstrap: str, topic: str, expected: int) -> list[tuple[Envelope, int]]:
    """Every frame on the topic as stored by the broker: its envelope and its value's length."""
    consumer = Consumer(consumer_config(bootstrap))
    consumer.assign([TopicPartition(topic, 0, 0)])
    frames: list[tuple[Envelope, int]] = []
    deadline = time.monotonic() + 30
    while len(frames) < expected and time.monotonic() < deadline:
        for message in consumer.consume(16, 1.0):
            assert message.error() is None
            frames.append((Envelope.from_headers(message.headers()), len(message.value() or b"")))
    consumer.close()
    assert len(frames) == expected
    return frames


# --- what a retry of the (non-idempotent) payload writer can leave on the topic ------------


def test_frames_repeated_and_reordered_by_retries_give_the_payload_once(
        broker: BrokerProcess, topic: str, reader: PayloadReader, writer: PayloadWriter) -> None:
    """The payload writer is not idempotent (streams/writer.py says why): a retried frame may be
    written twice, and after others. The reader still hands over the payload once, whole and
    verified, and the next payload after it."""
    payload = np.random.default_rng(3).bytes(6000)
    frames = forged_frames(payload)
    retried = [frames[0], frames[2], frames[1], frames[2], frames[3], frames[0], frames[5], frames[4],
               frames[5]]
    produce_raw(broker.bootstrap, topic, retried)
    good = writer.send(topic, payload=b"after", **SEND)

    deliveries = read_until(reader, lambda got: len(received(got)) == 2)

    assert rejected(deliveries) == []
    first, second = (d.payload for d in received(deliveries))
    assert first.data == payload and first.payload_sha256 == hashlib.sha256(payload).hexdigest()
    assert (second.message_id, second.data) == (good, b"after")


class SkipsOnce:
    """The reader's real consumer, except that the frame at `offset` is not handed over the first
    `times` times: what tansu 0.6 was seen doing (once) with several producers on one partition."""

    def __init__(self, consumer: Consumer, offset: int, times: int = 1) -> None:
        self.consumer, self.offset, self.times, self.skipped = consumer, offset, times, 0

    def consume(self, num_messages: int, timeout: float) -> list[Any]:
        messages = self.consumer.consume(num_messages, timeout)
        if self.skipped < self.times and any(m.offset() == self.offset for m in messages):
            self.skipped += 1
            return [m for m in messages if m.offset() != self.offset]
        return messages

    def __getattr__(self, name: str) -> Any:
        return getattr(self.consumer, name)


def test_a_frame_the_broker_skipped_is_read_again_and_the_payload_arrives(
        broker: BrokerProcess, topic: str, writer: PayloadWriter) -> None:
    """A frame skipped on the way (its offset jumped over) is fetched again from the broker, so the
    payload arrives whole instead of expiring; the frames after it are not taken twice."""
    payload = np.random.default_rng(4).bytes(5 * MiB + 7)
    first = writer.send(topic, payload=payload, **SEND)
    second = writer.send(topic, payload=b"next", **SEND)
    with PayloadReader(broker.bootstrap, [topic], reassembler=Reassembler(timeout_s=3.0)) as reader:
        skipping = SkipsOnce(reader._consumer, offset=2)
        reader._consumer = skipping  # type: ignore[assignment]

        deliveries = read_until(reader, lambda got: len(got) >= 2, timeout_s=10)

    assert skipping.skipped == 1 and reader.gaps_reread == 1
    assert rejected(deliveries) == []
    assert [(d.payload.message_id, d.payload.data) for d in received(deliveries)] == [
        (first, payload), (second, b"next")]


def test_a_gap_that_stays_after_five_rereads_is_taken_as_real_and_reading_goes_on(
        broker: BrokerProcess, topic: str, writer: PayloadWriter) -> None:
    """A frame that never comes (a compacted topic on a real Kafka) costs five re-reads, not a
    loop: the payload it belonged to expires, and the payload after it arrives."""
    first = writer.send(topic, payload=np.random.default_rng(5).bytes(3 * MiB), **SEND)
    second = writer.send(topic, payload=b"next", **SEND)
    with PayloadReader(broker.bootstrap, [topic], reassembler=Reassembler(timeout_s=2.0)) as reader:
        hiding = SkipsOnce(reader._consumer, offset=1, times=1000)
        reader._consumer = hiding  # type: ignore[assignment]

        deliveries = read_until(reader, lambda got: len(got) >= 2, timeout_s=15)

    assert reader.gaps_reread == 5 and hiding.skipped == 6  # five re-reads, then read on
    [expired] = rejected(deliveries)
    assert expired.envelope is not None and expired.envelope.message_id == first
    assert "expired" in expired.reason
    assert [(d.payload.message_id, d.payload.data) for d in received(deliveries)] == [(second, b"next")]


def test_the_payload_writer_waits_for_every_replica_but_is_not_idempotent(writer: PayloadWriter) -> None:
    """acks=all keeps an acknowledged frame from being lost; idempotence is off on purpose."""
    from streams.writer import _WRITER_OVERRIDES

    settings = producer_config(writer.broker, **_WRITER_OVERRIDES)
    assert settings["acks"] == "all" and settings["enable.idempotence"] is False


# --- bad frames are Rejected, and the reader goes on ------------------------------------


def test_payload_with_a_chunk_corrupted_on_the_wire_is_rejected_not_delivered(
        broker: BrokerProcess, topic: str, reader: PayloadReader, writer: PayloadWriter) -> None:
    """One altered chunk: the payload is Rejected for its sha256, and the next payload still arrives."""
    frames = forged_frames(np.random.default_rng(1).bytes(5000))
    headers, value = frames[2]
    frames[2] = (headers, value[:10] + bytes([value[10] ^ 0xFF]) + value[11:])
    bad_id = Envelope.from_headers(frames[0][0]).message_id
    produce_raw(broker.bootstrap, topic, frames)
    good = writer.send(topic, payload=b"good", **SEND)

    deliveries = read_until(reader, lambda got: bool(received(got)))

    assert [d.payload.message_id for d in received(deliveries)] == [good]
    [refusal] = rejected(deliveries)
    assert "sha256" in refusal.reason and refusal.envelope is not None
    assert refusal.envelope.message_id == bad_id and refusal.topic == topic


def test_payload_missing_a_chunk_is_rejected_after_the_timeout(
        broker: BrokerProcess, topic: str, reader: PayloadReader) -> None:
    """A payload whose chunk never comes is Rejected as expired, pointing at its first frame."""
    frames = forged_frames(np.random.default_rng(2).bytes(5000))
    missing_id = Envelope.from_headers(frames[0][0]).message_id
    produce_raw(broker.bootstrap, topic, frames[:1] + frames[2:])

    deliveries = read_until(reader, lambda got: bool(got), timeout_s=10)

    [refusal] = rejected(deliveries)
    assert "expired" in refusal.reason and received(deliveries) == []
    assert refusal.envelope is not None and refusal.envelope.message_id == missing_id
    assert (refusal.topic, refusal.partition, refusal.offset) == (topic, 0, 0)


def test_garbage_without_headers_is_rejected_and_the_reader_goes_on(
        broker: BrokerProcess, topic: str, reader: PayloadReader, writer: PayloadWriter) -> None:
    """Bytes with no envelope, or a broken one, are Rejected; the good payload after them arrives."""
    broken = [(k, b"-1" if k == "round" else v) for k, v in forged_frames(b"x")[0][0] or []]
    produce_raw(broker.bootstrap, topic, [(None, b"\x00garbage\xff"), (broken, b"x")])
    good = writer.send(topic, payload=b"after the garbage", **SEND)

    deliveries = read_until(reader, lambda got: bool(received(got)))

    assert [(type(d), d.offset) for d in deliveries] == [(Rejected, 0), (Rejected, 1), (Received, 2)]
    assert "no envelope headers" in rejected(deliveries)[0].reason
    assert "round" in rejected(deliveries)[1].reason
    assert received(deliveries)[0].payload.message_id == good
    assert received(deliveries)[0].payload.data == b"after the garbage"


# --- broadcast semantics ----------------------------------------------------------------


def test_two_readers_both_receive_the_same_broadcast(broker: BrokerProcess, topic: str,
                                                     writer: PayloadWriter) -> None:
    """Readers assign partitions instead of sharing a group: each one sees every payload."""
    payload = np.random.default_rng(3).bytes(3 * MiB)
    with PayloadReader(broker.bootstrap, [topic]) as first, PayloadReader(broker.bootstrap, [topic]) as second:
        message_id = writer.send(topic, payload=payload, **SEND)

        both = [received(read_until(r, lambda got: bool(got))) for r in (first, second)]

    assert [[d.payload.message_id for d in got] for got in both] == [[message_id], [message_id]]
    assert both[0][0].payload.data == both[1][0].payload.data == payload


def test_reader_from_the_end_sees_only_later_payloads(broker: BrokerProcess, topic: str,
                                                      writer: PayloadWriter) -> None:
    """from_beginning=False skips what was written before the reader started, not what comes after."""
    writer.send(topic, payload=b"before", **SEND)
    with PayloadReader(broker.bootstrap, [topic], from_beginning=False) as late:
        after = writer.send(topic, payload=b"after", **SEND)

        deliveries = read_until(late, lambda got: bool(got))

    assert [(d.payload.message_id, d.payload.data) for d in received(deliveries)] == [(after, b"after")]


def test_reader_notices_a_recreated_topic_even_past_its_old_position(tmp_path: Any) -> None:
    """A broker restarted empty, on which others recreated the topic and wrote more than the
    reader had read: the topic's id changed, so the reader starts it over and receives the new
    payloads; a topic left alone is not reported."""
    port = find_free_port()
    broker = start_broker(port=port, log_path=tmp_path / "tansu.log")
    topic = f"t{uuid.uuid4().hex[:10]}.payloads"
    try:
        TopicAdmin(broker.bootstrap).create([topic])
        with PayloadReader(broker.bootstrap, [topic]) as reader:
            PayloadWriter(broker.bootstrap).send(topic, payload=b"old", **SEND)
            assert [d.payload.data for d in received(read_until(reader, bool))] == [b"old"]
            assert not reader.detect_reset()
            broker.stop()
            broker = start_broker(port=port, log_path=tmp_path / "tansu-2.log")
            TopicAdmin(broker.bootstrap).create([topic])
            writer = PayloadWriter(broker.bootstrap)
            for text in (b"new 1", b"new 2", b"new 3"):
                writer.send(topic, payload=text, **SEND)

            assert reader.detect_reset()
            got = received(read_until(reader, lambda d: len(received(d)) >= 3))
            assert [d.payload.data for d in got] == [b"new 1", b"new 2", b"new 3"]
            assert reader.resets == 1 and not reader.detect_reset()
    finally:
        broker.stop()


def test_a_broker_too_busy_to_answer_is_not_taken_for_a_lost_topic(tmp_path: Any) -> None:
    """A broker that does not answer the reset check in time (here: frozen with SIGSTOP, as an
    overloaded one is slow) has not lost the topic: the reader does not start over, and once
    the broker answers again it goes on reading where it was."""
    broker = start_broker(log_path=tmp_path / "tansu.log")
    topic = f"t{uuid.uuid4().hex[:10]}.payloads"
    try:
        TopicAdmin(broker.bootstrap).create([topic])
        writer = PayloadWriter(broker.bootstrap)
        with PayloadReader(broker.bootstrap, [topic]) as reader:
            writer.send(topic, payload=b"before", **SEND)
            assert [d.payload.data for d in received(read_until(reader, bool))] == [b"before"]
            os.kill(broker.pid, signal.SIGSTOP)
            try:
                assert not reader.detect_reset(timeout_s=0.5)
            finally:
                os.kill(broker.pid, signal.SIGCONT)
            writer.send(topic, payload=b"after", **SEND)

            assert [d.payload.data for d in received(read_until(reader, bool))] == [b"after"]
            assert reader.resets == 0
    finally:
        broker.stop()


def test_reading_a_missing_topic_fails_naming_it(broker: BrokerProcess) -> None:
    """A reader on a topic that does not exist fails at once with the topic in the message."""
    name = f"t{uuid.uuid4().hex[:10]}.never"

    with pytest.raises(StreamsError, match=name):
        PayloadReader(broker.bootstrap, [name], timeout_s=5)
