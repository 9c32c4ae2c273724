"""A finished task's training graphs leave the process (TensorFlow's gradient registry kept them)."""

from __future__ import annotations

import gc
import weakref
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from tensorflow.python.framework.func_graph import FuncGraph

from ml.data import load_dataset, split_and_sample
from ml.payload import model_payload
from ml.registry import build_model, model_to_json
from ml.trained_graphs import forget_training_graphs
from participant.training import LocalTraining
from participant.worker import TaskStopped, TaskWorker
from schema.dataplane import ModelMeta
from streams.codec import ArrayBundle, decode_bundle

DIGITS = {"quorum": 1, "rounds": 1, "epochs": 1, "batch_size": 32, "learning_rate": 0.01,
          "model": "digits-mlp", "training_size": 100, "test_size": 20}


@pytest.fixture(scope="module")
def broadcast() -> ArrayBundle:
    """The digits-mlp model as an aggregator broadcasts it."""
    model = build_model("digits-mlp", (64,), 10, 0.01)
    meta = ModelMeta(architecture=model_to_json(model), model="digits-mlp", input_shape=[64],
                     num_classes=10, learning_rate=0.01, epochs=1, batch_size=32, rounds=1)
    return decode_bundle(model_payload(meta, [np.asarray(w) for w in model.get_weights()]))


def _trained(broadcast: ArrayBundle, definition: dict[str, Any]) -> LocalTraining:
    """A learner that has trained one round, as a worker's does."""
    train, test = split_and_sample(load_dataset("digits"), 100, 20, 0)
    learner = LocalTraining(train, test, "graphs", definition, 0)
    learner.load(broadcast, standardises=False)
    learner.train_round(1)
    return learner


def _graph_refs() -> dict[int, weakref.ref[Any]]:
    gc.collect()
    return {id(g): weakref.ref(g) for g in gc.get_objects() if isinstance(g, FuncGraph)}


@pytest.mark.parametrize("definition", [DIGITS, {**DIGITS, "algorithm": "fedprox", "mu": 0.1}],
                         ids=["keras-fit", "fedprox"])
def test_a_closed_learner_leaves_no_training_graph_behind(broadcast: ArrayBundle,
                                                          definition: dict[str, Any]) -> None:
    """Once a finished learner is closed and dropped, every graph its training traced is freed."""
    before = _graph_refs()
    learner = _trained(broadcast, definition)
    traced = [ref for key, ref in _graph_refs().items() if key not in before]
    assert traced, "training traced no graph: the test no longer sees what it checks"

    learner.close()
    del learner
    gc.collect()

    kept = [ref() for ref in traced if ref() is not None]
    assert not kept, f"{len(kept)} graph(s) kept: {sorted({g.name for g in kept})}"


def test_closing_one_learner_leaves_another_tasks_entries(broadcast: ArrayBundle) -> None:
    """Two tasks train in one process: closing the first drops its entries only."""
    first, second = _trained(broadcast, DIGITS), _trained(broadcast, DIGITS)

    first.close()

    assert forget_training_graphs(first.model) == 0
    assert forget_training_graphs(second.model) > 0


def test_a_worker_closes_its_learner_however_its_task_ends(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker whose task stops mid-way still closes its learner."""
    closed: list[bool] = []
    worker = TaskWorker(client=None, broker=None, task=SimpleNamespace(name="t"),  # type: ignore[arg-type]
                        keys=SimpleNamespace(username="me"), data=None, output=Path("."))  # type: ignore[arg-type]

    def stopped_mid_task() -> None:
        worker.training = SimpleNamespace(close=lambda: closed.append(True))  # type: ignore[assignment]
        raise TaskStopped("the aggregator stopped the task")

    monkeypatch.setattr(worker, "_run", stopped_mid_task)
    with pytest.raises(TaskStopped):
        worker.run()
    assert closed == [True]
