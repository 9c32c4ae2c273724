"""Aggregation strategies: how the aggregator folds one round's updates into the next model.

A strategy is made per round from the task's definition and the round's global weights; the
aggregator `add`s each accepted update as it arrives (checked first with `check_update`) and
asks for the `result` once the round closes. `for_round` is the registry: a definition names
a strategy, never code.

Linear and logistic regression fold gradients and Hessians instead, into a Newton step
(`newton.py`): their `result` is the next model too.

A server optimiser (fedavgm, fedadam, fedyogi, fedadagrad; `server_optimiser_for`) then takes
the strategy's result as the round's aggregate and steps the global model along the
pseudo-gradient aggregate − global; it lives across rounds, a strategy for one round only.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Protocol

import numpy as np

from ml.strategies.fedavg import RunningAverage, Template, check_update, template_of
from ml.strategies.newton import NewtonStep
from ml.strategies.robust import Clipped, Median, TrimmedMean
from ml.strategies.server import ServerOptimiser
from schema import algorithms

Array = np.ndarray[Any, Any]

__all__ = ["ServerOptimiser", "Strategy", "Template", "check_update", "for_round",
           "server_optimiser_for", "template_of"]


class Strategy(Protocol):
    """One round's aggregate, built one update at a time."""

    template: Template

    @property
    def count(self) -> int:
        """Updates folded so far."""

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Fold one participant's weights, trained on `samples` samples; UpdateRejected, saying
        why, and nothing folded, if they fail `check_update` or the strategy's own checks."""

    def result(self) -> list[Array]:
        """The next global weights (ValueError if no update was added)."""


def for_round(definition: dict[str, Any], global_weights: Sequence[Array]) -> Strategy:
    """The strategy the definition asks for (its algorithm, `aggregation`, `trim`, `clip_norm`,
    `noise_multiplier`), for a round starting from `global_weights`."""
    parameters = algorithms.parameters(definition)
    if parameters.algorithm in algorithms.LINEAR_MODELS:
        # Linear and logistic regression: one Newton step on everyone's summed loss.
        return NewtonStep(global_weights, float(parameters.regularisation or 0.0),
                          logistic=parameters.algorithm == "logistic_regression")
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


def server_optimiser_for(definition: dict[str, Any], global_weights: Sequence[Array]
                         ) -> ServerOptimiser | None:
    """The task's server optimiser, fresh (None when the aggregate is the next model as it is)."""
    settings = algorithms.server_optimiser(definition)
    return None if settings is None else ServerOptimiser(settings, global_weights)
