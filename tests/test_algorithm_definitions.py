"""Algorithms named in a task definition: defaults filled in, mistakes refused naming the field."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import ValidationError

from schema.algorithms import ALGORITHMS, contribution, parameters, proximal_mu, server_optimiser
from schema.definition import TaskDefinition

BASE = {"quorum": 2, "rounds": 3}
REQUIRED: dict[str, dict[str, Any]] = {"kmeans": {"clusters": 4},
                                       "logistic_regression": {"features": 4},
                                       "linear_regression": {"features": 4}}


@pytest.mark.parametrize("algorithm", sorted(ALGORITHMS))
def test_every_algorithm_is_accepted_with_its_defaults(algorithm: str) -> None:
    """Each registry name makes a valid task with only its required fields given."""
    required = REQUIRED.get(algorithm, {"model": "digits-mlp"})  # the neural ones name a model
    definition = TaskDefinition.model_validate({**BASE, "algorithm": algorithm, **required})
    assert definition.algorithm == algorithm
    assert parameters(definition.to_json()).algorithm == algorithm


def test_defaults_per_algorithm() -> None:
    """FedProx mu 0.01; fedavgm momentum 0.5; kmeans 3 inits; logistic 2 classes, no penalty."""
    assert proximal_mu({"algorithm": "fedprox"}) == 0.01
    assert proximal_mu({"algorithm": "fedavg"}) == 0.0
    momentum = server_optimiser({"algorithm": "fedavgm"})
    assert momentum is not None and (momentum.learning_rate, momentum.momentum) == (1.0, 0.5)
    assert parameters({"algorithm": "kmeans", "clusters": 5}).n_init == 3
    logistic = parameters({"algorithm": "logistic_regression", "features": 3})
    assert (logistic.classes, logistic.regularisation) == (2, 0.0)
    assert contribution({"algorithm": "fedavg"}) is None
    valued = contribution({"contribution": "shapley"})
    assert valued is not None and (valued.method, valued.rounds, valued.permutations) == ("shapley", "all", 200)


@pytest.mark.parametrize("extra, words", [
    ({"algorithm": "fedsgd"}, "unknown algorithm 'fedsgd'"),
    ({"algorithm": "fedadam", "mu": 0.1}, "'mu' applies to fedprox, not to fedadam"),
    ({"algorithm": "fedavg", "server_momentum": 0.9}, "'server_momentum' applies to fedavgm"),
    ({"algorithm": "fedavgm", "tau": 0.1}, "'tau' applies to fedadagrad, fedadam, fedyogi"),
    ({"algorithm": "kmeans"}, "kmeans needs 'clusters'"),
    ({"algorithm": "kmeans", "clusters": 0}, "clusters: Input should be greater than or equal to 1"),
    ({"algorithm": "kmeans", "clusters": 3, "model": "digits-mlp"}, "'model' does not apply to kmeans"),
    ({"algorithm": "kmeans", "clusters": 3, "contribution": "shapley"}, "not kmeans"),
    ({"algorithm": "fedavgm", "server_momentum": 1.0}, "server_momentum: Input should be less than 1"),
    ({"algorithm": "fedadam", "beta_2": 1.5}, "beta_2: Input should be less than 1"),
    ({"algorithm": "fedyogi", "tau": 0}, "tau: Input should be greater than 0"),
    ({"algorithm": "fedadam", "server_learning_rate": "fast"}, "server_learning_rate: Input should be a valid number"),
    ({"algorithm": "fedprox", "mu": -1}, "mu: Input should be greater than or equal to 0"),
    ({"algorithm": "logistic_regression"}, "logistic_regression needs 'features'"),
    ({"algorithm": "logistic_regression", "features": 4, "classes": 1}, "classes: Input should be greater"),
    ({"algorithm": "linear_regression", "features": 4, "classes": 3}, "'classes' applies to logistic_regression"),
    ({"algorithm": "linear_regression", "features": 4, "regularisation": -0.1}, "regularisation: Input"),
    ({"contribution": "banzhaf"}, "contribution: Input should be 'leave_one_out' or 'shapley'"),
    ({"contribution": "shapley", "contribution_permutations": 0}, "contribution_permutations"),
    ({"contribution": "shapley", "contribution_rounds": "some"}, "contribution_rounds"),
])
def test_mistakes_are_refused_naming_the_field(extra: dict[str, Any], words: str) -> None:
    """A bad algorithm parameter is a validation error whose message says which field and why."""
    with pytest.raises(ValidationError) as caught:
        TaskDefinition.model_validate({**BASE, **extra})
    assert words in str(caught.value)


def test_the_seeds_spelling_still_means_fedavg() -> None:
    """The seed's neural_network.Aggregator is normalised to fedavg, which takes no extras."""
    definition = TaskDefinition.model_validate({**BASE, "model": "digits-mlp",
                                                 "aggregator": "neural_network.Aggregator"})
    assert definition.algorithm == "fedavg"
