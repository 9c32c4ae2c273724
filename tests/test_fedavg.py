"""FedAvg as a running fold: exact weighted mean, constant memory, bad updates named."""

from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

from ml.strategies.fedavg import (
    RunningAverage,
    UpdateRejected,
    check_update,
    template_of,
    weighted_metrics,
)

SHAPES = [(300, 200), (200,), (200, 10), (10,)]


def _update(rng: np.random.Generator) -> list[np.ndarray]:
    return [rng.normal(0.0, 1.0, shape).astype(np.float32) for shape in SHAPES]


def test_weighted_average_equals_numpy_reference() -> None:
    """The fold gives sum(n_i * w_i) / sum(n_i) per array, to 1e-6, in float32."""
    rng = np.random.default_rng(0)
    updates = [_update(rng) for _ in range(7)]
    samples = [int(s) for s in rng.integers(1, 5000, len(updates))]
    fold = RunningAverage(template_of(updates[0]))
    for weights, n in zip(updates, samples):
        fold.add(weights, n)
    result = fold.result()
    for index, array in enumerate(result):
        stacked = np.stack([u[index].astype(np.float64) for u in updates])
        reference = np.average(stacked, axis=0, weights=samples)
        assert array.dtype == np.float32
        np.testing.assert_allclose(array, reference, rtol=1e-6, atol=1e-6)
    assert fold.count == 7 and fold.total_samples == sum(samples)


def _peak_while_folding(updates: int) -> int:
    """Peak traced bytes while folding `updates` updates made (and dropped) one at a time."""
    rng = np.random.default_rng(1)
    template = template_of(_update(rng))
    tracemalloc.start()
    fold = RunningAverage(template)
    for _ in range(updates):
        fold.add(_update(rng), 10)
    fold.result()
    peak = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    return peak


def test_memory_does_not_grow_with_the_number_of_participants() -> None:
    """Folding 50 updates peaks within half a model of folding 2: nothing is kept."""
    model_bytes = sum(int(np.prod(s)) for s in SHAPES) * 4
    few, many = _peak_while_folding(2), _peak_while_folding(50)
    assert many - few < 0.5 * model_bytes, (few, many, model_bytes)
    assert many < 8 * model_bytes  # sums (2x, float64) + one update + temporaries


def test_check_update_names_each_kind_of_bad_update() -> None:
    """Wrong count, shape, dtype, or a NaN/inf value each give a reason; a good one None."""
    good = _update(np.random.default_rng(2))
    template = template_of(good)
    assert check_update(template, good) is None
    nan, inf = [w.copy() for w in good], [w.copy() for w in good]
    nan[1][3], inf[2][0, 0] = np.nan, -np.inf
    cases = {
        "expected 4 weight arrays, got 3": good[:3],
        "array 0 has shape (200, 300)": [good[0].T, *good[1:]],
        "array 3 has dtype float64": [*good[:3], good[3].astype(np.float64)],
        "array 1 holds NaN": nan,
        "array 2 holds NaN or infinite": inf,
        "array 0 is a list": [good[0].tolist(), *good[1:]],
    }
    for reason, weights in cases.items():
        found = check_update(template, weights)
        assert found is not None and found.startswith(reason), (reason, found)


def test_add_refuses_bad_updates_and_sample_counts_without_changing_the_sums() -> None:
    """A rejected add leaves the fold as it was."""
    rng = np.random.default_rng(3)
    good = _update(rng)
    fold = RunningAverage(template_of(good))
    fold.add(good, 5)
    with pytest.raises(UpdateRejected, match="holds NaN"):
        fold.add([np.full(s, np.nan, np.float32) for s in SHAPES], 5)
    for samples in (0, -1, 2.5, True):
        with pytest.raises(UpdateRejected, match="sample count"):
            fold.add(good, samples)  # type: ignore[arg-type]
    assert fold.count == 1 and fold.total_samples == 5
    np.testing.assert_array_equal(fold.result()[0], good[0])


def test_empty_fold_has_no_result() -> None:
    """Averaging nothing is an error, not zeros."""
    with pytest.raises(ValueError, match="no update"):
        RunningAverage(template_of(_update(np.random.default_rng(4)))).result()


def test_weighted_metrics_weights_by_samples() -> None:
    """Each metric is averaged over the reports that carry it, weighted by sample count."""
    merged = weighted_metrics([({"accuracy": 0.5, "loss": 1.0}, 100),
                               ({"accuracy": 1.0}, 300)])
    assert merged == {"accuracy": pytest.approx(0.875), "loss": pytest.approx(1.0)}
    assert weighted_metrics([]) == {}


@pytest.mark.parametrize("dtype", [np.float16, np.float32, np.float64])
def test_blockwise_fold_and_mean_are_bit_identical_to_the_one_shot_formulas(
        dtype: type, monkeypatch: pytest.MonkeyPatch) -> None:
    """The fold adds float64(w) * n a block at a time and the mean divides straight into the
    result's dtype: with a block far smaller than the arrays (and arrays that do not divide into
    it, 0-d and empty ones) the results equal `total += np.multiply(w, n, dtype=float64)` and
    `(total / N).astype(dtype)` bit for bit."""
    monkeypatch.setattr("ml.strategies.fedavg.BLOCK", 1000)
    rng = np.random.default_rng(7)
    shapes = [(), (0,), (5,), (37, 111), (3001, 7)]
    updates = [[rng.normal(0.0, 3.0, shape).astype(dtype) for shape in shapes] for _ in range(4)]
    samples = [3, 1000, 7, 12345]
    fold = RunningAverage(template_of(updates[0]))

    for weights, n in zip(updates, samples):
        fold.add(weights, n)

    for index, array in enumerate(fold.result()):
        total = np.zeros(shapes[index], dtype=np.float64)
        for weights, n in zip(updates, samples):
            total += np.multiply(weights[index], float(n), dtype=np.float64)
        expected = (total / sum(samples)).astype(dtype)
        assert array.dtype == expected.dtype and array.shape == expected.shape
        assert np.array_equal(array, expected)


@pytest.mark.parametrize("position", [0, 999, 1000, 2500, 3000 * 7 - 1])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_a_non_finite_value_is_found_in_any_block(position: int, bad: float,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The finiteness check goes a block at a time: a NaN or infinity at the first element, on
    either side of a block boundary or at the last element of a partial block is still refused."""
    monkeypatch.setattr("ml.strategies.fedavg.BLOCK", 1000)
    good = [np.zeros((3000, 7), dtype=np.float32), np.ones(3, dtype=np.float32)]
    bad_update = [good[0].copy(), good[1]]
    bad_update[0].reshape(-1)[position] = bad

    assert check_update(template_of(good), good) is None
    assert check_update(template_of(good), bad_update) == "array 0 holds NaN or infinite values"


def test_the_result_is_taken_once_then_given_again_and_folding_is_over() -> None:
    """result() turns the sums into the mean in their own memory: asking again gives equal
    arrays (the same values, shapes and dtypes), and a later add is refused, not folded into
    memory that now holds the mean."""
    rng = np.random.default_rng(11)
    first, second = _update(rng), _update(rng)
    fold = RunningAverage(template_of(first))
    fold.add(first, 1)
    fold.add(second, 3)

    once, again = fold.result(), fold.result()

    for got, repeat, a, b in zip(once, again, first, second):
        expected = ((np.float64(a) * 1 + np.float64(b) * 3) / 4).astype(np.float32)
        assert np.array_equal(got, expected) and np.array_equal(repeat, expected)
        assert got.shape == a.shape and got.dtype == np.float32
    with pytest.raises(ValueError, match="fold has ended"):
        fold.add(first, 1)
