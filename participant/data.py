"""The participant's local data: loaded and checked once, at start-up, before anything is sent.

A missing file, a wrong `--label-column`, an unknown source or a bad `--shard` stop the daemon
at once with the reason; so does data whose shape the task's registry model cannot take.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from math import prod
from typing import Any

from ml.data import DataError, Dataset, load_dataset
from schema.algorithms import is_regression
from schema.definition import REGISTRY_MODELS


@dataclass
class DataOptions:
    """Where this participant's local data comes from."""

    dataset: str
    data_dir: str | None = None
    shard: str | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)
    _loaded: dict[bool, Dataset] = field(default_factory=dict, init=False, repr=False)

    def load(self, regression: bool = False) -> Dataset:
        """The whole local dataset, read once per kind of target (every task's worker shares it).

        `regression`: read a continuous target (a linear-regression task) instead of classes.
        """
        if regression not in self._loaded:
            self._loaded[regression] = load_dataset(
                self.dataset, data_dir=self.data_dir, shard=self.shard, seed=self.seed,
                regression=regression, **self.options)
        return self._loaded[regression]

    def check_for(self, task_name: str, definition: dict[str, Any]) -> None:
        """DataError if the task's registry model cannot take this data (shape or classes)."""
        model = definition.get("model")
        if model not in REGISTRY_MODELS:
            return  # the creator's own model: its shape is known when its architecture arrives
        from ml.registry import model_spec  # here: TensorFlow loads only once data is fine

        dataset, spec = self.load(is_regression(definition)), model_spec(str(model))
        features, expected = prod(dataset.x.shape[1:]), prod(spec.input_shape)
        if features != expected:
            raise DataError(f"task '{task_name}' trains {model}, which takes {expected} values per "
                            f"sample {spec.input_shape}, but {dataset.name} has {features}: "
                            "wrong --dataset for this task?")
        if dataset.num_classes > spec.num_classes:
            raise DataError(f"task '{task_name}' trains {model} for {spec.num_classes} classes, but "
                            f"{dataset.name} has labels up to {dataset.num_classes - 1}")
