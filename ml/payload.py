"""A model as it travels the data plane and is stored: training settings in meta, weights as arrays."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from schema.dataplane import ModelMeta
from streams.codec import bundle_to_weights, decode_bundle, encode_bundle, keras_weights_to_bundle


def model_payload(meta: ModelMeta, weights: Sequence[np.ndarray[Any, Any]]) -> bytes:
    """A self-contained model: architecture and training settings in meta, weights as arrays."""
    contiguous = [np.ascontiguousarray(w) for w in weights]
    return encode_bundle(keras_weights_to_bundle(contiguous, meta.model_dump()))


def read_model_payload(data: bytes) -> tuple[ModelMeta, list[np.ndarray[Any, Any]]]:
    """The meta and weights of a `model_payload` (CodecError or ValueError if it is not one)."""
    bundle = decode_bundle(data)
    return ModelMeta.model_validate(bundle.meta), bundle_to_weights(bundle)
