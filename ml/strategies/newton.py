"""Federated Newton's method for linear and logistic regression: the centralised optimum, exactly.

FedAvg on a convex model converges to a point biased by the sites' differences (client drift:
on the two welding robots, whose label sets differ, logistic regression stays 2-4 points of
accuracy below scikit-learn's however it is tuned). Newton's method has no drift: each round
every participant sends, at the broadcast weights, the gradient and Hessian of its summed loss
(and the loss); the aggregator adds them up (they are sums over samples, so the total is the
union's) and takes one Newton step on the regularised objective

    Σ_i loss_i + n·λ·‖W‖²        (n samples, λ the task's `regularisation`, W the kernel)

which is the mean loss + λ‖W‖² that the Keras model's L2 regulariser states. Linear regression
(squared error) is solved in one round; logistic regression (softmax cross-entropy) in a few.
Parameters are θ = per class c, [W[:, c]; b[c]]: P = (d + 1)·C of them, and the Hessian P×P
travels, so `features` and `classes` are bounded (schema/algorithms.py). The Hessian holds
weighted second moments of the site's features: like standardisation's statistics, aggregates
over samples, never samples.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.strategies.fedavg import ArraySpec, Template, UpdateRejected, require_fit

Array = np.ndarray[Any, Any]


def theta_of(kernel: Array, bias: Array) -> Array:
    """The Dense layer's weights as one parameter vector, class by class: [W[:, c]; b[c]]."""
    return np.vstack([kernel, bias[None, :]]).astype(np.float64).T.ravel()


def weights_of(theta: Array, features: int, outputs: int) -> tuple[Array, Array]:
    """The kernel (d, C) and bias (C,) of a parameter vector."""
    stacked = theta.reshape(outputs, features + 1).T
    return stacked[:features], stacked[features]


def local_terms(x: Array, y: Array, kernel: Array, bias: Array, logistic: bool
                ) -> tuple[Array, Array, float]:
    """Gradient (P,), Hessian (P, P) and value of the summed loss over (x, y) at (kernel, bias)."""
    features, outputs = kernel.shape
    design = np.hstack([np.asarray(x, dtype=np.float64).reshape(len(x), features), np.ones((len(x), 1))])
    scores = design @ np.vstack([kernel, bias[None, :]]).astype(np.float64)
    if not logistic:  # squared error: 2·Xᵀr and 2·XᵀX
        residual = scores[:, 0] - np.asarray(y, dtype=np.float64)
        return 2.0 * design.T @ residual, 2.0 * design.T @ design, float(residual @ residual)
    scores -= scores.max(axis=1, keepdims=True)
    probabilities = np.exp(scores)
    probabilities /= probabilities.sum(axis=1, keepdims=True)
    labels = np.asarray(y, dtype=np.int64)
    onehot = np.eye(outputs)[labels]
    gradient = (design.T @ (probabilities - onehot)).T.ravel()
    width = features + 1
    hessian = np.zeros((outputs * width, outputs * width))
    for c in range(outputs):
        for other in range(c, outputs):
            w = probabilities[:, c] * ((c == other) - probabilities[:, other])
            block = (design * w[:, None]).T @ design
            hessian[c * width:(c + 1) * width, other * width:(other + 1) * width] = block
            hessian[other * width:(other + 1) * width, c * width:(c + 1) * width] = block.T
    picked = np.clip(probabilities[np.arange(len(labels)), labels], 1e-300, 1.0)
    return gradient, hessian, float(-np.sum(np.log(picked)))


def terms_template(features: int, outputs: int) -> Template:
    """The shapes of a Newton update: gradient, Hessian, loss (all float64)."""
    size = (features + 1) * outputs
    return (ArraySpec((size,), np.dtype(np.float64)), ArraySpec((size, size), np.dtype(np.float64)),
            ArraySpec((1,), np.dtype(np.float64)))


class NewtonStep:
    """A round of federated Newton: sums everyone's terms, then steps from the global weights.

    Folds updates one at a time like every aggregation strategy; `result` is the next model.
    """

    def __init__(self, weights: Sequence[Array], regularisation: float, logistic: bool) -> None:
        kernel, bias = (np.asarray(w) for w in weights)
        self.logistic = logistic
        self.kernel, self.bias = kernel, bias
        self.features, self.outputs = kernel.shape
        self.regularisation = regularisation
        self.template = terms_template(self.features, self.outputs)
        self.count = 0
        self.samples = 0
        size = (self.features + 1) * self.outputs
        self.gradient, self.hessian, self.loss = np.zeros(size), np.zeros((size, size)), 0.0

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Fold one participant's gradient, Hessian and loss; UpdateRejected if they cannot be."""
        require_fit(self.template, weights)
        gradient, hessian, loss = (np.asarray(w, dtype=np.float64) for w in weights)
        if not np.allclose(hessian, hessian.T, rtol=1e-9, atol=1e-9 * (1.0 + np.abs(hessian).max())):
            raise UpdateRejected("the Hessian is not symmetric")
        if loss[0] < 0:
            raise UpdateRejected("negative loss")
        self.gradient += gradient
        self.hessian += hessian
        self.loss += float(loss[0])
        self.samples += int(samples)
        self.count += 1

    def result(self) -> list[Array]:
        """The weights after one Newton step on everyone's regularised loss."""
        if self.count == 0:
            raise ValueError("no update has been added: no Newton step to take")
        theta = theta_of(self.kernel, self.bias)
        # The L2 penalty n·λ·‖W‖² on the kernel entries (not the biases).
        penalised = np.tile(np.r_[np.ones(self.features), 0.0], self.outputs)
        strength = 2.0 * self.regularisation * self.samples
        gradient = self.gradient + strength * penalised * theta
        hessian = self.hessian + strength * np.diag(penalised)
        # Least squares: softmax's parameters are only defined up to a shift common to all
        # classes (a flat direction), and lstsq takes the smallest step along it.
        step = np.linalg.lstsq(hessian, gradient, rcond=None)[0]
        if self.logistic:
            # Damped Newton: the step shrinks by 1 + the Newton decrement per sample, so far
            # from the optimum (where a full step can overshoot and diverge) it is cautious,
            # and near it (decrement → 0) it is the full, quadratically converging step.
            decrement = float(np.sqrt(max(float(gradient @ step), 0.0) / self.samples))
            step /= 1.0 + decrement
        kernel, bias = weights_of(theta - step, self.features, self.outputs)
        return [kernel.astype(self.kernel.dtype), bias.astype(self.bias.dtype)]
