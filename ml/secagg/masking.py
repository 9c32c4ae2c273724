"""The ring of 2^64 that masked updates live in, and the keystreams that mask them.

Values are quantised to fixed point (`scale` units per 1.0) as two's-complement 64-bit integers;
numpy's uint64 arithmetic wraps modulo 2^64, so masks add and cancel exactly. Whoever chooses
`scale` must keep the true sum of every participant's values within +-2^63 / scale.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

Array = np.ndarray[Any, Any]
_COUNTER_ZERO = bytes(16)


def quantize(values: Array, scale: float) -> Array:
    """Float values as fixed-point ring elements (uint64)."""
    scaled = np.rint(np.asarray(values, dtype=np.float64) * scale)
    if not np.all(np.abs(scaled) < 2.0**63):
        raise ValueError("a value is too large for the ring at this scale")
    return scaled.astype(np.int64).view(np.uint64)


def dequantize(ring: Array, scale: float) -> Array:
    """Ring elements (a sum of quantised values) back to floats."""
    return np.asarray(ring, dtype=np.uint64).view(np.int64).astype(np.float64) / scale


def keystream(seed: bytes, length: int) -> Array:
    """`length` pseudo-random ring elements from a 32-byte seed (AES-256-CTR, counter from 0).

    Each seed is used for one keystream only (seeds are derived per round and per pair), so the
    fixed counter never repeats under a key.
    """
    encryptor = Cipher(algorithms.AES(seed), modes.CTR(_COUNTER_ZERO)).encryptor()
    return np.frombuffer(encryptor.update(bytes(8 * length)) + encryptor.finalize(), dtype=np.uint64)


def derive(secret: bytes, context: bytes) -> bytes:
    """A 32-byte key for one purpose (`context`) from shared or private secret material."""
    return HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=context).derive(secret)


def agree(private: X25519PrivateKey, peer_public: bytes, context: bytes) -> bytes:
    """The key two members share for `context`: X25519 agreement, then HKDF."""
    return derive(private.exchange(X25519PublicKey.from_public_bytes(peer_public)), context)


def public_bytes(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte public half of an X25519 key."""
    return private.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)


def private_bytes(private: X25519PrivateKey) -> bytes:
    """The raw 32-byte private half (only ever shared in Shamir shares)."""
    return private.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
