"""Contribution: after a round, what each participant's update was worth (`"contribution"`).

When the definition asks for it, the round keeps every accepted update (memory then grows
with the participants, which is why it is off by default), and once the round's model is
recorded the aggregator values them on its evaluation data: the utility of a coalition is the
accuracy (R² for regression) of the model the round would have produced from that coalition's
updates alone, through the task's own strategy and server optimiser. Leave-one-out or Shapley
values (ml/contribution.py) are recorded as ContributionsAssessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.model import Evaluation
from aggregator.run import TaskRun
from ml.contribution import Valuation, assess
from ml.strategies import ServerOptimiser, Strategy, Template, for_round
from schema.algorithms import contribution
from schema.dataplane import ModelMeta

Array = np.ndarray[Any, Any]


class KeptUpdates:
    """A round's strategy that also keeps a copy of every update it folds, by sender."""

    def __init__(self, inner: Strategy) -> None:
        self.inner = inner
        self.template: Template = inner.template
        self.count = 0
        self.updates: dict[str, tuple[list[Array], int]] = {}
        self._last: tuple[list[Array], int] | None = None

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Fold into the inner strategy, and keep a copy until `claim` names its sender."""
        self.inner.add(weights, samples)
        self.count = self.inner.count
        self._last = ([np.array(w, copy=True) for w in weights], samples)

    def claim(self, sender: str) -> None:
        """The update just added counted, from `sender`."""
        if self._last is not None:
            self.updates[sender], self._last = self._last, None

    def result(self) -> list[Array]:
        """The inner strategy's result."""
        return self.inner.result()


def keep_updates_if_valued(definition: dict[str, Any], round_no: int, strategy: Strategy) -> Strategy:
    """The round's strategy, keeping its updates if this round's contributions are to be valued."""
    settings = contribution(definition)
    if settings is None or (settings.rounds == "last" and round_no != int(definition["rounds"])):
        return strategy
    return KeptUpdates(strategy)


@dataclass(frozen=True)
class RoundStart:
    """What a round started from: the task's definition, its global weights and optimiser."""

    definition: dict[str, Any]
    weights: list[Array]
    optimiser: ServerOptimiser | None
    seed: int


def value_updates(start: RoundStart, strategy: Strategy, evaluation: Evaluation | None) -> Valuation | None:
    """Each kept update's value to the round (None when this round is not valued).

    Call it before the server optimiser steps: a coalition's model is the step the optimiser
    would take from the state the round started with.
    """
    settings = contribution(start.definition)
    if settings is None or evaluation is None or not isinstance(strategy, KeptUpdates):
        return None
    kept = strategy.updates
    metric = "r2" if evaluation.raw.is_regression else "accuracy"

    def utility(coalition: frozenset[str]) -> float:
        candidate = start.weights
        if coalition:
            fold = for_round(start.definition, start.weights)
            for who in sorted(coalition):
                fold.add(*kept[who])
            aggregate = fold.result()
            candidate = aggregate if start.optimiser is None else start.optimiser.peek(start.weights, aggregate)
        return evaluation.score(candidate)[metric]

    return assess(settings.method, sorted(kept), utility, settings.permutations, start.seed)


def record_values(run: TaskRun, round_no: int, valuation: Valuation | None, meta: ModelMeta,
                  evaluation: Evaluation | None) -> None:
    """Record the round's ContributionsAssessed (after its RoundCompleted)."""
    if valuation is None or evaluation is None:
        return
    metric = "r2" if evaluation.raw.is_regression else "accuracy"
    data = f"{evaluation.raw.name} ({len(evaluation.raw)} samples)"
    run.recorder.contributions(round_no, valuation, metric, data)
    shown = ", ".join(f"{who} {value:+.4f}" for who, value in sorted(valuation.values.items()))
    run.say(f"round {round_no}/{meta.rounds} contributions ({valuation.method}, {metric}): {shown}")
