"""Local K-means: this participant's side of federated Lloyd (ml/kmeans.py).

Before the first round it sends K local cluster means with their sizes (candidates for the
initial centroids); each round it assigns its samples to the broadcast centroids and sends
per-cluster sums, counts and the inertia. Samples never leave: only sums over clusters do.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np

from ml.data import Dataset
from ml.kmeans import assign, local_candidates, local_statistics
from ml.prepare import flat_features
from ml.standardise import apply
from participant.training import LocalData, Trained, TrainingError
from schema.algorithms import parameters
from schema.dataplane import KMeansMeta
from streams.codec import ArrayBundle, encode_bundle

Array = np.ndarray[Any, Any]


class LocalKMeans(LocalData):
    """The broadcast centroids and the local samples, as standardised features."""

    def __init__(self, train_raw: Dataset, test_raw: Dataset, task_id: str,
                 definition: dict[str, Any], place: int) -> None:
        super().__init__(train_raw, test_raw, task_id, definition, place)
        self.clusters = int(parameters(definition).clusters or 1)
        self.centroids: Array | None = None
        self.meta: KMeansMeta | None = None
        self._train_x: Array | None = None
        self._test_x: Array | None = None

    def features(self, dataset: Dataset) -> Array:
        """A dataset's samples as flat rows, standardised if the task standardises."""
        x = flat_features(dataset).astype(np.float64)
        if self.mean is not None and self.std is not None:
            x = apply(x, self.mean, self.std).astype(np.float64)
        return x

    def set_statistics(self, bundle: ArrayBundle) -> None:
        """Take the global mean and std; features are standardised with them from now on."""
        super().set_statistics(bundle)
        self._train_x = self._test_x = None

    def opening(self) -> bytes:
        """The local cluster means and sizes the aggregator draws the initial centroids from."""
        x = self._train()
        centres, sizes = local_candidates(x, self.clusters, self.seed(0))
        bundle = ArrayBundle(arrays={"centres": centres, "sizes": sizes}, meta={"count": len(x)})
        return encode_bundle(bundle)

    def load(self, bundle: ArrayBundle, standardises: bool) -> None:
        """Take broadcast centroids: (n_init, K, d) for a round, (K, d) for the final model."""
        meta = KMeansMeta.model_validate(bundle.meta)
        if standardises and self.mean is None:
            raise TrainingError("the centroids arrived before the global statistics")
        centroids = np.asarray(bundle.arrays.get("centroids"), dtype=np.float64)
        if centroids.ndim not in (2, 3) or centroids.shape[-2:] != (meta.clusters, meta.features):
            raise TrainingError(f"broadcast centroids have shape {centroids.shape}, expected "
                                f"(..., {meta.clusters}, {meta.features})")
        width = self._train().shape[1]
        if width != meta.features:
            raise TrainingError(f"{self.train_raw.name} has {width} features per sample but the "
                                f"task clusters {meta.features}: wrong dataset for this task?")
        self.meta, self.centroids = meta, centroids

    def train_round(self, round_no: int) -> Trained:
        """Assign the local samples to the round's centroids; the per-cluster sums to send."""
        assert self.centroids is not None and self.centroids.ndim == 3
        started = time.monotonic()
        stats = local_statistics(self._train(), self.centroids)
        metrics = self.evaluate()
        # Sent as a weight list, so the aggregator checks and folds it like any update.
        return Trained([], stats.as_update(), len(self.train_raw), len(self.test_raw), metrics,
                       time.monotonic() - started)

    def evaluate(self) -> dict[str, float]:
        """Mean squared distance of the local test samples to their nearest centroid."""
        if self.centroids is None or len(self.test_raw) == 0:
            return {}
        x = self._test()
        sets = self.centroids if self.centroids.ndim == 3 else self.centroids[None]
        per_sample = min(float(np.mean(assign(x, c)[1])) for c in sets)
        return {"inertia_per_sample": per_sample}

    def save(self, folder: Path) -> Path:
        """Save the final centroids as CSV in `folder`, one row per cluster in the data's own
        units (standardisation undone); its path."""
        assert self.centroids is not None
        path = folder / "centroids.csv"
        rows = self.centroids.reshape(-1, self.centroids.shape[-1])
        if self.mean is not None and self.std is not None:
            rows = rows * self.std + self.mean
        names = self.train_raw.feature_names or []
        header = ",".join(names) if len(names) == rows.shape[1] else ""
        np.savetxt(path, rows, delimiter=",", header=header, comments="")
        return path

    def _train(self) -> Array:
        if self._train_x is None:
            self._train_x = self.features(self.train_raw)
        return self._train_x

    def _test(self) -> Array:
        if self._test_x is None:
            self._test_x = self.features(self.test_raw)
        return self._test_x
