"""Benchmark K-means, logistic and linear regression and contribution values against references.

Every federated number here comes from the participants' and the aggregator's own code run in
one process (tests/federation.py); every reference is scikit-learn (or a brute force) on the
union of the participants' data, which no participant could compute alone. Prints markdown:

- K-means on seeded blobs over 3 sites split by a feature (non-IID): final inertia on the
  union against scikit-learn's KMeans with the same K and the same number of inits;
- K-means on the digits over 3 sites: inertia and the adjusted Rand index against
  scikit-learn's clustering (and, for scale, between two scikit-learn seeds);
- logistic regression (welding class) and linear regression (welding quality score) on the two
  robots: held-out accuracy / R² against LogisticRegression / Ridge with the same penalty;
- contribution values of 4 digits sites: one with shuffled labels, one an exact copy of another.

    .venv/bin/python bench/sklearn_reference.py [--seeds 5]
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import adjusted_rand_score, r2_score

from ml.data import Dataset, load_dataset, split_and_sample
from ml.kmeans import assign
from tests.federation import Site, keras_federation, kmeans_federation

TRAIN, TEST = 1500, 300


def _no_test(data: Dataset) -> Dataset:
    return data.subset(np.arange(0), "no local test")


def kmeans_blobs(seeds: int) -> None:
    print("### K-means on blobs (3 sites, split by the first feature; 3000 samples, 5 features, K=8, "
          "3 inits, 20 rounds)\n")
    print("| seed | federated inertia | scikit-learn inertia | federated / scikit-learn |")
    print("|---:|---:|---:|---:|")
    for seed in range(seeds):
        x, y = make_blobs(3000, centers=8, n_features=5, cluster_std=2.0, random_state=seed)
        x = x.astype(np.float32).astype(np.float64)
        data = Dataset(x.astype(np.float32), y.astype(np.int64), None, 8, "blobs")
        parts = np.array_split(np.argsort(x[:, 0]), 3)
        sites = [Site(f"site{i}", data.subset(np.sort(p), f"site{i}"), _no_test(data)) for i, p in enumerate(parts)]
        clustering = kmeans_federation({"quorum": 3, "rounds": 20, "algorithm": "kmeans", "clusters": 8,
                                        "n_init": 3, "seed": seed}, sites)
        federated = assign(x, clustering.centroids)[1].sum()
        reference = KMeans(8, n_init=3, random_state=seed).fit(x).inertia_
        print(f"| {seed} | {federated:.2f} | {reference:.2f} | {federated / reference:.5f} |")
    print()


def kmeans_digits() -> None:
    digits = load_dataset("digits")
    x = digits.x.astype(np.float64)
    sites = [Site(f"site{i}", load_dataset("digits", shard=f"{i}/3"), _no_test(digits)) for i in (1, 2, 3)]
    print("### K-means on the digits (1797 samples over 3 sites, K=10, 30 rounds)\n")
    print("| inits | federated inertia | scikit-learn inertia | ARI federated vs scikit-learn | "
          "ARI scikit-learn seed 0 vs 1 | ARI federated vs digit labels | ARI scikit-learn vs digit labels |")
    print("|---:|---:|---:|---:|---:|---:|---:|")
    for inits in (3, 10):
        clustering = kmeans_federation({"quorum": 3, "rounds": 30, "algorithm": "kmeans", "clusters": 10,
                                        "n_init": inits, "seed": 1}, sites)
        labels, distances = assign(x, clustering.centroids)
        reference = KMeans(10, n_init=inits, random_state=0).fit(x)
        other = KMeans(10, n_init=inits, random_state=1).fit(x)
        print(f"| {inits} | {distances.sum():.2f} | {reference.inertia_:.2f} | "
              f"{adjusted_rand_score(reference.labels_, labels):.4f} | "
              f"{adjusted_rand_score(reference.labels_, other.labels_):.4f} | "
              f"{adjusted_rand_score(digits.y, labels):.4f} | {adjusted_rand_score(digits.y, reference.labels_):.4f} |")
    print()


def _welding(regression: bool) -> tuple[list[Site], Dataset, np.ndarray, np.ndarray, np.ndarray]:
    sites = []
    for robot in ("FPS2", "FPD2"):
        train, test = split_and_sample(load_dataset("welding", robot=robot, regression=regression), TRAIN, TEST, 0)
        sites.append(Site(robot, train, test))
    evaluation = load_dataset("welding", seed=7, regression=regression)
    x = np.concatenate([s.train.x for s in sites]).astype(np.float64)
    mean, std = x.mean(axis=0), x.std(axis=0)
    y = np.concatenate([s.train.y for s in sites])
    return sites, evaluation, (x - mean) / std, y, (evaluation.x - mean) / std


def linear_models() -> None:
    print("### Linear models on the two welding robots (1500 training welds each, federated "
          "standardisation, 4000 held-out welds of another seed; penalty of C=1 / alpha=1)\n")
    print("| model | rounds | federated (held-out) | scikit-learn on the union | difference | seconds |")
    print("|---|---:|---:|---:|---:|---:|")
    sites, evaluation, x, y, evaluation_x = _welding(regression=False)
    for rounds in (4, 8, 12):
        started = time.monotonic()
        outcome = keras_federation({"quorum": 2, "rounds": rounds, "algorithm": "logistic_regression",
                                    "features": 4, "classes": 4, "standardise": True, "seed": 1,
                                    "regularisation": 1 / (2 * 2 * TRAIN)}, sites, evaluation)
        ours = outcome.history[-1]["accuracy"]
        reference = LogisticRegression(C=1.0, max_iter=5000).fit(x, y).score(evaluation_x, evaluation.y)
        print(f"| logistic regression (accuracy) | {rounds} | {ours:.4f} | {reference:.4f} | "
              f"{ours - reference:+.4f} | {time.monotonic() - started:.1f} |")
    sites, evaluation, x, y, evaluation_x = _welding(regression=True)
    for rounds in (1, 2):
        started = time.monotonic()
        outcome = keras_federation({"quorum": 2, "rounds": rounds, "algorithm": "linear_regression",
                                    "features": 4, "standardise": True, "seed": 1,
                                    "regularisation": 1.0 / (2 * TRAIN)}, sites, evaluation)
        ours = outcome.history[-1]["r2"]
        reference = r2_score(evaluation.y, Ridge(alpha=1.0).fit(x, y).predict(evaluation_x))
        print(f"| linear regression (R²) | {rounds} | {ours:.6f} | {reference:.6f} | {ours - reference:+.6f} | "
              f"{time.monotonic() - started:.1f} |")
    print()


def contributions() -> None:
    alice = load_dataset("digits", shard="1/4")
    dave = load_dataset("digits", shard="3/4")
    shuffled = Dataset(dave.x, np.random.default_rng(0).permutation(dave.y), dave.feature_names, 10, "shuffled")
    sites = [Site(name, *split_and_sample(data, None, None, 0)) for name, data in (
        ("alice", alice), ("carol (copy of alice)", alice.subset(np.arange(len(alice)), "copy")),
        ("bob", load_dataset("digits", shard="2/4")), ("dave (shuffled labels)", shuffled))]
    print("### Contribution values (digits, 4 sites, digits-mlp, 3 rounds; exact Shapley and "
          "leave-one-out on accuracy over the held-out quarter)\n")
    for method in ("shapley", "leave_one_out"):
        outcome = keras_federation({"quorum": 4, "rounds": 3, "epochs": 2, "learning_rate": 0.01,
                                    "model": "digits-mlp", "seed": 1, "contribution": method},
                                   sites, load_dataset("digits", shard="4/4"))
        print(f"| {method} | " + " | ".join(f"round {v_round}" for v_round in range(1, 4)) + " | total |")
        print("|---|---:|---:|---:|---:|")
        for site in sites:
            values = [v.values[site.name] for v in outcome.valuations]
            print(f"| {site.name} | " + " | ".join(f"{v:+.4f}" for v in values) + f" | {sum(values):+.4f} |")
        print()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=5, help="blob datasets to cluster")
    args = parser.parse_args()
    kmeans_blobs(args.seeds)
    kmeans_digits()
    linear_models()
    contributions()


if __name__ == "__main__":
    main()
