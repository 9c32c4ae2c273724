"""Federated training end to end on digits: real API, broker, and daemon processes."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from tests.conftest import ApiProcess, unique
from tests.training_support import daemon_env, member, spawn, wait_all

pytestmark = pytest.mark.integration


def test_two_participants_train_digits_to_completion(api: ApiProcess, broker: Any,
                                                     topic_prefix: str, tmp_path: Path) -> None:
    """Aggregator and two participant processes run every round; the history is complete."""
    alice, john, jack = (member(api, p) for p in ("alice", "john", "jack"))
    name = unique("digits")
    rounds = 3
    alice.client.create_task(name, {"quorum": 2, "rounds": rounds, "epochs": 5,
                                    "batch_size": 32, "learning_rate": 0.01,
                                    "model": "digits-mlp", "test_size": 60, "seed": 1})
    john.client.join(name)
    jack.client.join(name)
    logs = {who: tmp_path / f"{who}.log" for who in ("aggregator", "john", "jack")}
    processes = {
        "aggregator": spawn(["aggregate", name, "--eval-data", "digits", "--eval-shard", "3/3",
                             "--round-timeout", "300"],
                            daemon_env(api, alice, broker.bootstrap, topic_prefix), logs["aggregator"]),
        "john": spawn(["participate", name, "--dataset", "digits", "--shard", "1/3",
                       "--output", str(tmp_path / "john")],
                      daemon_env(api, john, broker.bootstrap, topic_prefix), logs["john"]),
        "jack": spawn(["participate", name, "--dataset", "digits", "--shard", "2/3",
                       "--output", str(tmp_path / "jack")],
                      daemon_env(api, jack, broker.bootstrap, topic_prefix), logs["jack"]),
    }
    wait_all(processes, logs, timeout_s=400)

    types = [e.type for e in alice.client.task_events(name)]
    assert types[:4] == ["TaskCreated", "ParticipantJoined", "ParticipantJoined", "TaskStarted"]
    assert [t for t in types if t == "RoundCompleted"] == ["RoundCompleted"] * rounds
    assert types[-1] == "TaskCompleted"
    assert "UpdateRejected" not in types
    recorded = alice.client.rounds(name)
    assert [r.round for r in recorded] == list(range(1, rounds + 1))
    assert all(sorted(r.participants) == sorted([john.name, jack.name]) for r in recorded)
    assert recorded[-1].eval_metrics["accuracy"] >= 0.85
    task = alice.client.get_task(name)
    digest, _ = john.client.download_model(name)
    assert task.status == "COMPLETED" and digest == task.model_sha256
    saved = (tmp_path / "john" / name / "model.bundle").read_bytes()
    import hashlib

    assert hashlib.sha256(saved).hexdigest() == digest
