"""Server optimisers: the round's aggregate becomes a pseudo-gradient the server steps along.

Reddi et al., "Adaptive Federated Optimization" (ICLR 2021), Algorithm 2, with x the global
weights and Δ = aggregate − x (the sample-weighted mean of the participants' model differences):

    m ← β1·m + (1 − β1)·Δ                          (FedAvgM: m ← μ·m + Δ, x ← x + η·m)
    v ← v + Δ²                                      FedAdagrad
    v ← β2·v + (1 − β2)·Δ²                          FedAdam
    v ← v − (1 − β2)·Δ²·sign(v − Δ²)                FedYogi
    x ← x + η·m / (√v + τ)

with m₀ = 0 and v₀ = τ² as in the paper (no bias correction). Everything is computed in
float64 and the state (m, v and the step count) is kept in float64: it is part of each round's
checkpoint, so a resumed aggregator continues with exactly the state the killed one had.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.payload import STATE_PREFIX, ServerState
from schema.algorithms import ServerOptimiserSettings

Array = np.ndarray[Any, Any]


class ServerOptimiser:
    """One task's server optimiser: its hyper-parameters and its state across rounds."""

    def __init__(self, settings: ServerOptimiserSettings, weights: Sequence[Array]) -> None:
        self.settings = settings
        self.steps = 0
        self.m = [np.zeros(w.shape, dtype=np.float64) for w in weights]
        # FedAvgM keeps no second moment; the adaptive ones start from v₀ = τ².
        self.v = ([] if settings.name == "fedavgm" else
                  [np.full(w.shape, settings.tau ** 2, dtype=np.float64) for w in weights])

    def step(self, weights: Sequence[Array], aggregate: Sequence[Array]) -> list[Array]:
        """The next global weights from the current ones and the round's aggregate; keeps the state."""
        new_weights, self.m, self.v = self._advance(weights, aggregate)
        self.steps += 1
        return new_weights

    def peek(self, weights: Sequence[Array], aggregate: Sequence[Array]) -> list[Array]:
        """What `step` would give, leaving the state untouched (to value a subset of updates)."""
        return self._advance(weights, aggregate)[0]

    def _advance(self, weights: Sequence[Array], aggregate: Sequence[Array]
                 ) -> tuple[list[Array], list[Array], list[Array]]:
        s = self.settings
        new_weights, new_m, new_v = [], [], []
        for index, (x, a) in enumerate(zip(weights, aggregate)):
            x64 = x.astype(np.float64)
            delta = a.astype(np.float64) - x64
            if s.name == "fedavgm":
                m = s.momentum * self.m[index] + delta
                new_weights.append((x64 + s.learning_rate * m).astype(x.dtype))
                new_m.append(m)
                continue
            m = s.beta_1 * self.m[index] + (1.0 - s.beta_1) * delta
            v = _second_moment(s, self.v[index], np.square(delta))
            new_weights.append((x64 + s.learning_rate * m / (np.sqrt(v) + s.tau)).astype(x.dtype))
            new_m.append(m)
            new_v.append(v)
        return new_weights, new_m, new_v

    def state(self) -> ServerState:
        """The arrays and the JSON that carry this optimiser's state in a checkpoint."""
        arrays = {f"{STATE_PREFIX}m.{i:03d}": m for i, m in enumerate(self.m)}
        arrays |= {f"{STATE_PREFIX}v.{i:03d}": v for i, v in enumerate(self.v)}
        return arrays, {"name": self.settings.name, "steps": self.steps}

    def load_state(self, arrays: dict[str, Array], meta: dict[str, Any]) -> None:
        """Take back the state `state()` gave (ValueError if it is another optimiser's or shape)."""
        if meta.get("name") != self.settings.name:
            raise ValueError(f"the checkpoint holds {meta.get('name')!r} state, "
                             f"but the task uses {self.settings.name}")
        m = [arrays.get(f"{STATE_PREFIX}m.{i:03d}") for i in range(len(self.m))]
        v = [arrays.get(f"{STATE_PREFIX}v.{i:03d}") for i in range(len(self.v))]
        for found, expected in ((m, self.m), (v, self.v)):
            for array, like in zip(found, expected):
                if array is None or array.shape != like.shape:
                    raise ValueError("the checkpoint's server optimiser state does not fit the model")
        self.m = [np.asarray(a, dtype=np.float64) for a in m if a is not None]
        self.v = [np.asarray(a, dtype=np.float64) for a in v if a is not None]
        self.steps = int(meta.get("steps", 0))


def _second_moment(s: ServerOptimiserSettings, v: Array, square: Array) -> Array:
    moment: Array
    if s.name == "fedadagrad":
        moment = v + square
    elif s.name == "fedadam":
        moment = s.beta_2 * v + (1.0 - s.beta_2) * square
    elif s.name == "fedyogi":
        moment = v - (1.0 - s.beta_2) * square * np.sign(v - square)
    else:
        raise ValueError(f"unknown server optimiser {s.name!r}")
    return moment
