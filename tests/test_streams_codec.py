"""The array codec: round trips on seeded data, every corruption refused, no pickle anywhere."""

from __future__ import annotations

import ast
import gc
import inspect
import json
import pickle
import struct
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import pytest

from streams import codec
from streams.codec import (
    ALLOWED_DTYPES,
    ArrayBundle,
    CodecError,
    bundle_to_weights,
    decode_bundle,
    encode_bundle,
    encode_pieces,
    keras_weights_to_bundle,
)
from streams.errors import StreamsError

DTYPES = ["bool", "int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64",
          "float16", "float32", "float64"]
SHAPES: list[tuple[int, ...]] = [(), (0,), (1,), (7,), (3, 0, 2), (2, 3, 5), (1, 1, 1, 1), (13, 1)]


def random_array(rng: np.random.Generator, dtype: str, shape: tuple[int, ...]) -> npt.NDArray[Any]:
    """Seeded values over the dtype's whole range (floats include nan and inf)."""
    raw = rng.integers(0, 256, size=int(np.prod(shape)) * np.dtype(dtype).itemsize, dtype=np.uint8)
    if dtype == "bool":
        return (raw % 2).astype(bool).reshape(shape)
    return raw.view(dtype).reshape(shape)


def all_kinds_bundle(seed: int = 7) -> ArrayBundle:
    """One array of every allowed dtype in every odd shape, plus metadata."""
    rng = np.random.default_rng(seed)
    arrays = {f"{dtype}-{i}": random_array(rng, dtype, shape)
              for dtype in DTYPES for i, shape in enumerate(SHAPES)}
    return ArrayBundle(arrays=arrays, meta={"round": 3, "model": {"layers": [1, 2]}, "note": "ü"})


def assert_same_bundle(left: ArrayBundle, right: ArrayBundle) -> None:
    """Same names in the same order, same dtypes, shapes and bits, same meta."""
    assert list(left.arrays) == list(right.arrays)
    for name, array in left.arrays.items():
        other = right.arrays[name]
        assert other.dtype == array.dtype.newbyteorder("=") and other.shape == array.shape, name
        assert other.tobytes() == array.astype(other.dtype).tobytes(), name
    assert left.meta == right.meta


# --- round trips ------------------------------------------------------------------


def test_round_trip_every_dtype_and_odd_shape() -> None:
    """Every allowed dtype, 0-d and empty arrays included, comes back bit for bit in order."""
    bundle = all_kinds_bundle()

    decoded = decode_bundle(encode_bundle(bundle))

    assert_same_bundle(bundle, decoded)
    assert len(ALLOWED_DTYPES) == len(DTYPES)


def test_big_endian_and_strided_arrays_are_written_little_endian() -> None:
    """A big-endian or non-contiguous array is stored as plain little-endian bytes."""
    base = np.arange(24, dtype=">f8").reshape(4, 6)
    bundle = ArrayBundle(arrays={"t": base.T, "s": base[::2, 1::3]})

    decoded = decode_bundle(encode_bundle(bundle))

    np.testing.assert_array_equal(decoded.arrays["t"], base.T)
    np.testing.assert_array_equal(decoded.arrays["s"], base[::2, 1::3])
    assert decoded.arrays["t"].dtype.str == "<f8"


def test_non_finite_metrics_in_meta_travel() -> None:
    """A diverged model's NaN or infinite loss is carried, so the receiver can judge the update."""
    meta = {"metrics": {"loss": float("nan"), "acc": float("inf"), "low": float("-inf")}}

    back = decode_bundle(encode_bundle(ArrayBundle(meta=meta))).meta["metrics"]

    assert np.isnan(back["loss"]) and back["acc"] == float("inf") and back["low"] == float("-inf")


def test_empty_bundle_round_trips() -> None:
    """No arrays and no meta is a valid bundle."""
    decoded = decode_bundle(encode_bundle(ArrayBundle()))

    assert decoded.arrays == {} and decoded.meta == {}


