"""Signatures on the data plane: a member signs every payload it sends; readers believe a message
only when the key recorded for its sender signed it.

The signature (Ed25519, from the `cryptography` package) covers the envelope's `signed_bytes()`:
task, round, kind, sender, message id and the payload's sha256. It is checked on a payload's
first frame, before any of its bytes are kept, and the sha256 is checked when the payload is
complete: together they bind every byte to its sender.
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterable

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from schema.envelope import Envelope
from schema.keys import MemberKey, fingerprint


class Signer:
    """Signs envelopes as one member, with their private key (which never leaves this object)."""

    def __init__(self, private_key: Ed25519PrivateKey) -> None:
        self._key = private_key
        self.public_key = private_key.public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
        self.fingerprint = fingerprint(self.public_key)

    def __repr__(self) -> str:
        return f"Signer(fingerprint={self.fingerprint[:16]}…)"

    def sign(self, envelope: Envelope) -> str:
        """The base64 signature of the envelope's signed fields."""
        return base64.b64encode(self._key.sign(envelope.signed_bytes())).decode("ascii")


class Verifier:
    """Checks each message's signature against the key recorded for its sender."""

    def __init__(self, keys: Iterable[MemberKey] = ()) -> None:
        self._keys: dict[str, tuple[MemberKey, Ed25519PublicKey]] = {}
        self.update(keys)

    def update(self, keys: Iterable[MemberKey]) -> None:
        """Replace the table of keys (a revocation takes effect from the next message)."""
        self._keys = {k.username: (k, Ed25519PublicKey.from_public_bytes(k.public_key)) for k in keys}

    def __call__(self, envelope: Envelope) -> str | None:
        """Why the message must not be believed, or None if its sender's recorded key signed it."""
        if not envelope.signature:
            return f"unsigned message from '{envelope.sender}' (every payload must be signed)"
        entry = self._keys.get(envelope.sender)
        if entry is None:
            return f"no signing key is recorded for '{envelope.sender}' in this task (not a member)"
        key, public = entry
        if key.revoked:
            return f"the key {key.fingerprint[:16]}… of '{envelope.sender}' was revoked"
        try:
            public.verify(base64.b64decode(envelope.signature, validate=True), envelope.signed_bytes())
        except (InvalidSignature, binascii.Error, ValueError):
            return (f"bad signature: not made by the key {key.fingerprint[:16]}… recorded for "
                    f"'{envelope.sender}' over this task, round, kind, message id and payload")
        return None
