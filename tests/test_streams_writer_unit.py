"""The payload writer's failure handling, on stand-in producers (no broker): a full local queue,
a refused frame, a stalled send and a slow one. Moved out of test_streams_transport.py, whose
tests are integration tests against the real broker; these are unit tests of the writer's logic."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from confluent_kafka import KafkaError

from infra.tansu import find_free_port
from schema.envelope import MAX_CHUNK_BYTES
from streams.errors import BrokerUnavailable, StreamsError
from streams.writer import PayloadWriter, ResilientWriter

SEND: dict[str, Any] = {"task_id": "task-1", "round": 1, "kind": "weights", "sender": "alice"}


# --- the writer's failures --------------------------------------------------------------


def test_send_to_an_unreachable_broker_fails_naming_the_topic() -> None:
    """No broker: BrokerUnavailable after the writer's timeout, naming topic, address and timeout."""
    address = f"127.0.0.1:{find_free_port()}"
    unreachable = PayloadWriter(address, timeout_s=1.0)

    with pytest.raises(BrokerUnavailable, match=f"'somewhere'.*{address} within 1 s"):
        unreachable.send("somewhere", payload=b"x" * 10, **SEND)


class FakeProducer:
    """A producer whose queue is full for the first `full` attempts; acks (or fails) on poll/flush."""

    def __init__(self, full: int = 0, error: KafkaError | None = None) -> None:
        self.full, self.error = full, error
        self.values: list[bytes] = []
        self._callbacks: list[Callable[[KafkaError | None, Any], None]] = []

    def produce(self, topic: str, value: bytes, key: bytes, *, headers: Any,
                on_delivery: Callable[[KafkaError | None, Any], None]) -> None:
        if self.full:
            self.full -= 1
            raise BufferError("Local: Queue full")
        self.values.append(value)
        self._callbacks.append(on_delivery)

    def poll(self, timeout: float) -> int:
        callbacks, self._callbacks = self._callbacks, []
        for callback in callbacks:
            callback(self.error, None)
        return len(callbacks)

    def flush(self, timeout: float) -> int:
        self.poll(timeout)
        return 0


def test_full_local_queue_is_waited_out_not_raised() -> None:
    """BufferError from produce() makes the writer poll and retry; every frame still goes out."""
    producer = FakeProducer(full=5)
    payload = np.random.default_rng(4).bytes(3 * MAX_CHUNK_BYTES)

    PayloadWriter("unused:9092", producer=producer).send("t", payload=payload, **SEND)

    assert b"".join(producer.values) == payload and len(producer.values) == 3


def test_frame_the_broker_refuses_fails_the_send_naming_the_topic() -> None:
    """A negative delivery report for any frame is a StreamsError with the topic and the reason."""
    producer = FakeProducer(error=KafkaError(KafkaError.MSG_SIZE_TOO_LARGE))

    with pytest.raises(StreamsError, match="'t'.*0 of 1 frames") as raised:
        PayloadWriter("unused:9092", producer=producer).send("t", payload=b"x", **SEND)

    assert not isinstance(raised.value, BrokerUnavailable)


class SlowProducer(FakeProducer):
    """Acknowledges at most `per_flush` frames per flush() (0: never), sleeping a little each time."""

    def __init__(self, per_flush: int, pause_s: float = 0.05) -> None:
        super().__init__()
        self.per_flush, self.pause_s = per_flush, pause_s
        self.flushes = 0

    def poll(self, timeout: float) -> int:
        return 0

    def flush(self, timeout: float) -> int:
        self.flushes += 1
        time.sleep(min(timeout, self.pause_s))
        done, self._callbacks = self._callbacks[:self.per_flush], self._callbacks[self.per_flush:]
        for callback in done:
            callback(None, None)
        return len(self._callbacks)


def test_a_send_nothing_acknowledges_gives_up_after_the_stall_and_retries_anew() -> None:
    """A producer the broker no longer knows: each attempt ends after stall_s without an ack,
    long before its timeout, with a new producer per attempt and the reason given."""
    producers: list[SlowProducer] = []
    retries: list[str] = []

    def factory() -> SlowProducer:
        producers.append(SlowProducer(per_flush=0))
        return producers[-1]

    writer = ResilientWriter("unused:9092", attempts=2, timeout_s=60, stall_s=0.3,
                             on_retry=retries.append, producer_factory=factory)
    # The stall's message, not the 60 s timeout's ("within 60 s"), ends each attempt.
    with pytest.raises(BrokerUnavailable, match=r"no frame acknowledged for 0.3 s \(0 so far\)"):
        writer.send("t", payload=b"x" * 100, **SEND)

    assert len(producers) == 2 and len(retries) == 1 and "retrying with a new connection" in retries[0]


def test_a_slow_send_that_keeps_making_progress_is_not_a_stall() -> None:
    """Acks trickling in (one frame per 0.15 s flush slice) keep the send alive past stall_s."""
    producer = SlowProducer(per_flush=1, pause_s=0.15)
    payload = np.random.default_rng(5).bytes(4 * MAX_CHUNK_BYTES)

    PayloadWriter("unused:9092", producer=producer, timeout_s=60, stall_s=0.25).send(
        "t", payload=payload, **SEND)

    assert producer.flushes * producer.pause_s > 0.25  # in all, longer than the stall limit
    assert b"".join(producer.values) == payload and len(producer.values) == 4
