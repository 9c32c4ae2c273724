"""The aggregator's side of federated K-means: candidates → initial centroids → Lloyd rounds.

Round 0 collects each participant's local cluster means (never samples) and draws n_init sets
of initial centroids from them with weighted k-means++. Each round broadcasts the centroids,
folds everyone's per-cluster sums and counts (the same collect → verify → fold path as model
updates) and moves every centroid to the mean of its samples: Lloyd's step on the union of
the data. Rounds record the inertia; the final model is the set with the lowest.
"""

from __future__ import annotations

import time
from functools import partial
from typing import Any

import numpy as np

from aggregator.checkpoint import last_round_model
from aggregator.fold import Refused
from aggregator.opening import collect_from_everyone
from aggregator.round import collect_and_fold, round_line
from aggregator.run import AggregationFailed, RoundResult, TaskRun
from aggregator.standardise import standardise
from aggregator.verify import Accepted
from ml.data import load_dataset
from ml.kmeans import (
    ClusterSums,
    assign,
    best_init,
    centroids_payload,
    initial_centroids,
    read_centroids,
    update_centroids,
    update_template,
)
from ml.prepare import flat_features
from ml.seeds import task_seed
from ml.standardise import apply
from schema import dataplane
from schema.algorithms import parameters
from schema.dataplane import KMeansMeta, StatsMeta

Array = np.ndarray[Any, Any]


def run_kmeans(run: TaskRun, done: int, results: list[RoundResult]) -> tuple[int, bytes]:
    """Every round after `done`; the last round's number and the final model (best centroids)."""
    meta, centroids = _restore(run) if done > 0 else _start(run)
    evaluation = _evaluation(run)
    for round_no in range(done + 1, meta.rounds + 1):
        meta, centroids, result = _round(run, round_no, meta, centroids, evaluation)
        results.append(result)
    return meta.rounds, centroids_payload(meta, final_centroids(meta, centroids))


def _start(run: TaskRun) -> tuple[KMeansMeta, Array]:
    """Standardisation if asked, candidates from everyone, the initial centroids broadcast."""
    if dataplane.wants_standardisation(run.task.definition):
        standardise(run)
    run.say("collecting local cluster means to initialise the centroids")
    found = collect_from_everyone(run, dataplane.CANDIDATES, read_candidates, "cluster means")
    meta, centroids = initial_model(run.task.definition, task_seed(run.task.task_id, run.task.definition),
                                    found, run.mean, run.std)
    run.broadcaster.architecture(centroids_payload(meta, centroids))
    run.say(f"broadcast {meta.n_init} sets of {meta.clusters} initial centroids")
    return meta, centroids


def initial_model(definition: dict[str, Any], seed: int, found: dict[str, tuple[Array, Array]],
                  mean: Array | None, std: Array | None) -> tuple[KMeansMeta, Array]:
    """The initial centroids (n_init, K, d) drawn from everyone's local cluster means."""
    p = parameters(definition)
    widths = {who: centres.shape[1] for who, (centres, _) in found.items()}
    if len(set(widths.values())) != 1 or (mean is not None and len(mean) not in widths.values()):
        raise AggregationFailed(f"participants' data disagree on the number of features: {widths}")
    points = np.concatenate([found[who][0] for who in sorted(found)])
    sizes = np.concatenate([found[who][1] for who in sorted(found)])
    k, n_init = int(p.clusters or 1), int(p.n_init or 1)
    meta = KMeansMeta(clusters=k, n_init=n_init, features=points.shape[1], rounds=int(definition["rounds"]),
                      feature_mean=None if mean is None else mean.tolist(),
                      feature_std=None if std is None else std.tolist())
    return meta, initial_centroids(points, sizes, k, n_init, seed)


