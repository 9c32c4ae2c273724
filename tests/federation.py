"""An in-process federation: the participants' and the aggregator's own code, minus the broker.

Each participant is the daemon's own `LocalTraining` / `LocalKMeans`; every update goes through
the codec and the aggregator's `fold_update` into the task's strategy, then its server
optimiser (`next_global`), contribution valuation (`value_updates`) or Lloyd step
(`lloyd_step`): only the Kafka transport and the API are left out. The algorithm tests and
`bench/algorithms.py` measure what the algorithms learn with it in seconds; the end-to-end
tests run the same code as real processes over the real broker.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.contribution import KeptUpdates, RoundStart, keep_updates_if_valued, value_updates
from aggregator.fold import Refused, fold_update, read_moments
from aggregator.kmeans import final_centroids, initial_model, lloyd_step, read_candidates
from aggregator.model import Evaluation, build_initial
from aggregator.round import next_global
from aggregator.run import AggregatorOptions
from aggregator.verify import Accepted
from client import Participant, Task
from ml.contribution import Valuation
from ml.data import Dataset
from ml.kmeans import ClusterSums, centroids_payload, update_template
from ml.payload import model_payload
from ml.seeds import task_seed
from ml.standardise import combine
from ml.strategies import for_round, server_optimiser_for
from participant.kmeans import LocalKMeans
from participant.linear import LocalLinear
from participant.training import LocalData, LocalTraining
from schema import dataplane
from schema.algorithms import LINEAR_MODELS
from schema.dataplane import KMeansMeta
from streams.codec import ArrayBundle, decode_bundle

Array = np.ndarray[Any, Any]


@dataclass
class Site:
    """One participant's local data."""

    name: str
    train: Dataset
    test: Dataset


@dataclass
class Outcome:
    """What a simulated Keras task produced."""

    model: Any
    weights: list[Array]
    final_payload: bytes
    history: list[dict[str, float]] = field(default_factory=list)   # eval metrics per round
    valuations: list[Valuation] = field(default_factory=list)
    # Of each valued round: the weights it started from and every participant's update.
    valued_rounds: list[tuple[list[Array], dict[str, tuple[list[Array], int]]]] = field(default_factory=list)
    evaluation: Evaluation | None = None  # scores weights as the exported model, on raw data


def _task(definition: dict[str, Any], sites: list[Site], task_id: str) -> Task:
    people = [Participant(username=s.name) for s in sites]
    return Task(task_id=task_id, name=task_id, creator="aggregator", status="STARTED",
                definition=definition, participants=people)


def _accepted(sender: str, payload: bytes) -> Accepted:
    return Accepted(sender, f"{sender}-message", decode_bundle(payload))


def _standardise(definition: dict[str, Any], learners: dict[str, LocalData]
                 ) -> tuple[Array | None, Array | None]:
    """Federated standardisation as the daemons do it: moments in, mean and std out to all."""
    if not dataplane.wants_standardisation(definition):
        return None, None
    moments = [read_moments(_accepted(name, learner.statistics())) for name, learner in learners.items()]
    assert not any(isinstance(m, Refused) for m in moments)
    mean, std = combine([m for m in moments if not isinstance(m, Refused)])
    for learner in learners.values():
        learner.set_statistics(ArrayBundle(arrays={"mean": mean, "std": std}))
    return mean, std


def keras_federation(definition: dict[str, Any], sites: list[Site], evaluation: Dataset | None = None,
                     *, task_id: str = "simulated", model_file: str | None = None) -> Outcome:
    """Train a Keras task (fedavg, a server optimiser, fedprox, logistic/linear regression)."""
    ordered = sorted(sites, key=lambda s: s.name)
    local = LocalLinear if definition.get("algorithm") in LINEAR_MODELS else LocalTraining
    learners: dict[str, LocalData] = {
        s.name: local(s.train, s.test, task_id, definition, place) for place, s in enumerate(ordered)}
    mean, std = _standardise(definition, learners)
    model, meta = build_initial(_task(definition, ordered, task_id), AggregatorOptions(model_file=model_file),
                                mean, std)
    weights = [np.asarray(w) for w in model.get_weights()]
    optimiser = server_optimiser_for(definition, weights)
    held_out = None if evaluation is None else Evaluation(meta, evaluation)
    outcome = Outcome(model, weights, b"", evaluation=held_out)
    for round_no in range(1, meta.rounds + 1):
        broadcast = decode_bundle(model_payload(meta, weights))
        strategy = keep_updates_if_valued(definition, round_no, for_round(definition, weights))
        for name, learner in learners.items():
            assert isinstance(learner, LocalTraining)
            learner.load(broadcast, mean is not None)
            folded = fold_update(strategy, _accepted(name, learner.train_round(round_no).payload()))
            assert not isinstance(folded, Refused), folded
            if isinstance(strategy, KeptUpdates):
                strategy.claim(name)
        aggregate = strategy.result()
        start = RoundStart(definition, weights, optimiser, task_seed(task_id, definition) + round_no)
        valuation = value_updates(start, strategy, held_out)
        if valuation is not None and isinstance(strategy, KeptUpdates):
            outcome.valuations.append(valuation)
            outcome.valued_rounds.append((weights, dict(strategy.updates)))
        weights = next_global(optimiser, weights, aggregate)
        if held_out is not None:
            outcome.history.append(held_out.score(weights))
    model.set_weights(weights)
    outcome.weights, outcome.final_payload = weights, model_payload(meta, weights)
    return outcome


@dataclass
class Clustering:
    """What a simulated K-means task produced."""

    meta: KMeansMeta
    centroids: Array                     # the final model: (K, d), in standardised units
    inertia: list[float] = field(default_factory=list)   # the best init's, per round
    mean: Array | None = None
    std: Array | None = None


def kmeans_federation(definition: dict[str, Any], sites: list[Site], *, task_id: str = "simulated"
                      ) -> Clustering:
    """Run a K-means task: candidates, initial centroids, then every Lloyd round."""
    ordered = sorted(sites, key=lambda s: s.name)
    learners: dict[str, LocalData] = {
        s.name: LocalKMeans(s.train, s.test, task_id, definition, place) for place, s in enumerate(ordered)}
    mean, std = _standardise(definition, learners)
    found = {}
    for name, learner in learners.items():
        opening = learner.opening()
        assert opening is not None
        candidates = read_candidates(_accepted(name, opening))
        assert not isinstance(candidates, Refused), candidates
        found[name] = candidates
    meta, centroids = initial_model(definition, task_seed(task_id, definition), found, mean, std)
    inertia = []
    for round_no in range(1, meta.rounds + 1):
        broadcast = decode_bundle(centroids_payload(meta, centroids))
        folded = ClusterSums(update_template(meta.n_init, meta.clusters, meta.features))
        for name, learner in learners.items():
            assert isinstance(learner, LocalKMeans)
            learner.load(broadcast, mean is not None)
            result = fold_update(folded, _accepted(name, learner.train_round(round_no).payload()))
            assert not isinstance(result, Refused), result
        meta, centroids, metrics = lloyd_step(meta, centroids, folded)
        inertia.append(metrics["inertia"])
    return Clustering(meta, final_centroids(meta, centroids), inertia, mean, std)
