"""The new algorithms end to end: real API, PostgreSQL, broker and daemon processes.

A FedAdam aggregator killed after round 2 resumes with its optimiser state and ends with the
very model an uninterrupted run makes; K-means runs over the broker with three sites and
its centroids serve `musketeer clusters`; linear regression with Shapley contributions
records them, and `musketeer tasks show` prints them.
"""

from __future__ import annotations

import itertools
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sklearn.cluster import KMeans
from sklearn.datasets import make_blobs

from ml.kmeans import assign, read_centroids
from tests.conftest import ApiProcess, unique
from tests.fault_support import restart_after_kill, run_task
from tests.training_support import daemon_env, dump, member, spawn, train_welding, wait_all

pytestmark = pytest.mark.integration


def _musketeer(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", "from infra.cli import main; main()", *args],
                          env=env, capture_output=True, text=True, timeout=120, check=False)


def test_a_fedadam_aggregator_killed_after_round_2_ends_with_the_uninterrupted_model(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """Same seed, same data: the final model's digest of a run whose aggregator was SIGKILLed
    after round 2 (and restarted from the round-2 checkpoint, optimiser state included) equals
    that of an uninterrupted run, as do the digests of every round."""
    straight = run_task(api, broker.bootstrap, topic_prefix, tmp_path / "straight", algorithm="fedadam")
    resumed = run_task(api, broker.bootstrap, topic_prefix, tmp_path / "resumed",
                       restart_after_kill("aggregator"), fault_after=2, algorithm="fedadam")
    aggregator_log = resumed.logs["aggregator"].read_text()
    assert "restored the fedadam server optimiser's state after" in aggregator_log, dump(resumed.logs)
    clients = (straight.people["alice"].client, resumed.people["alice"].client)
    rounds = [[r.model_sha256 for r in c.rounds(run.name)] for c, run in zip(clients, (straight, resumed))]
    assert rounds[0] == rounds[1]
    finals = [c.get_task(run.name).model_sha256 for c, run in zip(clients, (straight, resumed))]
    assert finals[0] is not None and finals[0] == finals[1], dump(resumed.logs)


def test_kmeans_over_the_broker_matches_scikit_learn_and_draws_the_clusters(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """Three sites hold seeded blobs (split by a feature: non-IID) as npz files. The task
    completes with inertia recorded per round, the final centroids' inertia on the union is
    within 1 % of scikit-learn's, and `musketeer clusters` draws a participant's data."""
    x, y = make_blobs(1800, centers=5, n_features=4, cluster_std=1.5, random_state=11)
    x = x.astype(np.float32)
    order = np.argsort(x[:, 0])
    people = {who: member(api, who) for who in ("alice", "site1", "site2", "site3")}
    name = unique("kmeans")
    people["alice"].client.create_task(name, {"quorum": 3, "rounds": 8, "algorithm": "kmeans",
                                              "clusters": 5, "n_init": 3, "seed": 5})
    logs, processes = {}, {}
    for index, who in enumerate(("site1", "site2", "site3")):
        people[who].client.join(name)
        part = np.sort(np.array_split(order, 3)[index])
        np.savez(tmp_path / f"{who}.npz", x=x[part], y=y[part])
    for who in ("aggregator", "site1", "site2", "site3"):
        logs[who] = tmp_path / f"{who}.log"
        args = (["aggregate", name, "--round-timeout", "300"] if who == "aggregator" else
                ["participate", name, "--dataset", f"npz:{tmp_path / who}.npz", "--output", str(tmp_path / who)])
        owner = people["alice" if who == "aggregator" else who]
        processes[who] = spawn(args, daemon_env(api, owner, broker.bootstrap, topic_prefix), logs[who])
    wait_all(processes, logs, timeout_s=300)

    alice = people["alice"].client
    task = alice.get_task(name)
    assert task.status == "COMPLETED", dump(logs)
    recorded = alice.rounds(name)
    inertia = [r.metrics["inertia"] for r in recorded]
    # Lloyd's steps never raise the inertia; once converged it may move in its last bit
    # (the sites' float sums), so a rise within 1e-9 relative is not a rise.
    assert len(inertia) == 8
    assert all(later <= earlier * (1 + 1e-9) for earlier, later in itertools.pairwise(inertia)), inertia
    assert "UpdateRejected" not in [e.type for e in alice.task_events(name)]
    meta, centroids = read_centroids(alice.download_model(name)[1])
    assert centroids.shape == (5, 4) and meta.n_init == 3
    federated = assign(x.astype(np.float64), centroids)[1].sum()
    reference = KMeans(5, n_init=3, random_state=0).fit(x.astype(np.float64)).inertia_
    assert federated <= 1.01 * reference, (federated, reference)
    assert (tmp_path / "site1" / name / "centroids.csv").read_text().count("\n") == 5

    env = daemon_env(api, people["site2"], broker.bootstrap, topic_prefix)
    drawn = _musketeer(["clusters", name, "--dataset", f"npz:{tmp_path / 'site2'}.npz",
                        "--output", str(tmp_path / "clusters.png")], env)
    assert drawn.returncode == 0, drawn.stdout + drawn.stderr
    assert "clusters of the local data" in drawn.stdout and "600" in drawn.stdout
    assert (tmp_path / "clusters.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_linear_regression_with_shapley_contributions_on_the_welding_robots(
        api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path) -> None:
    """FPS2 and FPD2 fit the quality score: rounds record MSE and R², every round's Shapley
    values are recorded for both robots, and `musketeer tasks show` prints them."""
    name, alice, fps2, fpd2, logs = train_welding(
        api, broker.bootstrap, topic_prefix, tmp_path,
        {"quorum": 2, "rounds": 3, "algorithm": "linear_regression", "features": 4, "standardise": True,
         "training_size": 1500, "test_size": 300, "seed": 1, "contribution": "shapley"}, "regression")

    recorded = alice.client.rounds(name)
    assert {"mse", "r2"} <= set(recorded[-1].eval_metrics) and recorded[-1].eval_metrics["r2"] >= 0.9
    report = fps2.client.contributions(name)
    assert [c.round for c in report.items] == [1, 2, 3], dump(logs)
    assert all(set(c.values) == {fps2.name, fpd2.name} and c.metric == "r2" for c in report.items)
    assert report.items[0].method == "shapley_exact" and "welding" in (report.items[0].data or "")
    first = report.items[0]
    assert sum(first.values.values()) == pytest.approx((first.total or 0) - (first.baseline or 0))
    shown = _musketeer(["tasks", "show", name], daemon_env(api, alice, broker.bootstrap, topic_prefix))
    assert shown.returncode == 0, shown.stderr
    assert "contributions" in shown.stdout and fps2.name in shown.stdout and "round 3" in shown.stdout
