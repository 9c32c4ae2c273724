"""The client's key endpoints, and making sure this machine's key is the one the API knows."""

from __future__ import annotations

from typing import Any, Protocol
from urllib.parse import quote

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client.endpoints import Endpoints
from client.keys import KeyRing, fingerprint_of, public_text
from client.models import MemberKeyInfo
from schema.keys import MemberKey, decode_public_key


class KeysApi:
    """Signing-key methods of MusketeerClient."""

    def register_key(self: Endpoints, public_key: str, *, idempotency_key: str | None = None) -> MemberKeyInfo:
        """Make this public key (base64 Ed25519) your current signing key."""
        body = self._command("PUT", "/v1/users/me/keys", key=idempotency_key, json={"public_key": public_key})
        return MemberKeyInfo.model_validate(body)

    def my_keys(self: Endpoints) -> list[MemberKeyInfo]:
        """Your keys, newest first, with their status."""
        return [MemberKeyInfo.model_validate(k) for k in self._get("/v1/users/me/keys").get("items", [])]

    def revoke_key(self: Endpoints, fingerprint: str) -> dict[str, Any]:
        """Revoke one of your keys: nothing it signed is believed from now on."""
        result: dict[str, Any] = self._command("DELETE", f"/v1/users/me/keys/{quote(fingerprint, safe='')}",
                                               key=None)
        return result

    def task_keys(self: Endpoints, name: str) -> list[MemberKeyInfo]:
        """The keys the task recorded for its members at its start, with their status now."""
        body = self._get(f"/v1/tasks/{quote(name, safe='')}/keys")
        return [MemberKeyInfo.model_validate(k) for k in body.get("items", [])]

    def task_member_keys(self: Endpoints, name: str) -> list[MemberKey]:
        """The same, as the data plane's verifier takes them (raw public keys, revoked or not)."""
        return [MemberKey(k.username, k.fingerprint, decode_public_key(k.public_key), k.status == "revoked")
                for k in KeysApi.task_keys(self, name)]


class KeyClient(Protocol):
    def my_keys(self) -> list[MemberKeyInfo]: ...
    def register_key(self, public_key: str, *, idempotency_key: str | None = None) -> MemberKeyInfo: ...


def ensure_registered(client: KeyClient, ring: KeyRing) -> Ed25519PrivateKey:
    """This machine's current key, made if there is none and registered if the API does not have
    it as the user's active key; a key the API retired or revoked is replaced by a new one.

    Held on the ring from the first look to the registration: of several daemons starting at once
    on one machine, the first makes and registers the key and the others find it active.
    """
    with ring.held():
        key = ring.current()
        if key is not None:
            status = {k.fingerprint: k.status for k in client.my_keys()}.get(fingerprint_of(key))
            if status == "active":
                return key
            if status is not None:  # rotated or revoked elsewhere: never sign with it again
                key = None
        key = key or ring.create()
        client.register_key(public_text(key))
        return key
