"""The aggregator's API commands against a real API process: start, rounds, models, end."""

from __future__ import annotations

import hashlib
from typing import Any

import httpx
import numpy as np
import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

from client import (
    ConflictError,
    MusketeerClient,
    NotFoundError,
    PermissionDenied,
    ValidationFailed,
)
from client.keys import public_text
from streams.codec import encode_pieces, keras_weights_to_bundle
from tests.conftest import ApiProcess, unique
from tests.training_support import member

pytestmark = pytest.mark.integration


def person(api: ApiProcess) -> MusketeerClient:
    """A registered, logged-in user with a signing key (a task starts only once all have one)."""
    client = member(api, "p").client
    client.register_key(public_text(Ed25519PrivateKey.generate()))
    return client


def started_task(api: ApiProcess, rounds: int = 2) -> tuple[MusketeerClient, list[MusketeerClient], str]:
    alice, john, jack = person(api), person(api), person(api)
    name = unique("train")
    alice.create_task(name, {"quorum": 2, "rounds": rounds, "model": "digits-mlp"})
    john.join(name)
    jack.join(name)
    alice.start_task(name)
    return alice, [john, jack], name


def usernames(clients: list[MusketeerClient]) -> list[str]:
    return [c.me().username for c in clients]


def test_start_needs_the_creator_and_the_quorum(api: ApiProcess) -> None:
    """Only the creator starts, and only once the quorum has joined; then joins close."""
    alice, john, jack, late = person(api), person(api), person(api), person(api)
    name = unique("start")
    alice.create_task(name, {"quorum": 2, "rounds": 1, "model": "digits-mlp"})
    john.join(name)
    with pytest.raises(ConflictError, match="quorum"):
        alice.start_task(name)
    jack.join(name)
    with pytest.raises(PermissionDenied):
        john.start_task(name)
    started = alice.start_task(name)
    assert started.status == "STARTED"
    with pytest.raises(ConflictError):
        late.join(name)
    with pytest.raises(ConflictError):
        alice.start_task(name)
    events = [e.type for e in alice.task_events(name)]
    assert events == ["TaskCreated", "ParticipantJoined", "ParticipantJoined", "TaskStarted"]


def test_rounds_are_recorded_once_in_order_after_their_model(api: ApiProcess) -> None:
    """A round needs its stored model; a gap or a repeat is refused; strangers are refused."""
    alice, members, name = started_task(api)
    who = usernames(members)
    model = b"round-one-weights"
    digest = hashlib.sha256(model).hexdigest()
    with pytest.raises(ConflictError, match="upload"):
        alice.record_round(name, 1, participants=who, model_sha256=digest)
    stored = alice.upload_model(name, model, round=1)
    assert stored.sha256 == digest and stored.size == len(model)
    with pytest.raises(ConflictError, match="expects round 1"):
        alice.record_round(name, 2, participants=who, model_sha256=digest)
    with pytest.raises(ValidationFailed, match="not participants"):
        alice.record_round(name, 1, participants=[*who, "mallory"], model_sha256=digest)
    with pytest.raises(PermissionDenied):
        members[0].record_round(name, 1, participants=who, model_sha256=digest)
    alice.record_round(name, 1, participants=who, model_sha256=digest,
                       samples={who[0]: 10, who[1]: 30}, metrics={"accuracy": 0.5, "loss": 1.2})
    with pytest.raises(ConflictError, match="expects round 2"):
        alice.record_round(name, 1, participants=who, model_sha256=digest)
    rounds = members[1].rounds(name)
    assert [r.round for r in rounds] == [1]
    assert rounds[0].metrics == {"accuracy": 0.5, "loss": 1.2}
    assert rounds[0].samples == {who[0]: 10, who[1]: 30}


