"""What a participant's masked input holds, and how the aggregator reads the sum back.

A model round's input is one vector in the ring of 2^64:

    [ (w - g) × weight, flattened ...,  weight,  1,  loss,  accuracy ]

where g is the round's global model, w the participant's trained model and weight its sample
count (privacy mode 2: the sum gives FedAvg exactly) or 1 (mode 3: clipped, noised differences,
averaged without weights, as differential privacy needs). The sum therefore carries the weighted
sum of differences, the total weight, how many took part and the sums of their local metrics:
the next model and the round's metrics, and nothing about any one participant.

Each coordinate of (w - g) is clipped to +-bound (the definition's `secagg_bound`), and the scale
is chosen so that the sum over every participant at the largest allowed weight stays within the
ring: it can never wrap around.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.secagg.masking import dequantize, quantize
from ml.strategies.fedavg import Template, template_of
from schema.privacy import DEFAULT_SECAGG_BOUND

Array = np.ndarray[Any, Any]
METRICS = ("loss", "accuracy")
# Local metrics are clipped into this range before they are summed (a loss of 1e30 would wrap).
_METRIC_BOUND = 1e3
# Feature values for federated standardisation under secure aggregation are clipped to this.
FEATURE_BOUND = 1e6
_RING_HALF = 2.0**62  # headroom below 2^63 for rounding


@dataclass(frozen=True)
class ModelLayout:
    """The shape of a model round's input vector."""

    template: Template
    bound: float
    max_weight: float
    participants: int

    @classmethod
    def of(cls, global_weights: Sequence[Array], definition: dict[str, Any], pom: int,
           participants: int) -> ModelLayout:
        bound = float(definition.get("secagg_bound") or DEFAULT_SECAGG_BOUND)
        cap = definition.get("max_samples", definition.get("training_size"))
        max_weight = float(cap) if pom == 2 and cap else 1.0
        return cls(template_of(global_weights), bound, max_weight, participants)

    @property
    def size(self) -> int:
        return sum(math.prod(spec.shape) for spec in self.template)

    @property
    def length(self) -> int:
        return self.size + 2 + len(METRICS)

    @property
    def scale(self) -> float:
        """Fixed-point units per 1.0, as fine as the ring allows for the worst-case sum."""
        worst = self.participants * max(self.bound * self.max_weight, self.max_weight, _METRIC_BOUND)
        return _RING_HALF / worst

    def encode(self, global_weights: Sequence[Array], weights: Sequence[Array], weight: float,
               metrics: dict[str, float]) -> Array:
        """The participant's input, quantised (not yet masked)."""
        delta = np.concatenate([(np.asarray(w, np.float64) - g).ravel() for w, g in zip(weights, global_weights)])
        np.clip(delta, -self.bound, self.bound, out=delta)
        tail = [weight, 1.0, *(float(np.clip(metrics.get(m, 0.0), -_METRIC_BOUND, _METRIC_BOUND)) for m in METRICS)]
        return quantize(np.concatenate([delta * weight, tail]), self.scale)

    def decode(self, total: Array, global_weights: Sequence[Array]) -> tuple[list[Array], float, int, dict[str, float]]:
        """(next weights, total weight, contributors, mean local metrics) from the unmasked sum."""
        values = dequantize(total, self.scale)
        weight, count = values[self.size], int(round(values[self.size + 1]))
        step = values[:self.size] / weight
        arrays, offset = [], 0
        for spec, g in zip(self.template, global_weights):
            n = math.prod(spec.shape)
            arrays.append((np.asarray(g, np.float64) + step[offset:offset + n].reshape(spec.shape)).astype(spec.dtype))
            offset += n
        metrics = {m: float(values[self.size + 2 + i] / count) for i, m in enumerate(METRICS)} if count else {}
        return arrays, float(weight), count, metrics


def stats_scale(max_samples: int, participants: int, squared: bool) -> float:
    """The scale of a standardisation sum: of feature values, or of their squared deviations."""
    value = (2 * FEATURE_BOUND) ** 2 if squared else FEATURE_BOUND
    return _RING_HALF / (participants * max(value, 1.0) * max_samples)


@dataclass(frozen=True)
class StatsLayout:
    """Federated standardisation under secure aggregation, in two secure sums: first the count
    and sums (the global mean), then the squared deviations from that mean (the variance). Two
    passes keep the variance exact where a single sum of squares would cancel catastrophically."""

    features: int
    max_samples: int
    participants: int

    def mean_input(self, x: Array) -> Array:
        """[sum of each feature..., count], quantised."""
        values = np.clip(np.asarray(x, np.float64), -FEATURE_BOUND, FEATURE_BOUND)
        return quantize(np.append(values.sum(axis=0), len(values)), self.scale(squared=False))

    def mean(self, total: Array) -> tuple[Array, int]:
        """The global mean and sample count from the first sum."""
        values = dequantize(total, self.scale(squared=False))
        count = int(round(values[-1]))
        if count <= 0:
            raise ValueError("no participant reported any samples: cannot standardise")
        return values[:-1] / count, count

    def var_input(self, x: Array, mean: Array) -> Array:
        """[sum of squared deviations from the global mean, per feature], quantised."""
        values = np.clip(np.asarray(x, np.float64), -FEATURE_BOUND, FEATURE_BOUND)
        return quantize(np.square(values - mean).sum(axis=0), self.scale(squared=True))

    def variance(self, total: Array, count: int) -> Array:
        """The global (population) variance from the second sum."""
        return np.maximum(dequantize(total, self.scale(squared=True)), 0.0) / count

    def scale(self, squared: bool) -> float:
        return stats_scale(self.max_samples, self.participants, squared)
