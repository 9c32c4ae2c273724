"""MNIST from the original IDX files (gzipped or not) or from a Keras-style mnist.npz."""

from __future__ import annotations

import gzip
import zipfile
from pathlib import Path

import numpy as np

from ml.data.dataset import DataError, Dataset

IMAGE_MAGIC = 0x00000803  # unsigned bytes, 3 dimensions
LABEL_MAGIC = 0x00000801  # unsigned bytes, 1 dimension
SUBSETS = {"train": "train", "test": "t10k"}  # our name -> the IDX file prefix


def read_idx(path: Path, magic: int) -> np.ndarray:
    """The array stored in one IDX file, after checking its magic number, dims and length."""
    raw = _read_bytes(path)
    if len(raw) < 4 or int.from_bytes(raw[:4], "big") != magic:
        found = raw[:4].hex() or "nothing"
        raise DataError(f"{path}: not an IDX file of the expected kind "
                        f"(magic {magic:08x} expected, found {found})")
    ndim = magic & 0xFF
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise DataError(f"{path}: truncated IDX header ({len(raw)} bytes)")
    dims = [int.from_bytes(raw[4 + 4 * i: 8 + 4 * i], "big") for i in range(ndim)]
    expected = header + int(np.prod(dims))
    if len(raw) != expected:
        raise DataError(f"{path}: header says {dims} ({expected} bytes) "
                        f"but the file holds {len(raw)} bytes (truncated or corrupt)")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _read_bytes(path: Path) -> bytes:
    try:
        with path.open("rb") as handle:
            gzipped = handle.read(2) == b"\x1f\x8b"
        return gzip.decompress(path.read_bytes()) if gzipped else path.read_bytes()
    except (OSError, EOFError, gzip.BadGzipFile) as error:
        raise DataError(f"{path}: cannot read ({error})") from error


def _idx_pair(folder: Path, prefix: str) -> tuple[Path, Path] | None:
    """The (images, labels) files for `prefix`, preferring the .gz originals; None if absent."""
    found = []
    for kind in ("images-idx3-ubyte", "labels-idx1-ubyte"):
        names = [folder / f"{prefix}-{kind}.gz", folder / f"{prefix}-{kind}"]
        found.append(next((p for p in names if p.is_file()), None))
    images, labels = found
    if images is None and labels is None:
        return None
    if images is None or labels is None:
        missing = f"{prefix}-{'images-idx3' if images is None else 'labels-idx1'}-ubyte[.gz]"
        raise DataError(f"{folder}: {missing} is missing (the other half of the pair is there)")
    return images, labels


def _from_idx(images_path: Path, labels_path: Path) -> tuple[np.ndarray, np.ndarray]:
    images = read_idx(images_path, IMAGE_MAGIC)
    labels = read_idx(labels_path, LABEL_MAGIC)
    if images.shape[1:] != (28, 28):
        raise DataError(f"{images_path}: images are {images.shape[1:]}, not 28x28")
    if len(images) != len(labels):
        raise DataError(f"{images_path} holds {len(images)} images "
                        f"but {labels_path} holds {len(labels)} labels")
    return images, labels


def _from_folder(folder: Path, subset: str | None) -> tuple[np.ndarray, np.ndarray]:
    prefixes = [SUBSETS[subset]] if subset else list(SUBSETS.values())
    pairs = [(p, pair) for p in prefixes if (pair := _idx_pair(folder, p)) is not None]
    if not pairs:
        wanted = " or ".join(f"{p}-images-idx3-ubyte.gz" for p in prefixes)
        raise DataError(f"{folder}: no MNIST IDX files found (looked for {wanted})")
    parts = [_from_idx(*pair) for _, pair in pairs]
    return np.concatenate([x for x, _ in parts]), np.concatenate([y for _, y in parts])


def _from_npz(path: Path, subset: str | None) -> tuple[np.ndarray, np.ndarray]:
    # allow_pickle=False: an .npz may come from anywhere, and pickle would run its code.
    try:
        with np.load(path, allow_pickle=False) as archive:
            names = ["train", "test"] if subset is None else [subset]
            xs = [archive[f"x_{n}"] for n in names if f"x_{n}" in archive.files]
            ys = [archive[f"y_{n}"] for n in names if f"x_{n}" in archive.files]
            keys = archive.files
    except (OSError, ValueError, zipfile.BadZipFile, EOFError, KeyError) as error:
        raise DataError(f"{path}: not a readable Keras-style mnist.npz ({error})") from error
    if not xs:
        raise DataError(f"{path}: no x_train/x_test arrays (found {', '.join(keys) or 'none'})")
    x, y = np.concatenate(xs), np.concatenate(ys)
    if x.ndim != 3 or x.shape[1:] != (28, 28) or len(x) != len(y):
        raise DataError(f"{path}: expected (n, 28, 28) images and n labels, "
                        f"got {x.shape} and {y.shape}")
    # Keras' mnist.npz holds uint8 pixels; anything else is not the file we think it is.
    if x.dtype != np.uint8 or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{path}: expected uint8 images and integer labels, "
                        f"got {x.dtype} and {y.dtype}")
    return x, y


def load_mnist(path: Path, subset: str | None = None) -> Dataset:
    """MNIST from a folder of IDX files or an mnist.npz; x is (n, 28, 28, 1) in [0, 1]."""
    if subset is not None and subset not in SUBSETS:
        raise DataError(f"mnist option subset={subset!r}: use 'train' or 'test' (or omit for both)")
    if path.is_dir():
        images, labels = _from_folder(path, subset)
    elif path.is_file():
        images, labels = _from_npz(path, subset)
    else:
        raise DataError(f"{path}: no such MNIST folder or .npz file")
    if labels.ndim != 1 or (len(labels) and (labels.min() < 0 or labels.max() > 9)):
        raise DataError(f"{path}: labels must be digits 0..9")
    x = (images.astype(np.float32) / 255.0)[..., np.newaxis]
    return Dataset(x, labels.astype(np.int64), None, 10, f"mnist:{path}")