def test_a_model_uploaded_in_pieces_is_stored_as_its_joined_bytes(api: ApiProcess) -> None:
    """An upload from an EncodedBundle (sent a piece at a time, not joined) stores the same
    bytes, under the same digest, as the joined payload; it downloads whole."""
    alice, _members, name = started_task(api)
    weights = [np.random.default_rng(5).standard_normal((700, 1000)).astype(np.float32), np.ones(3)]
    pieces = encode_pieces(keras_weights_to_bundle(weights, {"round": 1}))
    joined = pieces.join()

    stored = alice.upload_model(name, pieces, round=1)

    assert stored.sha256 == hashlib.sha256(joined).hexdigest() and stored.size == len(joined)
    assert alice.download_model(name, stored.sha256) == (stored.sha256, joined)


def test_complete_needs_every_round_and_the_final_model(api: ApiProcess) -> None:
    """Completion records the final digest; the model downloads with that digest."""
    alice, members, name = started_task(api, rounds=1)
    who = usernames(members)
    final = b"\x00\x01final-model-bytes" * 1000
    digest = alice.upload_model(name, final, final=True).sha256
    with pytest.raises(ConflictError, match="0 of 1 rounds"):
        alice.complete_task(name, digest)
    alice.record_round(name, 1, participants=who, model_sha256=digest)
    with pytest.raises(ConflictError, match="upload the final model"):
        alice.complete_task(name, "ab" * 32)
    done = alice.complete_task(name, digest)
    assert done.status == "COMPLETED" and done.model_sha256 == digest
    got_digest, content = members[0].download_model(name)
    assert got_digest == digest and content == final
    outsider = person(api)
    with pytest.raises(PermissionDenied):
        outsider.download_model(name)
    lineage = {m.task: m for m in members[1].models()}[name]
    assert lineage.model_sha256 == digest and lineage.size == len(final)
    assert [r.round for r in lineage.rounds] == [1]
    assert sorted(lineage.participants) == sorted(who)
    types = [e.type for e in alice.task_events(name)]
    assert types[-2:] == ["RoundCompleted", "TaskCompleted"]


def test_rejections_and_failure_are_recorded(api: ApiProcess) -> None:
    """UpdateRejected keeps the reason; TaskFailed ends the task with its reason."""
    alice, _members, name = started_task(api)
    alice.reject_update(name, 1, "mallory", "unknown sender", message_id="m-1")
    failed = alice.fail_task(name, "participant jack missed round 1")
    assert failed.status == "FAILED" and failed.failure_reason == "participant jack missed round 1"
    events = alice.task_events(name)
    rejected = [e for e in events if e.type == "UpdateRejected"][0]
    assert rejected.data["reason"] == "unknown sender" and rejected.data["sender"] == "mallory"
    with pytest.raises(ConflictError):
        alice.fail_task(name, "again")
    with pytest.raises(NotFoundError):
        alice.download_model(name)


def test_unstorable_text_in_a_round_is_a_422_and_the_log_is_unchanged(api: ApiProcess) -> None:
    """A metric named with the NUL character reaches the database and is refused there: a clear
    422, the transaction rolled back, the task's events as they were."""
    alice, members, name = started_task(api)
    digest = alice.upload_model(name, b"round-1").sha256
    before = alice.task_events(name)
    body = {"round": 1, "participants": usernames(members), "model_sha256": digest,
            "metrics": {"loss\u0000": 0.5}}

    response = httpx.post(f"{api.url}/v1/tasks/{name}/rounds", json=body,
                          headers={"Authorization": f"Bearer {alice.token}"})

    assert response.status_code == 422, response.text
    assert "cannot store" in response.json()["message"] and "nothing was stored" in response.json()["message"]
    assert alice.task_events(name) == before and alice.get_task(name).rounds_completed == 0


