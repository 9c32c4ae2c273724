"""Federated K-means: exact per-cluster statistics, an initialisation from summaries only,
and clusterings as good as scikit-learn's on the union of the data."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.metrics import adjusted_rand_score

from aggregator.fold import Refused, fold_update
from aggregator.verify import Accepted
from ml.data import Dataset, load_dataset
from ml.kmeans import (
    ClusterSums,
    assign,
    centroids_payload,
    local_candidates,
    local_statistics,
    read_centroids,
    update_centroids,
    update_template,
)
from participant.kmeans import LocalKMeans
from schema.dataplane import KMeansMeta, UpdateMeta
from streams.codec import decode_bundle, encode_bundle, keras_weights_to_bundle
from tests.federation import Site, kmeans_federation


def _sites(x: np.ndarray, y: np.ndarray, parts: int, order: np.ndarray) -> list[Site]:
    data = Dataset(x.astype(np.float32), y.astype(np.int64), None, int(y.max()) + 1, "blobs")
    empty = data.subset(np.arange(0), "no test")
    return [Site(f"site{i}", data.subset(np.sort(chunk), f"site{i}"), empty)
            for i, chunk in enumerate(np.array_split(order, parts))]


def test_local_statistics_are_the_sums_counts_and_inertia_of_the_nearest_clusters() -> None:
    """Each init's per-cluster sums, counts and squared distances equal a direct computation."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, 3))
    centroids = rng.normal(size=(2, 4, 3))
    stats = local_statistics(x, centroids)
    for i in range(2):
        distances = ((x[:, None, :] - centroids[i][None]) ** 2).sum(axis=2)
        nearest = distances.argmin(axis=1)
        for k in range(4):
            np.testing.assert_allclose(stats.sums[i, k], x[nearest == k].sum(axis=0), atol=1e-9)
            assert stats.counts[i, k] == np.sum(nearest == k)
        assert stats.inertia[i] == pytest.approx(distances.min(axis=1).sum(), rel=1e-10)


def test_summed_statistics_give_lloyds_step_on_the_union_and_an_empty_cluster_stays() -> None:
    """Adding two sites' statistics and dividing is Lloyd's update on both sites' samples."""
    rng = np.random.default_rng(1)
    a, b = rng.normal(size=(50, 2)), rng.normal(size=(70, 2)) + 1
    centroids = np.array([[[0.0, 0.0], [1.0, 1.0], [100.0, 100.0]]])  # the third gets no sample
    moved = update_centroids(centroids, local_statistics(a, centroids) + local_statistics(b, centroids))
    union = np.concatenate([a, b])
    labels, _ = assign(union, centroids[0])
    for k in range(2):
        np.testing.assert_allclose(moved[0, k], union[labels == k].mean(axis=0), atol=1e-12)
    np.testing.assert_array_equal(moved[0, 2], centroids[0, 2])


def test_the_initial_candidates_are_cluster_means_never_samples() -> None:
    """What a participant sends before round 1: at most K means of its own local clusters."""
    x, y = make_blobs(300, centers=3, n_features=2, random_state=2)
    data = Dataset(x.astype(np.float32), y.astype(np.int64), None, 3, "blobs")
    learner = LocalKMeans(data, data.subset(np.arange(0), "none"), "task", {"algorithm": "kmeans",
                          "clusters": 3, "seed": 1}, place=0)
    opening = learner.opening()
    bundle = decode_bundle(opening)
    centres, sizes = bundle.arrays["centres"], bundle.arrays["sizes"]
    assert centres.shape == (3, 2) and sizes.sum() == 300 and bundle.meta == {"count": 300}
    labels, _ = assign(learner.features(data), centres)
    for k in range(3):
        np.testing.assert_allclose(centres[k], learner.features(data)[labels == k].mean(axis=0), atol=1e-9)
    assert not any(np.any(np.all(np.isclose(x, c), axis=1)) for c in centres)


def _update(stats_arrays: list[np.ndarray], samples: int) -> Accepted:
    meta = UpdateMeta(samples=samples, test_samples=0, metrics={})
    return Accepted("site", "m1", decode_bundle(encode_bundle(keras_weights_to_bundle(stats_arrays,
                                                                                      meta.model_dump()))))


