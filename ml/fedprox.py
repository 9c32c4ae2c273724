"""FedProx local training (Li et al., "Federated Optimization in Heterogeneous Networks", MLSys 2020).

A participant minimises its local loss plus the proximal term (mu/2)·‖w − w_global‖², which
keeps its update near the round's global model however far its own data would pull it: the
remedy for non-identically distributed data that plain FedAvg lacks. The model arrives as
JSON (data, never code), so the term cannot be a custom layer; it is added in this training
loop instead, one mini-batch at a time, with the model's own loss and optimizer.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from ml.keras_model import keras


def fit_proximal(model: keras.Model, x: np.ndarray, y: np.ndarray, *, epochs: int, batch_size: int,
                 mu: float, seed: int) -> None:
    """Train the compiled `model` on (x, y) from its current weights, pulled towards them by mu."""
    import tensorflow as tf  # only the participant's training loop needs TensorFlow itself

    variables = list(model.trainable_variables)
    anchors = [tf.constant(v.numpy()) for v in variables]
    step = _train_step(tf, model, variables, anchors, mu)
    # Seeded shuffling: a restarted participant trains the round exactly as the one it replaces.
    order_rng = np.random.default_rng(seed)
    for _ in range(epochs):
        order = order_rng.permutation(len(x))
        for start in range(0, len(x), batch_size):
            batch = order[start:start + batch_size]
            step(tf.constant(x[batch]), tf.constant(y[batch]))


def _train_step(tf: Any, model: keras.Model, variables: list[Any], anchors: list[Any],
                mu: float) -> Callable[[Any, Any], Any]:
    half_mu = tf.constant(mu / 2.0, dtype=tf.float32)

    def step(x_batch: Any, y_batch: Any) -> Any:
        with tf.GradientTape() as tape:
            predicted = model(x_batch, training=True)
            # The model's own loss, its regularisation penalties included.
            loss = model.compute_loss(x=x_batch, y=y_batch, y_pred=predicted, training=True)
            proximal = tf.add_n([tf.reduce_sum(tf.square(w - a)) for w, a in zip(variables, anchors)])
            total = loss + half_mu * proximal
        gradients = tape.gradient(total, variables)
        model.optimizer.apply_gradients(zip(gradients, variables))
        return loss

    # reduce_retracing: the last batch of an epoch is shorter; one general trace serves both.
    compiled: Callable[[Any, Any], Any] = tf.function(step, reduce_retracing=True)
    return compiled
