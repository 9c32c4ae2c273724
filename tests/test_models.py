"""The model registry, the architecture JSON that crosses processes, and evaluation."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from ml.data import load_dataset, split_and_sample
from ml.registry import (
    ModelError,
    ModelSpec,
    build_model,
    confusion_matrix,
    evaluate,
    keras,
    known_models,
    load_user_model,
    model_from_json,
    model_spec,
    model_to_json,
)
from ml.standardise import apply, combine, local_moments

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
SHAPES = {"mnist-cnn": ((28, 28, 1), 10), "digits-mlp": ((64,), 10), "welding-mlp": ((4,), 4)}


def test_registry_lists_the_models_tests_cover() -> None:
    """Every registry name has a spec matching the shapes here, so every model is built below."""
    assert known_models() == sorted(SHAPES)
    for name, (shape, classes) in SHAPES.items():
        assert model_spec(name) == ModelSpec(name, shape, classes)
    with pytest.raises(ModelError, match="unknown model 'resnet'"):
        model_spec("resnet")


@pytest.mark.parametrize("name", sorted(SHAPES))
def test_json_round_trip_keeps_architecture_and_outputs(name: str) -> None:
    """A model rebuilt from its JSON, given the same weights, predicts the same numbers."""
    keras.utils.set_random_seed(0)
    shape, classes = SHAPES[name]
    model = build_model(name, shape, classes, learning_rate=1e-3)
    text = model_to_json(model)
    rebuilt = model_from_json(text)
    rebuilt.set_weights(model.get_weights())
    batch = np.random.default_rng(0).random((4, *shape), dtype=np.float32)
    assert model_to_json(rebuilt) == text
    assert model.output_shape == (None, classes)
    np.testing.assert_array_equal(model.predict(batch, verbose=0), rebuilt.predict(batch, verbose=0))


def test_mnist_cnn_is_the_seed_network() -> None:
    """The CNN has the seed's layers and ~1.2M weights, and trains one batch of real MNIST."""
    model = build_model("mnist-cnn", (28, 28, 1), 10, 1e-3)
    kinds = [type(layer).__name__ for layer in model.layers]
    assert kinds == ["Conv2D", "Conv2D", "MaxPooling2D", "Dropout", "Flatten",
                     "Dense", "Dropout", "Dense"]
    assert model.count_params() == 1_199_882
    if MNIST_DIR.is_dir():
        ds = load_dataset(f"mnist:{MNIST_DIR}", shard="1/200")  # 50 images
        loss = model.train_on_batch(ds.x, ds.y)
        assert np.all(np.isfinite(loss))


def _with_layer(text: str, layer: dict[str, object]) -> str:
    config = json.loads(text)
    config["config"]["layers"].insert(1, layer)
    return json.dumps(config)


def test_json_with_code_or_foreign_modules_is_refused() -> None:
    """A Lambda layer, a non-Keras module or a custom registered name never gets built."""
    text = model_to_json(build_model("welding-mlp", (4,), 4, 1e-3))
    lambda_model = keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x * 2)])
    foreign = {"module": "os", "class_name": "system", "config": {}, "registered_name": None}
    custom = {"module": "keras.layers", "class_name": "Dense",
              "config": {"units": 2}, "registered_name": "evil>Dense"}
    cases = {
        "Lambda layer": model_to_json(lambda_model),
        "module 'os'": _with_layer(text, foreign),
        "custom object 'evil>Dense'": _with_layer(text, custom),
        "Sequential or Functional": json.dumps({"class_name": "Dense", "config": {}}),
        "not valid JSON": "{",
    }
    for message, bad in cases.items():
        with pytest.raises(ModelError, match=message):
            model_from_json(bad)


@pytest.mark.filterwarnings("ignore::DeprecationWarning")  # raised inside Keras saving a Lambda
def test_user_keras_file_loads_and_a_lambda_file_is_refused(tmp_path: Path) -> None:
    """--model file.keras keeps its weights; a .keras holding a Lambda is refused by name."""
    model = build_model("welding-mlp", (4,), 4, 1e-3)
    model.save(tmp_path / "mine.keras")
    loaded = load_user_model(tmp_path / "mine.keras")
    for ours, theirs in zip(model.get_weights(), loaded.get_weights()):
        np.testing.assert_array_equal(ours, theirs)
    keras.Sequential([keras.Input((4,)), keras.layers.Lambda(lambda x: x + 1)]).save(
        tmp_path / "code.keras")
    with pytest.raises(ModelError, match=r"code\.keras: .*Lambda"):
        load_user_model(tmp_path / "code.keras")
    with pytest.raises(ModelError, match="expected a .keras file"):
        load_user_model(tmp_path / "model.h5")


