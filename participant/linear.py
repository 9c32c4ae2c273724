"""Local terms of linear and logistic regression: the gradient and Hessian Newton's step needs.

The model is the broadcast Keras model (one Dense layer), loaded and evaluated like any other;
only the round's work differs: instead of training, the participant computes its summed loss's
gradient and Hessian at the broadcast weights (ml/strategies/newton.py) and sends those.
"""

from __future__ import annotations

import time

import numpy as np

from ml.strategies.newton import local_terms
from participant.training import LocalTraining, Trained


class LocalLinear(LocalTraining):
    """A linear or logistic regression task's local side."""

    def train_round(self, round_no: int) -> Trained:
        """The gradient, Hessian and loss of the local training data at the global weights."""
        assert self.meta is not None
        started = time.monotonic()
        kernel, bias = (np.asarray(w) for w in self.model.get_weights())
        gradient, hessian, loss = local_terms(self.train.x, self.train.y, kernel, bias,
                                              logistic=not self.meta.regression)
        metrics = self.evaluate()
        return Trained([kernel, bias], [gradient, hessian, np.array([loss])], len(self.train),
                       len(self.test), metrics, time.monotonic() - started)
