"""Data connectors: real MNIST and digits, user files, the welding generator, shards, splits."""

from __future__ import annotations

import gzip
import warnings
from pathlib import Path

import numpy as np
import pytest

from ml.data import (
    DataError,
    Dataset,
    DataWarning,
    load_dataset,
    parse_shard,
    split_and_sample,
)

MNIST_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data" / "mnist"
needs_mnist = pytest.mark.skipif(not MNIST_DIR.is_dir(), reason=f"no MNIST at {MNIST_DIR}")


@needs_mnist
def test_mnist_idx_folder_gives_scaled_images_and_digit_labels() -> None:
    """The original t10k IDX files load as 10,000 (28, 28, 1) float32 images in [0, 1]."""
    ds = load_dataset(f"mnist:{MNIST_DIR}")
    assert ds.x.shape == (10_000, 28, 28, 1) and ds.x.dtype == np.float32
    assert ds.y.dtype == np.int64 and ds.num_classes == 10
    assert ds.x.min() >= 0.0 and ds.x.max() == 1.0
    assert ds.y[:5].tolist() == [7, 2, 1, 0, 4]  # the well-known first t10k labels
    assert set(np.unique(ds.y)) == set(range(10))


@needs_mnist
def test_mnist_from_data_dir_and_from_keras_npz_agree(tmp_path: Path) -> None:
    """A Keras-style mnist.npz holding the same pixels loads to the same dataset."""
    from_dir = load_dataset("mnist", data_dir=MNIST_DIR, subset="test")
    pixels = np.round(from_dir.x[..., 0] * 255).astype(np.uint8)
    np.savez(tmp_path / "mnist.npz", x_test=pixels, y_test=from_dir.y.astype(np.uint8))
    from_npz = load_dataset("mnist:mnist.npz", data_dir=tmp_path)
    assert np.array_equal(from_npz.x, from_dir.x) and np.array_equal(from_npz.y, from_dir.y)


@needs_mnist
def test_truncated_idx_file_is_named_in_the_error(tmp_path: Path) -> None:
    """A cut-short images file is refused with its path and the length mismatch."""
    images = gzip.decompress((MNIST_DIR / "t10k-images-idx3-ubyte.gz").read_bytes())
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(gzip.compress(images[:5000]))
    (tmp_path / "t10k-labels-idx1-ubyte.gz").write_bytes(
        (MNIST_DIR / "t10k-labels-idx1-ubyte.gz").read_bytes())
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz.*truncated"):
        load_dataset(f"mnist:{tmp_path}")


def test_wrong_magic_and_broken_gzip_are_named(tmp_path: Path) -> None:
    """A labels file where images belong, or a corrupt gzip, is refused naming the file."""
    labels = b"\x00\x00\x08\x01" + (3).to_bytes(4, "big") + bytes([1, 2, 3])
    (tmp_path / "t10k-images-idx3-ubyte").write_bytes(labels)
    (tmp_path / "t10k-labels-idx1-ubyte").write_bytes(labels)
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte.*magic 00000803"):
        load_dataset(f"mnist:{tmp_path}")
    (tmp_path / "t10k-images-idx3-ubyte").unlink()
    (tmp_path / "t10k-images-idx3-ubyte.gz").write_bytes(b"\x1f\x8b" + b"garbage")
    with pytest.raises(DataError, match=r"t10k-images-idx3-ubyte\.gz: cannot read"):
        load_dataset(f"mnist:{tmp_path}")


def test_digits_are_flat_and_scaled() -> None:
    """scikit-learn's bundled digits come flat, (1797, 64), in [0, 1], with pixel names."""
    ds = load_dataset("digits")
    assert ds.x.shape == (1797, 64) and ds.x.max() == 1.0 and ds.num_classes == 10
    assert ds.feature_names is not None and ds.feature_names[0] == "pixel_0_0"


def test_shards_are_disjoint_and_cover_everything() -> None:
    """Parts 1..3 of 3 never share a sample and together hold all of them."""
    full = load_dataset("digits")
    parts = [load_dataset("digits", shard=f"{i}/3") for i in (1, 2, 3)]
    assert sum(len(p) for p in parts) == len(full)
    rows = {tuple(row) for p in parts for row in np.c_[p.x, p.y]}
    assert len(rows) == len({tuple(row) for row in np.c_[full.x, full.y]})
    assert parts[1].name == "digits[2/3]"


