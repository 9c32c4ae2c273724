"""The federated task definition: validated, with the seed's spelling normalised."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

# Algorithms a definition may name (schema/algorithms.py, with their parameters). A definition
# names an entry there; it never names code to import (the seed's "neural_network.Aggregator"
# maps to "fedavg").
from schema.algorithms import ALGORITHMS, NEURAL, check_algorithm

__all__ = ["ALGORITHMS", "MAX_PARTICIPANTS", "MAX_ROUNDS", "MAX_SAMPLES", "SEED_ALGORITHM_ALIASES",
           "SEED_FIELD_ALIASES", "TaskDefinition", "check_storable_text"]
SEED_ALGORITHM_ALIASES: dict[str, str] = {
    "neural_network.Aggregator": "fedavg",
    "neural_network": "fedavg",
    "FedAvg": "fedavg",
}
# Rules that fold a round's updates; robust ones bound what a few bad members can do.
AGGREGATIONS: frozenset[str] = frozenset({"fedavg", "median", "trimmed_mean"})
# The seed spells a few fields in the singular; we accept and rename them.
SEED_FIELD_ALIASES: dict[str, str] = {"round": "rounds", "epoch": "epochs"}
# The seed names the participant's class beside the aggregator's; both mean "the registry's
# neural-network training", which `algorithm` already says, so the field is dropped.
SEED_PARTICIPANT_CLASSES: frozenset[str] = frozenset({"neural_network.Participant", "neural_network"})

# Models a definition may name (ml/registry.py builds them; a test keeps the two lists equal).
# USER_MODEL says the task's creator trains a Keras file of their own (`aggregate --model FILE`).
REGISTRY_MODELS: frozenset[str] = frozenset({"digits-mlp", "mnist-cnn", "welding-mlp"})
USER_MODEL = "user"
# Algorithms that train a Keras model and so need one named (K-means and the linear models
# are their own model).
MODEL_ALGORITHMS: frozenset[str] = NEURAL


def known_model_names() -> list[str]:
    """What `model` may say: a registry model, or "user" for the creator's own Keras file."""
    return [*sorted(REGISTRY_MODELS), USER_MODEL]


# Upper bounds: beyond any real federation, and within PostgreSQL's int columns.
MAX_PARTICIPANTS = 100_000
MAX_ROUNDS = 100_000
MAX_SAMPLES = 1_000_000_000


def check_storable_text(value: Any, where: str) -> None:
    """Refuse the NUL character anywhere in `value` (keys and strings, at any depth).

    PostgreSQL's text and jsonb cannot hold it; refusing it here names where it is.
    """
    if isinstance(value, str):
        if "\x00" in value:
            raise ValueError(f"{where}: text may not contain the NUL character (\\u0000)")
    elif isinstance(value, dict):
        for key, item in value.items():
            check_storable_text(key, where)
            check_storable_text(item, f"{where}.{key}" if isinstance(key, str) else where)
    elif isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            check_storable_text(item, f"{where}[{index}]")


