"""Fold: check an accepted update's content and add it into the running aggregate at once.

Memory stays one model however many participants send: each update is folded the moment it
passes, then dropped.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.verify import Accepted, metrics_problem
from ml.standardise import Moments
from ml.strategies import Strategy
from ml.strategies.fedavg import UpdateRejected
from schema.dataplane import StatsMeta, UpdateMeta
from streams.codec import CodecError, bundle_to_weights


@dataclass(frozen=True)
class Refused:
    """Why an update's content cannot be folded (recorded as the rejection reason)."""

    reason: str


def fold_update(average: Strategy, accepted: Accepted, sample_cap: int | None = None) -> UpdateMeta | Refused:
    """Add the update to `average` and return its metadata, or say why it was refused.

    An update claiming more samples than the task allows is refused, not capped: its weight in
    the average is what it claims, and a capped liar would still count as much as the cap.
    """
    try:
        meta = UpdateMeta.model_validate(accepted.bundle.meta)
    except ValueError as exc:
        return Refused(f"malformed update metadata: {_first_line(exc)}")
    if sample_cap is not None and meta.samples > sample_cap:
        return Refused(f"claims {meta.samples} samples, more than the task allows ({sample_cap}: "
                       "max_samples, else training_size)")
    try:
        weights = bundle_to_weights(accepted.bundle)
    except CodecError as exc:
        return Refused(f"malformed update: {exc}")
    problem = metrics_problem(meta)
    if problem:
        return Refused(problem)
    try:
        # Every strategy checks what it is given (`check_update`: arrays, shapes, dtypes, all
        # finite) before it folds a byte, and says why it refuses. Checked here as well, a 40 MB
        # update was read once more, only to be checked again.
        average.add(weights, meta.samples)
    except UpdateRejected as exc:
        return Refused(str(exc))
    return meta


def read_moments(accepted: Accepted) -> Moments | Refused:
    """A participant's feature statistics for standardisation, or why they were refused."""
    try:
        meta = StatsMeta.model_validate(accepted.bundle.meta)
        sums = np.asarray(accepted.bundle.arrays["sums"], dtype=np.float64)
        sums_sq = np.asarray(accepted.bundle.arrays["sums_sq"], dtype=np.float64)
    except (ValueError, KeyError) as exc:
        return Refused(f"malformed statistics: {exc}")
    if not (np.all(np.isfinite(sums)) and np.all(np.isfinite(sums_sq))):
        return Refused("non-finite statistics")
    return Moments(count=meta.count, sums=sums, sums_sq=sums_sq)


def _first_line(error: Any) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__
