"""The model a task produces, as a user takes it away: a `.keras` file with its preprocessing."""

from __future__ import annotations

import csv
import hashlib
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.conftest import ApiProcess, unique
from tests.training_support import daemon_env, member, spawn, wait_all

# Four features on wildly different scales (and offsets), three classes.
SCALES = np.array([1000.0, 1.0, 0.01, 5.0])
OFFSETS = np.array([0.0, 0.0, 0.0, 1e5])


def unscaled_data(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Samples whose class shows in every feature, each feature at its own scale."""
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    centres = np.array([[-1.0, 0.5, 1.0, -1.0], [1.0, -1.0, 0.0, 0.5], [0.0, 1.0, -1.0, 1.0]])
    x = (centres[y] + 0.6 * rng.standard_normal((n, 4))) * SCALES + OFFSETS
    return x, y


def write_csv(path: Path, x: np.ndarray, y: np.ndarray) -> None:
    """A CSV with a header, features f0..f3 and the label column `label`."""
    with path.open("w", newline="") as handle:
        out = csv.writer(handle)
        out.writerow([*(f"f{i}" for i in range(x.shape[1])), "label"])
        out.writerows([*map(repr, row), int(label)] for row, label in zip(x.tolist(), y))


def test_the_exported_model_standardises_raw_inputs_itself() -> None:
    """Normalization holds the federated mean/variance: predict(raw) equals the network on scaled
    inputs, and a save/load round trip keeps it (no custom objects needed)."""
    from ml.export import ExportedScorer, exported_model, keras_file_bytes
    from ml.keras_model import keras, model_to_json
    from schema.dataplane import ModelMeta

    inner = keras.Sequential([keras.Input((4,)), keras.layers.Dense(8, activation="relu"),
                              keras.layers.Dense(3, activation="softmax")])
    # Keras feeds predict() float32 (as the data connectors load it); scaling happens in float64.
    x = unscaled_data(50, seed=1)[0].astype(np.float32)
    mean, std = x.astype(np.float64).mean(axis=0), x.astype(np.float64).std(axis=0)
    meta = ModelMeta(architecture=model_to_json(inner), model="user", input_shape=[4], num_classes=3,
                     learning_rate=0.01, epochs=1, batch_size=8, rounds=1,
                     feature_mean=mean.tolist(), feature_std=std.tolist())
    exported = exported_model(meta, inner.get_weights())
    expected = inner.predict(((x.astype(np.float64) - mean) / std).astype(np.float32), verbose=0)
    np.testing.assert_allclose(exported.predict(x, verbose=0), expected, atol=1e-5)

    content = keras_file_bytes(exported)
    assert content[:2] == b"PK", "a .keras file is a zip archive"
    reloaded = _load_keras(content)
    # Keras reads the statistics back from the file's JSON as float32 (1e5-offset feature).
    np.testing.assert_allclose(reloaded.predict(x, verbose=0), expected, atol=2e-4)
    scorer = ExportedScorer(meta)
    np.testing.assert_array_equal(scorer.model(inner.get_weights()).predict(x, verbose=0),
                                  reloaded.predict(x, verbose=0))


def _load_keras(content: bytes) -> Any:
    import tempfile

    from ml.keras_model import keras

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "m.keras"
        path.write_bytes(content)
        return keras.models.load_model(path)


@pytest.mark.integration
def test_a_downloaded_keras_model_scores_on_raw_features_what_the_aggregator_reported(
    api: ApiProcess, broker: Any, topic_prefix: str, tmp_path: Path
) -> None:
    """A user's own .keras model, unscaled CSV data and "standardise": true: the file that
    `musketeer models download` saves scores on raw held-out features exactly what the
    aggregator recorded (and logged, one JSON line per round), and each participant's report
    scores the same exported model."""
    from ml.keras_model import keras

    alice, site_a, site_b = member(api, "alice"), member(api, "sitea"), member(api, "siteb")
    for index, part in enumerate(("a", "b", "eval")):
        write_csv(tmp_path / f"{part}.csv", *unscaled_data(400, seed=10 + index))
    user_model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(16, activation="relu"),
                                   keras.layers.Dense(3, activation="softmax")])
    user_model.save(tmp_path / "mine.keras")
    name = unique("export")
    alice.client.create_task(name, {"quorum": 2, "rounds": 4, "model": "user", "epochs": 3, "batch_size": 16,
                                    "learning_rate": 0.01, "standardise": True, "seed": 3,
                                    "training_size": 300, "test_size": 100})
    site_a.client.join(name)
    site_b.client.join(name)

    logs = {who: tmp_path / f"{who}.log" for who in ("aggregator", "a", "b")}
    processes = {"aggregator": spawn(
        ["aggregate", name, "--model", str(tmp_path / "mine.keras"), "--eval-data",
         f"csv:{tmp_path / 'eval.csv'}", "--eval-label-column", "label", "--round-timeout", "300",
         "--log-format", "json"],
        daemon_env(api, alice, broker.bootstrap, topic_prefix), logs["aggregator"])}
    for who, site in (("a", site_a), ("b", site_b)):
        processes[who] = spawn(
            ["participate", name, "--dataset", f"csv:{tmp_path / f'{who}.csv'}", "--label-column",
             "label", "--output", str(tmp_path / who)],
            daemon_env(api, site, broker.bootstrap, topic_prefix), logs[who])
    wait_all(processes, logs, timeout_s=400)
    reported = alice.client.rounds(name)[-1].eval_metrics["accuracy"]
    # --log-format json: one object per line, one per round, carrying the recorded numbers.
    lines = [json.loads(line) for line in logs["aggregator"].read_text().splitlines() if line.startswith("{")]
    rounds = [line for line in lines if line.get("event") == "round"]
    assert [r["round"] for r in rounds] == [1, 2, 3, 4]
    assert rounds[-1]["eval_metrics"]["accuracy"] == reported

    target = tmp_path / "model.keras"
    env = daemon_env(api, alice, broker.bootstrap, topic_prefix)
    done = subprocess.run([sys.executable, "-c", "from infra.cli import main; main()", "models",
                           "download", name, "-o", str(target)], env=env, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    task = alice.client.get_task(name)
    assert task.keras_sha256 == hashlib.sha256(target.read_bytes()).hexdigest()
    assert task.keras_sha256 in done.stdout

    raw_x, raw_y = unscaled_data(400, seed=12)  # eval.csv, read back as a user would have it
    predicted = keras.models.load_model(target).predict(raw_x, verbose=0).argmax(axis=1)
    downloaded = float(np.mean(predicted == raw_y))
    network_only = keras.models.load_model(target).layers[-1]  # without the Normalization layer
    bare = float(np.mean(network_only.predict(raw_x, verbose=0).argmax(axis=1) == raw_y))
    print(f"\naggregator's held-out accuracy {reported:.4f}; downloaded .keras on raw features "
          f"{downloaded:.4f}; its network alone on raw features {bare:.4f}")
    assert abs(downloaded - reported) < 1e-9
    assert downloaded > 0.85, "standardisation inside the model: it must have learnt"

    for who in ("a", "b"):
        report = json.loads((tmp_path / who / name / "report.json").read_text())
        saved = keras.models.load_model(tmp_path / who / name / "model.keras")
        site_x, site_y = _site_test_split(tmp_path / f"{who}.csv")
        mine = float(np.mean(saved.predict(site_x, verbose=0).argmax(axis=1) == site_y))
        assert len(site_y) == 100
        assert abs(report["local_test_metrics"]["accuracy"] - mine) < 1e-9, who


def _site_test_split(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """The local test split a participant kept (the same sampling as the daemon's)."""
    from ml.data import load_dataset, split_and_sample

    _, test = split_and_sample(load_dataset(f"csv:{path}", label_column="label"), 300, 100, 0)
    return test.x, test.y