class TaskDefinition(BaseModel):
    """What a federated task trains, how many rounds, and who must be there."""

    model_config = ConfigDict(extra="allow", frozen=True)

    quorum: int = Field(ge=1, le=MAX_PARTICIPANTS, description="participants needed before training starts")
    rounds: int = Field(ge=1, le=MAX_ROUNDS, description="federated rounds")
    epochs: int = Field(default=1, ge=1, le=10_000, description="local epochs per round")
    batch_size: int = Field(default=32, ge=1, le=1_000_000, description="local mini-batch size")
    learning_rate: float = Field(default=0.001, gt=0, le=1e6, description="local learning rate")
    training_size: int | None = Field(default=None, ge=1, le=MAX_SAMPLES, description="local training samples")
    test_size: int | None = Field(default=None, ge=1, le=MAX_SAMPLES, description="local test samples")
    algorithm: str = Field(default="fedavg", description="aggregation algorithm, from the registry")
    model: str | None = Field(
        default=None, description="model from the registry, or \"user\" for the creator's own Keras file")
    max_participants: int | None = Field(default=None, ge=1, le=MAX_PARTICIPANTS, description="cap on members")
    round_timeout_s: float | None = Field(
        default=None, gt=0, le=7 * 24 * 3600,
        description="seconds a round waits for updates before closing with those it has")
    min_updates: int | None = Field(
        default=None, ge=1, le=MAX_PARTICIPANTS,
        description="updates a round needs when it closes at its deadline (default: everyone)")
    max_samples: int | None = Field(
        default=None, ge=1, le=MAX_SAMPLES,
        description="most samples one update may claim (default: training_size); over it, refused")
    aggregation: str = Field(
        default="fedavg", description="how updates are combined: fedavg, median or trimmed_mean")
    trim: float | None = Field(
        default=None, ge=0, lt=0.5,
        description="trimmed_mean: the fraction of updates dropped at each end, per coordinate (0.1)")
    clip_norm: float | None = Field(
        default=None, gt=0, le=1e12, allow_inf_nan=False,
        description="each update's difference from the global model is clipped to this L2 norm")
    noise_multiplier: float | None = Field(
        default=None, gt=0, le=1000, allow_inf_nan=False,
        description="differential privacy: noise stddev on the round's sum, in units of clip_norm")
    delta: float | None = Field(
        default=None, gt=0, lt=1, description="differential privacy: the delta of (epsilon, delta) (1e-5)")
    target_epsilon: float | None = Field(
        default=None, gt=0, le=1000, allow_inf_nan=False,
        description="differential privacy: stop early, before a round would spend more than this")
    secagg_threshold: int | None = Field(
        default=None, ge=2, le=MAX_PARTICIPANTS,
        description="secure aggregation: members needed at each step (default: a majority)")
    secagg_bound: float | None = Field(
        default=None, gt=0, le=1e6, allow_inf_nan=False,
        description="secure aggregation: per-coordinate bound on an update's change (100)")

    @model_validator(mode="before")
    @classmethod
    def _normalise_seed_spelling(cls, raw: Any) -> Any:
        if not isinstance(raw, dict):
            return raw
        check_storable_text(raw, "definition")
        data = dict(raw)
        for seed_name, name in SEED_FIELD_ALIASES.items():
            if seed_name in data:
                if name in data and data[name] != data[seed_name]:
                    raise ValueError(f"both '{seed_name}' and '{name}' given with different values")
                data[name] = data.pop(seed_name)
        if "aggregator" in data and "algorithm" not in data:
            data["algorithm"] = data.pop("aggregator")
        if data.get("participant") in SEED_PARTICIPANT_CLASSES:
            data.pop("participant")
        algorithm = data.get("algorithm")
        if isinstance(algorithm, str):
            data["algorithm"] = SEED_ALGORITHM_ALIASES.get(algorithm, algorithm)
        return data

    @model_validator(mode="after")
    def _check_consistency(self) -> TaskDefinition:
        check_algorithm(self.model_dump())
        if self.aggregation not in AGGREGATIONS:
            known = ", ".join(sorted(AGGREGATIONS))
            raise ValueError(f"unknown aggregation '{self.aggregation}' (known: {known})")
        if self.algorithm not in NEURAL and (self.aggregation != "fedavg" or self.clip_norm is not None
                                             or self.noise_multiplier is not None):
            raise ValueError(f"aggregation, clip_norm and noise_multiplier apply to the neural algorithms "
                             f"({', '.join(sorted(NEURAL))}), not to {self.algorithm}")
        if (self.min_updates is not None and self.max_participants is not None
                and self.min_updates > self.max_participants):
            raise ValueError(
                f"min_updates ({self.min_updates}) is above max_participants "
                f"({self.max_participants}): no round could ever close"
            )
        if self.max_participants is not None and self.max_participants < self.quorum:
            raise ValueError(
                f"max_participants ({self.max_participants}) is below quorum ({self.quorum})"
            )
        self._check_model()
        return self

    @property
    def sample_cap(self) -> int | None:
        """The most samples one update may claim: `max_samples`, else `training_size`."""
        return self.max_samples if self.max_samples is not None else self.training_size

    def _check_model(self) -> None:
        # Checked here, at creation: an unknown model would otherwise surface only when the
        # aggregator starts the task, after people joined it.
        known = ", ".join(known_model_names())
        if self.model is None:
            if self.algorithm in MODEL_ALGORITHMS:
                raise ValueError(f"no model: add \"model\" (one of {known}; \"{USER_MODEL}\" "
                                 "means the aggregator's --model FILE)")
        elif self.model not in REGISTRY_MODELS and self.model != USER_MODEL:
            raise ValueError(f"unknown model '{self.model}' (known: {known})")

    def to_json(self) -> dict[str, Any]:
        """The normalised definition as stored in events (extra fields kept)."""
        return self.model_dump(mode="json", exclude_none=True)
