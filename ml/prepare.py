"""Shape local data for a model: optional global standardisation, then the model's input shape."""

from __future__ import annotations

from math import prod

import numpy as np

from ml.data.dataset import DataError, Dataset
from ml.standardise import Moments, apply, local_moments


def flat_features(dataset: Dataset) -> np.ndarray:
    """One row of features per sample, whatever the stored shape (images become pixels)."""
    # Explicit width: reshape(0, -1) is ambiguous for an empty split.
    return dataset.x.reshape(len(dataset.x), prod(dataset.x.shape[1:]))


def feature_moments(dataset: Dataset) -> Moments:
    """The per-feature moments a participant shares for federated standardisation."""
    return local_moments(flat_features(dataset))


def prepare(dataset: Dataset, input_shape: list[int] | tuple[int, ...],
            mean: np.ndarray | None = None, std: np.ndarray | None = None) -> Dataset:
    """The dataset standardised (if mean/std are given) and reshaped to the model's input."""
    features = flat_features(dataset)
    expected = prod(int(d) for d in input_shape)
    if features.shape[1] != expected:
        raise DataError(
            f"{dataset.name} has {features.shape[1]} features per sample but the model expects "
            f"input shape {tuple(input_shape)} ({expected} values): wrong dataset for this task?"
        )
    if mean is not None and std is not None:
        features = apply(features, mean, std).astype(np.float32)
    x = np.ascontiguousarray(features.reshape((len(features), *[int(d) for d in input_shape])),
                             dtype=np.float32)
    return Dataset(x, dataset.y, dataset.feature_names, dataset.num_classes, dataset.name)
