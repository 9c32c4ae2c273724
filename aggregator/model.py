"""The model a task trains: built from the registry (or the creator's file), seeded by the task."""

from __future__ import annotations

from typing import Any

import numpy as np

from aggregator.run import AggregationFailed, AggregatorOptions
from client import Task
from ml.data import Dataset, load_dataset
from ml.export import ExportedScorer, raw_inputs
from ml.keras_model import compile_model, model_to_json
from ml.linear import build_linear
from ml.registry import build_model, known_models, load_user_model, model_spec
from ml.seeds import seeded, task_seed
from schema.algorithms import KMEANS, LINEAR_MODELS, contribution, is_regression
from schema.algorithms import parameters as algorithm_parameters
from schema.dataplane import ModelMeta
from schema.definition import USER_MODEL

Array = np.ndarray[Any, Any]


def check_options(task: Task, options: AggregatorOptions) -> None:
    """Refuse options the task's algorithm cannot use or must have (nothing is read yet)."""
    algorithm = str(task.definition.get("algorithm", "fedavg"))
    if options.model_file and algorithm in LINEAR_MODELS | {KMEANS}:
        raise AggregationFailed(f"task '{task.name}' is {algorithm}: the algorithm is the model, "
                                "so --model does not apply")
    if contribution(task.definition) is not None and not options.eval_data:
        raise AggregationFailed(f"task '{task.name}' values contributions on held-out data: "
                                "pass --eval-data (and --eval-shard if it is shared)")


def check_before_start(task: Task, options: AggregatorOptions) -> None:
    """Refuse, before the task starts, a model file it does not ask for or cannot use, and eval
    data that cannot be read: such mistakes would otherwise fail the task for good."""
    check_options(task, options)
    named = task.definition.get("model")
    # A task resumed after a recorded round rebuilds its model from that checkpoint: no file needed.
    if named == USER_MODEL and not options.model_file and task.rounds_completed == 0:
        raise AggregationFailed(f"task '{task.name}' trains the creator's own model (\"model\": "
                                f"\"{USER_MODEL}\"): give the Keras file with --model FILE.keras")
    if options.model_file and named not in (USER_MODEL, None):
        raise AggregationFailed(f"task '{task.name}' trains the registry model {named!r}, so --model "
                                f"FILE is not used; a task for your own file says \"model\": "
                                f"\"{USER_MODEL}\" (its participants must know what they train)")
    if options.model_file:
        load_user_model(options.model_file)  # ModelError, naming the file, if it is unusable
    if options.eval_data:
        # DataError naming the file, flag or shard at fault.
        load_dataset(options.eval_data, data_dir=options.eval_data_dir, shard=options.eval_shard,
                     seed=options.seed, regression=is_regression(task.definition),
                     label_column=options.eval_label_column)


def build_initial(task: Task, options: AggregatorOptions, mean: Array | None,
                  std: Array | None) -> tuple[Any, ModelMeta]:
    """A fresh compiled model and the meta that travels with it."""
    definition = task.definition
    learning_rate = float(definition.get("learning_rate", 0.001))
    # Seeded by the task: a restarted aggregator rebuilds the very same initial model.
    with seeded(task_seed(task.task_id, definition)):
        model, name, input_shape, num_classes = _build(definition, options, learning_rate)
    meta = ModelMeta(architecture=model_to_json(model), model=name, input_shape=input_shape,
                     num_classes=num_classes, learning_rate=learning_rate,
                     epochs=int(definition.get("epochs", 1)),
                     batch_size=int(definition.get("batch_size", 32)),
                     rounds=int(definition["rounds"]),
                     # The model is only usable with the inputs it was trained on.
                     feature_mean=None if mean is None else mean.tolist(),
                     feature_std=None if std is None else std.tolist(),
                     objective="regression" if is_regression(definition) else "classification")
    return model, meta


def _build(definition: dict[str, Any], options: AggregatorOptions,
           learning_rate: float) -> tuple[Any, str, list[int], int]:
    """The compiled model, its registry name, input shape and number of classes."""
    parameters = algorithm_parameters(definition)
    if parameters.algorithm in LINEAR_MODELS:
        model = build_linear(parameters, learning_rate)
        name, input_shape = parameters.algorithm, [int(parameters.features or 1)]
        num_classes = int(parameters.classes or 0) if parameters.algorithm == "logistic_regression" else 0
    elif options.model_file:
        model = compile_model(load_user_model(options.model_file), learning_rate)
        name, input_shape = "user", list(model.input_shape[1:])
        num_classes = int(model.output_shape[-1])
    else:
        name = str(definition.get("model") or "")
        if not name:
            raise AggregationFailed("the definition names no model: add \"model\" (one of "
                                    f"{', '.join(known_models())}) or pass --model")
        spec = model_spec(name)
        input_shape, num_classes = list(spec.input_shape), spec.num_classes
        model = build_model(name, input_shape=tuple(input_shape), num_classes=num_classes,
                            learning_rate=learning_rate)
    return model, name, input_shape, num_classes


class Evaluation:
    """The creator's held-out data and the exported model each round is scored as."""

    def __init__(self, meta: ModelMeta, raw: Dataset) -> None:
        self.scorer = ExportedScorer(meta)
        self.raw = raw_inputs(raw, meta.input_shape)

    def score(self, weights: list[Array]) -> dict[str, float]:
        """`loss` and `accuracy` of the exported model (standardisation inside) on raw data."""
        return self.scorer.score(weights, self.raw)


def evaluation_data(options: AggregatorOptions, meta: ModelMeta) -> Evaluation | None:
    """The held-out data each round's model is evaluated on, if the creator gave some."""
    if not options.eval_data:
        return None
    data_options = {"label_column": options.eval_label_column}
    dataset = load_dataset(options.eval_data, data_dir=options.eval_data_dir,
                           shard=options.eval_shard, seed=options.seed, regression=meta.regression,
                           **data_options)
    return Evaluation(meta, dataset)
