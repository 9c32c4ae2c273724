"""Arrays to bytes and back in a plain binary layout with a JSON manifest; never pickle.

Layout (all integers little-endian):

    offset 0   magic b"MSKA"                     4 bytes
    offset 4   format version (uint16) = 1       2 bytes
    offset 6   flags (uint16) = 0                2 bytes
    offset 8   manifest length N (uint64)        8 bytes
    offset 16  manifest: UTF-8 JSON, N bytes     {"arrays": [...], "meta": {...}}
    16 + N     data section: the raw little-endian bytes of every array

The manifest is JSON as Python writes it (NaN and Infinity may appear in meta).
Each manifest entry is {"name", "dtype", "shape", "offset", "nbytes"}, with the
offset relative to the data section. The arrays lie in manifest order, each at
the first multiple of ALIGNMENT after the previous one, separated by zero bytes;
the encoder pads the manifest with spaces so the data section starts aligned
too. The decoder checks every field against that layout, so a buffer has
exactly one valid reading and no byte of it goes unaccounted for.
"""

from __future__ import annotations

import json
import math
import mmap
import struct
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from streams.errors import StreamsError

MAGIC = b"MSKA"
FORMAT_VERSION = 1
# Arrays start on 64-byte boundaries inside the data section: views decoded
# from it are aligned for any dtype (and for SIMD loads), for at most 63 bytes
# of padding per array.
ALIGNMENT = 64
_HEADER = struct.Struct("<4sHHQ")
# numpy refuses more dimensions than this; refusing them here names the array.
_MAX_NDIM = 64
# The only dtypes a bundle may carry, as little-endian numpy strings: plain
# numbers. Object, string, structured and datetime dtypes never cross the wire.
ALLOWED_DTYPES = frozenset(
    np.dtype(name).newbyteorder("<").str
    for name in (
        "bool", "int8", "int16", "int32", "int64",
        "uint8", "uint16", "uint32", "uint64",
        "float16", "float32", "float64",
    )
)
Array = npt.NDArray[Any]
_ENTRY_KEYS = frozenset({"name", "dtype", "shape", "offset", "nbytes"})


class CodecError(StreamsError):
    """A bundle could not be encoded, or bytes are not a valid bundle (the message says why)."""


# eq=False: a generated __eq__ would compare numpy arrays with `==`, which
# raises for arrays of more than one element. Compare arrays with numpy.
@dataclass(frozen=True, eq=False)
class ArrayBundle:
    """Named arrays (in insertion order) plus JSON-able metadata."""

    arrays: dict[str, Array] = field(default_factory=dict)
    meta: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Entry:
    """One array's place in the data section, as the manifest states it."""

    name: str
    dtype: np.dtype[Any]
    shape: tuple[int, ...]
    offset: int
    nbytes: int


# --- encoding -----------------------------------------------------------------


def encode_bundle(bundle: ArrayBundle) -> bytes:
    """The bytes of `bundle`: header, JSON manifest, then every array's raw little-endian bytes."""
    # One join: the only full copy of the data the encoder makes.
    return encode_pieces(bundle).join()


class EncodedBundle:
    """A bundle's bytes as the pieces they are made of (header, manifest, padding, each array's
    memory), not joined: iterating yields them in order, at most PIECE_BYTES at a time.

    Why: a model is written to a file or a socket a piece at a time without a joined copy of
    its size. The array pieces are views, so the arrays must not change while it is in use.
    Iterating again starts again from the first byte (an upload that is retried sends it anew).
    """

    def __init__(self, pieces: Sequence[bytes | memoryview]) -> None:
        self.pieces = [memoryview(piece).cast("B") for piece in pieces]
        self.size = sum(len(piece) for piece in self.pieces)

    def __len__(self) -> int:
        return self.size

    def __iter__(self) -> Iterator[bytes]:
        for piece in self.pieces:
            for start in range(0, len(piece), PIECE_BYTES):
                yield bytes(piece[start:start + PIECE_BYTES])

    def join(self) -> bytes:
        """All the bytes at once (one copy of the whole)."""
        return b"".join(self.pieces)


# The most bytes an EncodedBundle yields at a time: 1 MiB copies, small next to any model.
PIECE_BYTES = 1 << 20


def encode_pieces(bundle: ArrayBundle) -> EncodedBundle:
    """The bytes `encode_bundle` makes, as unjoined pieces (views of the arrays' memory)."""
    arrays = [(name, _little_endian(name, array)) for name, array in bundle.arrays.items()]
    entries: list[dict[str, Any]] = []
    parts: list[bytes | memoryview] = []
    end = 0
    for name, array in arrays:
        offset = _align(end)
        parts += [bytes(offset - end), array.reshape(-1).view(np.uint8).data]
        entries.append(_entry_json(name, array, offset))
        end = offset + array.nbytes
    manifest = _manifest_bytes(entries, bundle.meta)
    header = _HEADER.pack(MAGIC, FORMAT_VERSION, 0, len(manifest))
    return EncodedBundle([header, manifest, *parts])