def read_candidates(accepted: Accepted) -> tuple[Array, Array] | Refused:
    """A participant's local cluster means and sizes, or why they were refused."""
    try:
        count = StatsMeta.model_validate(accepted.bundle.meta).count
        centres = np.asarray(accepted.bundle.arrays["centres"], dtype=np.float64)
        sizes = np.asarray(accepted.bundle.arrays["sizes"])
    except (ValueError, KeyError) as exc:
        return Refused(f"malformed cluster means: {exc}")
    if centres.ndim != 2 or sizes.shape != (len(centres),) or len(centres) == 0:
        return Refused(f"cluster means of shape {centres.shape} with sizes {sizes.shape}")
    if not np.issubdtype(sizes.dtype, np.integer) or np.any(sizes < 1) or int(sizes.sum()) != count:
        return Refused(f"cluster sizes must be positive integers adding up to {count}")
    if not np.all(np.isfinite(centres)):
        return Refused("non-finite cluster means")
    return centres, sizes.astype(np.int64)


def _restore(run: TaskRun) -> tuple[KMeansMeta, Array]:
    """The centroids the last recorded round left, from its stored model."""
    round_no, digest, content = last_round_model(run.recorder.client, run.task.name)
    meta, centroids = read_centroids(content)
    if meta.feature_mean is not None and meta.feature_std is not None:
        run.mean, run.std = np.asarray(meta.feature_mean), np.asarray(meta.feature_std)
        run.broadcaster.statistics(run.mean, run.std)
    run.broadcaster.keep_architecture(centroids_payload(meta, centroids))
    run.say(f"restored the round {round_no} centroids (sha256 {digest[:12]}…)")
    return meta, centroids


def _evaluation(run: TaskRun) -> Array | None:
    """The held-out samples each round's centroids are scored on, as (standardised) features."""
    options = run.options
    if not options.eval_data:
        return None
    dataset = load_dataset(options.eval_data, data_dir=options.eval_data_dir,
                           shard=options.eval_shard, seed=options.seed)
    x = flat_features(dataset).astype(np.float64)
    return x if run.mean is None or run.std is None else apply(x, run.mean, run.std).astype(np.float64)


def _round(run: TaskRun, round_no: int, meta: KMeansMeta, centroids: Array,
           evaluation: Array | None) -> tuple[KMeansMeta, Array, RoundResult]:
    """One Lloyd step over everyone's data; the new centroids, recorded."""
    run.broadcaster.weights(round_no, partial(centroids_payload, meta, centroids))
    started = time.monotonic()
    folded = ClusterSums(update_template(meta.n_init, meta.clusters, meta.features))
    _, samples, _ = collect_and_fold(run, round_no, folded)
    meta, new_centroids, metrics = lloyd_step(meta, centroids, folded)
    eval_metrics = {} if evaluation is None else _scored(evaluation, final_centroids(meta, new_centroids))
    stored = run.recorder.store_model(centroids_payload(meta, new_centroids), round_no=round_no)
    duration = time.monotonic() - started
    who = sorted(samples)
    run.recorder.round(round_no, participants=who, model_sha256=stored.sha256, samples=samples,
                       metrics=metrics, eval_metrics=eval_metrics, duration_s=duration)
    run.progress(round_line(run.task.name, round_no, meta.rounds, metrics, eval_metrics, duration))
    result = RoundResult(round_no, who, samples, metrics, eval_metrics, stored.sha256, duration)
    return meta, new_centroids, result


def lloyd_step(meta: KMeansMeta, centroids: Array, folded: ClusterSums
               ) -> tuple[KMeansMeta, Array, dict[str, float]]:
    """The new centroids from a round's summed statistics, the meta noting its inertia, metrics."""
    stats = folded.total
    if stats is None:
        raise AggregationFailed("the round closed without any cluster statistics")
    best = best_init(stats.inertia)
    samples = int(stats.counts[best].sum())
    metrics = {"inertia": float(stats.inertia[best]),
               "inertia_per_sample": float(stats.inertia[best]) / max(samples, 1)}
    meta = meta.model_copy(update={"inertia": stats.inertia.tolist()})
    return meta, update_centroids(centroids, stats), metrics


def final_centroids(meta: KMeansMeta, centroids: Array) -> Array:
    """The final model: the set of centroids whose last round had the lowest inertia."""
    best: Array = centroids[best_init(meta.inertia) if meta.inertia else 0]
    return best


def _scored(x: Array, centroids: Array) -> dict[str, float]:
    """Inertia of held-out samples against the centroids (total and per sample)."""
    nearest = assign(x, centroids)[1]
    return {"inertia": float(nearest.sum()), "inertia_per_sample": float(nearest.mean())}
