"""Federated standardisation gives the moments of the concatenated data, exactly enough."""

from __future__ import annotations

import numpy as np
import pytest

from ml.standardise import Moments, apply, combine, local_moments


def _sites(seed: int) -> list[np.ndarray]:
    """Three sites of unequal size, features at scales 1e-3, 1, 1e6 (the last far from 0)."""
    rng = np.random.default_rng(seed)
    sites = []
    for n, shift in ((50, 0.0), (700, 1.0), (3, -2.0)):
        x = np.column_stack([rng.normal(1e-3 * (1 + shift), 1e-4, n),
                             rng.normal(shift, 1.0, n),
                             rng.normal(1e6 + 10 * shift, 3.0, n)])
        sites.append(x)
    return sites


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.max(np.abs(got - want) / np.abs(want)))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_combined_moments_equal_numpy_on_the_concatenation(seed: int) -> None:
    """Mean and population std agree with numpy's to 1e-9 relative, for every scale."""
    sites = _sites(seed)
    mean, std = combine([local_moments(x) for x in sites])
    everything = np.concatenate(sites)
    assert _relative_error(mean, everything.mean(axis=0)) < 1e-9
    assert _relative_error(std, everything.std(axis=0)) < 1e-9


def test_raw_float32_input_is_summed_in_float64() -> None:
    """float32 features still give float64 moments matching numpy's float64 answer."""
    x = _sites(3)[1].astype(np.float32)
    moments = local_moments(x)
    assert moments.sums.dtype == np.float64 and moments.sums_sq.dtype == np.float64
    _, std = combine([moments])
    assert _relative_error(std, x.astype(np.float64).std(axis=0)) < 1e-9


def test_constant_feature_gets_std_one_and_empty_sites_are_ignored() -> None:
    """A zero-variance feature divides by 1 (not 0), and a site with no rows adds nothing."""
    x = np.column_stack([np.full(10, 1e6 + 0.1), np.arange(10.0)])
    mean, std = combine([local_moments(x[:4]), local_moments(x[4:]), local_moments(x[:0])])
    assert std[0] == 1.0 and np.isclose(std[1], np.arange(10.0).std())
    standardised = apply(x, mean, std)
    assert standardised.dtype == np.float32 and np.all(np.isfinite(standardised))
    assert np.allclose(standardised[:, 1].mean(), 0.0, atol=1e-6)


def test_combine_refuses_no_data_and_mismatched_features() -> None:
    """No samples anywhere, or sites with different feature counts, are errors."""
    with pytest.raises(ValueError, match="no site"):
        combine([Moments(0, np.zeros(2), np.zeros(2))])
    with pytest.raises(ValueError, match="feature shape"):
        combine([local_moments(np.ones((2, 2))), local_moments(np.ones((2, 3)))])
