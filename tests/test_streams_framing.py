"""Framing: envelopes in headers, splitting into chunks, and reassembly that never half-uses a payload."""

from __future__ import annotations

import hashlib
import random
from dataclasses import replace
from typing import Any

import numpy as np
import pytest

from schema.envelope import MAX_CHUNK_BYTES, Envelope, EnvelopeError
from streams.framing import FrameError, Payload, Reassembler, split

KAFKA_DEFAULT_MAX_MESSAGE_BYTES = 1_048_588


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def payload_bytes(size: int, seed: int = 0) -> bytes:
    """Seeded random bytes."""
    return np.random.default_rng(seed).bytes(size)


def frames_of(payload: bytes, chunk_size: int = 1000, **fields: Any) -> list[tuple[Envelope, bytes]]:
    """The frames of `payload`, chunks as bytes (as a Kafka consumer hands them over)."""
    names = {"task_id": "task-1", "round": 2, "kind": "weights", "sender": "alice", **fields}
    return [(env, bytes(chunk)) for env, chunk in split(payload=payload, chunk_size=chunk_size, **names)]


def feed(reassembler: Reassembler, frames: list[tuple[Envelope, bytes]]) -> list[Payload]:
    """Add every frame; the payloads that came out."""
    return [p for env, chunk in frames if (p := reassembler.add(env, chunk)) is not None]


def envelope(**changes: Any) -> Envelope:
    """A valid single-chunk envelope with some fields changed."""
    values: dict[str, Any] = {
        "task_id": "task-1", "round": 0, "kind": "weights", "sender": "alice", "message_id": "m1",
        "chunk_index": 0, "chunk_count": 1, "payload_size": 10, "payload_sha256": "ab" * 32}
    return Envelope(**{**values, **changes})


# --- envelope -----------------------------------------------------------------------


def test_envelope_round_trips_through_headers() -> None:
    """to_headers / from_headers give back the same envelope, as bytes or str values."""
    original = envelope(round=17, chunk_index=2, chunk_count=3, payload_size=2_000_000)
    headers = original.to_headers()

    assert Envelope.from_headers(headers) == original
    assert Envelope.from_headers({k: v.decode() for k, v in headers}) == original
    assert all(isinstance(k, str) and isinstance(v, bytes) for k, v in headers)


def _headers(**changes: bytes | None) -> list[tuple[str, bytes | None]]:
    base = dict(envelope(chunk_count=2, chunk_index=1).to_headers())
    merged: dict[str, bytes | None] = {**base, **changes}
    return [(k, v) for k, v in merged.items() if v != b"<drop>"]


BAD_HEADERS: dict[str, tuple[Any, str]] = {
    "none": (None, "no envelope headers"),
    "empty": ([], "no envelope headers"),
    "missing version": (_headers(**{"mk.v": b"<drop>"}), "version"),
    "unknown version": (_headers(**{"mk.v": b"2"}), "version"),
    "missing field": (_headers(payload_sha256=b"<drop>"), "missing: payload_sha256"),
    "header twice": (_headers() + [("round", b"1")], "twice"),
    "null value": (_headers(sender=None), "no value"),
    "not utf-8": (_headers(sender=b"\xff"), "not UTF-8"),
    "negative round": (_headers(round=b"-1"), "plain decimal"),
    "plus sign": (_headers(round=b"+1"), "plain decimal"),
    "leading zero": (_headers(round=b"01"), "plain decimal"),
    "spaces": (_headers(round=b" 1"), "plain decimal"),
    "float": (_headers(payload_size=b"1.5"), "plain decimal"),
    "huge": (_headers(payload_size=b"1" * 30), "plain decimal"),
    "index past count": (_headers(chunk_index=b"2"), "not below chunk_count"),
    "zero count": (_headers(chunk_count=b"0", chunk_index=b"0"), "not below chunk_count"),
    "sha not hex": (_headers(payload_sha256=b"zz" * 32), "hex"),
    "sha uppercase": (_headers(payload_sha256=b"AB" * 32), "hex"),
    "sha short": (_headers(payload_sha256=b"ab"), "hex"),
    "empty sender": (_headers(sender=b""), "sender"),
    "control char": (_headers(kind=b"w\neights"), "kind"),
    "long task id": (_headers(task_id=b"t" * 300), "task_id"),
    "empty chunks": (_headers(payload_size=b"1"), "empty chunks"),
    "chunks too big": (_headers(payload_size=str(3 * MAX_CHUNK_BYTES).encode()), "exceed"),
}


