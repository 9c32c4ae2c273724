"""The in-memory dataset every connector returns, and the errors they raise."""

from __future__ import annotations

import sys
import warnings
from dataclasses import dataclass
from typing import TextIO

import numpy as np


class DataError(ValueError):
    """Local data cannot be used; the message names the file, row, column or option at fault."""


class DataWarning(UserWarning):
    """Local data is usable but not as asked (e.g. fewer samples than the task wants)."""


def plain_data_warnings() -> None:
    """Show DataWarnings as `warning: MESSAGE` (Python's default adds a source path and code line,
    which mean nothing to the person whose data it is); other warnings are shown as before."""
    default = warnings.showwarning

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if issubclass(category, DataWarning):
            print(f"warning: {message}", file=file or sys.stderr, flush=True)
        else:
            default(message, category, filename, lineno, file, line)

    warnings.showwarning = show


# eq=False: ndarray fields make the generated __eq__ ambiguous; identity is enough.
@dataclass(frozen=True, eq=False)
class Dataset:
    """Features `x` (float32, one sample per row) and integer labels `y` (int64).

    A regression dataset (for linear regression) has `num_classes` 0 and a continuous
    target `y` (float32) instead of labels.
    """

    x: np.ndarray
    y: np.ndarray
    feature_names: list[str] | None
    num_classes: int
    name: str

    @property
    def is_regression(self) -> bool:
        """Whether `y` is a continuous target rather than class labels."""
        return self.num_classes == 0

    def __post_init__(self) -> None:
        label_dtype = np.float32 if self.is_regression else np.int64
        if self.x.dtype != np.float32 or self.y.dtype != label_dtype:
            raise DataError(f"{self.name}: x must be float32 and y {np.dtype(label_dtype)}, "
                            f"got {self.x.dtype} and {self.y.dtype}")
        if len(self.x) != len(self.y) or self.y.ndim != 1:
            raise DataError(f"{self.name}: {len(self.x)} samples but {len(self.y)} labels")
        if self.is_regression:
            return
        if len(self.y) and (self.y.min() < 0 or self.y.max() >= self.num_classes):
            raise DataError(f"{self.name}: labels must lie in 0..{self.num_classes - 1}, "
                            f"found {self.y.min()}..{self.y.max()}")

    def __len__(self) -> int:
        return len(self.y)

    def subset(self, index: np.ndarray, name: str) -> Dataset:
        """The samples at `index`, under a new name."""
        return Dataset(self.x[index], self.y[index], self.feature_names, self.num_classes, name)
