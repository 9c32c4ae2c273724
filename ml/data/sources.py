"""Data connectors: a spec such as `mnist:/data/mnist` or `csv:site.csv` becomes a `Dataset`.

Specs are `NAME` or `NAME:ARGUMENT`:

- `digits`                scikit-learn's bundled 8x8 digits, flat: x is (1797, 64) in [0, 1]
                          (flat because the `digits-mlp` model takes 64 features)
- `mnist:PATH`            a folder of the original IDX files (gzipped or not) or a Keras-style
                          mnist.npz; x is (n, 28, 28, 1) in [0, 1]. Option `subset`: train|test
- `npz:PATH`              arrays `x` and `y` (optional `feature_names`); option `num_classes`
- `csv:PATH`              a header row, numeric features and an integer label column named by
                          option `label_column`; option `num_classes`
- `welding[:ROBOT]`       seeded synthetic welding data (ml.data.welding), ROBOT FPS2 or
                          FPD2 (both when omitted); options `robot`, `samples` (per robot;
                          default: each robot's own row count)

With `regression=True` (a linear-regression task) the target is continuous: csv and npz read
any finite number as the target, welding gives the quality score WCLSRES before binning, and
the image sets (which only have class labels) are refused.

Relative paths are read from `data_dir` when it is given. Both daemons use this module: the
participant for its local data, the aggregator for its `--eval-data`.
"""

from __future__ import annotations

import csv
import math
import warnings
import zipfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from ml.data.dataset import DataError, Dataset, DataWarning
from ml.data.mnist import load_mnist
from ml.data.welding import load_welding

# Options the `participate` command takes as flags; errors name the flag, not the keyword.
OPTION_FLAGS = {"label_column": "--label-column", "robot": "--robot"}


def load_dataset(spec: str, *, data_dir: str | Path | None = None, shard: str | None = None,
                 seed: int = 0, regression: bool = False, **options: Any) -> Dataset:
    """The dataset a spec names, optionally only part `i/n` of it (parts numbered from 1).

    `regression`: read a continuous target instead of class labels (linear regression).
    """
    name, _, argument = spec.partition(":")
    if name not in _SOURCES:
        raise DataError(f"unknown data source {name!r} in {spec!r} "
                        f"(known: {', '.join(known_sources())}; write NAME or NAME:PATH)")
    # None means "not given", so a CLI may pass every flag it has without tripping the check.
    given = {key: value for key, value in options.items() if value is not None}
    allowed = _OPTIONS[name]
    for key in given:
        if key not in allowed:
            takes = ", ".join(option_name(k) for k in sorted(allowed)) or "nothing more"
            raise DataError(f"{option_name(key)} does not apply to {name} data (it takes {takes})")
    base = Path(data_dir) if data_dir is not None else None
    if regression:
        if name in ("digits", "mnist"):
            raise DataError(f"{name} has class labels, not a continuous target: a regression "
                            "task needs csv, npz or welding data")
        given["regression"] = True
    dataset = _SOURCES[name](argument or None, base, seed, given)
    return dataset if shard is None else shard_dataset(dataset, *parse_shard(shard))


def option_name(key: str) -> str:
    """How a user names an option: the daemons' flag where there is one (`--label-column`)."""
    return OPTION_FLAGS.get(key, f"option {key}")


def known_sources() -> list[str]:
    """The data source names a spec may start with."""
    return sorted(_SOURCES)


def parse_shard(text: str) -> tuple[int, int]:
    """`"i/n"` as (i, n), with 1 <= i <= n: part i of n, numbered from 1."""
    left, slash, right = text.partition("/")
    try:
        part, parts = int(left), int(right)
    except ValueError:
        part = parts = 0
    if not slash or parts < 1:
        raise DataError(f"shard {text!r}: write i/n, e.g. 1/3 for the first of three parts")
    if not 1 <= part <= parts:
        raise DataError(f"shard {text!r}: part {part} is outside 1..{parts} "
                        f"(parts are numbered from 1)")
    return part, parts


def shard_dataset(dataset: Dataset, part: int, parts: int) -> Dataset:
    """Samples part-1, part-1+parts, ...: disjoint parts that need no shared seed to agree."""
    # Striding (not contiguous blocks) keeps every class in every part even when the file
    # is sorted by label, and every participant computes the same split from (i, n) alone.
    index = np.arange(part - 1, len(dataset), parts)
    if len(index) == 0:
        raise DataError(f"shard {part}/{parts} of {dataset.name} is empty "
                        f"(it has {len(dataset)} samples)")
    return dataset.subset(index, f"{dataset.name}[{part}/{parts}]")