def test_bad_round_bodies_are_422(api: ApiProcess) -> None:
    """Non-finite metrics and malformed digests never reach the log."""
    alice, members, name = started_task(api)
    token = alice.token
    body: dict[str, Any] = {"round": 1, "participants": usernames(members),
                            "model_sha256": "not-a-digest"}
    response = httpx.post(f"{api.url}/v1/tasks/{name}/rounds", json=body,
                          headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 422 and "model_sha256" in response.json()["message"]
    body["model_sha256"] = "ab" * 32
    raw = ('{"round": 1, "participants": [], "model_sha256": "' + "ab" * 32
           + '", "metrics": {"loss": NaN}}')
    response = httpx.post(f"{api.url}/v1/tasks/{name}/rounds", content=raw,
                          headers={"Authorization": f"Bearer {token}",
                                   "Content-Type": "application/json"})
    assert response.status_code == 422
    empty = httpx.put(f"{api.url}/v1/tasks/{name}/model", content=b"",
                      headers={"Authorization": f"Bearer {token}"})
    assert empty.status_code == 422 and "empty" in empty.json()["message"]


def test_a_task_deleted_after_it_started_keeps_its_topics_for_the_retention(api: ApiProcess,
                                                                             broker: Any) -> None:
    """Running or just completed, its daemons may still read them: the topics stay for the
    retention (1 h by default), where a CREATED task's go at once (test_api.py)."""
    from streams.topics import TopicAdmin

    running_owner, _members, running = started_task(api)
    done_owner, done_members, done = started_task(api, rounds=1)
    digest = done_owner.upload_model(done, b"final", final=True).sha256
    done_owner.record_round(done, 1, participants=usernames(done_members), model_sha256=digest)
    assert done_owner.complete_task(done, digest).status == "COMPLETED"
    admin = TopicAdmin(broker.bootstrap)

    for owner, name in ((running_owner, running), (done_owner, done)):
        topics = owner.get_task(name).topics
        key = unique("delete-key")
        assert owner.delete_task(name, idempotency_key=key).status == "DELETED"
        assert admin.exists(topics.broadcast) and admin.exists(topics.updates), name
        # A client retrying the delete (same key) gets the first answer; the topics still stay.
        assert owner.delete_task(name, idempotency_key=key).status == "DELETED"
        assert admin.exists(topics.broadcast) and admin.exists(topics.updates), name


def test_topics_of_a_finished_task_go_after_the_retention(broker: Any, tmp_path: Any) -> None:
    """With a zero retention, the topics of a completed task, and of one deleted while running,
    are deleted by the sweeper."""
    import time

    from streams.topics import TopicAdmin
    from tests.conftest import drop_database, fresh_database, start_api

    database = fresh_database()
    process = start_api(database, broker.bootstrap, tmp_path, unique("ret").replace("-", ""),
                        MUSKETEER_TOPIC_RETENTION_S="0")
    try:
        alice, members, name = started_task(process, rounds=1)
        digest = alice.upload_model(name, b"final", final=True).sha256
        alice.record_round(name, 1, participants=usernames(members), model_sha256=digest)
        admin = TopicAdmin(broker.bootstrap)
        before = alice.get_task(name)
        topics = [before.topics.broadcast, before.topics.updates]
        assert all(admin.exists(t) for t in topics)
        alice.complete_task(name, digest)
        owner, _members, deleted = started_task(process)
        running = owner.get_task(deleted)
        topics += [running.topics.broadcast, running.topics.updates]
        owner.delete_task(deleted)
        deadline = time.monotonic() + 20
        while any(admin.exists(t) for t in topics) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert not any(admin.exists(t) for t in topics), "topics outlived the retention"
    finally:
        process.stop()
        drop_database(database)


def test_two_tasks_may_store_byte_identical_models(api: ApiProcess) -> None:
    """Artifacts belong to a task: the same bytes stored by another task are stored again."""
    first, first_members, first_name = started_task(api, rounds=1)
    second, second_members, second_name = started_task(api, rounds=1)
    same = b"identical-model-bytes"
    for owner, members, name in ((first, first_members, first_name),
                                 (second, second_members, second_name)):
        digest = owner.upload_model(name, same).sha256
        owner.record_round(name, 1, participants=usernames(members), model_sha256=digest)
        assert owner.complete_task(name, digest).status == "COMPLETED"
    assert second_members[0].download_model(second_name)[1] == same
