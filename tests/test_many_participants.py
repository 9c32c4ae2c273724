"""One task, 32 participant processes: every round completes with all of them, exactly."""

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
from tests.training_support import Member, daemon_env, dump, member, spawn, wait_all

pytestmark = pytest.mark.integration

NOOP = Path(__file__).resolve().parent.parent / "bench" / "noop_participant.py"
SITES = 32
# A small registry model: the test pays for processes, not for bytes.
DEFINITION = {"quorum": SITES, "rounds": 2, "epochs": 1, "batch_size": 32, "learning_rate": 0.01,
              "model": "digits-mlp", "test_size": 40}
# A quarter of the sites send the weights doubled with 300 samples, the rest zeros with 100:
# 8 x 300 x 2w / (8 x 300 + 24 x 100) = w exactly (powers of two and small integers are exact
# in float32 and float64), so the sample-weighted mean gives the global model back bit for bit,
# while an unweighted mean would halve it and a missing site would scale it.
HEAVY = SITES // 4
SCALE_AND_SAMPLES = {True: ("2", 300), False: ("0", 100)}


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


def start_sites(api: ApiProcess, bootstrap: str, name: str, sites: list[Member], tmp_path: Path
                ) -> tuple[dict[str, subprocess.Popen[bytes]], dict[str, Path]]:
    """One noop participant process per site, the first HEAVY doubling, the rest sending zeros."""
    processes, logs = {}, {}
    for index, site in enumerate(sites):
        scale, samples = SCALE_AND_SAMPLES[index < HEAVY]
        logs[site.name] = tmp_path / f"{site.name}.log"
        with open(logs[site.name], "ab") as out:
            processes[site.name] = subprocess.Popen(
                [sys.executable, str(NOOP), name, "--api", api.url, "--bootstrap", bootstrap,
                 "--keys-dir", str(site.keys_dir), "--scale", scale, "--samples", str(samples)],
                env={**os.environ, "MUSKETEER_TOKEN": site.client.token or ""}, stdout=out,
                stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    return processes, logs


def test_32_participant_processes_complete_every_round_and_the_weighted_mean_is_exact(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """32 participant processes (bench/noop_participant.py: signed updates, no TensorFlow) and the
    real aggregator: both rounds complete with all 32 and their sample counts, nothing is
    refused, and the sample-weighted mean of the doubled and zeroed updates is, bit for bit,
    the global model each round started from."""
    alice, sites = member(api, "alice"), [member(api, f"site{i}") for i in range(SITES)]
    name = unique("many")
    alice.client.create_task(name, DEFINITION)
    for site in sites:
        site.client.join(name)
        site.register_key()
    logs = {"aggregator": tmp_path / "aggregator.log"}
    processes = {"aggregator": spawn(["aggregate", name, "--round-timeout", "300"],
                                     daemon_env(api, alice, broker.bootstrap, topic_prefix), logs["aggregator"])}
    site_processes, site_logs = start_sites(api, broker.bootstrap, name, sites, tmp_path)
    processes.update(site_processes)
    logs.update(site_logs)
    wait_all(processes, logs, timeout_s=400)

    events = alice.client.task_events(name)
    rounds = alice.client.rounds(name)
    assert [e.type for e in events].count("RoundCompleted") == 2 and events[-1].type == "TaskCompleted"
    assert "UpdateRejected" not in [e.type for e in events], dump(logs)
    expected_samples = {site.name: SCALE_AND_SAMPLES[index < HEAVY][1] for index, site in enumerate(sites)}
    for recorded in rounds:
        assert sorted(recorded.participants) == sorted(expected_samples)
        assert recorded.samples == expected_samples
    task = alice.client.get_task(name)
    weights = broadcast_weights(broker.bootstrap, str(task.topics.broadcast))
    assert any(np.any(w != 0) for w in weights["round 1"]), "an all-zero model would prove nothing"
    assert len(weights["final"]) == len(weights["round 1"])
    for final, first in zip(weights["final"], weights["round 1"], strict=True):
        assert final.dtype == first.dtype and np.array_equal(final, first)