@pytest.mark.parametrize("shard", ["4/3", "0/3", "1/0", "three", "1-3"])
def test_bad_shards_say_how_to_write_one(shard: str) -> None:
    """An out-of-range or malformed shard is a DataError quoting it."""
    with pytest.raises(DataError, match=f"shard '{shard}'"):
        load_dataset("digits", shard=shard)


def test_shard_is_one_based() -> None:
    """`i/n` counts parts from 1."""
    assert parse_shard("1/1") == (1, 1) and parse_shard("3/3") == (3, 3)


def test_npz_with_x_and_y(tmp_path: Path) -> None:
    """An .npz with x and y loads, converted to float32 and int64."""
    np.savez(tmp_path / "site.npz", x=np.arange(12.0).reshape(6, 2), y=np.array([0, 1, 2] * 2))
    ds = load_dataset(f"npz:{tmp_path / 'site.npz'}", num_classes="5")
    assert ds.x.dtype == np.float32 and ds.y.dtype == np.int64 and ds.num_classes == 5


def test_npz_refuses_pickled_objects_and_missing_arrays(tmp_path: Path) -> None:
    """Object arrays (which need pickle) and a missing `y` are refused naming the file."""
    np.savez(tmp_path / "pickled.npz", x=np.array([[1], [2]], dtype=object), y=np.array([0, 1]))
    with pytest.raises(DataError, match="pickled.npz"):
        load_dataset(f"npz:{tmp_path / 'pickled.npz'}")
    np.savez(tmp_path / "nolabels.npz", x=np.zeros((2, 2)))
    with pytest.raises(DataError, match="nolabels.npz: no array 'y'"):
        load_dataset(f"npz:{tmp_path / 'nolabels.npz'}")


def _write(path: Path, text: str) -> str:
    path.write_text(text)
    return f"csv:{path}"


def test_csv_with_header_and_label_column(tmp_path: Path) -> None:
    """Feature columns keep their header names; the label column becomes y."""
    spec = _write(tmp_path / "w.csv", "WELR,WCLSRES,WELCUR1_S\n1e-4,2,9000\n2e-4,3,9500\n\n")
    ds = load_dataset(spec, label_column="WCLSRES")
    assert ds.feature_names == ["WELR", "WELCUR1_S"] and ds.y.tolist() == [2, 3]
    assert ds.x.shape == (2, 2) and ds.num_classes == 4


@pytest.mark.parametrize(("body", "message"), [
    ("a,label\n1,0\nx,1\n", r"row 3, column 'a' is 'x', not a finite number"),
    ("a,label\n1,0\n,1\n", r"row 3, column 'a' is missing"),
    ("a,label\n1,0.5\n", r"label at row 2, column 'label' is 0.5"),
    ("a,label\n1,0,7\n", r"row 2 has 3 fields"),
    ("1,0\n2,1\n", r"row 1 must be a header"),
    ("a,b\n1,0\n", r"no column 'label' for --label-column \(columns: a, b\)"),
])
def test_csv_errors_name_the_row_and_column(tmp_path: Path, body: str, message: str) -> None:
    """Bad cells, ragged rows and a missing header or label column are located exactly."""
    with pytest.raises(DataError, match=message):
        load_dataset(_write(tmp_path / "bad.csv", body), label_column="label")


def test_csv_needs_a_label_column_and_unknown_options_are_named(tmp_path: Path) -> None:
    """Without a label column the error names the flag; a flag the source does not take is named."""
    spec = _write(tmp_path / "ok.csv", "a,label\n1,0\n")
    with pytest.raises(DataError, match="needs --label-column NAME"):
        load_dataset(spec)
    with pytest.raises(DataError, match="--robot does not apply to csv data"):
        load_dataset(spec, label_column="label", robot="FPS2")
    with pytest.raises(DataError, match="unknown data source 'parquet'"):
        load_dataset("parquet:x.parquet")