def split_and_sample(ds: Dataset, training_size: int | None, test_size: int | None,
                     seed: int) -> tuple[Dataset, Dataset]:
    """Disjoint (train, test) samples; fewer than asked (with a DataWarning) if data is short.

    None for `training_size` means all samples not taken for test; None for `test_size`
    means no local test set. The test set is drawn first, so it depends only on the seed
    and `test_size`.
    """
    n_train, n_test, note = _fit_sizes(len(ds), training_size, test_size)
    if note:
        warnings.warn(f"{ds.name}: {note}", DataWarning, stacklevel=2)
    order = np.random.default_rng(seed).permutation(len(ds))
    test = ds.subset(np.sort(order[:n_test]), f"{ds.name} test")
    train = ds.subset(np.sort(order[n_test:n_test + n_train]), f"{ds.name} train")
    return train, test


def _fit_sizes(n: int, training_size: int | None, test_size: int | None
               ) -> tuple[int, int, str | None]:
    """(train, test, note): the sizes asked for, scaled down in proportion when n is short."""
    for label, size in (("training_size", training_size), ("test_size", test_size)):
        if size is not None and size < 1:
            raise DataError(f"{label}={size}: must be at least 1 (or unset)")
    if n == 0:
        raise DataError("no local samples to train on")
    want_test = test_size or 0
    want_train = training_size if training_size is not None else max(n - want_test, 0)
    if want_train >= 1 and want_train + want_test <= n:
        return want_train, want_test, None
    # Keep the train:test ratio asked for; when training_size was unset, keep 80:20.
    share = want_test / (want_train + want_test) if want_train else 0.2
    n_test = min(math.floor(n * share), n - 1)
    n_train = n - n_test if training_size is None else min(want_train, n - n_test)
    note = (f"only {n} local samples: using {n_train} for training "
            f"(asked {training_size if training_size is not None else 'the rest'}) "
            f"and {n_test} for test (asked {want_test})")
    return n_train, n_test, note


def _resolve(argument: str | None, base: Path | None, source: str) -> Path:
    if argument is None:
        if base is None:
            raise DataError(f"{source} needs a path: write {source}:PATH or give data_dir")
        return base
    path = Path(argument).expanduser()
    return base / path if base is not None and not path.is_absolute() else path


def _digits(argument: str | None, base: Path | None, seed: int,
            options: dict[str, Any]) -> Dataset:
    from sklearn.datasets import (
        load_digits,  # bundled with scikit-learn: nothing downloads
    )

    if argument is not None:
        raise DataError(f"digits takes no argument (got {argument!r})")
    bunch = load_digits()
    x = (bunch.data / 16.0).astype(np.float32)  # pixel intensities are 0..16
    return Dataset(x, bunch.target.astype(np.int64), list(bunch.feature_names), 10, "digits")


def _mnist(argument: str | None, base: Path | None, seed: int,
           options: dict[str, Any]) -> Dataset:
    return load_mnist(_resolve(argument, base, "mnist"), options.get("subset"))


def _welding(argument: str | None, base: Path | None, seed: int,
             options: dict[str, Any]) -> Dataset:
    robot = options.get("robot", argument)
    if argument is not None and robot != argument:
        raise DataError(f"welding:{argument} and --robot {robot} disagree")
    samples = _int_option(options, "samples", 0) if "samples" in options else None
    return load_welding(robot, samples, seed, regression=bool(options.get("regression")))


def _npz(argument: str | None, base: Path | None, seed: int,
         options: dict[str, Any]) -> Dataset:
    path = _resolve(argument, base, "npz")
    # allow_pickle=False: the file may come from anywhere, and unpickling runs code.
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [k for k in ("x", "y") if k not in archive.files]
            if missing:
                raise DataError(f"{path}: no array {missing[0]!r} "
                                f"(found {', '.join(archive.files) or 'none'})")
            x, y = archive["x"], archive["y"]
            names = archive["feature_names"] if "feature_names" in archive.files else None
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as error:
        if isinstance(error, DataError):
            raise
        raise DataError(f"{path}: not a readable .npz with arrays x and y ({error})") from error
    names = None if names is None else [str(n) for n in names]
    return _tabular(path, x, y, names, options, lambda i: f"y[{i}]")


