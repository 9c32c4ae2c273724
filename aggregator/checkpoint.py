"""Checkpoints: every round's model is stored before `RoundCompleted` names its digest, so a
restarted aggregator resumes from the last recorded round's model."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from client import MusketeerClient
from ml.keras_model import compile_model, model_from_json
from ml.payload import read_model_payload
from schema.dataplane import ModelMeta


@dataclass
class Checkpoint:
    """The model as the last recorded round left it."""

    round: int
    sha256: str
    model: Any
    meta: ModelMeta
    weights: list[np.ndarray[Any, Any]]

    @property
    def mean(self) -> np.ndarray[Any, Any] | None:
        """The global feature mean the model was trained with, if the task standardises."""
        return None if self.meta.feature_mean is None else np.asarray(self.meta.feature_mean)

    @property
    def std(self) -> np.ndarray[Any, Any] | None:
        """The global feature standard deviation, if the task standardises."""
        return None if self.meta.feature_std is None else np.asarray(self.meta.feature_std)


def restore(client: MusketeerClient, task_name: str) -> Checkpoint:
    """The last recorded round's model, downloaded through the API (its digest checked)."""
    last = client.rounds(task_name)[-1]
    digest, content = client.download_model(task_name, sha256=last.model_sha256)
    meta, weights = read_model_payload(content)
    model = compile_model(model_from_json(meta.architecture), meta.learning_rate)
    model.set_weights(weights)
    return Checkpoint(last.round, digest, model, meta, [np.asarray(w) for w in weights])
