"""Keras models as they cross process boundaries: architecture JSON in, checked; metrics out.

This is the one place that imports Keras (TensorFlow loads first, quietly: ml/tensorflow_quiet.py);
both daemons use it, and `ml.registry` re-exports what a model's user needs.
"""

from __future__ import annotations

import json
from typing import Any

import ml.tensorflow_quiet  # noqa: F401  (first: TensorFlow loads with its start-up lines silenced)

# isort: split
import keras
import numpy as np

from ml.data.dataset import Dataset

# `keras` is exported so that other modules take it from here, after the logs are quietened.
__all__ = ["ModelError", "check_config", "compile_model", "confusion_matrix", "evaluate",
           "keras", "local_state", "model_from_json", "model_to_json", "predict_proba",
           "predict_values", "regression_metrics", "restore_state"]

# Classes that carry Python code inside a JSON config; never accepted from another process.
_CODE_CLASSES = frozenset({"Lambda", "__lambda__", "TFOpLambda", "SlicingOpLambda"})
_MODEL_CLASSES = frozenset({"Sequential", "Functional", "Model"})
_PREDICT_BATCH = 512


class ModelError(ValueError):
    """A model cannot be built, read or used; the message says what is wrong."""


def model_to_json(model: keras.Model) -> str:
    """The model's architecture (no weights) as Keras JSON."""
    return str(model.to_json())


def model_from_json(text: str) -> keras.Model:
    """An uncompiled model from architecture JSON, refusing anything that would import code."""
    try:
        config = json.loads(text)
    except json.JSONDecodeError as error:
        raise ModelError(f"model architecture is not valid JSON ({error})") from error
    check_config(config)
    try:
        # No custom_objects: only Keras' own classes can be named, and Keras' safe mode
        # (the default) still guards against anything this check might miss.
        model = keras.models.model_from_json(text)
    except Exception as error:  # Keras raises many types for a bad config
        raise ModelError(f"cannot build the model from its JSON ({error})") from error
    return model


def check_config(config: Any) -> None:
    """Refuse a Keras config naming a Lambda, a non-Keras module or a custom registered name."""
    if not isinstance(config, dict) or config.get("class_name") not in _MODEL_CLASSES:
        raise ModelError("model JSON must describe a Keras Sequential or Functional model")
    for node in _dicts(config):
        _check_node(node)


def _dicts(value: Any) -> list[dict[str, Any]]:
    """Every dict nested anywhere in a JSON value (iteratively: no recursion limit to hit)."""
    found, stack = [], [value]
    while stack:
        item = stack.pop()
        if isinstance(item, dict):
            found.append(item)
            stack.extend(item.values())
        elif isinstance(item, list):
            stack.extend(item)
    return found


def _check_node(node: dict[str, Any]) -> None:
    class_name = node.get("class_name")
    if class_name in _CODE_CLASSES:
        raise ModelError(f"model JSON contains a {class_name} layer, which carries Python code; "
                         f"refused (models cross process boundaries as data only)")
    module = node.get("module")
    if module is not None and not (module == "keras" or str(module).startswith("keras.")):
        raise ModelError(f"model JSON names module {module!r} for {class_name!r}; "
                         f"only Keras' own classes are accepted")
    registered = node.get("registered_name")
    # register_keras_serializable names custom objects "Package>Name"; Keras' own never do.
    if registered is not None and (">" in str(registered) or module is None):
        raise ModelError(f"model JSON names custom object {registered!r}; "
                         f"only Keras' own classes are accepted")


