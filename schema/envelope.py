"""The data-plane envelope: what every frame on a task topic says about itself and its payload.

Every frame is one Kafka message; its headers carry the Envelope (task, round, kind, sender,
message id, chunk index and count, payload size and sha256, and the sender's signature over the
fields that say what the payload is), its value one chunk of the payload.

A payload of `size` bytes in `count` chunks is cut into balanced chunks: the
first `size % count` chunks hold one byte more than the others. The offset and
length of chunk i follow from (size, count, i) alone, so the envelope needs no
offset field and a receiver can place any chunk the moment it arrives, in any
order, and check its length exactly.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, fields

# Apache Kafka's default broker limit (max.message.bytes) is 1,048,588 bytes
# per record batch. A frame's value is at most 1 MiB - 8 KiB = 1,040,384 bytes,
# which leaves 8,204 bytes for the key, the envelope headers (a few hundred
# bytes) and the record and batch framing (about 100 bytes): a stock broker
# carries every frame unchanged. The writer sends one frame per record batch.
MAX_CHUNK_BYTES = 1024 * 1024 - 8 * 1024
ENVELOPE_VERSION = "1"
_VERSION_HEADER = "mk.v"
# Envelope strings (ids, kinds, names) are short printable text: a header is
# not a place to smuggle megabytes or control characters into logs.
_MAX_TEXT = 256
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_DECIMAL = re.compile(r"^(0|[1-9][0-9]{0,18})$")
_SIGNATURE = re.compile(r"^[A-Za-z0-9+/]{86}==$")
_OPTIONAL = frozenset({"signature"})
SIGNING_CONTEXT = b"musketeer/envelope/v1"
# Kafka headers as confluent-kafka hands them over: a list of pairs (or a dict).
Headers = Sequence[tuple[str, bytes | str | None]] | Mapping[str, bytes | str | None]


class EnvelopeError(ValueError):
    """Envelope headers are missing, malformed or inconsistent (the message says which)."""


@dataclass(frozen=True)
class Envelope:
    """What every frame says about itself and about the payload it belongs to."""

    task_id: str
    round: int
    kind: str
    sender: str
    message_id: str
    chunk_index: int
    chunk_count: int
    payload_size: int
    payload_sha256: str
    # The sender's Ed25519 signature over `signed_bytes()`, base64; "" for an unsigned frame
    # (which every reader refuses).
    signature: str = ""

    def __post_init__(self) -> None:
        for name in ("task_id", "kind", "sender", "message_id"):
            _check_text(name, getattr(self, name))
        for name in ("round", "chunk_index", "chunk_count", "payload_size"):
            _check_count(name, getattr(self, name))
        if not isinstance(self.payload_sha256, str) or not _HEX64.match(self.payload_sha256):
            raise EnvelopeError(f"payload_sha256 {self.payload_sha256!r} is not 64 lowercase hex digits")
        if not isinstance(self.signature, str) or (self.signature and not _SIGNATURE.match(self.signature)):
            raise EnvelopeError("signature is not the base64 of 64 bytes")
        self._check_chunking()

    def _check_chunking(self) -> None:
        if not 0 <= self.chunk_index < self.chunk_count:
            raise EnvelopeError(f"chunk_index {self.chunk_index} is not below chunk_count {self.chunk_count}")
        # Every chunk holds at least one byte (one empty chunk for an empty
        # payload) and at most MAX_CHUNK_BYTES.
        if self.chunk_count > max(self.payload_size, 1):
            raise EnvelopeError(f"{self.chunk_count} chunks for {self.payload_size} bytes leaves empty chunks")
        if chunk_span(self.payload_size, self.chunk_count, 0)[1] > MAX_CHUNK_BYTES:
            raise EnvelopeError(f"{self.chunk_count} chunks for {self.payload_size} bytes exceed "
                             f"{MAX_CHUNK_BYTES} bytes each")

    def signed_bytes(self) -> bytes:
        """What the sender signs: task, round, kind, sender, message id and the payload's sha256.

        Fields cannot hold control characters, so NUL-separated text is unambiguous; the
        context prefix keeps these signatures from being valid for anything else.
        """
        parts = (self.task_id, str(self.round), self.kind, self.sender, self.message_id, self.payload_sha256)
        return SIGNING_CONTEXT + b"\x00" + "\x00".join(parts).encode("utf-8")

    def to_headers(self) -> list[tuple[str, bytes]]:
        """The Kafka message headers that carry this envelope (no `signature` header when unsigned)."""
        values = [(f.name, str(getattr(self, f.name)).encode("utf-8")) for f in fields(self)
                  if f.name != "signature" or self.signature]
        return [(_VERSION_HEADER, ENVELOPE_VERSION.encode()), *values]

    @classmethod
    def from_headers(cls, headers: Headers | None) -> Envelope:
        """The envelope in Kafka message headers; raise EnvelopeError if anything is missing or malformed."""
        found = _header_map(headers)
        version = found.pop(_VERSION_HEADER, None)
        if version != ENVELOPE_VERSION:
            raise EnvelopeError(f"envelope version {version!r} is not {ENVELOPE_VERSION!r}")
        missing = [f.name for f in fields(cls) if f.name not in found and f.name not in _OPTIONAL]
        if missing:
            raise EnvelopeError(f"envelope header(s) missing: {', '.join(missing)}")
        values = {f.name: _parse_value(f.name, found[f.name], f.type) for f in fields(cls) if f.name in found}
        return cls(**values)  # type: ignore[arg-type]  # each value parsed to its field's type

    @property
    def chunk_span(self) -> tuple[int, int]:
        """(offset, length) of this frame's chunk inside the payload."""
        return chunk_span(self.payload_size, self.chunk_count, self.chunk_index)


def _check_text(name: str, value: object) -> None:
    if not isinstance(value, str) or not 0 < len(value) <= _MAX_TEXT or _CONTROL.search(value):
        raise EnvelopeError(f"{name} {value!r} must be 1..{_MAX_TEXT} printable characters")


def _check_count(name: str, value: object) -> None:
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise EnvelopeError(f"{name} {value!r} must be a non-negative integer")


def _header_map(headers: Headers | None) -> dict[str, str]:
    if not headers:
        raise EnvelopeError("message has no envelope headers")
    pairs = list(headers.items()) if isinstance(headers, Mapping) else headers
    found: dict[str, str] = {}
    for key, value in pairs:
        if key in found:
            # Two values for one field: which one is true is anyone's guess.
            raise EnvelopeError(f"envelope header {key!r} appears twice")
        found[key] = _header_text(key, value)
    return found


def _header_text(key: str, value: bytes | str | None) -> str:
    if value is None:
        raise EnvelopeError(f"envelope header {key!r} has no value")
    if isinstance(value, str):
        return value
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise EnvelopeError(f"envelope header {key!r} is not UTF-8") from exc


def _parse_value(name: str, text: str, annotation: object) -> str | int:
    # `from __future__ import annotations` makes field types strings.
    if annotation not in ("int", int):
        return text
    if not _DECIMAL.match(text):
        raise EnvelopeError(f"envelope header {name!r} value {text!r} is not a plain decimal integer")
    return int(text)


def chunk_span(payload_size: int, chunk_count: int, chunk_index: int) -> tuple[int, int]:
    """(offset, length) of chunk `chunk_index` when `payload_size` bytes are cut into `chunk_count` balanced chunks."""
    base, extra = divmod(payload_size, chunk_count)
    offset = chunk_index * base + min(chunk_index, extra)
    return offset, base + (1 if chunk_index < extra else 0)
