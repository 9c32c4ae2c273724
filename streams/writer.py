"""Sending whole payloads to a topic: framed, keyed by sender, and acknowledged by the broker.

The writer waits until the broker has acknowledged every frame; the resilient writer starts
over with a new producer when a send fails (a broker that restarted empty forgets producers).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Callable
from dataclasses import replace
from typing import Any, Protocol

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from schema.envelope import Envelope
from streams.config import Broker, as_broker, producer_config
from streams.errors import UNREACHABLE, BrokerUnavailable, StreamsError
from streams.framing import split
from streams.signing import Signer

_LOG = logging.getLogger("streams.kafka")

# Writer settings on top of producer_config:
_WRITER_OVERRIDES: dict[str, Any] = {
    # One frame per record batch: a broker's per-batch limit (Kafka's
    # max.message.bytes) then sees exactly one frame of at most
    # MAX_CHUNK_BYTES, however small frames and large ones interleave. It also
    # keeps tansu 0.6's high watermark right (it reports the base offset of the
    # last batch + 1, which is wrong for multi-record batches).
    "batch.num.messages": 1,
    # librdkafka copies each frame into its queue; 16 MiB (instead of the
    # 1 GiB default) bounds the writer's memory, and send() waits for room
    # instead of queueing a whole 40 MB model at once (the broker takes
    # frames faster than one process copies them in, so this costs no speed).
    "queue.buffering.max.kbytes": 16 * 1024,
    # Acknowledged by every in-sync replica still (acks=all, from producer_config), but not
    # idempotent: readers already take frames in any order and drop exact repeats (the
    # Reassembler), and send() waits for a payload's last ack before the next payload, so what
    # the idempotent producer guards against (a retry repeating or reordering frames) is
    # harmless here. What it costs was measured: 8 PayloadWriters each sending 40 MB at once
    # into one tansu partition took 2.7-3.0 s idempotent and 1.3-1.4 s not (bench/round_bench.py
    # shows what that does to a round). It also leaves no producer state for a restarted broker
    # to forget. The event relay, whose readers need order, stays idempotent.
    "enable.idempotence": False,
    "logger": _LOG,
}
# The header list type confluent-kafka declares (lists are invariant).
_Headers = list[tuple[str, str | bytes | None]]


class ProducerLike(Protocol):
    """The part of confluent_kafka.Producer that PayloadWriter uses."""

    def produce(self, topic: str, value: bytes, key: bytes, *, headers: _Headers,
                on_delivery: Callable[[KafkaError | None, Message], None]) -> None: ...

    def poll(self, timeout: float) -> int: ...

    def flush(self, timeout: float) -> int: ...


class PayloadWriter:
    """Sends whole payloads to a topic as acknowledged frames."""

    def __init__(self, broker: Broker | str, producer: ProducerLike | None = None,
                 timeout_s: float = 120.0, stall_s: float | None = None,
                 signer: Signer | None = None) -> None:
        self.broker = as_broker(broker)
        self.bootstrap = self.broker.bootstrap
        # Whose name the payloads go out in: every frame carries the sender's signature.
        self.signer = signer
        self.timeout_s = timeout_s
        # Give up before timeout_s when no frame is acknowledged for this long (None: never).
        self.stall_s = stall_s
        # librdkafka's own per-frame deadline (default 300 s) follows the
        # send's, so it does not keep retrying long after send() has failed.
        # A failed send may still leave some frames on the topic: readers
        # drop that partial payload when it expires (and a complete one
        # delivered late is a duplicate, which consumers discard anyway).
        config = producer_config(self.broker, **_WRITER_OVERRIDES,
                                 **{"message.timeout.ms": int(timeout_s * 1000)})
        self._producer: ProducerLike = producer if producer is not None else Producer(config)

    def send(self, topic: str, *, task_id: str, round: int, kind: str, sender: str,
             payload: bytes, key: str | None = None, message_id: str | None = None) -> str:
        """Send `payload` in frames keyed by `key` (or sender); return its message id once all are acknowledged.

        Re-sending a payload under its first `message_id` lets readers know it for a repeat.
        """
        frames = split(task_id, round, kind, sender, payload, message_id=message_id)
        if self.signer is not None:
            # One signature per payload (it covers the payload's sha256), carried by every frame.
            signature = self.signer.sign(frames[0][0])
            frames = [(replace(envelope, signature=signature), chunk) for envelope, chunk in frames]
        outcome = _Acks()
        deadline = time.monotonic() + self.timeout_s
        # One key for every frame: they land on one partition, in order.
        raw_key = (key or sender).encode("utf-8")
        for envelope, chunk in frames:
            if outcome.error is not None:
                break  # the payload is lost already; do not push the rest of it
            self._produce(topic, raw_key, envelope, chunk, outcome, deadline)
        remaining = self._wait_for_acks(topic, outcome, deadline)
        self._raise_unless_acked(topic, outcome, len(frames), remaining)
        return frames[0][0].message_id

    def _wait_for_acks(self, topic: str, outcome: _Acks, deadline: float) -> int:
        # Flush in slices, to give up early when nothing at all is acknowledged for
        # stall_s: a producer the broker no longer knows (restarted empty) retries
        # until its deadline otherwise, and a new producer would get through at once.
        last_acked, progress_at = outcome.acked, time.monotonic()
        while True:
            left = deadline - time.monotonic()
            remaining = int(self._producer.flush(max(0.0, min(left, 1.0))))
            if remaining == 0 or left <= 0 or outcome.error is not None:
                return remaining
            if outcome.acked != last_acked:
                last_acked, progress_at = outcome.acked, time.monotonic()
            elif self.stall_s is not None and time.monotonic() - progress_at > self.stall_s:
                raise BrokerUnavailable(
                    f"could not send to topic {topic!r} on broker {self.bootstrap}: no frame "
                    f"acknowledged for {self.stall_s:g} s ({outcome.acked} so far)")

    def discard(self) -> None:
        """Give up on whatever is still queued (its producer went fatal): purge it, quietly."""
        purge = getattr(self._producer, "purge", None)
        try:
            if purge is not None:
                purge()
            self._producer.flush(0)
        except (KafkaException, SystemError, RuntimeError):
            pass  # a fatal producer may refuse even this; it is dropped either way

    def _produce(self, topic: str, key: bytes, envelope: Envelope, chunk: memoryview,
                 outcome: _Acks, deadline: float) -> None:
        # confluent-kafka takes bytes, not memoryviews: one transient copy of
        # one chunk, which librdkafka copies again into its queue.
        value = bytes(chunk)
        headers: _Headers = list(envelope.to_headers())
        while True:
            try:
                self._producer.produce(topic, value, key, headers=headers,
                                       on_delivery=outcome.record)
                # Serve delivery callbacks as we go, so acks do not pile up.
                self._producer.poll(0)
                return
            except BufferError:
                # The local queue is full: wait for the broker to acknowledge
                # some frames, then try again, until the send's deadline.
                if time.monotonic() > deadline:
                    raise BrokerUnavailable(
                        f"could not queue frames for topic {topic!r} on broker {self.bootstrap}: "
                        f"queue still full after {self.timeout_s:g} s") from None
                self._producer.poll(0.05)
            except KafkaException as exc:
                raise StreamsError(f"could not send to topic {topic!r} on broker "
                                   f"{self.bootstrap}: {exc.args[0]}") from exc

    def _raise_unless_acked(self, topic: str, outcome: _Acks, frames: int, remaining: int) -> None:
        if remaining == 0 and outcome.acked == frames and outcome.error is None:
            return
        where = f"topic {topic!r} on broker {self.bootstrap}"
        summary = f"{outcome.acked} of {frames} frames acknowledged"
        error = outcome.error
        if error is None or error.code() in UNREACHABLE:
            raise BrokerUnavailable(f"could not send to {where} within {self.timeout_s:g} s ({summary})")
        raise StreamsError(f"could not send to {where}: {error.str()} ({summary})")


class _Acks:
    """Delivery reports of one send()."""

    def __init__(self) -> None:
        self.acked = 0
        self.error: KafkaError | None = None

    def record(self, error: KafkaError | None, _message: Message) -> None:
        """on_delivery callback: count an ack or keep the first error."""
        if error is None:
            self.acked += 1
        elif self.error is None:
            self.error = error


class ResilientWriter:
    """A PayloadWriter that starts over with a new producer when a send fails.

    A broker restart (or a long outage) can leave a producer unable to deliver; a new one can.
    Every attempt reuses the payload's message id, so a reader that got an earlier attempt
    knows the next one for a repeat.
    """

    def __init__(self, broker: Broker | str, *, attempts: int = 4, timeout_s: float = 45.0,
                 stall_s: float = 15.0, on_retry: Callable[[str], None] | None = None,
                 producer_factory: Callable[[], ProducerLike] | None = None,
                 signer: Signer | None = None) -> None:
        self.broker = as_broker(broker)
        self.bootstrap = self.broker.bootstrap
        self.signer = signer
        self.attempts = attempts
        self.timeout_s = timeout_s
        self.stall_s = stall_s
        self.on_retry = on_retry
        self._producer_factory = producer_factory
        self._writer = self._new_writer()

    def _new_writer(self) -> PayloadWriter:
        producer = self._producer_factory() if self._producer_factory is not None else None
        return PayloadWriter(self.broker, producer, timeout_s=self.timeout_s, stall_s=self.stall_s,
                             signer=self.signer)

    def sign_as(self, signer: Signer) -> None:
        """Sign every payload from now on with this member's key."""
        self.signer = self._writer.signer = signer

    def renew(self) -> None:
        """Drop the producer and start a new one (after a broker restart)."""
        self._writer.discard()
        self._writer = self._new_writer()

    def send(self, topic: str, *, task_id: str, round: int, kind: str, sender: str,
             payload: bytes, key: str | None = None, message_id: str | None = None) -> str:
        """Send like PayloadWriter.send, retrying with a new producer up to `attempts` times."""
        message_id = message_id or uuid.uuid4().hex
        for attempt in range(1, self.attempts + 1):
            try:
                return self._writer.send(topic, task_id=task_id, round=round, kind=kind,
                                         sender=sender, payload=payload, key=key,
                                         message_id=message_id)
            except (StreamsError, KafkaException, SystemError) as exc:
                # SystemError: confluent-kafka's way of surfacing an error raised while
                # serving a delivery report of a producer that went fatal.
                if attempt == self.attempts:
                    if isinstance(exc, StreamsError):
                        raise
                    raise StreamsError(f"could not send to {topic}: {exc}") from exc
                if self.on_retry is not None:
                    self.on_retry(f"could not send to {topic} ({exc}); retrying with a new "
                                  f"connection ({attempt} of {self.attempts - 1} retries)")
                self.renew()
        raise AssertionError("unreachable")
