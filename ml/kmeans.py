"""Federated K-means: Lloyd's algorithm over per-cluster sums and counts, never samples.

Each round the aggregator broadcasts the centroids; every participant assigns its samples to
the nearest centroid and sends, per cluster, the sum of its samples, their count and the
squared distances (inertia). The aggregator adds those up: sum / count is exactly the centroid
Lloyd's algorithm computes on the union of everyone's data.

Initialisation needs no raw data at the aggregator either: each participant summarises its
data as K local cluster means (k-means++ and a few Lloyd steps on its own samples) with their
sizes; the aggregator runs a sample-weighted k-means++ (Arthur & Vassilvitskii, 2007) over
these summaries, then weighted Lloyd steps on them, once per initialisation (`n_init`). All
initialisations run side by side in the same rounds (centroids have shape (n_init, K, d));
the final model is the one with the lowest inertia, as scikit-learn keeps the best of n_init.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ml.strategies.fedavg import ArraySpec, Template, UpdateRejected, require_fit
from schema.dataplane import KMeansMeta
from streams.codec import ArrayBundle, decode_bundle, encode_bundle

Array = np.ndarray[Any, Any]
# Samples assigned per block: bounds the distance matrix to about 8 MB whatever the data size.
_BLOCK = 4096
LOCAL_LLOYD_STEPS = 20


def squared_distances(x: Array, centroids: Array) -> Array:
    """(n, K) squared Euclidean distances, computed as ‖x‖² − 2x·c + ‖c‖² in float64."""
    x64, c64 = np.asarray(x, dtype=np.float64), np.asarray(centroids, dtype=np.float64)
    product = x64 @ c64.T
    found = np.sum(x64 ** 2, axis=1)[:, None] - 2.0 * product + np.sum(c64 ** 2, axis=1)[None, :]
    clamped: Array = np.maximum(found, 0.0)  # rounding can make a zero distance slightly negative
    return clamped


def assign(x: Array, centroids: Array) -> tuple[Array, Array]:
    """The nearest centroid of every sample and the squared distance to it."""
    labels = np.empty(len(x), dtype=np.int64)
    nearest = np.empty(len(x), dtype=np.float64)
    for start in range(0, len(x), _BLOCK):
        block = squared_distances(x[start:start + _BLOCK], centroids)
        labels[start:start + _BLOCK] = np.argmin(block, axis=1)
        nearest[start:start + _BLOCK] = block[np.arange(len(block)), labels[start:start + _BLOCK]]
    return labels, nearest


@dataclass(frozen=True, eq=False)
class ClusterStats:
    """Per initialisation and cluster: sum of the samples assigned, their count, their inertia."""

    sums: Array      # (n_init, K, d) float64
    counts: Array    # (n_init, K) int64
    inertia: Array   # (n_init,) float64: total squared distance to the nearest centroid

    def __add__(self, other: ClusterStats) -> ClusterStats:
        return ClusterStats(self.sums + other.sums, self.counts + other.counts,
                            self.inertia + other.inertia)

    def as_update(self) -> list[Array]:
        """The three arrays as an update's weight list: sums, counts, inertia."""
        return [self.sums.astype(np.float64), self.counts.astype(np.int64),
                self.inertia.astype(np.float64)]


def local_statistics(x: Array, centroid_sets: Array, weights: Array | None = None) -> ClusterStats:
    """What a participant sends for one round: its samples' per-cluster sums, counts and inertia."""
    inits, k, d = centroid_sets.shape
    w = np.ones(len(x)) if weights is None else np.asarray(weights, dtype=np.float64)
    sums = np.zeros((inits, k, d))
    counts = np.zeros((inits, k), dtype=np.int64)
    inertia = np.zeros(inits)
    for i in range(inits):
        labels, nearest = assign(x, centroid_sets[i])
        sums[i] = cluster_sums(x, labels, k, w)
        counts[i] = np.bincount(labels, minlength=k)
        inertia[i] = float(np.sum(nearest * w))
    return ClusterStats(sums, counts, inertia)


def cluster_sums(x: Array, labels: Array, k: int, weights: Array) -> Array:
    """(k, d) weighted sums of the samples in each cluster (one bincount per feature: fast)."""
    x64 = np.asarray(x, dtype=np.float64)
    return np.stack([np.bincount(labels, weights=x64[:, j] * weights, minlength=k)
                     for j in range(x64.shape[1])], axis=1).reshape(k, x64.shape[1])


def update_centroids(centroid_sets: Array, stats: ClusterStats, weighted_counts: Array | None = None
                     ) -> Array:
    """Lloyd's update: each centroid becomes the mean of its samples; an empty one stays put."""
    counts = stats.counts if weighted_counts is None else weighted_counts
    mass = counts[..., None].astype(np.float64)
    means = np.divide(stats.sums, mass, out=np.zeros_like(stats.sums), where=mass > 0)
    return np.where(mass > 0, means, centroid_sets)


def kmeans_plus_plus(points: Array, weights: Array, k: int, rng: np.random.Generator) -> Array:
    """k centres chosen by weighted D² sampling: each new centre far from those chosen so far."""
    w = np.asarray(weights, dtype=np.float64)
    centres = [points[rng.choice(len(points), p=w / w.sum())]]
    nearest = squared_distances(points, np.array(centres))[:, 0]
    for _ in range(1, k):
        mass = w * nearest
        # All mass on chosen centres (fewer distinct points than k): repeat one; Lloyd copes.
        index = rng.choice(len(points), p=mass / mass.sum()) if mass.sum() > 0 else int(np.argmax(w))
        centres.append(points[index])
        nearest = np.minimum(nearest, squared_distances(points, points[index:index + 1])[:, 0])
    return np.array(centres, dtype=np.float64)