def test_encoding_is_deterministic_and_aligned() -> None:
    """The same bundle gives the same bytes; every array starts on a 64-byte boundary."""
    bundle = all_kinds_bundle()
    data = encode_bundle(bundle)
    manifest_len = struct.unpack_from("<Q", data, 8)[0]

    assert data == encode_bundle(all_kinds_bundle())
    assert (16 + manifest_len) % 64 == 0
    assert all(entry["offset"] % 64 == 0 for entry in json.loads(data[16:16 + manifest_len])["arrays"])


def test_pieces_are_the_encoded_bytes_in_order_every_time_they_are_read() -> None:
    """encode_pieces yields exactly encode_bundle's bytes, in pieces of at most PIECE_BYTES,
    the same again when iterated a second time (a retried upload), with the right length."""
    bundle = all_kinds_bundle()
    bundle.arrays["big"] = np.random.default_rng(3).standard_normal(700_001).astype(np.float32)
    expected = encode_bundle(bundle)

    pieces = encode_pieces(bundle)
    first, second = list(pieces), list(pieces)

    assert b"".join(first) == b"".join(second) == pieces.join() == expected
    assert len(pieces) == len(expected)
    assert max(len(piece) for piece in first) == codec.PIECE_BYTES


def test_views_from_bytes_outlive_the_callers_reference() -> None:
    """Decoding bytes gives read-only views that stay valid after the caller drops the bytes."""
    bundle = ArrayBundle(arrays={"w": np.arange(1000, dtype=np.float32)})
    data = encode_bundle(bundle)

    decoded = decode_bundle(data)
    del data
    gc.collect()

    assert not decoded.arrays["w"].flags.writeable
    np.testing.assert_array_equal(decoded.arrays["w"], np.arange(1000, dtype=np.float32))


def test_mutable_buffers_and_copy_true_give_private_writable_arrays() -> None:
    """A bytearray (which may change later) or copy=True gives arrays that own their memory."""
    data = bytearray(encode_bundle(ArrayBundle(arrays={"w": np.ones(8, dtype=np.int64)})))

    from_bytearray = decode_bundle(data)
    copied = decode_bundle(bytes(data), copy=True)
    data[:] = bytes(len(data))

    assert from_bytearray.arrays["w"].tolist() == [1] * 8
    assert copied.arrays["w"].flags.writeable and copied.arrays["w"].flags.owndata


# --- what the encoder refuses -------------------------------------------------------


@pytest.mark.parametrize("array", [
    np.array([object(), 1], dtype=object),
    np.array(["a", "bc"]),
    np.array([1 + 2j]),
    np.array(["2024-01-01"], dtype="datetime64[D]"),
    np.zeros(2, dtype=[("a", "<i4"), ("b", "<f4")]),
], ids=["object", "str", "complex", "datetime", "structured"])
def test_encoder_refuses_non_numeric_dtypes(array: npt.NDArray[Any]) -> None:
    """Only bool, integers and floats may be encoded; anything else is named and refused."""
    with pytest.raises(CodecError, match="dtype"):
        encode_bundle(ArrayBundle(arrays={"x": array}))


@pytest.mark.parametrize("bundle, message", [
    (ArrayBundle(arrays={"x": [1, 2]}), "not a numpy array"),  # type: ignore[dict-item]
    (ArrayBundle(meta={"f": {1, 2}}), "not JSON-able"),
    (ArrayBundle(meta=[1]), "not a dict"),  # type: ignore[arg-type]
], ids=["list", "set-meta", "list-meta"])
def test_encoder_refuses_bad_arrays_and_meta(bundle: ArrayBundle, message: str) -> None:
    """Non-arrays and metadata that is not JSON are refused before any byte is written."""
    with pytest.raises(CodecError, match=message):
        encode_bundle(bundle)


# --- what the decoder refuses -------------------------------------------------------


def _good() -> bytes:
    rng = np.random.default_rng(1)
    return encode_bundle(ArrayBundle(
        arrays={"a": random_array(rng, "float32", (3, 5)), "b": random_array(rng, "int16", (7,)),
                "c": np.array([True, False, True])},
        meta={"k": 1}))


