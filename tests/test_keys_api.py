"""Member keys through the real API: registration, rotation, revocation, and which key a task
believes (the one TaskStarted recorded)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import ConflictError, MusketeerClient, NotFoundError, PermissionDenied, ValidationFailed
from client.keys import KeyRing, fingerprint_of, public_text
from client.keys_api import ensure_registered
from streams.framing import split
from streams.signing import Signer, Verifier
from tests.conftest import ApiProcess, unique
from tests.training_support import member as new_member

pytestmark = pytest.mark.integration


def person(api: ApiProcess) -> MusketeerClient:
    """A registered, logged-in user (no signing key yet: these tests register their own)."""
    return new_member(api, "k").client


def started(api: ApiProcess, creator: MusketeerClient, member: MusketeerClient) -> str:
    name = unique("keyed")
    creator.create_task(name, {"quorum": 1, "rounds": 1, "model": "digits-mlp"})
    member.join(name)
    creator.start_task(name)
    return name


def signed_by(key: Ed25519PrivateKey, sender: str) -> object:
    envelope = split("t", 1, "update", sender, b"payload")[0][0]
    return replace(envelope, signature=Signer(key).sign(envelope))


def test_a_rotated_key_speaks_for_tasks_started_after_the_rotation(api: ApiProcess) -> None:
    """Task A records john's first key, task B (after a rotation) his second: each task believes
    only its own; revoking the first key stops task A believing it too."""
    alice, john = person(api), person(api)
    alice.register_key(public_text(Ed25519PrivateKey.generate()))
    first, second = Ed25519PrivateKey.generate(), Ed25519PrivateKey.generate()
    john.register_key(public_text(first))
    task_a = started(api, alice, john)
    rotated = john.register_key(public_text(second))
    task_b = started(api, alice, john)
    me = john.me().username

    assert rotated.status == "active"
    assert alice.get_task(task_a).keys[me] == fingerprint_of(first)
    assert alice.get_task(task_b).keys[me] == fingerprint_of(second)
    believes_a, believes_b = Verifier(john.task_member_keys(task_a)), Verifier(john.task_member_keys(task_b))
    assert believes_a(signed_by(first, me)) is None and believes_b(signed_by(second, me)) is None  # type: ignore[arg-type]
    assert "bad signature" in (believes_a(signed_by(second, me)) or "")  # type: ignore[arg-type]
    assert "bad signature" in (believes_b(signed_by(first, me)) or "")  # type: ignore[arg-type]
    assert {k.status for k in john.task_keys(task_a) if k.username == me} == {"rotated"}

    john.revoke_key(fingerprint_of(first))

    believes_a.update(john.task_member_keys(task_a))
    assert "was revoked" in (believes_a(signed_by(first, me)) or "")  # type: ignore[arg-type]
    types = [e.type for e in john.task_events(task_a)]
    assert types[-1] == "TaskStarted", "a key event belongs to the user's stream, not the task's"


def test_key_endpoints_refuse_what_they_must(api: ApiProcess) -> None:
    """Bad keys are 422, someone else's key is 409, a stranger's revocation 404, a stranger's
    look at a task's keys 403, and a task without keys cannot start (409 naming who)."""
    alice, john, eve = person(api), person(api), person(api)
    with pytest.raises(ValidationFailed, match="base64"):
        john.register_key("not base64 at all!")
    with pytest.raises(ValidationFailed, match="32 bytes"):
        john.register_key("AAAA")
    key = Ed25519PrivateKey.generate()
    john.register_key(public_text(key))
    with pytest.raises(ConflictError, match="already registered"):
        eve.register_key(public_text(key))
    with pytest.raises(NotFoundError):
        eve.revoke_key(fingerprint_of(key))
    name = unique("keyless")
    alice.create_task(name, {"quorum": 1, "rounds": 1, "model": "digits-mlp"})
    john.join(name)
    with pytest.raises(ConflictError, match="no signing key registered for") as refused:
        alice.start_task(name)
    assert refused.value.details == {"missing_keys": [alice.me().username]}
    with pytest.raises(PermissionDenied):
        eve.task_keys(name)
    assert [k.status for k in john.my_keys()] == ["active"]


def test_daemons_starting_at_once_on_one_keys_folder_make_and_register_one_key(api: ApiProcess) -> None:
    """Ten daemons of one user starting together (threads here; processes take the same file
    lock) find no key: one makes and registers it, the others use it; none is retired."""
    someone = new_member(api, "k")
    ring = KeyRing(someone.keys_dir, someone.name)
    barrier = threading.Barrier(10)

    def start() -> str:
        barrier.wait()
        return fingerprint_of(ensure_registered(someone.client, ring))

    with ThreadPoolExecutor(10) as pool:
        fingerprints = set(pool.map(lambda _: start(), range(10)))

    assert len(fingerprints) == 1, fingerprints
    assert [(k.fingerprint, k.status) for k in someone.client.my_keys()] == [(fingerprints.pop(), "active")]
