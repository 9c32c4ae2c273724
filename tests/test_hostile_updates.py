"""Hostile updates on a real task: each is rejected and recorded; the rounds complete anyway.

The bad contents come signed by members themselves (a faulty or malicious participant), so they
pass the signature check and meet the aggregator's other checks; an outsider's forgeries are in
tests/test_forged_updates.py.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Producer

from schema import dataplane
from schema.dataplane import UpdateMeta
from streams.codec import (
    bundle_to_weights,
    decode_bundle,
    encode_bundle,
    keras_weights_to_bundle,
)
from streams.reader import PayloadReader, Received
from streams.signing import Signer
from streams.writer import PayloadWriter
from tests.conftest import ApiProcess, eventually, unique
from tests.training_support import daemon_env, dump, member, spawn, wait_all

pytestmark = pytest.mark.integration


def update_bytes(weights: list[np.ndarray], samples: int = 100) -> bytes:
    meta = UpdateMeta(samples=samples, test_samples=10, metrics={"accuracy": 0.5})
    return encode_bundle(keras_weights_to_bundle(weights, meta.model_dump()))


def wait_for_rejections(owner: Any, task: str, words: str, count: int, logs: dict[str, Path],
                        timeout_s: float = 180) -> None:
    """Wait until `count` of the task's UpdateRejected reasons contain `words`."""
    reasons: list[str] = []

    def enough() -> bool:
        reasons[:] = [e.data["reason"] for e in owner.client.task_events(task)
                      if e.type == "UpdateRejected"]
        return sum(words in r for r in reasons) >= count

    assert eventually(enough, timeout_s), \
        f"fewer than {count} '{words}' rejections in {timeout_s} s: {reasons}\n" + dump(logs)


def first_round_weights(bootstrap: str, topic: str, task_id: str, timeout_s: float = 120) -> list[np.ndarray]:
    deadline = time.monotonic() + timeout_s
    with PayloadReader(bootstrap, [topic]) as reader:
        while time.monotonic() < deadline:
            for delivery in reader.poll(0.5):
                payload = getattr(delivery, "payload", None)
                if (isinstance(delivery, Received) and payload.task_id == task_id
                        and payload.kind == dataplane.WEIGHTS and payload.round == 1):
                    return [np.array(w) for w in bundle_to_weights(decode_bundle(payload.data))]
    raise AssertionError("round 1 was never broadcast")


def test_hostile_updates_are_rejected_and_recorded(api: ApiProcess, broker: Any, topic_prefix: str,
                                                   tmp_path: Path) -> None:
    """Duplicate, stale, wrong shape, NaN, over-claimed, unsigned, garbage: each an UpdateRejected."""
    alice, john, jack = (member(api, p) for p in ("alice", "john", "jack"))
    name = unique("hostile")
    task = alice.client.create_task(name, {"quorum": 2, "rounds": 2, "epochs": 3, "training_size": 500,
                                           "model": "digits-mlp", "learning_rate": 0.01})
    john.client.join(name)
    jack.client.join(name)
    signers = {who.name: Signer(who.register_key()) for who in (john, jack)}  # their daemons' keys
    logs = {who: tmp_path / f"{who}.log" for who in ("aggregator", john.name, jack.name)}
    processes = {"aggregator": spawn(["aggregate", name, "--round-timeout", "300"],
                                     daemon_env(api, alice, broker.bootstrap, topic_prefix),
                                     logs["aggregator"])}
    weights = first_round_weights(broker.bootstrap, task.topics.broadcast, task.task_id)

    # Arrange: send every kind of bad message, signed by the member it names, before the real
    # participants answer (an unsigned one too).
    updates = task.topics.updates

    def send(sender: str, round_no: int, payload: bytes, signed: bool = True) -> None:
        writer = PayloadWriter(broker.bootstrap, signer=signers[sender] if signed else None)
        writer.send(updates, task_id=task.task_id, round=round_no, kind=dataplane.UPDATE,
                    sender=sender, payload=payload)

    good = update_bytes(weights)
    send(john.name, 1, good)                       # accepted as john's (the real one is a duplicate)
    send(john.name, 1, good)                       # duplicate
    send(john.name, 0, good)                       # stale round
    send(jack.name, 1, update_bytes([w.reshape(-1) for w in weights]))            # wrong shape
    send(jack.name, 1, update_bytes([np.full_like(w, np.nan) for w in weights]))  # NaN values
    send(jack.name, 1, update_bytes(weights, samples=10**9))                      # over-claimed
    send(jack.name, 1, good, signed=False)         # unsigned
    raw = Producer({"bootstrap.servers": broker.bootstrap})
    raw.produce(updates, value=b"\x00garbage\xff" * 10)                            # garbage bytes
    raw.flush(10)

    # Act: the real participants join in, john first. Round 1 cannot close before jack answers,
    # so john's real round-1 update meets the forged one while the round is open.
    def participate(who: Any, shard: str) -> None:
        processes[who.name] = spawn(["participate", name, "--dataset", "digits", "--shard", shard,
                                     "--output", str(tmp_path / who.name)],
                                    daemon_env(api, who, broker.bootstrap, topic_prefix),
                                    logs[who.name])

    participate(john, "1/3")
    wait_for_rejections(alice, name, "duplicate update", count=2, logs=logs)
    participate(jack, "2/3")
    wait_all(processes, logs, timeout_s=400)

    # Assert: each hostile message left an UpdateRejected with its reason; every round completed.
    events = alice.client.task_events(name)
    reasons = [e.data["reason"] for e in events if e.type == "UpdateRejected"]
    expected = {"duplicate": "duplicate update", "stale": "stale update",
                "shape": "has shape", "nan": "NaN or infinite", "over-claimed": "claims 1000000000 samples",
                "unsigned": "unsigned message", "garbage": "header"}
    for label, words in expected.items():
        assert any(words in reason for reason in reasons), f"no {label} rejection in {reasons}"
    assert sum("duplicate update" in r for r in reasons) >= 2  # forged + the real john's update
    rounds = [e for e in events if e.type == "RoundCompleted"]
    assert [r.data["round"] for r in rounds] == [1, 2]
    assert all(sorted(r.data["participants"]) == sorted([john.name, jack.name]) for r in rounds)
    assert events[-1].type == "TaskCompleted"
