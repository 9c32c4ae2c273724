"""The model a task produces, as a user takes it away: a standard `.keras` file with its
preprocessing inside.

A task that standardises trains on inputs scaled with the federated mean and standard
deviation. A saved model without them answers nonsense on raw features, which is what anyone
feeds a saved Keras model. So the exported model puts a Keras `Normalization` layer holding
the global mean and variance in front of the trained network: `load_model(f).predict(raw_x)`
is right. Every evaluation (the aggregator's rounds, the participants' rounds and their final
reports) scores this same exported model on raw data, so the numbers the platform prints are
the numbers a user gets.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ml.data.dataset import DataError, Dataset
from ml.keras_model import evaluate, keras, model_from_json
from schema.dataplane import ModelMeta

Array = np.ndarray[Any, Any]


def exported_model(meta: ModelMeta, weights: Sequence[Array]) -> keras.Model:
    """The trained network behind a Normalization layer (when the task standardises)."""
    inner = model_from_json(meta.architecture)
    inner.set_weights([np.asarray(w) for w in weights])
    shape = tuple(int(d) for d in meta.input_shape)
    if meta.feature_mean is None or meta.feature_std is None:
        return inner
    mean = np.asarray(meta.feature_mean, dtype=np.float64)
    std = np.asarray(meta.feature_std, dtype=np.float64)
    if mean.size != int(np.prod(shape)) or std.size != mean.size:
        raise ValueError(f"the model's statistics have {mean.size} features but its input "
                         f"shape {shape} has {int(np.prod(shape))}")
    inputs = keras.Input(shape=shape, name="raw_features")
    # One mean and variance per input value (the statistics are per flat feature), kept in
    # float64 so a large offset (a feature of 1e6 +- 1) is subtracted without losing digits.
    axis = tuple(range(1, len(shape) + 1))
    scaled = keras.layers.Normalization(
        axis=axis, mean=mean.reshape(shape), variance=np.square(std).reshape(shape),
        dtype="float64", name="federated_standardisation")(inputs)
    return keras.Model(inputs, inner(scaled), name=f"{inner.name}_exported")


def keras_file_bytes(model: keras.Model) -> bytes:
    """The model as the bytes of a `.keras` file (Keras' native zip format)."""
    with tempfile.TemporaryDirectory(prefix="musketeer-export-") as folder:
        path = Path(folder) / "model.keras"
        model.save(path)
        return path.read_bytes()


def load_keras_bytes(content: bytes) -> keras.Model:
    """A model from the bytes of a `.keras` file, loaded as a user loads it (safe mode)."""
    with tempfile.TemporaryDirectory(prefix="musketeer-export-") as folder:
        path = Path(folder) / "model.keras"
        path.write_bytes(content)
        return keras.models.load_model(path, compile=False, safe_mode=True)


def raw_inputs(dataset: Dataset, input_shape: Sequence[int]) -> Dataset:
    """The dataset's raw features reshaped to the model's input (no scaling)."""
    shape = tuple(int(d) for d in input_shape)
    width = int(np.prod(shape))
    flat = dataset.x.reshape(len(dataset.x), -1) if len(dataset.x) else dataset.x.reshape(0, width)
    if flat.shape[1] != width:
        raise DataError(f"{dataset.name} has {flat.shape[1]} features per sample but the model "
                        f"expects input shape {shape} ({width} values): wrong dataset for this task?")
    x = np.ascontiguousarray(flat.reshape((len(flat), *shape)), dtype=np.float32)
    return Dataset(x, dataset.y, dataset.feature_names, dataset.num_classes, dataset.name)


class ExportedScorer:
    """Scores weights as the exported model would, on raw data; built once, weights swapped."""

    def __init__(self, meta: ModelMeta) -> None:
        self.meta = meta
        self._model: keras.Model | None = None

    def model(self, weights: Sequence[Array]) -> keras.Model:
        """The exported model holding `weights`."""
        if self._model is None:
            # Through the file and back: Keras reads the Normalization statistics from the
            # file's JSON config (as float32), so only the reloaded model computes exactly
            # what a user's `load_model` will.
            self._model = load_keras_bytes(keras_file_bytes(exported_model(self.meta, weights)))
        else:
            self._inner().set_weights([np.asarray(w) for w in weights])
        return self._model

    def score(self, weights: Sequence[Array], raw: Dataset) -> dict[str, float]:
        """`loss` and `accuracy` of the exported model on raw (reshaped, unscaled) data."""
        return evaluate(self.model(weights), raw)

    def _inner(self) -> keras.Model:
        assert self._model is not None
        if self.meta.feature_mean is None:
            return self._model
        return self._model.layers[-1]
