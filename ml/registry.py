"""The model registry: a task definition names a model here; it never names code to import.

Every registry model is compiled with Adam at the task's learning rate and sparse
cross-entropy. The seed's Keras example leaves the optimiser to Keras defaults; Adam is
chosen because it converges in the one or two local epochs per round a federated task
gives it, where plain SGD at a single learning rate would need tuning per model.
"""

from __future__ import annotations

import json
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from ml.keras_model import (
    ModelError,
    check_config,
    compile_model,
    confusion_matrix,
    evaluate,
    keras,
    model_from_json,
    model_to_json,
)

__all__ = [
    "ModelError",
    "ModelSpec",
    "build_model",
    "compile_model",
    "confusion_matrix",
    "evaluate",
    "known_models",
    "load_user_model",
    "model_from_json",
    "model_spec",
    "model_to_json",
]

layers = keras.layers
_Builder = Callable[[tuple[int, ...], int], keras.Model]  # (input shape, classes) -> model


def _mnist_cnn(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
    """The seed's CNN: two convolutions, max-pooling, dropout, a dense layer (~1.2M weights)."""
    return keras.Sequential([
        keras.Input(shape=input_shape),
        layers.Conv2D(32, (3, 3), activation="relu"),
        layers.Conv2D(64, (3, 3), activation="relu"),
        layers.MaxPooling2D((2, 2)),
        layers.Dropout(0.25),
        layers.Flatten(),
        layers.Dense(128, activation="relu"),
        layers.Dropout(0.5),
        layers.Dense(num_classes, activation="softmax"),
    ], name="mnist_cnn")


def _mlp(hidden: Sequence[int], name: str) -> _Builder:
    def build(input_shape: tuple[int, ...], num_classes: int) -> keras.Model:
        stack = [keras.Input(shape=input_shape)]
        stack += [layers.Dense(units, activation="relu") for units in hidden]
        stack.append(layers.Dense(num_classes, activation="softmax"))
        return keras.Sequential(stack, name=name)
    return build


@dataclass(frozen=True)
class ModelSpec:
    """A registry model's name and the input shape and class count of the data it is for."""

    name: str
    input_shape: tuple[int, ...]
    num_classes: int


_REGISTRY: dict[str, tuple[ModelSpec, _Builder]] = {
    "mnist-cnn": (ModelSpec("mnist-cnn", (28, 28, 1), 10), _mnist_cnn),
    "digits-mlp": (ModelSpec("digits-mlp", (64,), 10), _mlp((64, 32), "digits_mlp")),
    # The seed's welding model (§3.4): one hidden layer of 1000 units on 4 standardised
    # features (WELCNT, WDRSCNT, WELR, WELCUR1_S), 4 WCLSRES classes.
    "welding-mlp": (ModelSpec("welding-mlp", (4,), 4), _mlp((1000,), "welding_mlp")),
}


def known_models() -> list[str]:
    """The names a task definition may use for its model."""
    return sorted(_REGISTRY)


def model_spec(name: str) -> ModelSpec:
    """The input shape and class count a registry model is meant for."""
    if name not in _REGISTRY:
        raise ModelError(f"unknown model {name!r} (known: {', '.join(known_models())})")
    return _REGISTRY[name][0]


def build_model(name: str, input_shape: Sequence[int], num_classes: int,
                learning_rate: float) -> keras.Model:
    """A fresh, compiled model from the registry (any input shape and class count it takes)."""
    model_spec(name)  # raises for an unknown name
    shape = tuple(int(d) for d in input_shape)
    if num_classes < 2 or learning_rate <= 0 or not shape or min(shape) < 1:
        raise ModelError(f"{name}: needs num_classes >= 2, learning_rate > 0 and a positive "
                         f"input shape (got {num_classes}, {learning_rate}, {shape})")
    try:
        model = _REGISTRY[name][1](shape, num_classes)
    except ValueError as error:  # e.g. images too small for the CNN's kernels
        raise ModelError(f"{name} cannot take input shape {shape}: {error}") from error
    return compile_model(model, learning_rate)


def load_user_model(path: str | Path) -> keras.Model:
    """A model from a `.keras` file (architecture and initial weights), uncompiled.

    Its config is checked like any architecture JSON before Keras reads it, and Keras
    loads it in safe mode; the daemon compiles it with the task's learning rate.
    """
    source = Path(path)
    if source.suffix != ".keras":
        raise ModelError(f"{source}: expected a .keras file (Keras' native format)")
    try:
        with zipfile.ZipFile(source) as archive:
            config = json.loads(archive.read("config.json"))
    except (OSError, KeyError, ValueError, zipfile.BadZipFile) as error:
        raise ModelError(f"{source}: not a readable .keras file ({error})") from error
    try:
        check_config(config)
    except ModelError as error:
        raise ModelError(f"{source}: {error}") from error
    try:
        return keras.models.load_model(source, compile=False, safe_mode=True)
    except Exception as error:  # Keras raises many types for a bad file
        raise ModelError(f"{source}: cannot load the model ({error})") from error
