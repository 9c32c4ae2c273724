"""One round of local training as it leaves the trainer: light on purpose (no TensorFlow), so the
secure-aggregation side and the benches' no-op participants can use it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from schema.dataplane import UpdateMeta
from streams.codec import encode_bundle, keras_weights_to_bundle

Array = np.ndarray[Any, Any]


@dataclass
class Trained:
    """One round's local training: the weights it started from and ended with, and its metrics."""

    global_weights: list[Array]
    weights: list[Array]
    samples: int
    test_samples: int
    metrics: dict[str, float]
    seconds: float

    def payload(self) -> bytes:
        """The plain update (privacy mode 1): trained weights with the sample count and metrics."""
        meta = UpdateMeta(samples=self.samples, test_samples=self.test_samples, metrics=self.metrics)
        return encode_bundle(keras_weights_to_bundle(self.weights, meta.model_dump()))
