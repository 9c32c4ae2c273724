"""An outsider with broker access forges updates in a member's name, in every round, and replays
a genuine signed update from another task: every forgery is refused and recorded with its
reason, every genuine update counts, and the task ends on the very model (same sha256) that the
same seeded task trains with nobody attacking it."""

from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from client import Task
from schema import dataplane
from schema.dataplane import UpdateMeta
from schema.envelope import Envelope
from streams.codec import bundle_to_weights, decode_bundle, encode_bundle, keras_weights_to_bundle
from streams.config import consumer_config
from streams.reader import PayloadReader, Received
from streams.signing import Signer
from streams.writer import PayloadWriter
from tests.conftest import ApiProcess, unique
from tests.training_support import Member, daemon_env, member, spawn, wait_all

pytestmark = pytest.mark.integration

ROUNDS = 3
DEFINITION = {"quorum": 2, "rounds": ROUNDS, "epochs": 3, "batch_size": 32, "learning_rate": 0.01,
              "model": "digits-mlp", "training_size": 500, "seed": 824988}


def train(api: ApiProcess, broker: Any, prefix: str, tmp: Path, alice: Member, john: Member,
          jack: Member, before_participants: Any = None) -> Task:
    """Create the seeded task, start its aggregator and both participants, wait for the end."""
    name = unique("forged")
    alice.client.create_task(name, DEFINITION)
    john.client.join(name)
    jack.client.join(name)
    logs = {who: tmp / f"{name}-{who}.log" for who in ("aggregator", "john", "jack")}
    processes = {"aggregator": spawn(["aggregate", name, "--round-timeout", "300"],
                                     daemon_env(api, alice, broker.bootstrap, prefix), logs["aggregator"])}
    if before_participants is not None:
        before_participants(name)
    for who, shard in ((john, "1/3"), (jack, "2/3")):
        label = "john" if who is john else "jack"
        processes[label] = spawn(["participate", name, "--dataset", "digits", "--shard", shard,
                                  "--output", str(tmp / label)],
                                 daemon_env(api, who, broker.bootstrap, prefix), logs[label])
    wait_all(processes, logs, timeout_s=400)
    return alice.client.get_task(name)


def forged_update(weights: list[np.ndarray]) -> bytes:
    """Zeroed weights claiming a billion samples: enough to own a FedAvg round."""
    meta = UpdateMeta(samples=1_000_000_000, test_samples=1, metrics={"accuracy": 1.0})
    return encode_bundle(keras_weights_to_bundle([np.zeros_like(w) for w in weights], meta.model_dump()))


def raw_frames(bootstrap: str, topic: str, sender: str, round_no: int) -> list[Any]:
    """The frames (key, value, headers) of `sender`'s update for `round_no` on a topic, as stored."""
    consumer = Consumer(consumer_config(bootstrap))
    consumer.assign([TopicPartition(topic, 0, OFFSET_BEGINNING)])
    frames: list[Any] = []
    try:
        for message in consumer.consume(1000, 10.0):
            if message.error():
                continue
            envelope = Envelope.from_headers(message.headers())
            if envelope.sender == sender and envelope.round == round_no and envelope.kind == dataplane.UPDATE:
                frames.append((message.key(), message.value(), message.headers()))
    finally:
        consumer.close()
    return frames


class Outsider(threading.Thread):
    """Mallory: a registered user with a key of her own, never a member, writing to the broker."""

    def __init__(self, api: ApiProcess, bootstrap: str, mallory: Member, victim: str,
                 replay: list[Any]) -> None:
        super().__init__(daemon=True)
        self.api, self.bootstrap, self.mallory, self.victim, self.replay = api, bootstrap, mallory, victim, replay
        self.task: Task | None = None
        self.rounds_attacked: list[int] = []
        self.stop = threading.Event()

    def aim(self, name: str) -> None:
        """Wait until the task started (its topics and keys are fixed), then start attacking it."""
        deadline = time.monotonic() + 120
        while (task := self.mallory.client.get_task(name)).status != "STARTED":
            assert time.monotonic() < deadline, "the attacked task never started"
            time.sleep(0.2)
        self.task = task
        self.start()

    def run(self) -> None:
        assert self.task is not None
        task, key = self.task, self.mallory.register_key()
        unsigned, own_key = PayloadWriter(self.bootstrap), PayloadWriter(self.bootstrap, signer=Signer(key))
        with PayloadReader(self.bootstrap, [str(task.topics.broadcast)]) as broadcasts:
            while not self.stop.is_set() and len(self.rounds_attacked) < ROUNDS:
                for delivery in broadcasts.poll(0.5):
                    if isinstance(delivery, Received) and delivery.payload.kind == dataplane.WEIGHTS:
                        self.attack(delivery.payload.round, delivery.payload.data, unsigned, own_key)

    def attack(self, round_no: int, data: bytes, unsigned: PayloadWriter, own_key: PayloadWriter) -> None:
        assert self.task is not None
        forged = forged_update(bundle_to_weights(decode_bundle(data)))
        updates, task_id = str(self.task.topics.updates), self.task.task_id
        for writer, sender in ((unsigned, self.victim), (own_key, self.victim), (own_key, self.mallory.name)):
            writer.send(updates, task_id=task_id, round=round_no, kind=dataplane.UPDATE, sender=sender,
                        payload=forged)
        if round_no == 1:  # a genuine, validly signed update of the victim's, from another task
            producer = Producer({"bootstrap.servers": self.bootstrap})
            for key, value, headers in self.replay:
                producer.produce(updates, value=value, key=key, headers=headers)
            producer.flush(10)
        self.rounds_attacked.append(round_no)


def test_an_outsiders_forgeries_are_refused_and_the_model_is_the_clean_one(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """Unsigned, wrongly signed, non-member and replayed updates in every round: all refused and
    recorded; the genuine ones count; the final model's digest equals the unattacked run's."""
    alice, john, jack, mallory = (member(api, p) for p in ("alice", "john", "jack", "mallory"))
    clean = train(api, broker, topic_prefix, tmp_path, alice, john, jack)
    replay = raw_frames(broker.bootstrap, str(clean.topics.updates), john.name, 1)
    assert replay, "john's genuine round-1 update of the clean task is not on its topic"
    outsider = Outsider(api, broker.bootstrap, mallory, john.name, replay)

    attacked = train(api, broker, topic_prefix, tmp_path, alice, john, jack, before_participants=outsider.aim)
    outsider.stop.set()
    outsider.join(30)

    assert outsider.rounds_attacked == [1, 2, 3]
    events = alice.client.task_events(attacked.name)
    refusals = [(e.data["round"], e.data["sender"], e.data["reason"]) for e in events if e.type == "UpdateRejected"]
    for round_no in range(1, ROUNDS + 1):
        for sender, words in ((john.name, "unsigned message"), (john.name, "bad signature"),
                              (mallory.name, f"no signing key is recorded for '{mallory.name}'")):
            assert any(r == round_no and s == sender and words in why for r, s, why in refusals), \
                f"round {round_no}: no '{words}' refusal for {sender} in {refusals}"
    assert any(s == john.name and "message for another task" in why for _, s, why in refusals), refusals
    rounds = alice.client.rounds(attacked.name)
    assert [r.round for r in rounds] == [1, 2, 3]
    assert all(sorted(r.participants) == sorted([john.name, jack.name]) for r in rounds)
    assert all(max(r.samples.values()) <= 500 for r in rounds), "a forged sample count counted"
    assert attacked.status == "COMPLETED" and clean.status == "COMPLETED"
    assert attacked.model_sha256 == clean.model_sha256, "the attack changed the final model"
