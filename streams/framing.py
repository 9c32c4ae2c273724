"""Chunking of large payloads into broker-sized frames, and their reassembly.

The frame's envelope (`schema.envelope`) says where each chunk belongs; the reassembler places
chunks as they arrive, in any order, checks each one's length and the whole payload's sha256
(hashed while the chunks arrive, not read back at the end), and keeps large payloads on disk
rather than in memory while they are incomplete.
"""

from __future__ import annotations

import hashlib
import mmap
import os
import tempfile
import time
import uuid
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from schema.envelope import MAX_CHUNK_BYTES, Envelope, chunk_span
from streams.errors import StreamsError


class FrameError(StreamsError):
    """A frame or a reassembled payload is malformed, inconsistent or refused (the message says why)."""


@dataclass(frozen=True)
class Payload:
    """A reassembled, checksum-verified payload and the envelope fields that describe it."""

    task_id: str
    round: int
    kind: str
    sender: str
    message_id: str
    payload_size: int
    payload_sha256: str
    # Small payloads are bytes; spooled ones a read-only mapping of their unlinked spool file,
    # which nothing else can write (see Reassembler._hand_over).
    data: bytes | mmap.mmap


def split(
    task_id: str,
    round: int,
    kind: str,
    sender: str,
    payload: bytes | bytearray | memoryview,
    message_id: str | None = None,
    chunk_size: int = MAX_CHUNK_BYTES,
) -> list[tuple[Envelope, memoryview]]:
    """Cut `payload` into frames of at most `chunk_size` bytes; chunks are views, not copies."""
    if not 0 < chunk_size <= MAX_CHUNK_BYTES:
        raise ValueError(f"chunk_size must be in 1..{MAX_CHUNK_BYTES}, not {chunk_size}")
    view = memoryview(payload).cast("B")
    size = len(view)
    count = max(1, -(-size // chunk_size))
    digest = hashlib.sha256(view).hexdigest()
    message_id = message_id or uuid.uuid4().hex
    frames = []
    for index in range(count):
        envelope = Envelope(task_id, round, kind, sender, message_id, index, count, size, digest)
        offset, length = envelope.chunk_span
        frames.append((envelope, view[offset:offset + length]))
    return frames


# --- reassembly ---------------------------------------------------------------


class _Spool:
    """A payload's bytes in an unlinked temporary file: on disk (or the page cache), not the heap."""

    def __init__(self, size: int, directory: str | None) -> None:
        self._file = tempfile.TemporaryFile(dir=directory)  # noqa: SIM115 - closed in close()
        self.size = size

    def write(self, offset: int, chunk: bytes | bytearray | memoryview) -> None:
        view = memoryview(chunk).cast("B")
        while view:
            written = os.pwrite(self._file.fileno(), view, offset)
            view, offset = view[written:], offset + written

    def read(self, offset: int, length: int) -> bytes:
        parts = []
        while length > 0:
            part = os.pread(self._file.fileno(), length, offset)
            if not part:
                raise FrameError(f"spool file ended {length} bytes early")
            parts.append(part)
            offset, length = offset + len(part), length - len(part)
        return parts[0] if len(parts) == 1 else b"".join(parts)

    def mapped(self) -> mmap.mmap:
        """The whole payload as a read-only shared mapping of the file, which outlives `close`."""
        return mmap.mmap(self._file.fileno(), self.size, access=mmap.ACCESS_READ)

    def close(self) -> None:
        self._file.close()


class _Memory:
    """A payload's bytes in one buffer of the final size, filled in place."""

    def __init__(self, size: int) -> None:
        self._buffer = bytearray(size)
        self.size = size

    def write(self, offset: int, chunk: bytes | bytearray | memoryview) -> None:
        memoryview(self._buffer)[offset:offset + len(chunk)] = chunk

    def read(self, offset: int, length: int) -> bytes:
        return bytes(memoryview(self._buffer)[offset:offset + length])

    def close(self) -> None:
        self._buffer = bytearray()


@dataclass
class _Pending:
    """One incomplete payload: its first envelope, its bytes so far, which chunks have arrived,
    and the sha256 of its first `hashed` chunks."""

    envelope: Envelope
    store: _Spool | _Memory
    received: bytearray
    missing: int
    last_progress: float
    hasher: Any = field(default_factory=hashlib.sha256)
    hashed: int = 0

    def hash_in_order(self, index: int, chunk: bytes | bytearray | memoryview) -> None:
        """Feed the sha256 with chunk `index` if it is next, then with any later ones already here.

        Why: the digest is then ready when the last chunk lands, without reading the payload
        back. Frames of one payload come in order on their partition, so the catch-up loop (a
        read from the store) runs only for chunks that arrived out of order.
        """
        if index != self.hashed:
            return
        self.hasher.update(chunk)
        self.hashed += 1
        count = self.envelope.chunk_count
        while self.hashed < count and self.received[self.hashed]:
            offset, length = chunk_span(self.envelope.payload_size, count, self.hashed)
            self.hasher.update(self.store.read(offset, length))
            self.hashed += 1


# How many finished message ids a Reassembler remembers, so a late duplicate
# chunk of a finished payload is ignored instead of opening a new one that
# could only expire.
_FINISHED_MEMORY = 4096
# Incomplete payloads are reassembled in memory while their total stays within
# this budget, and in a temporary file beyond it: many large updates arriving at
# once (their frames interleaved) then cost disk, not memory, so memory does not
# grow with the number of senders; while they come one at a time (or are small),
# nothing is written to disk at all.
MEMORY_BUDGET_BYTES = 64 * 1024 * 1024
# Payloads larger than this always go to a temporary file. Why 8 MiB: a payload
# reassembled in memory is copied once more into the bytes handed over, so for a
# moment it is held twice; read back from the file it is held once (the file's
# pages are the kernel's cache, not the process's memory). For a 40 MB model
# that copy was 40 MB beside the aggregator's running sums.
SPOOL_OVER_BYTES = 8 * 1024 * 1024


class Reassembler:
    """Collects frames into payloads, with bounded memory, a timeout and checksum verification.

    `max_pending_bytes` caps the total size of incomplete payloads. Payloads over
    `spool_over_bytes`, and those that would take the incomplete payloads held in
    memory past `memory_budget_bytes`, wait in unlinked temporary files under
    `spool_dir` (the system's temporary directory by default), so that cap is
    mostly disk. A
    `verifier` (see streams.signing) is asked about each payload's first frame;
    a payload it refuses is dropped whole.
    """

    def __init__(
        self,
        max_pending_bytes: int = 8 * 1024 * 1024 * 1024,
        timeout_s: float = 120.0,
        clock: Callable[[], float] = time.monotonic,
        spool_over_bytes: int = SPOOL_OVER_BYTES,
        spool_dir: str | None = None,
        verifier: Callable[[Envelope], str | None] | None = None,
        memory_budget_bytes: int = MEMORY_BUDGET_BYTES,
    ) -> None:
        self.max_pending_bytes = max_pending_bytes
        self.timeout_s = timeout_s
        self.spool_over_bytes = spool_over_bytes
        self.memory_budget_bytes = memory_budget_bytes
        self.spool_dir = spool_dir
        # Asked on a payload's first frame: why its sender must not be believed (None: believe).
        self.verifier = verifier
        self._clock = clock
        self._pending: dict[str, _Pending] = {}
        self._finished: OrderedDict[str, None] = OrderedDict()

    @property
    def pending_bytes(self) -> int:
        """Bytes reserved for incomplete payloads (their full sizes, reserved at the first chunk)."""
        return sum(p.envelope.payload_size for p in self._pending.values())

    @property
    def pending_in_memory(self) -> int:
        """The part of pending_bytes held in memory rather than spooled to disk."""
        return sum(p.store.size for p in self._pending.values() if isinstance(p.store, _Memory))

    def is_pending(self, message_id: str) -> bool:
        """Whether some but not all chunks of `message_id` have arrived."""
        return message_id in self._pending

    def add(self, envelope: Envelope, chunk: bytes | bytearray | memoryview) -> Payload | None:
        """Take one frame; return the payload when it is complete and verified, else None.

        Raise FrameError for a chunk that cannot belong (wrong length, disagrees
        with earlier chunks) and for a completed payload whose sha256 does not
        match; that payload is dropped whole.
        """
        if envelope.message_id in self._finished:
            return None
        offset, length = envelope.chunk_span
        if len(chunk) != length:
            raise FrameError(f"message {envelope.message_id}: chunk {envelope.chunk_index} is "
                             f"{len(chunk)} bytes, expected {length}")
        pending = self._pending.get(envelope.message_id) or self._open(envelope)
        _check_same_message(pending.envelope, envelope)
        if not self._place(pending, envelope.chunk_index, offset, chunk):
            return None
        return self._complete(pending) if pending.missing == 0 else None

    def expire(self) -> list[str]:
        """Drop incomplete payloads with no new chunk for timeout_s; return their message ids."""
        # Measured from the last chunk, not the first: a large payload that is
        # still arriving is slow, not stalled.
        now = self._clock()
        stale = [mid for mid, p in self._pending.items() if now - p.last_progress > self.timeout_s]
        for message_id in stale:
            self._finish(message_id)
        return stale

    def forget(self, message_id: str) -> None:
        """Take the next copy of a completed payload again, instead of dropping it as a repeat."""
        self._finished.pop(message_id, None)

    def clear(self) -> None:
        """Drop every incomplete payload and forget finished ones (the topics were recreated)."""
        for message_id in list(self._pending):
            self._finish(message_id)
        self._finished.clear()

    def _open(self, envelope: Envelope) -> _Pending:
        if self.verifier is not None and (reason := self.verifier(envelope)):
            # Checked before a byte is kept; remembered as finished, so the refused payload's
            # other frames are dropped quietly instead of each being refused again.
            self._finish(envelope.message_id)
            raise FrameError(f"message {envelope.message_id}: {reason}")
        size = envelope.payload_size
        if self.pending_bytes + size > self.max_pending_bytes:
            # Remember the refusal: the payload's later chunks are then ignored
            # instead of each being refused again (or opening it half-way).
            self._finish(envelope.message_id)
            raise FrameError(f"message {envelope.message_id}: {size} more bytes would exceed the "
                             f"{self.max_pending_bytes}-byte cap on pending payloads")
        # Storage of the final size, filled in place: chunks are placed the moment
        # they arrive, in any order, and none is kept.
        try:
            store: _Spool | _Memory = (_Spool(size, self.spool_dir) if self._spools(size)
                                       else _Memory(size))
        except OSError as exc:
            self._finish(envelope.message_id)
            raise FrameError(f"message {envelope.message_id}: cannot spool {size} bytes to "
                             f"{self.spool_dir or tempfile.gettempdir()}: {exc}") from exc
        pending = _Pending(envelope, store, bytearray(envelope.chunk_count),
                           envelope.chunk_count, self._clock())
        self._pending[envelope.message_id] = pending
        return pending

    def _spools(self, size: int) -> bool:
        return size > self.spool_over_bytes or self.pending_in_memory + size > self.memory_budget_bytes

    def _place(self, pending: _Pending, index: int, offset: int, chunk: bytes | bytearray | memoryview) -> bool:
        if pending.received[index]:
            # An exact duplicate (a redelivery) is harmless; a different chunk
            # under the same index is a forgery or a bug, and is refused.
            if pending.store.read(offset, len(chunk)) != memoryview(chunk).cast("B"):
                raise FrameError(f"message {pending.envelope.message_id}: chunk {index} arrived "
                                 f"twice with different bytes")
            return False
        try:
            pending.store.write(offset, chunk)
        except OSError as exc:
            self._finish(pending.envelope.message_id)
            raise FrameError(f"message {pending.envelope.message_id}: cannot spool chunk {index}: "
                             f"{exc}; dropped") from exc
        pending.received[index] = 1
        pending.missing -= 1
        pending.last_progress = self._clock()
        pending.hash_in_order(index, chunk)
        return True

    def _complete(self, pending: _Pending) -> Payload:
        envelope = pending.envelope
        # Hashed as the chunks arrived (every chunk is here, so all were hashed in order):
        # a payload whose bytes do not match is refused before they are even read back.
        if pending.hashed != envelope.chunk_count or pending.hasher.hexdigest() != envelope.payload_sha256:
            self._finish(envelope.message_id)
            raise FrameError(f"message {envelope.message_id}: sha256 of the reassembled "
                             f"{envelope.payload_size} bytes does not match the envelope; dropped")
        try:
            data = self._hand_over(pending.store)
        except (OSError, ValueError) as exc:
            raise FrameError(f"message {envelope.message_id}: cannot read back the spooled "
                             f"payload: {exc}; dropped") from exc
        finally:
            self._finish(envelope.message_id)
        return Payload(envelope.task_id, envelope.round, envelope.kind, envelope.sender,
                       envelope.message_id, envelope.payload_size, envelope.payload_sha256, data)

    @staticmethod
    def _hand_over(store: _Spool | _Memory) -> bytes | mmap.mmap:
        """The payload as callers get it: immutable, and held by nothing else.

        In memory: one bytes object of its size (the store is freed after). Spooled: a read-only
        mapping of the file instead of a copy on the heap. The file is unlinked and the spool's
        descriptor is closed after this; the mapping keeps a duplicate of it (Python's mmap does)
        that no code writes through, so nothing changes the bytes under the mapping. Its pages
        are the kernel's cache until read (see streams.pages), and the file's space is freed
        when the mapping is dropped.
        """
        if isinstance(store, _Spool) and store.size > 0:
            return store.mapped()
        return store.read(0, store.size)

    def _finish(self, message_id: str) -> None:
        pending = self._pending.pop(message_id, None)
        if pending is not None:
            pending.store.close()
        self._finished[message_id] = None
        if len(self._finished) > _FINISHED_MEMORY:
            self._finished.popitem(last=False)


_SAME_FIELDS = ("task_id", "round", "kind", "sender", "chunk_count", "payload_size", "payload_sha256",
                "signature")


def _check_same_message(first: Envelope, other: Envelope) -> None:
    for name in _SAME_FIELDS:
        if getattr(first, name) != getattr(other, name):
            raise FrameError(f"message {first.message_id}: chunk {other.chunk_index} says {name}="
                             f"{getattr(other, name)!r}, earlier chunks said {getattr(first, name)!r}")
