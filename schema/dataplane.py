"""The federated-training protocol over a task's two topics: message kinds and their metadata.

Broadcast topic (aggregator → every participant, written once, read by all):
  `standardise` round 0   global per-feature mean and std (arrays "mean", "std")
  `architecture` round 0  Keras architecture JSON in meta, initial weights as arrays
  `weights` round r       the model every participant trains in round r
  `final` round R         the final model
  `stop` any round        the task failed or was stopped; meta {"reason"}
Updates topic (participant → aggregator, keyed by participant):
  `stats` round 0         per-feature "sums", "sums_sq" arrays and meta {"count"}
  `update` round r        trained weights, meta {"samples", "metrics", "test_samples"};
                          with secure aggregation, the masked input (array "masked") instead

Secure aggregation (privacy modes 2 and 3, ml.secagg), per round and instance (meta "instance":
"update" for a model round; "mean" then "var" for standardisation in round 0):
  `advertise` (participant)  meta {"instance", "keys"}: this round's public keys
  `roster` (aggregator)      meta {"instance", "roster", "threshold"}: who advertised, their keys
  `shares` (participant)     meta {"instance", "shares"}: encrypted shares, one per other member
  `share-list` (aggregator)  meta {"instance", "shares"}: every member's encrypted shares
  `update` (participant)     the masked input, array "masked" (uint64), meta {"instance"}
  `unmask` (aggregator)      meta {"instance", "survivors", "dropped"}
  `reveal` (participant)     meta {"instance", "b", "s"}: the shares the aggregator needs
  `standardise` (aggregator) with meta {"phase": "mean"} and array "mean" only: the global mean,
                             before the squared deviations are summed

K-means (`"algorithm": "kmeans"`) uses the same kinds with its own arrays: `architecture` and
`weights` carry "centroids" (n_init, K, d) with `KMeansMeta`, `final` the best set (K, d); an
`update` carries "sums" (n_init, K, d), "counts" (n_init, K) and "inertia" (n_init,); and before
the first round each participant sends `candidates` (round 0): "centres" (m, d), "sizes" (m,),
its local cluster means, from which the aggregator draws the initial centroids.

Payloads are `streams.codec` bundles (arrays plus a JSON manifest): data, never code.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

STANDARDISE = "standardise"
ARCHITECTURE = "architecture"
WEIGHTS = "weights"
FINAL = "final"
STOP = "stop"
STATS = "stats"
UPDATE = "update"
ADVERTISE = "advertise"
ROSTER = "roster"
SHARES = "shares"
SHARE_LIST = "share-list"
UNMASK = "unmask"
REVEAL = "reveal"
CANDIDATES = "candidates"

BROADCAST_KINDS = frozenset({STANDARDISE, ARCHITECTURE, WEIGHTS, FINAL, STOP, ROSTER, SHARE_LIST, UNMASK})
UPDATE_KINDS = frozenset({STATS, UPDATE, CANDIDATES, ADVERTISE, SHARES, REVEAL})
SECURE_BROADCASTS = frozenset({ROSTER, SHARE_LIST, UNMASK})


class ModelMeta(BaseModel):
    """What travels with the architecture: how to rebuild and train the model."""

    model_config = ConfigDict(extra="allow")

    architecture: str = Field(description="Keras model JSON")
    model: str = Field(description="registry name, or 'user' for a --model file")
    input_shape: list[int]
    num_classes: int
    learning_rate: float
    epochs: int
    batch_size: int
    rounds: int
    feature_mean: list[float] | None = Field(
        default=None, description="global per-feature mean to standardise inputs with, if any")
    feature_std: list[float] | None = Field(
        default=None, description="global per-feature std to standardise inputs with, if any")
    objective: Literal["classification", "regression"] = Field(
        default="classification",
        description="classification (integer labels, cross-entropy) or regression (MSE)")

    @property
    def regression(self) -> bool:
        """Whether the model predicts a continuous target."""
        return self.objective == "regression"


class UpdateMeta(BaseModel):
    """What travels with a participant's update."""

    model_config = ConfigDict(extra="forbid")

    samples: int = Field(ge=1, description="local training samples behind this update")
    test_samples: int = Field(ge=0)
    metrics: dict[str, float] = Field(default_factory=dict)


class StatsMeta(BaseModel):
    """What travels with a participant's feature statistics."""

    model_config = ConfigDict(extra="forbid")

    count: int = Field(ge=1)


class KMeansMeta(BaseModel):
    """What travels with K-means centroids (initial, per round and final)."""

    model_config = ConfigDict(extra="forbid")

    algorithm: Literal["kmeans"] = "kmeans"
    clusters: int = Field(ge=1)
    n_init: int = Field(ge=1)
    features: int = Field(ge=1)
    rounds: int = Field(ge=1)
    feature_mean: list[float] | None = None
    feature_std: list[float] | None = None
    inertia: list[float] | None = Field(
        default=None, description="per initialisation, of the centroids the last round started from")


def wants_standardisation(definition: dict[str, Any]) -> bool:
    """Whether the task's definition asks for federated standardisation (seed §3.4.2)."""
    value = definition.get("standardise", definition.get("normalization", False))
    return value is True or value in ("global", "federated", "standard", "z-score")