def _parts(data: bytes) -> tuple[dict[str, Any], bytes]:
    length = struct.unpack_from("<Q", data, 8)[0]
    return json.loads(data[16:16 + length]), data[16 + length:]


def _forge(manifest: dict[str, Any] | bytes, body: bytes, magic: bytes = b"MSKA",
           version: int = 1, flags: int = 0) -> bytes:
    """A bundle with a manifest of our choosing (it may lie about the body)."""
    raw = manifest if isinstance(manifest, bytes) else json.dumps(manifest).encode()
    return struct.pack("<4sHHQ", magic, version, flags, len(raw)) + raw + body


def _edit(change: Callable[[dict[str, Any]], None]) -> bytes:
    manifest, body = _parts(_good())
    change(manifest)
    return _forge(manifest, body)


def _patch(data: bytes, at: int, new: bytes) -> bytes:
    """`data` with the byte at index `at` replaced."""
    at %= len(data)
    return data[:at] + new + data[at + 1:]


def _entry(index: int, **values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda manifest: manifest["arrays"][index].update(values)


CORRUPTIONS: dict[str, tuple[Callable[[], bytes], str]] = {
    "empty": (lambda: b"", "truncated"),
    "short header": (lambda: _good()[:10], "truncated"),
    "cut in manifest": (lambda: _good()[:40], "truncated"),
    "cut in data": (lambda: _good()[:-5], "truncated"),
    "trailing garbage": (lambda: _good() + b"\x00" * 3, "trailing garbage"),
    "bad magic": (lambda: b"PK\x03\x04" + _good()[4:], "bad magic"),
    "pickle stream": (lambda: pickle.dumps(np.arange(3)), "bad magic"),
    "npy file": (lambda: b"\x93NUMPY" + _good()[6:], "bad magic"),
    "future version": (lambda: _forge(*_parts(_good()), version=2), "version 2"),
    "unknown flags": (lambda: _forge(*_parts(_good()), flags=1), "flags"),
    "manifest past end": (lambda: _good()[:8] + struct.pack("<Q", 2**40) + _good()[16:], "truncated"),
    "manifest not json": (lambda: _forge(b"{not json", b""), "not valid JSON"),
    "manifest not utf-8": (lambda: _forge(b"\xff\xfe", b""), "not valid JSON"),
    "manifest a list": (lambda: _forge(b"[]", b""), "exactly the keys"),
    "manifest extra key": (lambda: _forge(b'{"arrays":[],"meta":{},"x":1}', b""), "exactly the keys"),
    "manifest repeated key": (lambda: _forge(b'{"arrays":[],"meta":{},"meta":{}}', b""), "repeats a key"),
    "meta not object": (lambda: _forge(b'{"arrays":[],"meta":[]}', b""), "'meta' is not"),
    "arrays not list": (lambda: _forge(b'{"arrays":{},"meta":{}}', b""), "'arrays' is not"),
    "entry missing key": (lambda: _edit(lambda m: m["arrays"][0].pop("nbytes")), "must be an object"),
    "entry extra key": (lambda: _edit(_entry(0, code="x")), "must be an object"),
    "name not string": (lambda: _edit(_entry(0, name=3)), "name is not a string"),
    "object dtype": (lambda: _edit(_entry(0, dtype="|O")), "not allowed"),
    "unicode dtype": (lambda: _edit(_entry(0, dtype="<U1")), "not allowed"),
    "big-endian dtype": (lambda: _edit(_entry(0, dtype=">f4")), "not allowed"),
    "complex dtype": (lambda: _edit(_entry(0, dtype="<c8")), "not allowed"),
    "negative dim": (lambda: _edit(_entry(0, shape=[-3, -5])), "non-negative integers"),
    "float dim": (lambda: _edit(_entry(0, shape=[3.0, 5])), "non-negative integers"),
    "bool dim": (lambda: _edit(_entry(2, shape=[True])), "non-negative integers"),
    "shape not list": (lambda: _edit(_entry(0, shape=15)), "non-negative integers"),
    "too many dims": (lambda: _edit(_entry(0, shape=[1] * 65)), "non-negative integers"),
    "negative offset": (lambda: _edit(_entry(1, offset=-64)), "non-negative"),
    "nbytes lies": (lambda: _edit(_entry(0, nbytes=64)), "disagrees with shape"),
    "shape lies": (lambda: _edit(_entry(0, shape=[5, 5])), "disagrees with shape"),
    "offsets overlap": (lambda: _edit(_entry(1, offset=0)), "overlaps"),
    "offset gap": (lambda: _edit(_entry(1, offset=128)), "gap"),
    "offset past end": (lambda: _edit(_entry(2, offset=10**9)), "gap"),
    "duplicate names": (lambda: _edit(_entry(1, name="a")), "twice"),
    "padding not zero": (lambda: _patch(_good(), -4, b"\x01"), "padding"),
    "bool byte 2": (lambda: _patch(_good(), -1, b"\x02"), "other than 0 and 1"),
}


@pytest.mark.parametrize("name", list(CORRUPTIONS))
def test_decoder_refuses_corruption_naming_it(name: str) -> None:
    """Every kind of damage or lie is a CodecError whose message says what is wrong."""
    forge, message = CORRUPTIONS[name]
    data = forge()

    with pytest.raises(CodecError, match=message):
        decode_bundle(data)


def test_untouched_base_of_the_corruptions_decodes() -> None:
    """The bundle the corruptions start from is valid: the failures above are the edits'."""
    manifest, body = _parts(_good())

    assert decode_bundle(_forge(manifest, body)).meta == {"k": 1}


def test_codec_error_is_a_streams_error() -> None:
    """Callers that catch StreamsError catch codec failures too."""
    assert issubclass(CodecError, StreamsError)


# --- no pickle -----------------------------------------------------------------------


def test_codec_never_imports_or_calls_pickle(monkeypatch: pytest.MonkeyPatch) -> None:
    """streams.codec imports no pickle and decoding works with pickle disabled entirely."""
    tree = ast.parse(inspect.getsource(codec))
    imported = {alias.name for node in ast.walk(tree) if isinstance(node, ast.Import | ast.ImportFrom)
                for alias in node.names} | {node.module for node in ast.walk(tree)
                                             if isinstance(node, ast.ImportFrom) and node.module}

    def refuse(*_args: Any, **_kwargs: Any) -> Any:
        raise AssertionError("pickle was called")

    for name in ("loads", "load", "dumps", "dump", "Unpickler", "Pickler"):
        monkeypatch.setattr(pickle, name, refuse)
    bundle = all_kinds_bundle()

    assert not any("pickle" in name for name in imported)
    assert "allow_pickle" not in inspect.getsource(codec)
    assert_same_bundle(bundle, decode_bundle(encode_bundle(bundle)))


# --- Keras weight lists --------------------------------------------------------------


def test_keras_weights_round_trip_in_order() -> None:
    """A weight list goes through a bundle named w000, w001, ... and comes back in order."""
    rng = np.random.default_rng(3)
    weights = [rng.standard_normal(shape).astype(np.float32) for shape in [(4, 3), (3,), (3, 2), (2,)]]

    bundle = decode_bundle(encode_bundle(keras_weights_to_bundle(weights, {"round": 1})))
    restored = bundle_to_weights(bundle)

    assert list(bundle.arrays) == ["w000", "w001", "w002", "w003"]
    assert bundle.meta == {"round": 1}
    for original, back in zip(weights, restored, strict=True):
        np.testing.assert_array_equal(original, back)


def test_bundle_that_is_not_a_weight_list_is_refused() -> None:
    """A bundle with other names (or a gap in the numbering) is not taken for weights."""
    with pytest.raises(CodecError, match="not a weight bundle"):
        bundle_to_weights(ArrayBundle(arrays={"w000": np.zeros(1), "w002": np.zeros(1)}))