def test_welding_classes_occur_at_both_robots_and_in_every_split() -> None:
    """Every WCLSRES class occurs at each robot, in each participant's local test split and in
    the held-out set; the robots' mixes differ (non-IID); no class is more than half."""
    fps2 = load_dataset("welding:FPS2")
    fpd2 = load_dataset("welding", robot="FPD2")
    held_out = load_dataset("welding", seed=7)
    assert (len(fps2), len(fpd2), len(held_out)) == (2400, 1600, 4000)  # each robot's own rows
    for data in (fps2, fpd2, held_out, *split_and_sample(fps2, None, 200, 0), *split_and_sample(fpd2, None, 200, 0)):
        counts = np.bincount(data.y, minlength=4)
        assert data.num_classes == 4 and counts.min() > 0, (data.name, counts)
    assert np.bincount(held_out.y).max() / len(held_out) < 0.5
    fps2_mix, fpd2_mix = np.bincount(fps2.y) / len(fps2), np.bincount(fpd2.y) / len(fpd2)
    assert np.abs(fps2_mix - fpd2_mix).max() > 0.2
    assert fps2.feature_names == ["WELCNT", "WDRSCNT", "WELR", "WELCUR1_S"]


def test_welding_quality_is_learnable_from_the_features() -> None:
    """A linear rule on standardised features (fitted on one seed) predicts another seed's
    classes far better than the majority class: the target follows the features."""
    train, test = load_dataset("welding", seed=0), load_dataset("welding", seed=7)
    mean, std = train.x.mean(axis=0), train.x.std(axis=0)
    features = np.c_[(train.x - mean) / std, np.ones(len(train))]
    onehot = np.eye(4)[train.y]
    weights, *_ = np.linalg.lstsq(features, onehot, rcond=None)
    predicted = (np.c_[(test.x - mean) / std, np.ones(len(test))] @ weights).argmax(axis=1)
    majority = np.bincount(test.y).max() / len(test)
    assert (predicted == test.y).mean() > majority + 0.3


def test_welding_is_seeded_and_its_sites_differ() -> None:
    """Same seed, same data; the robots' feature distributions differ; scales span 1e-4..1e5."""
    first = load_dataset("welding:FPS2", samples=500, seed=7)
    again = load_dataset("welding:FPS2", samples=500, seed=7)
    other = load_dataset("welding:FPD2", samples=500, seed=7)
    assert np.array_equal(first.x, again.x) and np.array_equal(first.y, again.y)
    assert other.x[:, 0].mean() > 3 * first.x[:, 0].mean()  # FPD2's counter runs far ahead
    scale = np.abs(first.x).mean(axis=0)
    assert scale[2] < 1e-3 and scale[3] > 1e3


def test_split_is_disjoint_and_sized_as_asked() -> None:
    """training_size and test_size samples, no sample in both, same seed same split."""
    ds = load_dataset("digits")
    train, test = split_and_sample(ds, 500, 200, seed=3)
    assert (len(train), len(test)) == (500, 200)
    assert not {r.tobytes() for r in train.x} & {r.tobytes() for r in test.x}
    again, _ = split_and_sample(ds, 500, 200, seed=3)
    assert np.array_equal(train.x, again.x)


def test_split_with_too_little_data_uses_what_there_is_and_warns() -> None:
    """Asking for more than the shard holds scales both parts down, with a DataWarning."""
    small = load_dataset("digits", shard="1/18")  # 100 samples
    with pytest.warns(DataWarning, match="only 100 local samples"):
        train, test = split_and_sample(small, 800, 200, seed=0)
    assert (len(train), len(test)) == (80, 20)


def test_split_defaults_and_tiny_data() -> None:
    """No test_size means no test set; a single sample still trains, never crashes."""
    ds = load_dataset("digits", shard="1/1797")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        train, test = split_and_sample(ds, None, None, seed=0)
    assert (len(train), len(test)) == (1, 0)
    with pytest.warns(DataWarning):
        train, test = split_and_sample(ds, None, 5, seed=0)
    assert (len(train), len(test)) == (1, 0)


def test_dataset_checks_its_own_types() -> None:
    """A Dataset with labels outside num_classes cannot be built."""
    with pytest.raises(DataError, match="labels must lie in 0..1"):
        Dataset(np.zeros((2, 1), np.float32), np.array([0, 2]), None, 2, "bad")