def test_an_update_whose_counts_do_not_add_up_is_refused_and_changes_nothing() -> None:
    """Counts that are negative or do not sum to the claimed samples are refused with the reason."""
    x = np.random.default_rng(3).normal(size=(40, 2))
    centroids = np.zeros((1, 2, 2))
    centroids[0, 1] = 1.0
    good = local_statistics(x, centroids).as_update()
    folded = ClusterSums(update_template(1, 2, 2))
    lying = [good[0], good[1] * 2, good[2]]
    outcome = fold_update(folded, _update(lying, 40))
    assert isinstance(outcome, Refused) and "add up to [80]" in outcome.reason
    negative = [good[0], np.array([[50, -10]]), good[2]]
    outcome = fold_update(folded, _update(negative, 40))
    assert isinstance(outcome, Refused) and "negative" in outcome.reason
    wrong_shape = fold_update(folded, _update([good[0][:, :1], good[1], good[2]], 40))
    assert isinstance(wrong_shape, Refused) and "shape" in wrong_shape.reason
    assert folded.count == 0 and folded.total is None
    assert not isinstance(fold_update(folded, _update(good, 40)), Refused) and folded.count == 1


def test_the_same_statistics_sum_to_the_same_bits_whatever_order_they_arrive_in() -> None:
    """Float addition depends on its order; the fold's does not depend on the broker's."""
    template = update_template(1, 2, 1)
    updates = [[np.array([[[1e16], [0.1]]]), np.array([[1, 1]]), np.array([2.0])],
               [np.array([[[1.0], [0.2]]]), np.array([[1, 1]]), np.array([2.0])],
               [np.array([[[-1e16], [0.3]]]), np.array([[1, 1]]), np.array([3.0])]]
    results = []
    for order in ([0, 1, 2], [1, 2, 0], [2, 0, 1], [1, 0, 2]):
        folded = ClusterSums(template)
        for index in order:
            folded.add(updates[index], 2)
        results.append([array.tobytes() for array in folded.result()])
    assert all(result == results[0] for result in results)
    # the naive left-to-right sums differ: the case is one where order matters
    assert (1e16 + 1.0) + -1e16 != (-1e16 + 1e16) + 1.0


def test_centroid_payloads_round_trip_and_refuse_a_mismatch() -> None:
    """Centroids travel as data with their meta; a shape that contradicts the meta is refused."""
    meta = KMeansMeta(clusters=3, n_init=2, features=4, rounds=5)
    centroids = np.random.default_rng(4).normal(size=(2, 3, 4))
    read_meta, read = read_centroids(centroids_payload(meta, centroids))
    assert read_meta == meta
    np.testing.assert_array_equal(read, centroids)
    with pytest.raises(ValueError, match="do not match"):
        read_centroids(centroids_payload(meta, centroids[:, :2]))


def test_federated_kmeans_on_blobs_is_within_one_percent_of_scikit_learn() -> None:
    """Seeded blobs over 3 sites (split by the first feature: non-IID): final inertia on the
    union within 1 % of scikit-learn's KMeans with the same K and the same number of inits."""
    for seed in (0, 1):
        x, y = make_blobs(3000, centers=8, n_features=5, cluster_std=2.0, random_state=seed)
        x = x.astype(np.float32).astype(np.float64)
        clustering = kmeans_federation({"quorum": 3, "rounds": 20, "algorithm": "kmeans", "clusters": 8,
                                        "n_init": 3, "seed": seed}, _sites(x, y, 3, np.argsort(x[:, 0])))
        federated = assign(x, clustering.centroids)[1].sum()
        reference = KMeans(8, n_init=3, random_state=seed).fit(x).inertia_
        assert federated <= 1.01 * reference, (seed, federated, reference)
        assert clustering.inertia == sorted(clustering.inertia, reverse=True), "Lloyd never goes up"


