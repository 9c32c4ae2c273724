"""The seed's smart-manufacturing use case (§3.4): two robots, federated standardisation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from schema import dataplane
from streams.codec import decode_bundle
from streams.reader import PayloadReader, Received
from tests.conftest import ApiProcess
from tests.training_support import train_welding

pytestmark = pytest.mark.integration


def broadcast_statistics(bootstrap: str, topic: str) -> tuple[np.ndarray, np.ndarray]:
    """The global mean and std the aggregator broadcast."""
    with PayloadReader(bootstrap, [topic]) as reader:
        for _ in range(40):
            for delivery in reader.poll(0.5):
                if isinstance(delivery, Received) and delivery.payload.kind == dataplane.STANDARDISE:
                    bundle = decode_bundle(delivery.payload.data)
                    return np.array(bundle.arrays["mean"]), np.array(bundle.arrays["std"])
    raise AssertionError("no standardisation broadcast on the topic")


def test_welding_trains_federated_with_global_standardisation(
    api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """FPS2 and FPD2 share moments, not data; the broadcast mean/std equal numpy's on both."""
    from ml.data import load_dataset, split_and_sample

    definition = {"quorum": 2, "rounds": 3, "epochs": 5, "batch_size": 32,
                  "learning_rate": 0.01, "training_size": 1200, "test_size": 200,
                  "model": "welding-mlp", "standardise": True, "seed": 1}
    name, alice, _, _, _ = train_welding(api, broker.bootstrap, topic_prefix, tmp_path, definition)
    task = alice.client.get_task(name)

    # The statistics the aggregator broadcast equal numpy's on the concatenated training data.
    mean, std = broadcast_statistics(broker.bootstrap, task.topics.broadcast)
    parts = [split_and_sample(load_dataset("welding", robot=robot), 1200, 200, 0)[0].x
             for robot in ("FPS2", "FPD2")]
    everything = np.concatenate(parts).astype(np.float64)
    np.testing.assert_allclose(mean, everything.mean(axis=0), rtol=1e-9)
    np.testing.assert_allclose(std, everything.std(axis=0), rtol=1e-9)
    assert std.max() / std.min() > 100, "features should be on very different scales"

    rounds = alice.client.rounds(name)
    assert [r.round for r in rounds] == [1, 2, 3]
    assert rounds[-1].eval_metrics["accuracy"] >= 0.80
    assert alice.client.get_task(name).status == "COMPLETED"
