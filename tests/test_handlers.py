"""Command handlers on the in-memory event store: the rules of each command, fast.

The store is the in-memory backend of the same contract as PostgreSQL (tests/test_event_store.py);
the broker's topic admin is a recording fake. The HTTP path and the SQL projections are covered
against the real services in tests/test_api.py and tests/test_api_training.py.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass, field

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from api.errors import Conflict, Forbidden, InvalidInput, NotAuthenticated, NotFound
from api.handlers import Context
from api.settings import Settings
from api.store.memory import MemoryEventStore
from api.training import TrainingCommands
from schema.commands import CreateTask, RecordRound, RegisterKey, RegisterUser
from schema.definition import TaskDefinition


@dataclass
class RecordingTopics:
    """The broker's topic admin, as a list of calls."""

    created: list[str] = field(default_factory=list)
    deleted: list[str] = field(default_factory=list)

    def create(self, names: list[str]) -> None:
        self.created += names

    def delete(self, names: list[str]) -> None:
        self.deleted += names


SETTINGS = Settings(database_url="memory", kafka_bootstrap_servers="none", topic_prefix="unit",
                    token_ttl_s=60, relay_enabled=False, db_pool_size=1, topic_retention_s=0)


@pytest.fixture()
def topics() -> RecordingTopics:
    return RecordingTopics()


def new_key() -> str:
    """A fresh Ed25519 public key, base64, as the client registers it."""
    raw = Ed25519PrivateKey.generate().public_key().public_bytes(Encoding.Raw, PublicFormat.Raw)
    return base64.b64encode(raw).decode()


@pytest.fixture()
def commands(topics: RecordingTopics) -> TrainingCommands:
    """Alice, John, Jack and Eve registered, each with a signing key, on a fresh in-memory store."""
    commands = TrainingCommands(MemoryEventStore(), SETTINGS, topics)
    for name in ("alice", "john", "jack", "eve"):
        commands.register_user(RegisterUser(username=name, password="s3cret-pass", organization="Org"),
                               as_user("anonymous"))
        commands.register_key(RegisterKey(public_key=new_key()), as_user(name))
    return commands


def as_user(name: str, key: str | None = None) -> Context:
    return Context(actor=name, request_id="test", idempotency_key=key)


def create(commands: TrainingCommands, quorum: int = 2, **definition: object) -> str:
    body = CreateTask(name="t1", definition=TaskDefinition(quorum=quorum, rounds=2, model="digits-mlp",  # type: ignore[arg-type]
                                                           **definition))
    commands.create_task(body, as_user("alice"))
    return "t1"


def test_a_taken_name_is_refused_and_the_password_kept_hashed(commands: TrainingCommands) -> None:
    """Registering a name twice is a Conflict; the stored credential is an argon2 hash."""
    with pytest.raises(Conflict, match="already exists"):
        commands.register_user(RegisterUser(username="john", password="another-pass", organization="X"),
                               as_user("anonymous"))
    stored = commands.store._state.credentials["john"]  # type: ignore[attr-defined]
    assert stored.startswith("$argon2") and "s3cret-pass" not in stored


def test_create_makes_the_topics_and_refuses_a_duplicate_name(commands: TrainingCommands,
                                                            topics: RecordingTopics) -> None:
    """A task gets its two topics; a second task of the same name is refused before any topic."""
    create(commands)
    assert [t.rsplit(".", 1)[1] for t in topics.created] == ["broadcast", "updates"]
    with pytest.raises(Conflict, match="already exists"):
        create(commands)
    assert len(topics.created) == 2


def test_join_rules(commands: TrainingCommands) -> None:
    """The creator may not join; nobody joins twice; a full task takes nobody more."""
    name = create(commands, quorum=1, max_participants=1)
    with pytest.raises(Forbidden, match="creator cannot join"):
        commands.join(name, as_user("alice"))
    assert commands.join(name, as_user("john")).body["participant_count"] == 1
    with pytest.raises(Conflict, match="already joined"):
        commands.join(name, as_user("john"))
    with pytest.raises(Conflict, match="full"):
        commands.join(name, as_user("jack"))


def test_an_unregistered_user_cannot_join(commands: TrainingCommands) -> None:
    """A token's owner who is not (or no longer) a user cannot act."""
    name = create(commands)
    with pytest.raises(NotAuthenticated):
        commands.join(name, as_user("ghost"))


def test_start_needs_the_quorum_and_the_creator(commands: TrainingCommands) -> None:
    """Before the quorum start is a Conflict; only the creator starts; after it, no joins."""
    name = create(commands, quorum=2)
    commands.join(name, as_user("john"))
    with pytest.raises(Conflict, match="1 of its quorum of 2"):
        commands.start(name, as_user("alice"))
    commands.join(name, as_user("jack"))
    with pytest.raises(Forbidden):
        commands.start(name, as_user("john"))
    assert commands.start(name, as_user("alice")).body["status"] == "STARTED"
    with pytest.raises(Conflict, match="no longer takes joins"):
        commands.join(name, as_user("eve"))


