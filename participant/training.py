"""Local training: one task's model and data on this machine, a round at a time.

Each round starts from the global weights with a fresh optimizer and the round's seed, so an
update depends only on the global model, the local data and the seed: a restarted participant
trains a round the same way as the one it replaces.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import Dataset
from ml.export import ExportedScorer, exported_model, raw_inputs
from ml.fedprox import fit_proximal
from ml.keras_model import compile_model, local_state, model_from_json, restore_state
from ml.prepare import feature_moments, flat_features, prepare
from ml.seeds import participant_seed, seeded
from ml.trained_graphs import forget_training_graphs
from participant.trained import Trained
from schema.algorithms import proximal_mu
from schema.dataplane import ModelMeta
from streams.codec import ArrayBundle, bundle_to_weights, encode_bundle

Array = np.ndarray[Any, Any]

__all__ = ["LocalData", "LocalTraining", "Trained", "TrainingError"]


class TrainingError(RuntimeError):
    """The local model or data cannot be used for this task."""


class LocalData:
    """What every local learner has: the local splits, the task, and the global statistics."""

    def __init__(self, train_raw: Dataset, test_raw: Dataset, task_id: str,
                 definition: dict[str, Any], place: int) -> None:
        self.train_raw, self.test_raw = train_raw, test_raw
        self.task_id, self.definition, self.place = task_id, definition, place
        self.mean: Array | None = None
        self.std: Array | None = None

    def statistics(self) -> bytes:
        """The local feature moments a participant shares for federated standardisation."""
        moments = feature_moments(self.train_raw)
        bundle = ArrayBundle(arrays={"sums": moments.sums, "sums_sq": moments.sums_sq},
                             meta={"count": moments.count})
        return encode_bundle(bundle)

    def train_features(self) -> Array:
        """The local training features, one row per sample (what standardisation summarises)."""
        return flat_features(self.train_raw)

    def set_statistics(self, bundle: ArrayBundle) -> None:
        """Take the global mean and standard deviation the aggregator broadcast."""
        self.mean = np.asarray(bundle.arrays["mean"], dtype=np.float64)
        self.std = np.asarray(bundle.arrays["std"], dtype=np.float64)

    def seed(self, round_no: int) -> int:
        """Seeded per task, participant and round: a re-run trains the same way."""
        return participant_seed(self.task_id, self.definition, self.place, round_no)

    def opening(self) -> bytes | None:
        """What to send before the first round, once the statistics are known (None: nothing)."""
        return None

    def close(self) -> None:
        """The task is over here: let go of what outlives this learner in the process."""


class LocalTraining(LocalData):
    """The task's model, rebuilt from its broadcast architecture, and the local splits."""

    def __init__(self, train_raw: Dataset, test_raw: Dataset, task_id: str,
                 definition: dict[str, Any], place: int) -> None:
        super().__init__(train_raw, test_raw, task_id, definition, place)
        self.model: Any = None
        self.meta: ModelMeta | None = None
        self.scorer: ExportedScorer | None = None
        self._fresh: list[tuple[Any, Array]] = []

    def load(self, bundle: ArrayBundle, standardises: bool) -> None:
        """Take a broadcast model: rebuild it if its architecture is new, then set its weights."""
        meta = ModelMeta.model_validate(bundle.meta)
        if self.model is None or self.meta is None or meta.architecture != self.meta.architecture:
            self.close()  # a replaced model trains no more
            # Seeded before the layers exist: their random generators (dropout) take it up.
            with seeded(self.seed(0)):
                self.model = compile_model(model_from_json(meta.architecture), meta.learning_rate,
                                           regression=meta.regression)
            self._fresh = local_state(self.model)
            self.meta = meta
            if standardises and self.mean is None:
                raise TrainingError("the model arrived before the global statistics")
            self.train = prepare(self.train_raw, meta.input_shape, self.mean, self.std)
            # Evaluation scores the exported model (standardisation inside) on raw features.
            self.test = raw_inputs(self.test_raw, meta.input_shape)
            self.scorer = ExportedScorer(meta)
        self.model.set_weights(bundle_to_weights(bundle))

    def train_round(self, round_no: int) -> Trained:
        """Train from the loaded global weights; the update with its sample count and metrics."""
        assert self.meta is not None
        started = time.monotonic()
        global_weights = [np.array(w, copy=True) for w in self.model.get_weights()]
        with seeded(self.seed(round_no)):
            restore_state(self._fresh)
            self._fit(round_no)
        weights = [np.asarray(w) for w in self.model.get_weights()]
        return Trained(global_weights, weights, len(self.train), len(self.test), self.evaluate(),
                       time.monotonic() - started)

    def _fit(self, round_no: int) -> None:
        assert self.meta is not None
        mu = proximal_mu(self.definition)
        if mu > 0:  # FedProx: the proximal term keeps the update near the global model
            fit_proximal(self.model, self.train.x, self.train.y, epochs=self.meta.epochs,
                         batch_size=self.meta.batch_size, mu=mu, seed=self.seed(round_no))
        else:
            self.model.fit(self.train.x, self.train.y, epochs=self.meta.epochs,
                           batch_size=self.meta.batch_size, verbose=0, shuffle=True)

    def evaluate(self) -> dict[str, float]:
        """Loss and accuracy of the exported model on the raw local test split (empty without one).

        The exported model is what the user takes away; scoring it (rather than the inner
        network on pre-scaled data) means the printed numbers are the ones a user gets.
        """
        assert self.scorer is not None
        return self.scorer.score(self.model.get_weights(), self.test) if len(self.test) else {}

    def exported(self) -> Any:
        """The current model as the user takes it away (`.keras`, standardisation inside)."""
        assert self.meta is not None
        return exported_model(self.meta, self.model.get_weights())

    def save(self, folder: Path) -> Path:
        """Save the current (final) model, as a user takes it away, in `folder`; its path."""
        path = folder / "model.keras"
        self.exported().save(path)
        return path

    def close(self) -> None:
        """Let go of TensorFlow's registry entries for this model's traced training steps.

        Without this, each finished task's training graphs stay in the process for good
        (ml/trained_graphs.py says why).
        """
        if self.model is not None:
            forget_training_graphs(self.model)
