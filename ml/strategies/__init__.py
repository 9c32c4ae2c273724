"""Aggregation strategies: how the aggregator folds one round's updates into the next model.

A strategy is made per round from the task's definition and the round's global weights; the
aggregator `add`s each accepted update as it arrives (checked first with `check_update`) and
asks for the `result` once the round closes. `for_round` is the registry: a definition names
a strategy, never code.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ml.strategies.fedavg import RunningAverage, Template, check_update, template_of
from ml.strategies.robust import Clipped, Median, TrimmedMean

Array = np.ndarray[Any, Any]

__all__ = ["Strategy", "Template", "check_update", "for_round", "template_of"]


class Strategy(Protocol):
    """One round's aggregate, built one update at a time."""

    template: Template

    @property
    def count(self) -> int:
        """Updates folded so far."""

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Fold one participant's checked weights, trained on `samples` samples."""

    def result(self) -> list[Array]:
        """The next global weights (ValueError if no update was added)."""


def for_round(definition: dict[str, Any], global_weights: Sequence[Array]) -> Strategy:
    """The strategy the definition asks for (`aggregation`, `trim`, `clip_norm`), for a round
    starting from `global_weights`."""
    template = template_of(global_weights)
    rule = definition.get("aggregation", "fedavg")
    strategy: Strategy
    if rule == "median":
        strategy = Median(template)
    elif rule == "trimmed_mean":
        trim = definition.get("trim")
        strategy = TrimmedMean(template, 0.1 if trim is None else float(trim))
    elif rule == "fedavg":
        strategy = RunningAverage(template)
    else:
        raise ValueError(f"unknown aggregation {rule!r}")
    clip_norm = definition.get("clip_norm")
    if definition.get("noise_multiplier"):
        # Central differential privacy: clipped, unweighted, noised. Imported here: its accountant
        # loads scipy, which only tasks with noise should pay for.
        from ml.secagg.dp import NoisySum

        return NoisySum(global_weights, float(clip_norm or 0), float(definition["noise_multiplier"]))
    return Clipped(strategy, global_weights, float(clip_norm)) if clip_norm else strategy