def test_rounds_are_recorded_in_order_with_their_model_stored_first(commands: TrainingCommands) -> None:
    """A round needs its model stored, the next number, and participants of the task."""
    name = create(commands, quorum=1)
    commands.join(name, as_user("john"))
    commands.start(name, as_user("alice"))
    digest = hashlib.sha256(b"model").hexdigest()

    def round_(number: int, who: list[str]) -> RecordRound:
        return RecordRound(round=number, participants=who, model_sha256=digest)

    with pytest.raises(Conflict, match="upload the round's model"):
        commands.record_round(name, round_(1, ["john"]), as_user("alice"))
    commands.store_model(name, b"model", 1, False, as_user("alice"))
    with pytest.raises(Conflict, match="expects round 1, not 2"):
        commands.record_round(name, round_(2, ["john"]), as_user("alice"))
    with pytest.raises(InvalidInput, match="not participants"):
        commands.record_round(name, round_(1, ["eve"]), as_user("alice"))
    with pytest.raises(Forbidden):
        commands.record_round(name, round_(1, ["john"]), as_user("john"))
    assert commands.record_round(name, round_(1, ["john"]), as_user("alice")).body["rounds_completed"] == 1


def test_a_retried_join_returns_the_first_answer_and_appends_nothing(commands: TrainingCommands) -> None:
    """The same Idempotency-Key replays the first result; the log does not grow."""
    name = create(commands)
    first = commands.join(name, as_user("john", key="k1"))
    events = len(commands.store.read_all(0, 10_000))
    again = commands.join(name, as_user("john", key="k1"))
    assert again == first
    assert len(commands.store.read_all(0, 10_000)) == events


def test_delete_is_the_creators_and_frees_a_never_started_tasks_topics(commands: TrainingCommands,
                                                                       topics: RecordingTopics) -> None:
    """Only the creator deletes; a CREATED task's topics go at once, a started one's wait."""
    name = create(commands, quorum=1)
    with pytest.raises(Forbidden):
        commands.delete(name, as_user("john"))
    assert commands.delete(name, as_user("alice")).body["status"] == "DELETED"
    assert topics.deleted == topics.created

    body = CreateTask(name="t2", definition=TaskDefinition(quorum=1, rounds=1, model="digits-mlp"))
    commands.create_task(body, as_user("alice"))
    commands.join("t2", as_user("john"))
    commands.start("t2", as_user("alice"))
    commands.delete("t2", as_user("alice"))
    assert len(topics.deleted) == 2, "a started task's topics are left to the retention sweep"


def test_start_records_the_key_of_every_member(commands: TrainingCommands) -> None:
    """TaskStarted names the fingerprint of the creator's key and each participant's."""
    name = create(commands, quorum=1)
    commands.join(name, as_user("john"))
    started = commands.start(name, as_user("alice")).body
    with commands.store.session() as session:
        expected = {who: session.active_key(who) for who in ("alice", "john")}
    assert started["keys"] == expected and all(expected.values())


def test_start_waits_for_members_without_a_key(commands: TrainingCommands) -> None:
    """A member with no key (or only a revoked one) keeps the task from starting, by name."""
    name = create(commands, quorum=1)
    commands.join(name, as_user("john"))
    with commands.store.session() as session:
        johns = session.active_key("john")
    assert johns is not None
    commands.revoke_key(johns, as_user("john"))
    with pytest.raises(Conflict, match="no signing key registered for: john") as refused:
        commands.start(name, as_user("alice"))
    assert refused.value.details == {"missing_keys": ["john"]}


def test_rotating_a_key_retires_the_old_one(commands: TrainingCommands) -> None:
    """A new key replaces the current one, which may not be registered again."""
    with commands.store.session() as session:
        old = session.active_key("john")
    rotated = commands.register_key(RegisterKey(public_key=(fresh := new_key())), as_user("john")).body
    assert rotated["replaces"] == old and rotated["status"] == "active"
    with commands.store.session() as session:
        assert session.key_owner(old or "") == ("john", "rotated")
    again = commands.register_key(RegisterKey(public_key=fresh), as_user("john"))
    assert again.status == 200, "registering the current key again changes nothing"


def test_a_key_speaks_for_one_member_only(commands: TrainingCommands) -> None:
    """Someone else's public key cannot be registered; nor can a stranger revoke it."""
    key = new_key()
    commands.register_key(RegisterKey(public_key=key), as_user("john"))
    with pytest.raises(Conflict, match="already registered"):
        commands.register_key(RegisterKey(public_key=key), as_user("eve"))
    with commands.store.session() as session:
        johns = session.active_key("john") or ""
    with pytest.raises(NotFound):
        commands.revoke_key(johns, as_user("eve"))
