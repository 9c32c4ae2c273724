"""Linear and logistic regression: federated Newton reaches scikit-learn's optimum on the union,
and regression data, metrics and definitions behave."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError
from sklearn.linear_model import LogisticRegression, Ridge
from sklearn.metrics import r2_score

from ml.data import DataError, load_dataset, split_and_sample
from ml.keras_model import regression_metrics
from ml.strategies import for_round
from ml.strategies.fedavg import UpdateRejected
from ml.strategies.newton import NewtonStep, local_terms, theta_of, weights_of
from schema.definition import TaskDefinition
from tests.federation import Site, keras_federation

TRAIN, TEST = 1500, 300


def _welding_sites(regression: bool) -> list[Site]:
    sites = []
    for robot in ("FPS2", "FPD2"):
        data = load_dataset("welding", robot=robot, regression=regression)
        train, test = split_and_sample(data, TRAIN, TEST, 0)
        sites.append(Site(robot, train, test))
    return sites


def _union_standardised(sites: list[Site], evaluation_x: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    x = np.concatenate([s.train.x for s in sites]).astype(np.float64)
    y = np.concatenate([s.train.y for s in sites])
    mean, std = x.mean(axis=0), x.std(axis=0)
    return (x - mean) / std, y, (evaluation_x - mean) / std


def _numerical(f, theta: np.ndarray, h: float = 1e-5) -> np.ndarray:  # type: ignore[no-untyped-def]
    return np.array([(f(theta + h * e) - f(theta - h * e)) / (2 * h) for e in np.eye(len(theta))])


@pytest.mark.parametrize("logistic", [True, False])
def test_the_local_gradient_and_hessian_are_the_losss_derivatives(logistic: bool) -> None:
    """Newton's terms equal finite differences of the summed loss (softmax or squared error)."""
    rng = np.random.default_rng(0)
    x = rng.normal(size=(40, 3))
    outputs = 3 if logistic else 1
    y = rng.integers(0, 3, 40) if logistic else rng.normal(size=40)
    theta = rng.normal(size=4 * outputs)

    def loss(t: np.ndarray) -> float:
        return local_terms(x, y, *weights_of(t, 3, outputs), logistic=logistic)[2]

    def gradient(t: np.ndarray) -> np.ndarray:
        return local_terms(x, y, *weights_of(t, 3, outputs), logistic=logistic)[0]

    got_gradient, got_hessian, _ = local_terms(x, y, *weights_of(theta, 3, outputs), logistic=logistic)
    np.testing.assert_allclose(got_gradient, _numerical(loss, theta), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(got_hessian, _numerical(gradient, theta), rtol=1e-5, atol=1e-5)
    kernel, bias = weights_of(theta, 3, outputs)
    np.testing.assert_array_equal(theta_of(kernel, bias), theta)


def test_logistic_regression_on_the_two_welding_robots_matches_scikit_learn() -> None:
    """FPS2 and FPD2 (label sets differ), standardised federatedly: held-out accuracy within
    1 point of scikit-learn's LogisticRegression(C=1) on the union, same penalty."""
    sites = _welding_sites(regression=False)
    evaluation = load_dataset("welding", seed=7)
    definition = {"quorum": 2, "rounds": 12, "algorithm": "logistic_regression", "features": 4,
                  "classes": 4, "standardise": True, "seed": 1, "regularisation": 1 / (2 * 2 * TRAIN)}
    outcome = keras_federation(definition, sites, evaluation)
    x, y, evaluation_x = _union_standardised(sites, evaluation.x)
    reference = LogisticRegression(C=1.0, max_iter=5000).fit(x, y).score(evaluation_x, evaluation.y)
    assert abs(outcome.history[-1]["accuracy"] - reference) <= 0.01, (outcome.history, reference)


def test_linear_regression_on_the_welding_score_matches_scikit_learn() -> None:
    """The quality score from the four features: R² on held-out welds within 0.01 of
    scikit-learn's Ridge on the union (Newton solves a quadratic in one round)."""
    sites = _welding_sites(regression=True)
    evaluation = load_dataset("welding", seed=7, regression=True)
    definition = {"quorum": 2, "rounds": 2, "algorithm": "linear_regression", "features": 4,
                  "standardise": True, "seed": 1, "regularisation": 1.0 / (2 * TRAIN)}
    outcome = keras_federation(definition, sites, evaluation)
    x, y, evaluation_x = _union_standardised(sites, evaluation.x)
    reference = r2_score(evaluation.y, Ridge(alpha=1.0).fit(x, y).predict(evaluation_x))
    assert abs(outcome.history[-1]["r2"] - reference) <= 0.01, (outcome.history, reference)
    assert set(outcome.history[-1]) == {"loss", "mse", "r2"}


def test_a_newton_update_that_cannot_be_right_is_refused() -> None:
    """An asymmetric Hessian or a negative loss is refused and leaves the step untouched."""
    weights = [np.zeros((2, 1), np.float32), np.zeros(1, np.float32)]
    step = for_round({"algorithm": "linear_regression", "features": 2}, weights)
    assert isinstance(step, NewtonStep)
    gradient, hessian = np.ones(3), np.eye(3)
    hessian[0, 1] = 5.0
    with pytest.raises(UpdateRejected, match="not symmetric"):
        step.add([gradient, hessian, np.array([1.0])], 10)
    with pytest.raises(UpdateRejected, match="negative loss"):
        step.add([gradient, np.eye(3), np.array([-1.0])], 10)
    assert step.count == 0
    with pytest.raises(ValueError, match="no update"):
        step.result()


def test_regression_metrics_are_mse_and_r2() -> None:
    """MSE and R² as defined; a constant target has R² 0, not a division by zero."""
    metrics = regression_metrics(np.array([1.0, 2.0, 3.0]), np.array([1.0, 2.0, 4.0]))
    assert metrics == {"loss": pytest.approx(1 / 3), "mse": pytest.approx(1 / 3), "r2": pytest.approx(0.5)}
    assert regression_metrics(np.ones(3), np.zeros(3))["r2"] == 0.0


def test_regression_data_has_a_continuous_target(tmp_path: Path) -> None:
    """Welding gives the quality score; CSV reads real targets; image sets and NaNs are refused."""
    scores = load_dataset("welding", robot="FPS2", regression=True)
    assert scores.is_regression and scores.y.dtype == np.float32 and scores.num_classes == 0
    assert len(np.unique(scores.y)) > 100
    table = tmp_path / "site.csv"
    table.write_text("a,b,y\n1,2,0.5\n3,4,-1.25\n")
    data = load_dataset(f"csv:{table}", label_column="y", regression=True)
    np.testing.assert_array_equal(data.y, np.array([0.5, -1.25], np.float32))
    table.write_text("a,b,y\n1,2,0.5\n")
    with pytest.raises(DataError, match="class labels, not a continuous target"):
        load_dataset("digits", regression=True)
    arrays = tmp_path / "site.npz"
    np.savez(arrays, x=np.ones((2, 2)), y=np.array([1.0, np.nan]))
    with pytest.raises(DataError, match=r"target at y\[1\] is nan"):
        load_dataset(f"npz:{arrays}", regression=True)


def test_a_linear_model_too_wide_for_newton_is_refused_at_creation() -> None:
    """Over 2048 parameters (the Hessian would pass 32 MiB) is a clear validation error."""
    with pytest.raises(ValidationError, match="3010 parameters"):
        TaskDefinition.model_validate({"quorum": 2, "rounds": 3, "algorithm": "logistic_regression",
                                       "features": 300, "classes": 10})
