"""The welding demo's result table, as in the seed (§3.4): the federated model against a
centralised one, on each robot's held-out welds and on both.

The centralised model is what the two robots would get by pooling their training data in one
place: the same registry model, trained from the same seed with the same budget (the task's
rounds × epochs, its batch size and learning rate), standardised with the pooled data's mean
and standard deviation (which federated standardisation computes without pooling). Both are
scored on held-out welds generated with a seed no site trains on.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from rich.table import Table

from ml.data import Dataset, load_dataset, split_and_sample
from ml.data.welding import ROBOTS
from ml.keras_model import evaluate, keras
from ml.prepare import prepare
from ml.registry import build_model
from ml.seeds import task_seed
from schema.dataplane import ModelMeta

# The seed's published result, shown beside ours for reference (its data is not public).
SEED_RESULT = {"federated": 0.8894, "centralised": 0.8983}


def held_out(eval_seed: int) -> dict[str, Dataset]:
    """Each robot's held-out welds, and both together."""
    parts = {robot: load_dataset("welding", robot=robot, seed=eval_seed) for robot in ROBOTS}
    return {**parts, "both": load_dataset("welding", seed=eval_seed)}


def pooled_training_data(definition: dict[str, Any], data_seed: int = 0) -> Dataset:
    """The welds the two participants trained on (their own splits), pooled in one place."""
    parts = [split_and_sample(load_dataset("welding", robot=robot, seed=data_seed),
                              definition.get("training_size"), definition.get("test_size"),
                              data_seed)[0] for robot in ROBOTS]
    x = np.concatenate([p.x for p in parts])
    y = np.concatenate([p.y for p in parts])
    return Dataset(x, y, parts[0].feature_names, parts[0].num_classes, "welding (pooled)")


def train_centralised(task_id: str, definition: dict[str, Any], meta: ModelMeta) -> tuple[Any, Any, Any]:
    """The centralised model, with the mean and std of the pooled data it was trained on."""
    pooled = pooled_training_data(definition)
    features = pooled.x.astype(np.float64)
    mean, std = features.mean(axis=0), features.std(axis=0)
    keras.utils.set_random_seed(task_seed(task_id, definition))
    model = build_model(str(meta.model), meta.input_shape, meta.num_classes, meta.learning_rate)
    train = prepare(pooled, meta.input_shape, mean, std)
    model.fit(train.x, train.y, epochs=meta.rounds * meta.epochs, batch_size=meta.batch_size,
              verbose=0, shuffle=True)
    return model, mean, std


def compare(federated: Any, meta: ModelMeta, task_id: str, definition: dict[str, Any],
            eval_seed: int) -> list[dict[str, Any]]:
    """One row per held-out set: samples, federated and centralised accuracy."""
    central, mean, std = train_centralised(task_id, definition, meta)
    fed_mean, fed_std = np.asarray(meta.feature_mean), np.asarray(meta.feature_std)
    rows = []
    for name, data in held_out(eval_seed).items():
        rows.append({
            "test data": name, "samples": len(data),
            "federated": evaluate(federated, prepare(data, meta.input_shape, fed_mean, fed_std))["accuracy"],
            "centralised": evaluate(central, prepare(data, meta.input_shape, mean, std))["accuracy"],
        })
    return rows


def comparison_table(rows: list[dict[str, Any]], budget: str) -> Table:
    """The seed's table: federated against centralised accuracy, per robot and together."""
    table = Table("held-out welds", "samples", "federated", "centralised", "difference",
                  title=f"federated vs centralised ({budget})",
                  caption=f"seed D3.3 (its own data): federated {SEED_RESULT['federated']:.2%}, "
                          f"centralised {SEED_RESULT['centralised']:.2%}")
    for row in rows:
        table.add_row(row["test data"], str(row["samples"]), f"{row['federated']:.2%}",
                      f"{row['centralised']:.2%}", f"{row['federated'] - row['centralised']:+.2%}")
    return table
