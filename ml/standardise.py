"""Federated standardisation (seed §3.4.2): sites share per-feature moments, never samples.

Each participant sends `local_moments` of its training features; the aggregator `combine`s
them into a global mean and standard deviation and sends those back; everyone `apply`s them.

`sums_sq` holds the sum of squared deviations from the *local* mean, not the raw sum of
squares: the raw form gives var = E[x^2] - mean^2, which cancels catastrophically when
|mean| >> std (a feature of 1e6 +- 1 keeps no correct digit of its variance in float64).
Centred sums combine exactly with Chan et al.'s parallel formula and reveal no more.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

# A std this small relative to the feature's magnitude is rounding noise of a constant feature.
_RELATIVE_ZERO = 1e-12


# eq=False: ndarray fields make the generated __eq__ ambiguous.
@dataclass(frozen=True, eq=False)
class Moments:
    """Per-feature sample count, sum, and sum of squared deviations from the local mean."""

    count: int
    sums: np.ndarray
    sums_sq: np.ndarray


def local_moments(x: np.ndarray) -> Moments:
    """The moments of `x` over its first axis (samples), in float64."""
    values = np.asarray(x, dtype=np.float64)
    count = len(values)
    sums = values.sum(axis=0)
    if count == 0:
        return Moments(0, sums, np.zeros_like(sums))
    sums_sq = np.square(values - sums / count).sum(axis=0)
    return Moments(count, sums, sums_sq)


def combine(moments: list[Moments]) -> tuple[np.ndarray, np.ndarray]:
    """The global (mean, population std) of all sites' data, as if it were concatenated."""
    present = [m for m in moments if m.count > 0]
    if not present:
        raise ValueError("no site reported any samples: cannot standardise")
    shapes = {m.sums.shape for m in present} | {m.sums_sq.shape for m in present}
    if len(shapes) != 1:
        raise ValueError(f"sites disagree on the feature shape: {sorted(shapes)}")
    total = sum(m.count for m in present)
    mean: np.ndarray = np.sum([m.sums for m in present], axis=0) / total
    # Chan et al.: each site's spread about its own mean, plus its mean's offset from the global.
    spread = np.sum([m.sums_sq + m.count * np.square(m.sums / m.count - mean) for m in present],
                    axis=0)
    return mean, standard_deviation(mean, spread / total)


def standard_deviation(mean: np.ndarray, variance: np.ndarray) -> np.ndarray:
    """The std to divide by: sqrt(variance), with constant features given 1."""
    std = np.sqrt(variance)
    # A constant feature has std 0; dividing by it gives NaN/inf. With std 1 it just centres
    # to 0, which carries the (absent) information faithfully.
    constant = std <= _RELATIVE_ZERO * np.maximum(np.abs(mean), 1.0)
    return np.where(constant, 1.0, std)


def apply(x: np.ndarray, mean: np.ndarray, std: np.ndarray) -> np.ndarray:
    """`x` standardised with the global moments, as float32 (computed in float64)."""
    standardised: np.ndarray = (np.asarray(x, dtype=np.float64) - mean) / std
    return standardised.astype(np.float32)