def test_federated_kmeans_on_digits_agrees_with_scikit_learn() -> None:
    """The digits over 3 sites, K=10: inertia within 1 % of scikit-learn's, and the clusterings
    agree (adjusted Rand index at least 0.7; two scikit-learn seeds agree about 0.84)."""
    digits = load_dataset("digits")
    empty = digits.subset(np.arange(0), "no test")
    sites = [Site(f"site{i}", load_dataset("digits", shard=f"{i}/3"), empty) for i in (1, 2, 3)]
    clustering = kmeans_federation({"quorum": 3, "rounds": 30, "algorithm": "kmeans", "clusters": 10,
                                    "n_init": 3, "seed": 1}, sites)
    x = digits.x.astype(np.float64)
    labels, distances = assign(x, clustering.centroids)
    reference = KMeans(10, n_init=3, random_state=0).fit(x)
    assert distances.sum() <= 1.01 * reference.inertia_
    assert adjusted_rand_score(reference.labels_, labels) >= 0.7


def test_local_candidates_of_tiny_data_keep_only_filled_clusters() -> None:
    """Fewer samples than K: one candidate per distinct sample group, sizes adding up."""
    centres, sizes = local_candidates(np.array([[0.0, 0.0], [0.0, 0.0], [5.0, 5.0]]), k=4, seed=0)
    assert len(centres) <= 3 and sizes.sum() == 3 and np.all(sizes >= 1)


class _Recorder:
    """Stands in for the API recorder: keeps what the gate refused."""

    def __init__(self) -> None:
        self.refused: list[str] = []

    def reject(self, round_no: int, sender: str, reason: str, message_id: str | None) -> None:
        self.refused.append(reason)


def test_a_resumed_aggregator_skips_round_0_candidates_quietly() -> None:
    """After a restart the updates topic is read from its start: the K-means candidates of
    round 0 are history (skipped, not recorded as refused), like the statistics."""
    from aggregator.verify import Gate
    from schema import dataplane
    from streams.framing import Payload
    from streams.reader import Received

    recorder = _Recorder()
    gate = Gate("task", ["site1"], recorder, resume_point=3)  # type: ignore[arg-type]
    for kind in (dataplane.CANDIDATES, dataplane.STATS):
        old = Payload("task", 0, kind, "site1", f"{kind}-1", 0, "", b"")
        assert gate.accept(Received(old, "updates", 0, 0), 4, dataplane.UPDATE, set()) is None
    assert recorder.refused == []
    fresh = Gate("task", ["site1"], recorder)  # type: ignore[arg-type]
    stray = Payload("task", 0, dataplane.CANDIDATES, "site1", "c-2", 0, "", b"")
    assert fresh.accept(Received(stray, "updates", 0, 0), 4, dataplane.UPDATE, set()) is None
    assert recorder.refused and "unexpected message kind 'candidates'" in recorder.refused[0]


def test_standardised_kmeans_saves_centroids_in_the_datas_own_units(tmp_path: Path) -> None:
    """With "standardise": true the centroids live in standardised units; the CSV a participant
    saves is in the data's own (a blob's centre around 1e4 stays around 1e4)."""
    x, y = make_blobs(600, centers=3, n_features=2, cluster_std=0.5, random_state=6)
    x = x * np.array([1.0, 1000.0]) + np.array([0.0, 1e4])
    clustering = kmeans_federation({"quorum": 2, "rounds": 6, "algorithm": "kmeans", "clusters": 3,
                                    "standardise": True, "seed": 2}, _sites(x, y, 2, np.arange(600)))
    assert clustering.mean is not None and clustering.std is not None
    assert np.all(np.abs(clustering.centroids) < 5), "standardised units"
    data = Dataset(x.astype(np.float32), y.astype(np.int64), ["a", "b"], 3, "blobs")
    learner = LocalKMeans(data, data.subset(np.arange(0), "none"), "t", {"algorithm": "kmeans", "clusters": 3}, 0)
    learner.mean, learner.std, learner.centroids = clustering.mean, clustering.std, clustering.centroids
    saved = np.loadtxt(learner.save(tmp_path), delimiter=",", skiprows=1)
    reference = KMeans(3, n_init=3, random_state=0).fit(x).cluster_centers_
    assert (tmp_path / "centroids.csv").read_text().startswith("a,b\n")
    for centre in reference:
        assert np.min(np.linalg.norm(saved - centre, axis=1)) < 0.05 * np.linalg.norm(centre)