def _little_endian(name: str, array: object) -> Array:
    if not isinstance(name, str):
        raise CodecError(f"array name {name!r} is not a string")
    if not isinstance(array, np.ndarray):
        raise CodecError(f"array {name!r} is a {type(array).__name__}, not a numpy array")
    wanted = array.dtype.newbyteorder("<")
    if wanted.str not in ALLOWED_DTYPES:
        raise CodecError(f"array {name!r} has dtype {array.dtype} (only bool, ints and floats are allowed)")
    # No copy when the array is already little-endian and C-contiguous.
    # (Not np.ascontiguousarray: it turns a 0-d array into a 1-d one.)
    return array.astype(wanted, order="C", copy=False)


def _entry_json(name: str, array: Array, offset: int) -> dict[str, Any]:
    return {"name": name, "dtype": array.dtype.str, "shape": list(array.shape),
            "offset": offset, "nbytes": array.nbytes}


def _manifest_bytes(entries: list[dict[str, Any]], meta: Mapping[str, Any]) -> bytes:
    if not isinstance(meta, Mapping):
        raise CodecError(f"meta is a {type(meta).__name__}, not a dict")
    try:
        # NaN and Infinity are allowed (Python's JSON dialect): a diverged
        # model reports a NaN loss in its meta, and that must travel so the
        # aggregator can reject the update, not crash the participant's encode.
        text = json.dumps({"arrays": entries, "meta": dict(meta)}, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise CodecError(f"meta is not JSON-able: {exc}") from exc
    raw = text.encode("utf-8")
    # Trailing spaces are valid JSON; they make the data section start aligned.
    return raw + b" " * (_align(_HEADER.size + len(raw)) - _HEADER.size - len(raw))


def _align(position: int) -> int:
    return -(-position // ALIGNMENT) * ALIGNMENT


# --- decoding -----------------------------------------------------------------


def decode_bundle(data: bytes | bytearray | memoryview | mmap.mmap, *, copy: bool = False) -> ArrayBundle:
    """The bundle in `data`; raise CodecError naming the first thing that is wrong.

    When `data` is `bytes` or a read-only mapping (a reassembled payload's spool file, which
    nothing else can write) and `copy` is false, the arrays are read-only views into it: no
    copy, and safe after the caller drops `data`, because each view keeps it alive. Any other
    buffer could change under the views, so its arrays are copied, as they are when `copy` is
    true.
    """
    view = memoryview(data).cast("B")
    manifest_end = _read_header(view)
    manifest = _read_manifest(view[_HEADER.size:manifest_end])
    body = view[manifest_end:]
    entries = _check_layout(_parse_entries(manifest.get("arrays")), body)
    share = (isinstance(data, bytes) or (isinstance(data, mmap.mmap) and view.readonly)) and not copy
    arrays = {entry.name: _array(body, entry, share) for entry in entries}
    return ArrayBundle(arrays=arrays, meta=_parse_meta(manifest.get("meta")))


def _read_header(view: memoryview) -> int:
    if len(view) < _HEADER.size:
        raise CodecError(f"truncated: {len(view)} bytes is shorter than the {_HEADER.size}-byte header")
    magic, version, flags, manifest_len = _HEADER.unpack_from(view)
    if magic != MAGIC:
        raise CodecError(f"bad magic {bytes(magic)!r} (expected {MAGIC!r}): not an array bundle")
    if version != FORMAT_VERSION:
        raise CodecError(f"unsupported format version {version} (this reader knows {FORMAT_VERSION})")
    if flags != 0:
        raise CodecError(f"unknown flags {flags:#06x} in the header")
    if manifest_len > len(view) - _HEADER.size:
        raise CodecError(f"truncated: manifest length {manifest_len} runs past the end of "
                         f"the {len(view)}-byte buffer")
    return int(_HEADER.size + manifest_len)


def _read_manifest(raw: memoryview) -> dict[str, Any]:
    try:
        manifest = json.loads(bytes(raw).decode("utf-8"), object_pairs_hook=_unique_keys)
    except (UnicodeDecodeError, ValueError) as exc:
        raise CodecError(f"manifest is not valid JSON: {exc}") from exc
    if not isinstance(manifest, dict) or set(manifest) != {"arrays", "meta"}:
        raise CodecError("manifest must be a JSON object with exactly the keys 'arrays' and 'meta'")
    return manifest


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # A repeated key would let two readers of one manifest disagree.
    result = dict(pairs)
    if len(result) != len(pairs):
        raise ValueError("a JSON object repeats a key")
    return result


def _parse_meta(meta: object) -> dict[str, Any]:
    if not isinstance(meta, dict):
        raise CodecError("manifest 'meta' is not a JSON object")
    return meta


def _parse_entries(raw: object) -> list[_Entry]:
    if not isinstance(raw, list):
        raise CodecError("manifest 'arrays' is not a JSON list")
    entries = [_parse_entry(index, item) for index, item in enumerate(raw)]
    names = [entry.name for entry in entries]
    if len(set(names)) != len(names):
        raise CodecError("manifest names an array twice")
    return entries


def _parse_entry(index: int, item: object) -> _Entry:
    if not isinstance(item, dict) or set(item) != _ENTRY_KEYS:
        raise CodecError(f"manifest entry {index} must be an object with keys {sorted(_ENTRY_KEYS)}")
    name = item["name"]
    if not isinstance(name, str):
        raise CodecError(f"manifest entry {index}: name is not a string")
    dtype = item["dtype"]
    if not isinstance(dtype, str) or dtype not in ALLOWED_DTYPES:
        raise CodecError(f"array {name!r}: dtype {dtype!r} is not allowed "
                         f"(allowed: {', '.join(sorted(ALLOWED_DTYPES))})")
    shape = item["shape"]
    if not isinstance(shape, list) or len(shape) > _MAX_NDIM or not all(_is_count(d) for d in shape):
        raise CodecError(f"array {name!r}: shape {shape!r} is not a list of non-negative integers")
    offset, nbytes = item["offset"], item["nbytes"]
    if not _is_count(offset) or not _is_count(nbytes):
        raise CodecError(f"array {name!r}: offset {offset!r} and nbytes {nbytes!r} "
                         f"must be non-negative integers")
    return _Entry(name, np.dtype(dtype), tuple(shape), offset, nbytes)


def _is_count(value: object) -> bool:
    # bool is an int in Python; `true` is not a size.
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _check_layout(entries: list[_Entry], body: memoryview) -> list[_Entry]:
    end = 0
    for entry in entries:
        _check_entry(entry, end, len(body))
        if any(body[end:entry.offset]):
            raise CodecError(f"array {entry.name!r}: the padding before it is not zero")
        end = entry.offset + entry.nbytes
    if end != len(body):
        raise CodecError(f"data section is {len(body)} bytes but the arrays end at byte {end}"
                         f" ({'trailing garbage' if len(body) > end else 'truncated'})")
    return entries


def _check_entry(entry: _Entry, previous_end: int, body_len: int) -> None:
    expected = math.prod(entry.shape) * entry.dtype.itemsize
    if entry.nbytes != expected:
        raise CodecError(f"array {entry.name!r}: nbytes {entry.nbytes} disagrees with shape "
                         f"{entry.shape} of {entry.dtype.str} ({expected} bytes)")
    if entry.offset < previous_end:
        raise CodecError(f"array {entry.name!r}: offset {entry.offset} overlaps the previous "
                         f"array, which ends at {previous_end}")
    if entry.offset != _align(previous_end):
        raise CodecError(f"array {entry.name!r}: offset {entry.offset} leaves a gap "
                         f"(the layout puts it at {_align(previous_end)})")
    if entry.offset + entry.nbytes > body_len:
        raise CodecError(f"truncated: array {entry.name!r} (bytes {entry.offset}..{entry.offset + entry.nbytes})"
                         f" runs past the {body_len}-byte data section")


def _array(body: memoryview, entry: _Entry, share: bool) -> Array:
    if entry.nbytes == 0:
        return np.empty(entry.shape, dtype=entry.dtype)
    raw = body[entry.offset:entry.offset + entry.nbytes]
    if entry.dtype.kind == "b" and np.frombuffer(raw, dtype=np.uint8).max() > 1:
        # numpy would read a byte 2..255 as a bool that is neither True nor False.
        raise CodecError(f"array {entry.name!r}: bool array holds bytes other than 0 and 1")
    array = np.frombuffer(raw, dtype=entry.dtype).reshape(entry.shape)
    return array if share else array.copy()


# --- Keras weights --------------------------------------------------------------


def keras_weights_to_bundle(weights: Sequence[Array], meta: Mapping[str, Any] | None = None) -> ArrayBundle:
    """A bundle of a model's weight list, named w000, w001, ... in order."""
    return ArrayBundle(arrays={_weight_name(i): w for i, w in enumerate(weights)}, meta=dict(meta or {}))


def bundle_to_weights(bundle: ArrayBundle) -> list[Array]:
    """The weight list of a bundle made by keras_weights_to_bundle (names must be w000, w001, ...)."""
    names = list(bundle.arrays)
    expected = [_weight_name(i) for i in range(len(names))]
    if names != expected:
        raise CodecError(f"not a weight bundle: arrays are named {names[:5]}..., expected {expected[:5]}...")
    return list(bundle.arrays.values())


def _weight_name(index: int) -> str:
    return f"w{index:03d}"