@pytest.mark.parametrize("name", list(BAD_HEADERS))
def test_malformed_headers_are_refused_naming_the_problem(name: str) -> None:
    """Missing, repeated, non-decimal, out-of-range or inconsistent header values raise EnvelopeError."""
    headers, message = BAD_HEADERS[name]

    with pytest.raises(EnvelopeError, match=message):
        Envelope.from_headers(headers)


def test_unrelated_headers_are_ignored() -> None:
    """Headers outside the envelope (tracing, tooling) do not make a frame invalid."""
    headers = [*envelope().to_headers(), ("traceparent", b"00-abc")]

    assert Envelope.from_headers(headers) == envelope()


# --- split --------------------------------------------------------------------------


def test_max_chunk_fits_a_stock_kafka_broker_with_room_for_headers() -> None:
    """A frame's value stays under 1 MiB with at least 8 KiB left under Kafka's default limit."""
    headers = envelope(task_id="t" * 256, sender="s" * 256, kind="k" * 256, message_id="m" * 256,
                       payload_size=10**12, chunk_count=10**7, chunk_index=10**7 - 1).to_headers()
    header_bytes = sum(len(k) + len(v) + 10 for k, v in headers)

    assert MAX_CHUNK_BYTES <= 1024 * 1024
    assert MAX_CHUNK_BYTES + header_bytes + 512 < KAFKA_DEFAULT_MAX_MESSAGE_BYTES


@pytest.mark.parametrize("size, chunk_size", [(1, 1000), (999, 1000), (1000, 1000), (1001, 1000),
                                              (10_007, 1000), (5, 1), (3 * MAX_CHUNK_BYTES + 1, MAX_CHUNK_BYTES)])
