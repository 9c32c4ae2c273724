"""Server optimisers (Reddi et al. 2021): each step matches the paper, and the state resumes exactly."""

from __future__ import annotations

import math

import numpy as np
import pytest

from ml.payload import checkpoint_payload, read_checkpoint
from ml.strategies import server_optimiser_for
from ml.strategies.server import ServerOptimiser
from schema.algorithms import server_optimiser
from schema.dataplane import ModelMeta

SHAPES = [(3, 2), (2,)]


def _weights(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(0, 1, s).astype(np.float32) for s in SHAPES]


def _reference_step(name: str, eta: float, b1: float, b2: float, tau: float, momentum: float,
                    x: float, a: float, m: float, v: float) -> tuple[float, float, float]:
    """One step of the paper's update on one scalar, written out apart from the product code."""
    d = a - x
    if name == "fedavgm":
        m = momentum * m + d
        return x + eta * m, m, v
    m = b1 * m + (1 - b1) * d
    if name == "fedadagrad":
        v = v + d * d
    elif name == "fedadam":
        v = b2 * v + (1 - b2) * d * d
    else:  # fedyogi
        v = v - (1 - b2) * d * d * float(np.sign(v - d * d))
    return x + eta * m / (math.sqrt(v) + tau), m, v


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_each_optimiser_follows_the_papers_update_rule(name: str) -> None:
    """Three steps of every optimiser equal the scalar reference, element by element."""
    definition = {"algorithm": name, "server_learning_rate": 0.3, "tau": 0.01}
    if name == "fedavgm":
        definition = {"algorithm": name, "server_learning_rate": 0.7, "server_momentum": 0.8}
    s = server_optimiser(definition)
    assert s is not None
    rng = np.random.default_rng(1)
    start = _weights(rng)
    noises = [[rng.normal(0, 0.5, w.shape).astype(np.float32) for w in start] for _ in range(3)]
    optimiser = ServerOptimiser(s, start)
    x = start
    for noise in noises:  # each round's aggregate lies near that round's global model
        x = optimiser.step(x, [w + n for w, n in zip(x, noise)])
    assert optimiser.steps == 3
    for k, shape in enumerate(SHAPES):
        for index in np.ndindex(*shape):
            xs, m, v = float(start[k][index]), 0.0, s.tau * s.tau
            for noise in noises:
                aggregate = float(np.float32(xs) + noise[k][index])
                xs, m, v = _reference_step(name, s.learning_rate, s.beta_1, s.beta_2, s.tau,
                                           s.momentum, xs, aggregate, m, v)
                xs = float(np.float32(xs))  # the global model is float32 between rounds
            assert float(x[k][index]) == pytest.approx(xs, rel=1e-6, abs=1e-7), (k, index)


def test_defaults_are_the_papers_and_fedavgm_without_momentum_is_fedavg() -> None:
    """Defaults fill in per algorithm; lr 1 and momentum 0 give back the aggregate exactly."""
    adam = server_optimiser({"algorithm": "fedadam"})
    assert adam is not None and (adam.learning_rate, adam.beta_1, adam.beta_2, adam.tau) == (0.03, 0.9, 0.99, 1e-3)
    assert server_optimiser({"algorithm": "fedavg"}) is None
    assert server_optimiser({"algorithm": "fedprox"}) is None
    rng = np.random.default_rng(2)
    x, aggregate = _weights(rng), _weights(rng)
    plain = server_optimiser_for({"algorithm": "fedavgm", "server_momentum": 0.0,
                                  "server_learning_rate": 1.0}, x)
    assert plain is not None
    for got, want in zip(plain.step(x, aggregate), aggregate):
        np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-7)
        assert got.dtype == np.float32


def test_peek_leaves_the_state_as_it_was() -> None:
    """peek gives what step would, without moving the optimiser (used to value coalitions)."""
    rng = np.random.default_rng(3)
    x, aggregate = _weights(rng), _weights(rng)
    optimiser = server_optimiser_for({"algorithm": "fedyogi"}, x)
    assert optimiser is not None
    peeked = optimiser.peek(x, aggregate)
    assert optimiser.steps == 0 and all(np.all(m == 0) for m in optimiser.m)
    for a, b in zip(peeked, optimiser.step(x, aggregate)):
        np.testing.assert_array_equal(a, b)


def _meta() -> ModelMeta:
    return ModelMeta(architecture="{}", model="toy", input_shape=[3], num_classes=2,
                     learning_rate=0.01, epochs=1, batch_size=8, rounds=5)


@pytest.mark.parametrize("name", ["fedavgm", "fedadam", "fedyogi", "fedadagrad"])
def test_a_resumed_optimiser_continues_bit_for_bit(name: str) -> None:
    """State stored in a round's checkpoint and loaded by a new aggregator gives identical steps."""
    rng = np.random.default_rng(4)
    x = _weights(rng)
    aggregates = [_weights(rng) for _ in range(5)]
    straight = server_optimiser_for({"algorithm": name}, x)
    assert straight is not None
    uninterrupted = x
    for aggregate in aggregates:
        uninterrupted = straight.step(uninterrupted, aggregate)

    first = server_optimiser_for({"algorithm": name}, x)
    assert first is not None
    weights = x
    for aggregate in aggregates[:2]:
        weights = first.step(weights, aggregate)
    stored = read_checkpoint(checkpoint_payload(_meta(), weights, first.state()))
    assert stored.state is not None
    resumed = server_optimiser_for({"algorithm": name}, stored.weights)
    assert resumed is not None
    resumed.load_state(*stored.state)
    weights = stored.weights
    for aggregate in aggregates[2:]:
        weights = resumed.step(weights, aggregate)
    assert resumed.steps == 5
    for a, b in zip(weights, uninterrupted):
        np.testing.assert_array_equal(a, b)


def test_a_checkpoint_without_an_optimiser_is_a_plain_model_and_foreign_state_is_refused() -> None:
    """No state: the stored model reads as before. Another optimiser's state, or shapes: refused."""
    rng = np.random.default_rng(5)
    x = _weights(rng)
    plain = read_checkpoint(checkpoint_payload(_meta(), x, None))
    assert plain.state is None and all(np.array_equal(a, b) for a, b in zip(plain.weights, x))
    adam = server_optimiser_for({"algorithm": "fedadam"}, x)
    yogi = server_optimiser_for({"algorithm": "fedyogi"}, x)
    assert adam is not None and yogi is not None
    with pytest.raises(ValueError, match="'fedadam' state"):
        yogi.load_state(*adam.state())
    small = server_optimiser_for({"algorithm": "fedadam"}, x[:1])
    assert small is not None
    arrays, description = small.state()
    with pytest.raises(ValueError, match="does not fit"):
        adam.load_state(arrays, description)
