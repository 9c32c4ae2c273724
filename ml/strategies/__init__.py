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
from ml.strategies.server import ServerOptimiser
from schema import algorithms

Array = np.ndarray[Any, Any]

__all__ = ["ServerOptimiser", "Strategy", "Template", "check_update", "for_round",
           "server_optimiser_for", "template_of"]


class Strategy(Protocol):
    """One round's aggregate, built one update at a time."""

    template: Template
    count: int

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Fold one participant's checked weights, trained on `samples` samples."""

    def result(self) -> list[Array]:
        """The next global weights (ValueError if no update was added)."""


def for_round(definition: dict[str, Any], global_weights: Sequence[Array]) -> Strategy:
    """The strategy the definition asks for, for a round starting from `global_weights`."""
    parameters = algorithms.parameters(definition)
    if parameters.algorithm in algorithms.LINEAR_MODELS:
        # Linear and logistic regression: one Newton step on everyone's summed loss.
        return NewtonStep(global_weights, float(parameters.regularisation or 0.0),
                          logistic=parameters.algorithm == "logistic_regression")
    return RunningAverage(template_of(global_weights))


def server_optimiser_for(definition: dict[str, Any], global_weights: Sequence[Array]
                         ) -> ServerOptimiser | None:
    """The task's server optimiser, fresh (None when the aggregate is the next model as it is)."""
    settings = algorithms.server_optimiser(definition)
    return None if settings is None else ServerOptimiser(settings, global_weights)
