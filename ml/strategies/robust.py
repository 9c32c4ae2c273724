"""Robust aggregation: coordinate-wise median and trimmed mean, and clipping of each update.

Median and trimmed mean need every update of the round at once, per coordinate. Rather than hold
N models in memory, each update is appended (float32, flat) to an unlinked temporary file as it
arrives; the result reads the file back as an (N, P) memory map, a block of coordinates at a
time. Memory stays about one model plus N × block; the disk holds N models until the round
closes. Both ignore sample counts (every member weighs the same): a weight a member claims is
exactly what a robust rule must not trust.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from typing import Any

import numpy as np

from ml.strategies.fedavg import Template, require_fit

Array = np.ndarray[Any, Any]
# Coordinates per block when the result is computed: N × 1M × 4 bytes of memory per block.
_BLOCK = 1 << 20


class _Spooled:
    """The round's updates, flat float32 rows in a temporary file."""

    def __init__(self, template: Template) -> None:
        self.template = template
        self.size = sum(math.prod(spec.shape) for spec in template)
        self.count = 0
        self._file = tempfile.TemporaryFile()  # noqa: SIM115 - closed in result()

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Append one checked update (its sample count is not used by a robust rule)."""
        require_fit(self.template, weights)
        for array in weights:
            # The array's own memory, written as it is (float32 already, as Keras models are):
            # `.tobytes()` made a copy of the update only to write it.
            flat = np.ascontiguousarray(array, dtype=np.float32).reshape(-1)
            self._file.write(flat.data.cast("B"))
        self.count += 1

    def result(self) -> list[Array]:
        """The rule applied per coordinate, block by block, reshaped to the template."""
        if self.count == 0:
            raise ValueError("no update has been added: nothing to aggregate")
        self._file.flush()
        rows = np.memmap(self._file, dtype=np.float32, mode="r", shape=(self.count, self.size))
        flat = np.empty(self.size, dtype=np.float64)
        for start in range(0, self.size, _BLOCK):
            flat[start:start + _BLOCK] = self.combine(np.asarray(rows[:, start:start + _BLOCK]))
        del rows
        self._file.close()
        return _unflatten(flat, self.template)

    def combine(self, block: Array) -> Array:
        """One block of coordinates (rows: updates) to one value per coordinate."""
        raise NotImplementedError


class Median(_Spooled):
    """The coordinate-wise median of the updates."""

    def combine(self, block: Array) -> Array:
        median: Array = np.median(block, axis=0)
        return median


class TrimmedMean(_Spooled):
    """Per coordinate, drop the `trim` fraction of largest and smallest values, average the rest."""

    def __init__(self, template: Template, trim: float) -> None:
        super().__init__(template)
        self.trim = trim

    def combine(self, block: Array) -> Array:
        n = block.shape[0]
        cut = min(int(math.floor(self.trim * n)), (n - 1) // 2)
        ordered = np.sort(block, axis=0)
        kept: Array = ordered[cut:n - cut].mean(axis=0, dtype=np.float64)
        return kept


class Clipped:
    """Clips each update's difference from the global model to an L2 norm, then folds it."""

    def __init__(self, inner: Any, global_weights: Sequence[Array], clip_norm: float) -> None:
        self.inner = inner
        self.template: Template = inner.template
        self.global_weights = [np.asarray(w) for w in global_weights]
        self.clip_norm = clip_norm
        self.clipped = 0

    @property
    def count(self) -> int:
        return int(self.inner.count)

    def add(self, weights: Sequence[Array], samples: int) -> None:
        """Fold `global + delta × min(1, clip_norm / ‖delta‖)`."""
        require_fit(self.template, weights)
        norm = math.sqrt(sum(float(np.sum(np.square(w.astype(np.float64) - g, dtype=np.float64)))
                             for w, g in zip(weights, self.global_weights)))
        scale = min(1.0, self.clip_norm / norm) if norm > 0 else 1.0
        if scale < 1.0:
            self.clipped += 1
            weights = [(g + (w.astype(np.float64) - g) * scale).astype(w.dtype)
                       for w, g in zip(weights, self.global_weights)]
        self.inner.add(weights, samples)

    def result(self) -> list[Array]:
        """The inner rule's result over the clipped updates."""
        result: list[Array] = self.inner.result()
        return result


def _unflatten(flat: Array, template: Template) -> list[Array]:
    arrays, offset = [], 0
    for spec in template:
        size = math.prod(spec.shape)
        arrays.append(flat[offset:offset + size].reshape(spec.shape).astype(spec.dtype))
        offset += size
    return arrays
