"""A model as it travels the data plane and is stored: training settings in meta, weights as arrays.

A round's stored model (its checkpoint) may also carry the server optimiser's state, as extra
arrays named `server.*` and a `server_optimiser` entry in meta; participants never get those
(the broadcast is a plain `model_payload`).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from schema.dataplane import ModelMeta
from streams.codec import (
    ArrayBundle,
    EncodedBundle,
    bundle_to_weights,
    decode_bundle,
    encode_bundle,
    encode_pieces,
    keras_weights_to_bundle,
)

Array = np.ndarray[Any, Any]
STATE_PREFIX = "server."
# The state a server optimiser keeps: named arrays and a JSON description.
ServerState = tuple[dict[str, Array], dict[str, Any]]


def model_payload(meta: ModelMeta, weights: Sequence[np.ndarray[Any, Any]]) -> bytes:
    """A self-contained model: architecture and training settings in meta, weights as arrays."""
    contiguous = [np.ascontiguousarray(w) for w in weights]
    return encode_bundle(keras_weights_to_bundle(contiguous, meta.model_dump()))


def read_model_payload(data: bytes) -> tuple[ModelMeta, list[np.ndarray[Any, Any]]]:
    """The meta and weights of a `model_payload` (CodecError or ValueError if it is not one)."""
    bundle = decode_bundle(data)
    return ModelMeta.model_validate(bundle.meta), bundle_to_weights(bundle)


def checkpoint_payload(meta: ModelMeta, weights: Sequence[Array], state: ServerState | None) -> bytes:
    """A round's stored model: the model, plus the server optimiser's state if there is one."""
    return checkpoint_pieces(meta, weights, state).join()


def checkpoint_pieces(meta: ModelMeta, weights: Sequence[Array], state: ServerState | None) -> EncodedBundle:
    """The bytes of `checkpoint_payload`, unjoined: to upload a piece at a time (views of the
    arrays, which must not change until it is sent)."""
    contiguous = [np.ascontiguousarray(w) for w in weights]
    if state is None:
        return encode_pieces(keras_weights_to_bundle(contiguous, meta.model_dump()))
    arrays, description = state
    if any(not name.startswith(STATE_PREFIX) for name in arrays):
        raise ValueError(f"server optimiser state arrays must be named {STATE_PREFIX}*")
    bundle = keras_weights_to_bundle(contiguous, {**meta.model_dump(), "server_optimiser": description})
    bundle.arrays.update(arrays)
    return encode_pieces(bundle)


@dataclass
class StoredCheckpoint:
    """What `read_checkpoint` finds in a round's stored model."""

    meta: ModelMeta
    weights: list[Array]
    state: ServerState | None = field(default=None)


def read_checkpoint(data: bytes) -> StoredCheckpoint:
    """The model and the server optimiser state (if any) of a `checkpoint_payload`."""
    bundle = decode_bundle(data)
    state_arrays = {k: v for k, v in bundle.arrays.items() if k.startswith(STATE_PREFIX)}
    weights = ArrayBundle(arrays={k: v for k, v in bundle.arrays.items() if k not in state_arrays})
    meta = dict(bundle.meta)
    description = meta.pop("server_optimiser", None)
    state = None
    if description is not None:
        if not isinstance(description, dict):
            raise ValueError("the checkpoint's server_optimiser entry is not a JSON object")
        state = (state_arrays, description)
    return StoredCheckpoint(ModelMeta.model_validate(meta), bundle_to_weights(weights), state)