def weighted_kmeans(points: Array, weights: Array, k: int, rng: np.random.Generator,
                    steps: int = LOCAL_LLOYD_STEPS) -> tuple[Array, Array]:
    """k-means++ then Lloyd on weighted points: the centres and the weight each ended up with."""
    w = np.asarray(weights, dtype=np.float64)
    centres = kmeans_plus_plus(points, w, k, rng)
    for _ in range(steps + 1):
        labels, _ = assign(points, centres)
        mass = np.bincount(labels, weights=w, minlength=k)
        sums = cluster_sums(points, labels, k, w)
        moved = np.where(mass[:, None] > 0, sums / np.maximum(mass, 1e-300)[:, None], centres)
        if np.array_equal(moved, centres):
            break
        centres = moved
    return centres, mass


def local_candidates(x: Array, k: int, seed: int) -> tuple[Array, Array]:
    """A participant's summary for initialisation: up to k local cluster means and their sizes.

    Means of groups of samples, never samples themselves; clusters left empty are dropped.
    """
    x64 = np.asarray(x, dtype=np.float64)
    if len(x64) == 0:
        raise ValueError("no local samples to summarise")
    centres, counts = weighted_kmeans(x64, np.ones(len(x64)), min(k, len(x64)),
                                      np.random.default_rng(seed))
    kept = counts > 0
    return centres[kept], counts[kept].astype(np.int64)


def initial_centroids(candidates: Array, sizes: Array, k: int, n_init: int, seed: int) -> Array:
    """(n_init, k, d) starting centroids from everyone's candidates, weighted by their sizes."""
    rng = np.random.default_rng(seed)
    weights = np.asarray(sizes, dtype=np.float64)
    if len(candidates) == 0 or weights.sum() <= 0:
        raise ValueError("no participant sent a candidate centre: nothing to start from")
    return np.stack([weighted_kmeans(candidates, weights, k, rng)[0] for _ in range(n_init)])


def best_init(inertia: Array | Sequence[float]) -> int:
    """The initialisation with the lowest inertia (the first on a tie)."""
    return int(np.argmin(np.asarray(inertia)))


def update_template(n_init: int, k: int, d: int) -> Template:
    """The shapes and dtypes of a K-means update: sums, counts, inertia."""
    return (ArraySpec((n_init, k, d), np.dtype(np.float64)), ArraySpec((n_init, k), np.dtype(np.int64)),
            ArraySpec((n_init,), np.dtype(np.float64)))


class ClusterSums:
    """The round's K-means aggregate: everyone's per-cluster sums, counts and inertia, added up.

    It folds updates one at a time like every aggregation strategy (ml.strategies.Strategy),
    so the aggregator checks and collects K-means updates on the same path as model updates.
    The statistics are small (n_init × K × d), so each participant's is kept and they are
    added in an order of their own content, not of arrival: float sums depend on their order,
    and the same updates must give the same centroids (and inertia) to the last bit however
    the broker interleaved them.
    """

    def __init__(self, template: Template) -> None:
        self.template = template
        self.count = 0
        self._parts: list[ClusterStats] = []

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Fold one participant's statistics; UpdateRejected if they cannot be right."""
        require_fit(self.template, weights)
        sums, counts, inertia = (np.asarray(w) for w in weights)
        if np.any(counts < 0) or np.any(inertia < 0):
            raise UpdateRejected("negative cluster counts or inertia")
        if np.any(counts.sum(axis=1) != samples):
            raise UpdateRejected(f"cluster counts add up to {counts.sum(axis=1).tolist()}, "
                                 f"not to the {samples} samples the update claims")
        self._parts.append(ClusterStats(sums.astype(np.float64), counts.astype(np.int64),
                                        inertia.astype(np.float64)))
        self.count += 1

    @property
    def total(self) -> ClusterStats | None:
        """Everyone's statistics added up, in the order of their bytes (None before any)."""
        if not self._parts:
            return None
        ordered = sorted(self._parts, key=lambda part: (part.inertia.tobytes(), part.counts.tobytes(),
                                                        part.sums.tobytes()))
        total = ordered[0]
        for part in ordered[1:]:
            total = total + part
        return total

    def result(self) -> list[Array]:
        """The summed statistics as a weight list (ValueError if nothing was added)."""
        total = self.total
        if total is None:
            raise ValueError("no update has been added: no cluster statistics")
        return total.as_update()


def centroids_payload(meta: KMeansMeta, centroids: Array) -> bytes:
    """Centroids as they are broadcast and stored: (n_init, K, d) or the final (K, d)."""
    arrays = {"centroids": np.ascontiguousarray(centroids, dtype=np.float64)}
    return encode_bundle(ArrayBundle(arrays=arrays, meta=meta.model_dump()))


def read_centroids(data: bytes) -> tuple[KMeansMeta, Array]:
    """The meta and centroids of a `centroids_payload` (CodecError or ValueError if not one)."""
    bundle = decode_bundle(data)
    meta = KMeansMeta.model_validate(bundle.meta)
    if "centroids" not in bundle.arrays:
        raise ValueError("not a K-means model: no centroids array")
    centroids = np.asarray(bundle.arrays["centroids"], dtype=np.float64)
    if centroids.shape[-2:] != (meta.clusters, meta.features):
        raise ValueError(f"centroids of shape {centroids.shape} do not match "
                         f"{meta.clusters} clusters of {meta.features} features")
    return meta, centroids
