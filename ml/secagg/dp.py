"""Differential privacy for privacy mode 3 (distributed) and for plain tasks (central): clip each
update's difference from the global model, add Gaussian noise, and account for the privacy spent.

The guarantee is per participant (adding or removing one member's whole update), per round,
with every member taking part in every round (no sampling): the sum of clipped differences has
sensitivity `clip_norm`, and noise of standard deviation `noise_multiplier * clip_norm` on the sum
is the Gaussian mechanism. With secure aggregation no single party adds all of it: each of the n
participants adds noise of standard deviation `noise_multiplier * clip_norm / sqrt(n)`, so the sum
carries the full amount as long as nobody drops out (a dropout leaves the sum a little less noisy
than accounted; the README says so). The accountant is `dp-accounting`'s RDP accountant.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import dp_accounting
import numpy as np

from ml.strategies.fedavg import require_fit, template_of
from schema.privacy import DEFAULT_DELTA

Array = np.ndarray[Any, Any]


def epsilon(noise_multiplier: float, rounds: int, delta: float) -> float:
    """The (epsilon, delta) guarantee after `rounds` rounds of the Gaussian mechanism."""
    if rounds == 0:
        return 0.0
    accountant = dp_accounting.rdp.RdpAccountant()
    accountant.compose(dp_accounting.GaussianDpEvent(noise_multiplier), rounds)
    return float(accountant.get_epsilon(delta))


def clip(delta: Sequence[Array], clip_norm: float) -> tuple[list[Array], float]:
    """The difference scaled to at most `clip_norm` in L2 norm (over all arrays), and its norm before."""
    norm = math.sqrt(sum(float(np.sum(np.square(d, dtype=np.float64))) for d in delta))
    scale = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [np.asarray(d, dtype=np.float64) * scale for d in delta], norm


def noise(shapes: Sequence[tuple[int, ...]], stddev: float, rng: np.random.Generator | None = None) -> list[Array]:
    """Gaussian noise of this standard deviation for each shape.

    Without `rng`, the generator is seeded from the operating system's randomness at every call:
    noise must not be predictable, even by someone who knows the task's seed.
    """
    generator = rng or np.random.default_rng(int.from_bytes(os.urandom(16), "big"))
    return [generator.normal(0.0, stddev, size=shape) for shape in shapes]


@dataclass(frozen=True)
class Budget:
    """The privacy a task spends per round, and where it must stop."""

    noise_multiplier: float
    delta: float
    target: float | None

    @classmethod
    def of(cls, definition: dict[str, Any]) -> Budget | None:
        """The definition's budget, or None when it adds no noise."""
        noise = definition.get("noise_multiplier")
        if not noise:
            return None
        return cls(float(noise), float(definition.get("delta") or DEFAULT_DELTA),
                   None if definition.get("target_epsilon") is None else float(definition["target_epsilon"]))

    def after(self, rounds: int) -> float:
        """Epsilon spent once `rounds` rounds are done."""
        return epsilon(self.noise_multiplier, rounds, self.delta)

    def stop_before(self, round_no: int) -> str | None:
        """Why round `round_no` must not run (it would pass the target), or None."""
        if self.target is None:
            return None
        spent = self.after(round_no)
        if spent <= self.target:
            return None
        return (f"privacy budget: round {round_no} would bring epsilon to {spent:.3f}, above "
                f"target_epsilon {self.target:g} (delta {self.delta:g}); stopped after round {round_no - 1}")


class NoisySum:
    """Central differential privacy (privacy mode 1 with noise): the aggregator clips each update's
    difference from the global model to `clip_norm`, sums them unweighted, adds Gaussian noise of
    standard deviation `noise_multiplier * clip_norm` to the sum, and averages."""

    def __init__(self, global_weights: Sequence[Array], clip_norm: float, noise_multiplier: float,
                 rng: np.random.Generator | None = None) -> None:
        self.global_weights = [np.asarray(g, np.float64) for g in global_weights]
        self.template = template_of(global_weights)
        self.clip_norm, self.noise_multiplier, self.rng = clip_norm, noise_multiplier, rng
        self._sum = [np.zeros_like(g) for g in self.global_weights]
        self.count = 0

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Fold one checked update's clipped difference (its sample count is not used)."""
        require_fit(self.template, weights)
        clipped, _ = clip([np.asarray(w, np.float64) - g for w, g in zip(weights, self.global_weights)],
                          self.clip_norm)
        for total, part in zip(self._sum, clipped):
            total += part
        self.count += 1

    def result(self) -> list[Array]:
        """The global model plus the noisy mean difference."""
        if self.count == 0:
            raise ValueError("no update has been added: nothing to aggregate")
        noisy = noise([g.shape for g in self.global_weights], self.noise_multiplier * self.clip_norm, self.rng)
        return [(g + (s + n) / self.count).astype(spec.dtype)
                for g, s, n, spec in zip(self.global_weights, self._sum, noisy, self.template)]