def test_split_covers_the_payload_in_balanced_chunks(size: int, chunk_size: int) -> None:
    """Chunks are at most chunk_size, differ by at most one byte, and concatenate to the payload."""
    data = payload_bytes(size)

    frames = split("t", 0, "weights", "alice", data, chunk_size=chunk_size)
    lengths = [len(chunk) for _, chunk in frames]

    assert b"".join(frames_chunk for _, frames_chunk in frames) == data
    assert max(lengths) <= chunk_size and max(lengths) - min(lengths) <= 1
    assert len(frames) == -(-size // chunk_size)
    assert {env.message_id for env, _ in frames} == {frames[0][0].message_id}
    assert [env.chunk_index for env, _ in frames] == list(range(len(frames)))
    assert all(env.payload_sha256 == hashlib.sha256(data).hexdigest() for env, _ in frames)


def test_empty_payload_is_one_empty_chunk() -> None:
    """A zero-length payload still travels, as a single empty frame, and reassembles."""
    frames = frames_of(b"")

    assert len(frames) == 1 and frames[0][1] == b"" and frames[0][0].chunk_count == 1
    assert feed(Reassembler(), frames)[0].data == b""


def test_split_refuses_chunks_above_the_maximum() -> None:
    """Frames larger than MAX_CHUNK_BYTES cannot be asked for."""
    with pytest.raises(ValueError, match="chunk_size"):
        split("t", 0, "weights", "alice", b"x", chunk_size=MAX_CHUNK_BYTES + 1)


# --- reassembly ---------------------------------------------------------------------


def test_shuffled_interleaved_frames_reassemble_each_payload() -> None:
    """Two payloads' frames in random order come out whole, verified, with their envelope fields."""
    first, second = payload_bytes(10_007, seed=1), payload_bytes(4_321, seed=2)
    frames = frames_of(first, sender="alice") + frames_of(second, sender="bob", round=3)
    random.Random(5).shuffle(frames)
    reassembler = Reassembler()

    payloads = {p.sender: p for p in feed(reassembler, frames)}

    assert payloads["alice"].data == first and payloads["bob"].data == second
    assert payloads["bob"].round == 3 and payloads["bob"].payload_size == 4_321
    assert reassembler.pending_bytes == 0


def test_exact_duplicates_are_ignored() -> None:
    """A redelivered frame, before or after completion, neither breaks nor repeats the payload."""
    data = payload_bytes(3000)
    frames = frames_of(data)
    reassembler = Reassembler()

    payloads = feed(reassembler, [frames[0], frames[0], frames[1], frames[2], frames[1]])

    assert [p.data for p in payloads] == [data]
    assert reassembler.pending_bytes == 0


def test_a_forgotten_payload_is_delivered_once_more_when_it_comes_again() -> None:
    """After forget(id), the next complete copy comes out again (once), the same bytes."""
    data = payload_bytes(3000)
    frames = frames_of(data)
    reassembler = Reassembler()
    assert [p.data for p in feed(reassembler, frames)] == [data]

    reassembler.forget(frames[0][0].message_id)

    assert [p.data for p in feed(reassembler, frames + frames)] == [data]


def test_missing_chunk_expires_and_is_reported() -> None:
    """A payload missing a chunk gives nothing; after timeout_s without progress expire() names it."""
    clock = FakeClock()
    reassembler = Reassembler(timeout_s=10, clock=clock)
    frames = frames_of(payload_bytes(3000))
    message_id = frames[0][0].message_id

    assert feed(reassembler, [frames[0], frames[2]]) == []
    clock.now += 10
    assert reassembler.expire() == []  # not yet: exactly timeout_s is not older than it
    clock.now += 0.5
    expired = reassembler.expire()

    assert expired == [message_id]
    assert reassembler.pending_bytes == 0 and not reassembler.is_pending(message_id)
    assert feed(reassembler, [frames[1]]) == []  # a straggler does not reopen it


def test_timeout_counts_from_the_last_new_chunk() -> None:
    """A slow payload that keeps making progress is not expired."""
    clock = FakeClock()
    reassembler = Reassembler(timeout_s=10, clock=clock)
    frames = frames_of(payload_bytes(3000))

    reassembler.add(*frames[0])
    clock.now += 8
    reassembler.add(*frames[1])
    clock.now += 8

    assert reassembler.expire() == []
    assert reassembler.add(*frames[2]) is not None


def test_corrupted_chunk_fails_the_checksum_and_the_payload_is_dropped() -> None:
    """A flipped byte is caught at completion: FrameError, no payload, nothing left pending."""
    frames = frames_of(payload_bytes(3000))
    envelope_1, chunk_1 = frames[1]
    frames[1] = (envelope_1, chunk_1[:5] + bytes([chunk_1[5] ^ 1]) + chunk_1[6:])
    reassembler = Reassembler()

    assert feed(reassembler, frames[:2]) == []
    with pytest.raises(FrameError, match="sha256"):
        reassembler.add(*frames[2])

    assert reassembler.pending_bytes == 0
    assert reassembler.add(*frames[0]) is None


def test_chunk_of_the_wrong_length_is_refused() -> None:
    """A chunk longer or shorter than its place in the payload raises FrameError."""
    frames = frames_of(payload_bytes(3000))
    envelope_0, chunk_0 = frames[0]
    reassembler = Reassembler()

    with pytest.raises(FrameError, match="expected 1000"):
        reassembler.add(envelope_0, chunk_0 + b"x")
    with pytest.raises(FrameError, match="expected 1000"):
        reassembler.add(envelope_0, chunk_0[:-1])


@pytest.mark.parametrize("field, value", [("sender", "mallory"), ("task_id", "other"), ("round", 9),
                                          ("kind", "stats"), ("payload_sha256", "cd" * 32),
                                          ("payload_size", 2999), ("chunk_count", 4)])
def test_frame_that_disagrees_with_earlier_frames_is_refused(field: str, value: Any) -> None:
    """A frame claiming the same message id with other envelope values raises FrameError;
    the genuine frames still complete the payload."""
    data = payload_bytes(3000)
    frames = frames_of(data)
    reassembler = Reassembler()
    reassembler.add(*frames[0])
    forged_envelope = replace(frames[1][0], **{field: value})
    forged_length = forged_envelope.chunk_span[1]

    with pytest.raises(FrameError, match=field):
        reassembler.add(forged_envelope, frames[1][1][:forged_length].ljust(forged_length, b"\0"))

    assert [p.data for p in feed(reassembler, frames[1:])] == [data]


def test_same_chunk_index_with_other_bytes_is_refused() -> None:
    """A second, different chunk under an index already filled raises FrameError and changes nothing."""
    data = payload_bytes(3000)
    frames = frames_of(data)
    reassembler = Reassembler()
    reassembler.add(*frames[0])

    with pytest.raises(FrameError, match="twice with different bytes"):
        reassembler.add(frames[0][0], bytes(1000))

    assert [p.data for p in feed(reassembler, frames[1:])] == [data]


def test_pending_bytes_cap_refuses_new_payloads_until_room_is_freed() -> None:
    """A new payload that would exceed max_pending_bytes is refused once, its later chunks are
    ignored; when a pending payload completes there is room for the next one."""
    reassembler = Reassembler(max_pending_bytes=5000)
    big = frames_of(payload_bytes(4000, seed=1))
    refused, later = frames_of(payload_bytes(2000, seed=2)), frames_of(payload_bytes(2000, seed=3))
    reassembler.add(*big[0])

    assert reassembler.pending_bytes == 4000
    with pytest.raises(FrameError, match="cap"):
        reassembler.add(*refused[0])
    assert feed(reassembler, refused[1:]) == []
    assert [p.data for p in feed(reassembler, big[1:])] == [payload_bytes(4000, seed=1)]
    assert reassembler.pending_bytes == 0
    assert [p.data for p in feed(reassembler, later)] == [payload_bytes(2000, seed=3)]


# --- spooling large payloads to disk ------------------------------------------------


def open_fds() -> int:
    import os

    return len(os.listdir("/proc/self/fd"))


def test_spooled_payloads_reassemble_from_disk_and_hold_no_memory_while_pending() -> None:
    """Payloads over spool_over_bytes wait in temporary files: none of their bytes are in memory
    until one completes, and every file is closed once the payloads handed over are dropped."""
    payloads = [payload_bytes(50_000 + i, seed=i) for i in range(4)]
    frames = [f for i, p in enumerate(payloads) for f in frames_of(p, sender=f"p{i}")]
    random.Random(3).shuffle(frames)
    reassembler = Reassembler(spool_over_bytes=10_000)
    fds_before = open_fds()

    out = feed(reassembler, frames[:len(frames) // 2])
    in_flight = reassembler.pending_bytes

    assert in_flight > 0 and reassembler.pending_in_memory == 0
    out += feed(reassembler, frames[len(frames) // 2:] + frames[:3])  # with three redeliveries
    assert sorted(bytes(p.data) for p in out) == sorted(payloads)
    assert reassembler.pending_bytes == 0
    del out
    assert open_fds() == fds_before


def test_spooled_payload_with_a_corrupted_chunk_is_dropped_whole() -> None:
    """The sha256 (fed as the chunks arrive) catches a flipped byte in a spooled payload too."""
    frames = frames_of(payload_bytes(30_000))
    envelope_0, chunk_0 = frames[0]
    bad = [(envelope_0, bytes([chunk_0[0] ^ 1]) + chunk_0[1:]), *frames[1:]]
    reassembler = Reassembler(spool_over_bytes=1000)

    with pytest.raises(FrameError, match="sha256"):
        feed(reassembler, bad)
    assert reassembler.pending_bytes == 0


def test_spooled_chunk_repeated_with_different_bytes_is_refused() -> None:
    """A forged second copy of a chunk is compared with what the spool file holds."""
    frames = frames_of(payload_bytes(30_000))
    envelope_1, chunk_1 = frames[1]
    reassembler = Reassembler(spool_over_bytes=1000)
    feed(reassembler, frames[:2])

    with pytest.raises(FrameError, match="twice with different bytes"):
        reassembler.add(envelope_1, bytes(len(chunk_1)))


def test_spool_directory_that_cannot_be_used_is_a_frame_error_naming_it(tmp_path: Any) -> None:
    """A missing spool directory refuses the payload with a clear error, not an OSError."""
    missing = tmp_path / "no-such-dir"
    reassembler = Reassembler(spool_over_bytes=1000, spool_dir=str(missing))

    with pytest.raises(FrameError, match="no-such-dir"):
        feed(reassembler, frames_of(payload_bytes(30_000)))
    assert reassembler.pending_bytes == 0


def test_memory_of_interleaved_large_payloads_does_not_grow_with_their_number() -> None:
    """Eight 4 MiB payloads whose frames interleave: the peak of Python allocations stays near
    one payload when spooled, where reassembling in memory holds all eight at once."""
    import tracemalloc

    size = 4 * 1024 * 1024
    payloads = [payload_bytes(size, seed=i) for i in range(8)]
    streams = [frames_of(p, chunk_size=256 * 1024, sender=f"p{i}") for i, p in enumerate(payloads)]
    interleaved = [frame for group in zip(*streams, strict=True) for frame in group]

    def peak(reassembler: Reassembler) -> int:
        tracemalloc.start()
        try:
            for env, chunk in interleaved:
                reassembler.add(env, chunk)  # each payload is dropped as soon as it comes out
            return tracemalloc.get_traced_memory()[1]
        finally:
            tracemalloc.stop()

    spooled = peak(Reassembler(spool_over_bytes=1024 * 1024))
    in_memory = peak(Reassembler(spool_over_bytes=size))

    assert spooled < 2 * size, spooled
    assert in_memory > 8 * size, in_memory


# --- hashing while receiving, and the memory budget ------------------------------------


@pytest.mark.parametrize("spool_over", [10**9, 1000])
def test_chunks_in_reverse_order_reassemble_and_are_hashed_from_the_store(spool_over: int) -> None:
    """The sha256 is fed as chunks arrive in order; chunks that came early are hashed from the store
    once their turn comes, so any arrival order gives the payload (in memory and spooled)."""
    data = payload_bytes(9_500, seed=4)
    frames = frames_of(data)
    reassembler = Reassembler(spool_over_bytes=spool_over)

    assert [bytes(p.data) for p in feed(reassembler, frames[::-1])] == [data]
    assert reassembler.pending_bytes == 0


@pytest.mark.parametrize("spool_over", [10**9, 1000])
def test_a_corrupted_chunk_that_arrives_out_of_order_is_still_caught(spool_over: int) -> None:
    """A flipped byte in a chunk that came before its predecessors (so it is hashed later, from the
    store) still fails the sha256: FrameError, no payload, nothing pending."""
    frames = frames_of(payload_bytes(5000, seed=6))
    env, chunk = frames[3]
    frames[3] = (env, chunk[:7] + bytes([chunk[7] ^ 0x40]) + chunk[8:])
    order = [frames[3], frames[4], frames[0], frames[2], frames[1]]
    reassembler = Reassembler(spool_over_bytes=spool_over)

    with pytest.raises(FrameError, match="sha256"):
        feed(reassembler, order)
    assert reassembler.pending_bytes == 0


def test_payloads_beyond_the_memory_budget_are_spooled_and_memory_stays_within_it() -> None:
    """Interleaved payloads stay in memory only while their total fits the budget; the rest go to
    disk, so what is held in memory is the same for 3 senders and for 12; all come out whole."""
    def run(senders: int) -> int:
        payloads = [payload_bytes(20_000, seed=i) for i in range(senders)]
        streams = [frames_of(p, sender=f"p{i}") for i, p in enumerate(payloads)]
        interleaved = [frame for group in zip(*streams, strict=True) for frame in group]
        reassembler = Reassembler(memory_budget_bytes=45_000)
        held, out = 0, []
        for env, chunk in interleaved:
            if (payload := reassembler.add(env, chunk)) is not None:
                out.append(bytes(payload.data))
            held = max(held, reassembler.pending_in_memory)
        assert sorted(out) == sorted(payloads)
        return held

    assert run(3) == run(12) == 40_000