def compile_model(model: keras.Model, learning_rate: float, regression: bool = False) -> keras.Model:
    """Compile for integer labels: Adam at `learning_rate`, cross-entropy, accuracy.

    `regression`: mean squared error on a continuous target instead (linear regression).
    """
    if regression:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate), loss="mse")
    else:
        model.compile(optimizer=keras.optimizers.Adam(learning_rate=learning_rate),
                      loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def local_state(model: keras.Model) -> list[tuple[Any, np.ndarray]]:
    """The compiled model's training state outside its weights, as it is now.

    That is the optimizer's variables (step count, moments) and the random
    generators' states (dropout). Restoring it before each round makes a
    round's local update a function of the global weights, the local data and
    the seed alone: a restarted participant trains a round exactly as the one
    it replaces, and a recorded round can be re-computed.
    """
    model.optimizer.build(model.trainable_variables)
    weights = {id(v) for v in model.weights}
    variables = [*model.optimizer.variables,
                 *(v for v in model.non_trainable_variables if id(v) not in weights)]
    return [(v, np.array(v.numpy(), copy=True)) for v in variables]


def restore_state(state: list[tuple[Any, np.ndarray]]) -> None:
    """Put back what local_state() took."""
    for variable, value in state:
        variable.assign(value)


def predict_proba(model: keras.Model, dataset: Dataset) -> np.ndarray:
    """Class probabilities for every sample of `dataset`."""
    if len(dataset) == 0:
        raise ModelError(f"{dataset.name} is empty: nothing to evaluate")
    try:
        probabilities = np.asarray(model.predict(dataset.x, batch_size=_PREDICT_BATCH, verbose=0))
    except ValueError as error:  # typically an input shape the model does not take
        raise ModelError(f"the model cannot read {dataset.name} "
                         f"(x shape {dataset.x.shape}): {error}") from error
    if probabilities.ndim != 2 or probabilities.shape[1] < dataset.num_classes:
        raise ModelError(f"the model outputs {probabilities.shape[1:]} scores per sample, "
                         f"but {dataset.name} has {dataset.num_classes} classes")
    return probabilities


def evaluate(model: keras.Model, dataset: Dataset) -> dict[str, float]:
    """Mean cross-entropy `loss` and `accuracy` on `dataset` (needs no compiled model).

    On a regression dataset: `loss` and `mse` (mean squared error) and `r2` (R²).
    """
    if dataset.is_regression:
        return regression_metrics(dataset.y, predict_values(model, dataset))
    probabilities = predict_proba(model, dataset)
    # Clip as Keras' own cross-entropy does, so a confident mistake costs ~16, not inf.
    picked = np.clip(probabilities[np.arange(len(dataset)), dataset.y], 1e-7, 1.0)
    accuracy = np.mean(probabilities.argmax(axis=1) == dataset.y)
    return {"loss": float(-np.mean(np.log(picked))), "accuracy": float(accuracy)}


def predict_values(model: keras.Model, dataset: Dataset) -> np.ndarray:
    """A regression model's prediction for every sample of `dataset` (float64, 1-D)."""
    if len(dataset) == 0:
        raise ModelError(f"{dataset.name} is empty: nothing to evaluate")
    try:
        predicted = np.asarray(model.predict(dataset.x, batch_size=_PREDICT_BATCH, verbose=0))
    except ValueError as error:
        raise ModelError(f"the model cannot read {dataset.name} "
                         f"(x shape {dataset.x.shape}): {error}") from error
    if predicted.ndim != 2 or predicted.shape[1] != 1:
        raise ModelError(f"a regression model outputs one value per sample, this one "
                         f"{predicted.shape[1:]}")
    return predicted[:, 0].astype(np.float64)


def regression_metrics(y: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Mean squared error (as `loss` and `mse`) and R² of predictions against targets."""
    truth = np.asarray(y, dtype=np.float64)
    residual = float(np.sum(np.square(truth - predicted)))
    spread = float(np.sum(np.square(truth - truth.mean())))
    # A constant target leaves R² undefined; 0 says the model explains nothing beyond its mean.
    r2 = 1.0 - residual / spread if spread > 0 else 0.0
    mse = residual / len(truth)
    return {"loss": mse, "mse": mse, "r2": r2}


def confusion_matrix(model: keras.Model, dataset: Dataset) -> np.ndarray:
    """Counts (int64) with rows = true class and columns = predicted class."""
    predicted = predict_proba(model, dataset).argmax(axis=1)
    k = max(dataset.num_classes, int(model.output_shape[-1]))
    return np.bincount(dataset.y * k + predicted, minlength=k * k).reshape(k, k)
