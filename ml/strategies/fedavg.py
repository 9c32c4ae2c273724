"""Sample-weighted federated averaging (FedAvg), folded one update at a time.

The aggregator never holds more than one update: each is checked, added into float64 running
sums in place, and dropped, so memory is O(model) whatever the number of participants. An update
that arrived as a mapping of its spool file is read a block at a time, and each block's pages are
given back once read (`streams.pages`), so not even that one update is resident whole.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from streams.pages import blocks


class UpdateRejected(ValueError):
    """An update does not fit the model; the message is the reason the daemon records."""


@dataclass(frozen=True)
class ArraySpec:
    """The shape and dtype one weight array must have."""

    shape: tuple[int, ...]
    dtype: np.dtype


Template = tuple[ArraySpec, ...]


def template_of(weights: Sequence[np.ndarray]) -> Template:
    """The template (shapes and dtypes) of a model's weights, e.g. `model.get_weights()`."""
    return tuple(ArraySpec(tuple(w.shape), np.dtype(w.dtype)) for w in weights)


def check_update(template: Template, weights: Sequence[np.ndarray]) -> str | None:
    """Why `weights` cannot be averaged into a model of `template`, or None if it can."""
    if len(weights) != len(template):
        return f"expected {len(template)} weight arrays, got {len(weights)}"
    for index, (spec, array) in enumerate(zip(template, weights)):
        if not isinstance(array, np.ndarray):
            return f"array {index} is a {type(array).__name__}, not a numpy array"
        if array.shape != spec.shape:
            return f"array {index} has shape {array.shape}, expected {spec.shape}"
        if array.dtype != spec.dtype:
            return f"array {index} has dtype {array.dtype}, expected {spec.dtype}"
        if not all_finite(array):
            return f"array {index} holds NaN or infinite values"
    return None


def require_fit(template: Template, weights: Sequence[np.ndarray]) -> None:
    """Raise UpdateRejected, saying why, unless `check_update` passes: every strategy's `add`
    calls this before it folds a byte."""
    reason = check_update(template, weights)
    if reason is not None:
        raise UpdateRejected(reason)


def all_finite(array: np.ndarray) -> bool:
    """Whether every element is finite, checked a block at a time: `np.isfinite(array)` whole
    would make a boolean temporary of the array's length (10 MB for a 10M-weight layer)."""
    flat = array.reshape(-1)
    return all(bool(np.isfinite(flat[start:stop]).all()) for start, stop in blocks(flat, BLOCK))


class RunningAverage:
    """The sample-weighted mean of the updates added so far, without keeping them."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self._sums = [np.zeros(spec.shape, dtype=np.float64) for spec in template]
        self.count = 0
        self.total_samples = 0
        self._result: list[np.ndarray] | None = None

    def add(self, weights: Sequence[np.ndarray], samples: int) -> None:
        """Fold one participant's weights, trained on `samples` samples, into the sums."""
        if isinstance(samples, bool) or not isinstance(samples, int | np.integer) or samples < 1:
            raise UpdateRejected(f"sample count must be a positive integer, got {samples!r}")
        if self._result is not None:
            raise ValueError("the fold has ended: its sums became the result")
        require_fit(self.template, weights)
        for total, array in zip(self._sums, weights):
            fold_into(total, array, float(samples))
        self.count += 1
        self.total_samples += int(samples)

    def result(self) -> list[np.ndarray]:
        """The weighted average, in each array's original dtype (float32 for Keras models).

        Folding ends here: each float64 sum is turned into its mean in its own memory, which
        then shrinks to the mean's size (`mean_in_place`), so the result never sits beside the
        sums. Asking again gives the same arrays; adding afterwards is refused.
        """
        if self.count == 0:
            raise ValueError("no update has been added: nothing to average")
        if self._result is None:
            sums, self._sums = self._sums, []
            self._result = [mean_in_place(sums.pop(0), self.total_samples, spec.dtype)
                            for spec in self.template]
        return list(self._result)


# Elements per step of the blockwise fold and check: 64 Ki float64 (512 KiB) of
# scratch, small enough to stay in cache and to add nothing to the aggregator's
# memory beside its running sums, large enough that the Python loop costs little
# (153 steps for 10M weights).
BLOCK = 1 << 16


def fold_into(total: np.ndarray, array: np.ndarray, factor: float) -> None:
    """total += float64(array) * factor, in place, a block at a time.

    Exactly the one-shot `total += np.multiply(array, factor, dtype=np.float64)` (each element
    is multiplied in float64, then added), without its temporary of the model's size in float64.
    """
    flat_total, flat = total.reshape(-1), array.reshape(-1)
    scratch = np.empty(min(BLOCK, flat.size), dtype=np.float64)
    for start, stop in blocks(flat, BLOCK):
        part = flat_total[start:stop]
        step = scratch[:part.size]
        np.multiply(flat[start:stop], factor, out=step, dtype=np.float64)
        np.add(part, step, out=part)


def mean_of(total: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    """(total / count) cast to `dtype`: divided in float64 and cast through numpy's own small
    buffers, straight into the result (no float64 temporary of the model's size)."""
    result = np.empty(total.shape, dtype=dtype)
    np.divide(total, count, out=result, casting="same_kind")
    return result


def mean_in_place(total: np.ndarray, count: int, dtype: np.dtype) -> np.ndarray:
    """`mean_of(total, count, dtype)`, bit for bit, written over `total`'s memory, which is then
    shrunk to the result's size; `total` must not be used afterwards.

    Why: the float64 sums are twice the model; a separate result would make it three times at
    the end of every round. A block is copied out to scratch, divided in float64 and cast into
    the front of the same memory: element i lands at byte i × itemsize ≤ 8i, which is never past
    an element still to be read. The shrink is a realloc (for a large array, the kernel gives
    the tail back). Sums that are not a plain owned float64 array get `mean_of`.
    """
    dtype = np.dtype(dtype)
    if total.dtype != np.float64 or dtype.itemsize > 8 or not (total.flags.owndata and total.flags.c_contiguous):
        return mean_of(total, count, dtype)
    size, shape = total.size, total.shape
    flat = total.reshape(-1)
    out = flat.view(np.uint8)[:size * dtype.itemsize].view(dtype)
    scratch = np.empty(min(BLOCK, size), dtype=np.float64)
    for start in range(0, size, BLOCK):
        step = scratch[:min(BLOCK, size - start)]
        step[...] = flat[start:start + step.size]
        np.divide(step, count, out=step)
        out[start:start + step.size] = step
    del flat, out  # no view may outlive the realloc below
    total.resize(-(-size * dtype.itemsize // 8), refcheck=False)
    return total.view(np.uint8)[:size * dtype.itemsize].view(dtype).reshape(shape)


def weighted_metrics(reports: Sequence[tuple[dict[str, float], int]]) -> dict[str, float]:
    """Each metric's mean over the reports that have it, weighted by their sample counts."""
    sums: dict[str, float] = {}
    weights: dict[str, int] = {}
    for metrics, samples in reports:
        for name, value in metrics.items():
            sums[name] = sums.get(name, 0.0) + float(value) * samples
            weights[name] = weights.get(name, 0) + samples
    return {name: sums[name] / weights[name] for name in sums if weights[name] > 0}
