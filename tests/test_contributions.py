"""Contribution values: leave-one-out and Shapley over participants, checked against brute force
and against data whose worth is known (shuffled labels, an exact copy)."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from ml.contribution import exact_shapley, leave_one_out, monte_carlo_shapley, shapley
from ml.data import Dataset, load_dataset, split_and_sample
from tests.federation import Site, keras_federation


def _brute_force(players: list[str], utility) -> dict[str, float]:  # type: ignore[no-untyped-def]
    """Shapley values by their definition: the marginal gain averaged over every join order."""
    totals = dict.fromkeys(players, 0.0)
    orders = list(itertools.permutations(players))
    for order in orders:
        joined: frozenset[str] = frozenset()
        for who in order:
            totals[who] += utility(joined | {who}) - utility(joined)
            joined = joined | {who}
    return {who: total / len(orders) for who, total in totals.items()}


def _table_utility(players: list[str], seed: int):  # type: ignore[no-untyped-def]
    rng = random.Random(seed)
    table = {frozenset(c): rng.uniform(0, 1) for n in range(len(players) + 1)
             for c in itertools.combinations(players, n)}
    return table.__getitem__


@pytest.mark.parametrize("count", [1, 2, 3, 5])
def test_exact_shapley_equals_the_average_over_every_join_order(count: int) -> None:
    """On an arbitrary utility (a random table), the subset formula equals brute force."""
    players = [f"p{i}" for i in range(count)]
    utility = _table_utility(players, count)
    got = exact_shapley(players, utility)
    expected = _brute_force(players, utility)
    assert got.values == pytest.approx(expected, abs=1e-12)
    assert sum(got.values.values()) == pytest.approx(utility(frozenset(players)) - utility(frozenset()))
    assert got.evaluations == 2 ** count


def test_shapley_gives_equal_players_equal_values_and_a_null_player_nothing() -> None:
    """Symmetry and the null player: a twin is valued like its twin, a useless player at 0."""
    worth = {"a": 3.0, "twin_a": 3.0, "b": 1.0, "nobody": 0.0}

    def utility(coalition: frozenset[str]) -> float:
        has_a = 3.0 if {"a", "twin_a"} & coalition else 0.0  # a copy adds nothing to its original
        return has_a + worth["b"] * ("b" in coalition)

    values = exact_shapley(list(worth), utility).values
    assert values["a"] == pytest.approx(values["twin_a"]) == pytest.approx(1.5)
    assert values["nobody"] == 0.0 and values["b"] == pytest.approx(1.0)
    loo = leave_one_out(list(worth), utility).values
    assert loo == {"a": 0.0, "twin_a": 0.0, "b": 1.0, "nobody": 0.0}  # why Shapley, not LOO, for copies


def test_truncated_monte_carlo_approaches_the_exact_values_above_six_players() -> None:
    """For 8 players (Monte-Carlo beyond 6) the estimate is within 2 % of the spread of exact."""
    players = [f"p{i}" for i in range(8)]
    weights = {p: 1.0 + i for i, p in enumerate(players)}

    def utility(coalition: frozenset[str]) -> float:
        return float(np.sqrt(sum(weights[p] for p in coalition)))  # diminishing returns

    exact = exact_shapley(players, utility).values
    estimate = shapley(players, utility, permutations=2000, seed=3)
    assert estimate.method == "shapley_monte_carlo" and estimate.permutations == 2000
    spread = utility(frozenset(players)) - utility(frozenset())
    for p in players:
        assert estimate.values[p] == pytest.approx(exact[p], abs=0.02 * spread)
    seeded = monte_carlo_shapley(players, utility, permutations=50, seed=3)
    assert seeded == monte_carlo_shapley(players, utility, permutations=50, seed=3)


def _site(name: str, data: Dataset) -> Site:
    train, test = split_and_sample(data, None, None, 0)
    return Site(name, train, test)


def test_exact_shapley_of_three_real_participants_matches_brute_force() -> None:
    """One real round of three digits sites: the aggregator's Shapley values equal the test's
    own computation over every join order, with coalition models averaged here by numpy."""
    sites = [_site(f"site{i}", load_dataset("digits", shard=f"{i}/4")) for i in (1, 2, 3)]
    outcome = keras_federation({"quorum": 3, "rounds": 1, "epochs": 2, "learning_rate": 0.01,
                                "model": "digits-mlp", "seed": 4, "contribution": "shapley"},
                               sites, load_dataset("digits", shard="4/4"))
    (start, updates), = outcome.valued_rounds
    evaluation = outcome.evaluation
    assert evaluation is not None

    def utility(coalition: frozenset[str]) -> float:
        members = sorted(coalition)
        if not members:
            weights = start
        else:
            counts = [updates[m][1] for m in members]
            weights = [np.average(np.stack([updates[m][0][k].astype(np.float64) for m in members]),
                                  axis=0, weights=counts).astype(np.float32) for k in range(len(start))]
        return evaluation.score(weights)["accuracy"]

    expected = _brute_force(sorted(updates), utility)
    (valuation,) = outcome.valuations
    assert valuation.method == "shapley_exact"
    assert valuation.values == pytest.approx(expected, abs=1e-9)


def test_shuffled_labels_are_worth_least_and_an_exact_copy_as_much_as_its_original() -> None:
    """Four sites: alice, carol (an exact copy of alice's data), bob, and dave whose labels are
    shuffled. Summed over the rounds, dave is valued lowest (below zero) and alice and carol
    within 5 % of the spread of everyone's values."""
    alice = load_dataset("digits", shard="1/4")
    dave = load_dataset("digits", shard="3/4")
    shuffled = Dataset(dave.x, np.random.default_rng(0).permutation(dave.y), dave.feature_names, 10, "shuffled")
    sites = [_site("alice", alice), _site("carol", alice.subset(np.arange(len(alice)), "copy of alice")),
             _site("bob", load_dataset("digits", shard="2/4")), _site("dave", shuffled)]
    outcome = keras_federation({"quorum": 4, "rounds": 3, "epochs": 2, "learning_rate": 0.01,
                                "model": "digits-mlp", "seed": 1, "contribution": "shapley"},
                               sites, load_dataset("digits", shard="4/4"))
    totals = {who: sum(v.values[who] for v in outcome.valuations) for who in ("alice", "bob", "carol", "dave")}
    assert len(outcome.valuations) == 3
    assert min(totals, key=totals.__getitem__) == "dave" and totals["dave"] < 0, totals
    spread = max(totals.values()) - min(totals.values())
    assert abs(totals["alice"] - totals["carol"]) <= 0.05 * spread, totals


def test_leave_one_out_in_the_last_round_only() -> None:
    """contribution_rounds "last": one valuation, of the final round, by leave-one-out."""
    sites = [_site(f"site{i}", load_dataset("digits", shard=f"{i}/3")) for i in (1, 2)]
    outcome = keras_federation({"quorum": 2, "rounds": 2, "epochs": 1, "learning_rate": 0.01,
                                "model": "digits-mlp", "seed": 2, "contribution": "leave_one_out",
                                "contribution_rounds": "last"}, sites, load_dataset("digits", shard="3/3"))
    (valuation,) = outcome.valuations
    assert valuation.method == "leave_one_out" and set(valuation.values) == {"site1", "site2"}
    assert valuation.total == pytest.approx(outcome.history[-1]["accuracy"])
    assert valuation.baseline == pytest.approx(outcome.history[0]["accuracy"])


def test_the_aggregator_refuses_options_the_algorithm_cannot_use_before_starting() -> None:
    """Valuing contributions without --eval-data, or --model on K-means or a linear model, is
    refused with the reason before the task starts (nothing is recorded)."""
    from aggregator.daemon import AggregationFailed, AggregatorOptions
    from aggregator.model import check_options
    from client import Task

    def task(**definition: object) -> Task:
        return Task(task_id="t", name="t", creator="alice", status="CREATED",
                    definition={"quorum": 1, "rounds": 1, **definition})

    with pytest.raises(AggregationFailed, match="pass --eval-data"):
        check_options(task(contribution="shapley"), AggregatorOptions())
    for algorithm in ("kmeans", "linear_regression"):
        with pytest.raises(AggregationFailed, match="--model does not apply"):
            check_options(task(algorithm=algorithm), AggregatorOptions(model_file="net.keras"))
    check_options(task(contribution="shapley"), AggregatorOptions(eval_data="digits"))
    check_options(task(), AggregatorOptions(model_file="net.keras"))