def _tabular(path: Path, x: np.ndarray, y: np.ndarray, names: list[str] | None,
             options: dict[str, Any], where: Callable[[int], str]) -> Dataset:
    """Check and convert arrays read from a user's file into a Dataset."""
    if not np.issubdtype(x.dtype, np.number) or x.ndim < 2:
        raise DataError(f"{path}: x must be a numeric array with one sample per row, "
                        f"got dtype {x.dtype} and shape {x.shape}")
    if not np.all(np.isfinite(x)):
        row = int(np.argwhere(~np.isfinite(x))[0][0])
        raise DataError(f"{path}: x[{row}] holds a NaN or infinite value")
    if options.get("regression"):
        return Dataset(x.astype(np.float32), _continuous_target(path, y, where), names, 0, f"{path.name}")
    labels = _integer_labels(path, y, where)
    num_classes = _int_option(options, "num_classes", int(labels.max(initial=-1)) + 1)
    if len(labels) and labels.max() >= num_classes:
        raise DataError(f"{path}: label {labels.max()} is not below num_classes={num_classes}")
    return Dataset(x.astype(np.float32), labels, names, num_classes, f"{path.name}")


def _continuous_target(path: Path, y: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """A regression target as float32; every value must be a finite number."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: y must be a 1-D numeric array, got {y.dtype} {y.shape}")
    bad = np.flatnonzero(~np.isfinite(y))
    if len(bad):
        raise DataError(f"{path}: target at {where(int(bad[0]))} is {y[bad[0]].item()!r}; "
                        f"a regression target must be a finite number")
    return y.astype(np.float32)


def _integer_labels(path: Path, y: np.ndarray, where: Callable[[int], str]) -> np.ndarray:
    """Labels as int64; string class names are refused, since sites would number them apart."""
    if y.ndim != 1 or not np.issubdtype(y.dtype, np.number):
        raise DataError(f"{path}: y must be a 1-D numeric array, got {y.dtype} {y.shape}")
    bad = np.flatnonzero(~np.isfinite(y) | (y < 0) | (y != np.round(y)))
    if len(bad):
        raise DataError(f"{path}: label at {where(int(bad[0]))} is {y[bad[0]].item()!r}; "
                        f"labels must be integers 0, 1, 2, ...")
    return y.astype(np.int64)


def _csv(argument: str | None, base: Path | None, seed: int,
         options: dict[str, Any]) -> Dataset:
    path = _resolve(argument, base, "csv")
    label_column = options.get("label_column")
    if not label_column:
        raise DataError(f"{path}: CSV data needs --label-column NAME (the column holding the labels)")
    try:
        with path.open(newline="", encoding="utf-8") as handle:
            rows = list(csv.reader(handle))
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"{path}: cannot read ({error})") from error
    header, body = _csv_header(path, rows, label_column)
    table = np.array([_csv_row(path, header, row, number)
                      for number, row in enumerate(body, start=2)], dtype=np.float64)
    table = table.reshape(len(body), len(header))
    label_at = header.index(label_column)
    x = np.delete(table, label_at, axis=1)
    names = [h for h in header if h != label_column]
    return _tabular(path, x, table[:, label_at], names, options,
                    lambda i: f"row {i + 2}, column {label_column!r}")  # row 1 is the header


def _csv_header(path: Path, rows: list[list[str]], label_column: str
                ) -> tuple[list[str], list[list[str]]]:
    if not rows:
        raise DataError(f"{path}: empty file (a header row is required)")
    header = [h.strip() for h in rows[0]]
    if label_column not in header:
        if all(_is_number(h) for h in header):
            raise DataError(f"{path}: row 1 must be a header naming the columns")
        raise DataError(f"{path}: no column {label_column!r} for --label-column "
                        f"(columns: {', '.join(header)})")
    # Blank trailing lines are common in hand-edited files and carry nothing.
    return header, [row for row in rows[1:] if any(cell.strip() for cell in row)]


def _csv_row(path: Path, header: list[str], row: list[str], number: int) -> list[float]:
    if len(row) != len(header):
        raise DataError(f"{path}: row {number} has {len(row)} fields, the header {len(header)}")
    values = []
    for column, cell in zip(header, row):
        text = cell.strip()
        if not _is_number(text) or not math.isfinite(float(text)):
            what = "is missing" if not text else f"is {text!r}, not a finite number"
            raise DataError(f"{path}: row {number}, column {column!r} {what}")
        values.append(float(text))
    return values


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def _int_option(options: dict[str, Any], key: str, default: int) -> int:
    value = options.get(key, default)
    # Options may arrive as CLI strings; "3" is fine, 3.5 or "three" or True is not.
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    raise DataError(f"{option_name(key)}={value!r}: must be a whole number")


_Loader = Callable[[str | None, Path | None, int, dict[str, Any]], Dataset]
_SOURCES: dict[str, _Loader] = {
    "digits": _digits, "mnist": _mnist, "npz": _npz, "csv": _csv, "welding": _welding,
}
_OPTIONS: dict[str, set[str]] = {
    "digits": set(), "mnist": {"subset"}, "npz": {"num_classes"},
    "csv": {"label_column", "num_classes"}, "welding": {"robot", "samples"},
}
