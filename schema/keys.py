"""Member signing keys as they cross process boundaries: Ed25519 public keys, base64, and their
fingerprints (the sha256 of the 32 raw bytes, hex), which the log records."""

from __future__ import annotations

import base64
import binascii
import hashlib
from dataclasses import dataclass

PUBLIC_KEY_BYTES = 32


def fingerprint(public_key: bytes) -> str:
    """The hex sha256 of a raw public key: how the log and the CLI name a key."""
    return hashlib.sha256(public_key).hexdigest()


def encode_public_key(public_key: bytes) -> str:
    """A raw Ed25519 public key as base64 text."""
    return base64.b64encode(public_key).decode("ascii")


def decode_public_key(text: str) -> bytes:
    """The raw 32 bytes of a base64 Ed25519 public key; ValueError naming what is wrong."""
    try:
        raw = base64.b64decode(text.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError) as exc:
        raise ValueError(f"public_key is not base64: {exc}") from exc
    if len(raw) != PUBLIC_KEY_BYTES:
        raise ValueError(f"public_key must be {PUBLIC_KEY_BYTES} bytes (an Ed25519 key), not {len(raw)}")
    return raw


@dataclass(frozen=True)
class MemberKey:
    """The key that speaks for one member in one task, and whether it still may."""

    username: str
    fingerprint: str
    public_key: bytes
    revoked: bool = False
