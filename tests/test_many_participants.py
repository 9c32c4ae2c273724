"""One task, many participant processes: every round completes with all of them, exactly."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from ml.payload import read_model_payload
from schema import dataplane
from streams.reader import PayloadReader, Received
from tests.conftest import ApiProcess, unique
from tests.training_support import daemon_env, dump, member, spawn, wait_all

pytestmark = pytest.mark.integration

NOOP = Path(__file__).resolve().parent.parent / "bench" / "noop_participant.py"
SITES = 6
# A small registry model: the test pays for processes, not for bytes.
DEFINITION = {"quorum": SITES, "rounds": 2, "epochs": 1, "batch_size": 32, "learning_rate": 0.01,
              "model": "digits-mlp", "test_size": 40}


def broadcast_weights(bootstrap: str, topic: str) -> dict[str, list[np.ndarray[Any, Any]]]:
    """Round 1's weights and the final model, as the aggregator broadcast them."""
    found: dict[str, list[np.ndarray[Any, Any]]] = {}
    with PayloadReader(bootstrap, [topic]) as reader:
        for _ in range(60):
            for delivery in reader.poll(0.5):
                payload = delivery.payload if isinstance(delivery, Received) else None
                if payload is not None and (payload.kind, payload.round) == (dataplane.WEIGHTS, 1):
                    found["round 1"] = read_model_payload(payload.data)[1]
                elif payload is not None and payload.kind == dataplane.FINAL:
                    found["final"] = read_model_payload(payload.data)[1]
            if len(found) == 2:
                break
    return found


def test_six_participant_processes_complete_every_round_and_the_noop_average_is_exact(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """Six participant processes (bench/noop_participant.py: signed updates that give the weights
    back unchanged) and the real aggregator: both rounds complete with all six, nothing is
    refused, and averaging six identical updates gives the global model back bit for bit."""
    alice, sites = member(api, "alice"), [member(api, f"site{i}") for i in range(SITES)]
    name = unique("many")
    alice.client.create_task(name, DEFINITION)
    for site in sites:
        site.client.join(name)
        site.register_key()
    logs = {"aggregator": tmp_path / "aggregator.log"}
    processes = {"aggregator": spawn(["aggregate", name, "--round-timeout", "300"],
                                     daemon_env(api, alice, broker.bootstrap, topic_prefix), logs["aggregator"])}
    for site in sites:
        logs[site.name] = tmp_path / f"{site.name}.log"
        with open(logs[site.name], "ab") as out:
            processes[site.name] = subprocess.Popen(
                [sys.executable, str(NOOP), name, "--api", api.url, "--bootstrap", broker.bootstrap,
                 "--keys-dir", str(site.keys_dir)],
                env={**os.environ, "MUSKETEER_TOKEN": site.client.token or ""}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    wait_all(processes, logs, timeout_s=400)

    events = alice.client.task_events(name)
    rounds = alice.client.rounds(name)
    assert [e.type for e in events].count("RoundCompleted") == 2 and events[-1].type == "TaskCompleted"
    assert "UpdateRejected" not in [e.type for e in events], dump(logs)
    assert all(sorted(r.participants) == sorted(s.name for s in sites) for r in rounds)
    task = alice.client.get_task(name)
    weights = broadcast_weights(broker.bootstrap, str(task.topics.broadcast))
    assert len(weights["final"]) == len(weights["round 1"])
    for final, first in zip(weights["final"], weights["round 1"], strict=True):
        assert final.dtype == first.dtype and np.array_equal(final, first)