def test_unknown_model_and_impossible_shapes_are_model_errors() -> None:
    """Names outside the registry and inputs a model cannot take are refused clearly."""
    with pytest.raises(ModelError, match="unknown model 'resnet'.*digits-mlp"):
        build_model("resnet", (64,), 10, 1e-3)
    with pytest.raises(ModelError, match="mnist-cnn cannot take input shape"):
        build_model("mnist-cnn", (3, 3, 1), 10, 1e-3)


def test_digits_mlp_learns_digits() -> None:
    """A few epochs on 1,400 digits reach > 0.9 held-out accuracy; metrics agree with Keras."""
    keras.utils.set_random_seed(0)
    train, test = split_and_sample(load_dataset("digits"), None, 397, seed=0)
    model = build_model("digits-mlp", (64,), 10, learning_rate=0.01)
    model.fit(train.x, train.y, epochs=8, batch_size=32, verbose=0)
    metrics = evaluate(model, test)
    assert metrics["accuracy"] > 0.9, metrics
    keras_loss, keras_accuracy = model.evaluate(test.x, test.y, verbose=0)
    assert metrics["loss"] == pytest.approx(keras_loss, rel=1e-3)
    assert metrics["accuracy"] == pytest.approx(keras_accuracy)
    matrix = confusion_matrix(model, test)
    assert matrix.shape == (10, 10) and matrix.sum() == len(test)
    assert np.trace(matrix) == round(metrics["accuracy"] * len(test))


def test_welding_mlp_learns_welding_after_federated_standardisation() -> None:
    """Two robots standardise with combined moments; the MLP then beats the majority class."""
    keras.utils.set_random_seed(0)
    sites = [load_dataset(f"welding:{robot}", samples=1500) for robot in ("FPS2", "FPD2")]
    mean, std = combine([local_moments(site.x) for site in sites])
    x = apply(np.concatenate([site.x for site in sites]), mean, std)
    y = np.concatenate([site.y for site in sites])
    model = build_model("welding-mlp", (4,), 4, learning_rate=0.01)
    model.fit(x, y, epochs=8, batch_size=32, verbose=0)
    held_out = load_dataset("welding", samples=500, seed=1)
    metrics = evaluate(model, replace(held_out, x=apply(held_out.x, mean, std)))
    majority = np.bincount(held_out.y).max() / len(held_out)  # about 0.72
    assert metrics["accuracy"] > majority + 0.1, (metrics, majority)


def test_restoring_the_local_state_makes_a_round_of_training_repeatable() -> None:
    """From the same weights and seed, a round trains to the same bytes when the optimizer and
    dropout state are restored first; carried over from the previous round, they differ."""
    from ml.keras_model import compile_model, local_state, restore_state

    keras.utils.set_random_seed(7)
    model = compile_model(keras.Sequential([keras.Input((8,)), keras.layers.Dense(16, activation="relu"),
                                            keras.layers.Dropout(0.5),
                                            keras.layers.Dense(3, activation="softmax")]), 0.01)
    fresh = local_state(model)
    start = model.get_weights()
    rng = np.random.default_rng(0)
    x, y = rng.normal(size=(64, 8)).astype("float32"), rng.integers(0, 3, 64)

    def round_of_training(restore: bool) -> list[np.ndarray]:
        model.set_weights(start)
        keras.utils.set_random_seed(11)
        if restore:
            restore_state(fresh)
        model.fit(x, y, epochs=2, batch_size=16, verbose=0)
        return model.get_weights()

    first, again = round_of_training(True), round_of_training(True)
    carried = round_of_training(False)

    assert all(np.array_equal(a, b) for a, b in zip(first, again, strict=True))
    assert not all(np.array_equal(a, b) for a, b in zip(first, carried, strict=True))
    assert int(model.optimizer.iterations.numpy()) == 16  # two rounds' steps: the state carried
