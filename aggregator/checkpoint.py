"""Checkpoints: every round's model is stored before `RoundCompleted` names its digest, so a
restarted aggregator resumes from the last recorded round's model.

A round's stored model also carries the server optimiser's state (fedavgm, fedadam, fedyogi,
fedadagrad), so a resumed aggregator steps on from exactly where the killed one was.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from client import MusketeerClient
from ml.keras_model import compile_model, model_from_json
from ml.payload import ServerState, read_checkpoint
from schema.dataplane import ModelMeta


@dataclass
class Checkpoint:
    """The model as the last recorded round left it."""

    round: int
    sha256: str
    model: Any
    meta: ModelMeta
    weights: list[np.ndarray[Any, Any]]
    server_state: ServerState | None = None

    @property
    def mean(self) -> np.ndarray[Any, Any] | None:
        """The global feature mean the model was trained with, if the task standardises."""
        return None if self.meta.feature_mean is None else np.asarray(self.meta.feature_mean)

    @property
    def std(self) -> np.ndarray[Any, Any] | None:
        """The global feature standard deviation, if the task standardises."""
        return None if self.meta.feature_std is None else np.asarray(self.meta.feature_std)


def last_round_model(client: MusketeerClient, task_name: str) -> tuple[int, str, bytes]:
    """The last recorded round's number, model digest and stored bytes (digest checked)."""
    last = client.rounds(task_name)[-1]
    digest, content = client.download_model(task_name, sha256=last.model_sha256)
    return last.round, digest, content


def restore(client: MusketeerClient, task_name: str) -> Checkpoint:
    """The last recorded round's model, downloaded through the API (its digest checked)."""
    round_no, digest, content = last_round_model(client, task_name)
    stored = read_checkpoint(content)
    model = compile_model(model_from_json(stored.meta.architecture), stored.meta.learning_rate,
                          regression=stored.meta.regression)
    model.set_weights(stored.weights)
    return Checkpoint(round_no, digest, model, stored.meta, [np.asarray(w) for w in stored.weights],
                      stored.state)
