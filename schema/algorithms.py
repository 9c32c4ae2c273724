"""The algorithms a task definition may name, the parameters each takes, and their defaults.

A definition names an algorithm here (`"algorithm": "fedadam"`), never code to import. Every
parameter is checked when the task is created: a value out of range, a parameter another
algorithm takes (`"mu"` on a fedadam task) or a missing required one (`"clusters"` for
kmeans) is refused with the field's name, so a mistake shows up as a 422, not as a task that
fails an hour later.

The server optimisers are those of Reddi et al., "Adaptive Federated Optimization" (ICLR
2021), with their beta_1 = 0.9, beta_2 = 0.99 and tau = 1e-3. Their server learning rates
suit the tens of rounds a federation here usually runs: Adam and Yogi move each weight by
about the learning rate per round, so 0.03 (the paper's grid has 10^-1.5); Adagrad 0.1;
FedAvgM 1 with momentum 0.5 (0.9 overshoots within ten rounds). bench/algorithms.py measured
these on non-IID MNIST. FedProx (Li et al., MLSys 2020) mu = 0.01, from the paper's grid.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

SERVER_OPTIMISERS: frozenset[str] = frozenset({"fedavgm", "fedadam", "fedyogi", "fedadagrad"})
NEURAL: frozenset[str] = frozenset({"fedavg", "fedprox"}) | SERVER_OPTIMISERS
LINEAR_MODELS: frozenset[str] = frozenset({"logistic_regression", "linear_regression"})
KMEANS = "kmeans"
ALGORITHMS: frozenset[str] = NEURAL | LINEAR_MODELS | {KMEANS}
CONTRIBUTION_METHODS = ("leave_one_out", "shapley")

# Which algorithm-specific fields each algorithm takes; any other algorithm's field is refused.
_FIELDS: dict[str, frozenset[str]] = {
    "fedavg": frozenset(),
    "fedprox": frozenset({"mu"}),
    "fedavgm": frozenset({"server_learning_rate", "server_momentum"}),
    "fedadam": frozenset({"server_learning_rate", "beta_1", "beta_2", "tau"}),
    "fedyogi": frozenset({"server_learning_rate", "beta_1", "beta_2", "tau"}),
    "fedadagrad": frozenset({"server_learning_rate", "beta_1", "tau"}),
    "kmeans": frozenset({"clusters", "n_init"}),
    "logistic_regression": frozenset({"regularisation", "features", "classes"}),
    "linear_regression": frozenset({"regularisation", "features"}),
}
_REQUIRED: dict[str, tuple[str, ...]] = {
    "kmeans": ("clusters",), "logistic_regression": ("features",), "linear_regression": ("features",),
}
_DEFAULTS: dict[str, dict[str, float | int]] = {
    "fedprox": {"mu": 0.01},
    "fedavgm": {"server_learning_rate": 1.0, "server_momentum": 0.5},
    "fedadam": {"server_learning_rate": 0.03, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedyogi": {"server_learning_rate": 0.03, "beta_1": 0.9, "beta_2": 0.99, "tau": 1e-3},
    "fedadagrad": {"server_learning_rate": 0.1, "beta_1": 0.9, "tau": 1e-3},
    "kmeans": {"n_init": 3},
    "logistic_regression": {"regularisation": 0.0, "classes": 2},
    "linear_regression": {"regularisation": 0.0},
}
_ALL_FIELDS = frozenset().union(*_FIELDS.values())


class Parameters(BaseModel):
    """Every algorithm-specific field a definition may carry, typed and bounded."""

    model_config = ConfigDict(extra="ignore", frozen=True)

    algorithm: str = "fedavg"
    server_learning_rate: float | None = Field(default=None, gt=0, le=100, allow_inf_nan=False)
    server_momentum: float | None = Field(default=None, ge=0, lt=1)
    beta_1: float | None = Field(default=None, ge=0, lt=1)
    beta_2: float | None = Field(default=None, ge=0, lt=1)
    tau: float | None = Field(default=None, gt=0, le=10, allow_inf_nan=False)
    mu: float | None = Field(default=None, ge=0, le=1e4, allow_inf_nan=False)
    clusters: int | None = Field(default=None, ge=1, le=10_000)
    n_init: int | None = Field(default=None, ge=1, le=100)
    regularisation: float | None = Field(default=None, ge=0, le=1e6, allow_inf_nan=False)
    features: int | None = Field(default=None, ge=1, le=10_000_000)
    classes: int | None = Field(default=None, ge=2, le=100_000)
    contribution: Literal["leave_one_out", "shapley"] | None = None
    contribution_rounds: Literal["all", "last"] = "all"
    contribution_permutations: int = Field(default=200, ge=1, le=100_000)


def check_algorithm(definition: dict[str, Any]) -> None:
    """Refuse (ValueError naming the field) what the definition's algorithm cannot take."""
    algorithm = str(definition.get("algorithm", "fedavg"))
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unknown algorithm '{algorithm}' (known: {', '.join(sorted(ALGORITHMS))})")
    for name in sorted(_ALL_FIELDS & set(definition) - _FIELDS[algorithm]):
        takers = ", ".join(sorted(a for a, fields in _FIELDS.items() if name in fields))
        raise ValueError(f"'{name}' applies to {takers}, not to {algorithm}")
    for name in _REQUIRED.get(algorithm, ()):
        if definition.get(name) is None:
            raise ValueError(f"{algorithm} needs '{name}' ({_REQUIRED_HELP[name]})")
    if algorithm in LINEAR_MODELS | {KMEANS} and definition.get("model") is not None:
        raise ValueError(f"'model' does not apply to {algorithm}: the algorithm is the model")
    if algorithm == KMEANS and definition.get("contribution") is not None:
        raise ValueError("'contribution' is assessed for neural and linear models, not kmeans")
    checked = parameters(definition)
    if algorithm in LINEAR_MODELS:
        size = newton_parameters(checked)
        if size > MAX_NEWTON_PARAMETERS:
            raise ValueError(f"{algorithm} with {checked.features} features and {checked.classes or 1} "
                             f"outputs has {size} parameters; federated Newton sends a Hessian of "
                             f"size² numbers, so at most {MAX_NEWTON_PARAMETERS} (use a neural "
                             "network for wider data)")


# Linear models train by federated Newton (ml/strategies/newton.py): each update carries a P×P
# Hessian; 2048 parameters make it 32 MiB, the most a round should ask of a participant.
MAX_NEWTON_PARAMETERS = 2048


def newton_parameters(p: Parameters) -> int:
    """How many parameters a linear model has: (features + 1) per output."""
    outputs = int(p.classes or 2) if p.algorithm == "logistic_regression" else 1
    return (int(p.features or 1) + 1) * outputs


_REQUIRED_HELP = {"clusters": "the number of clusters K",
                  "features": "the number of input features per sample"}


def parameters(definition: dict[str, Any]) -> Parameters:
    """The definition's algorithm parameters with the algorithm's defaults filled in."""
    try:
        given = Parameters.model_validate(definition)
    except ValidationError as error:
        first = error.errors()[0]
        where = ".".join(str(p) for p in first.get("loc", ())) or "definition"
        raise ValueError(f"{where}: {first.get('msg', 'invalid value')}") from None
    missing = {k: v for k, v in _DEFAULTS.get(given.algorithm, {}).items()
               if getattr(given, k) is None}
    return given.model_copy(update=missing)


@dataclass(frozen=True)
class ServerOptimiserSettings:
    """A server optimiser and its hyper-parameters (Reddi et al. 2021, Algorithm 2)."""

    name: str
    learning_rate: float
    momentum: float
    beta_1: float
    beta_2: float
    tau: float


def server_optimiser(definition: dict[str, Any]) -> ServerOptimiserSettings | None:
    """The server optimiser the definition asks for, or None (plain FedAvg and FedProx)."""
    p = parameters(definition)
    if p.algorithm not in SERVER_OPTIMISERS:
        return None
    return ServerOptimiserSettings(p.algorithm, float(p.server_learning_rate or 1.0),
                                   float(p.server_momentum or 0.0), float(p.beta_1 or 0.0),
                                   float(p.beta_2 or 0.0), float(p.tau or 1e-3))


def proximal_mu(definition: dict[str, Any]) -> float:
    """FedProx's mu (0 for every other algorithm: no proximal term)."""
    p = parameters(definition)
    return float(p.mu or 0.0) if p.algorithm == "fedprox" else 0.0


def is_regression(definition: dict[str, Any]) -> bool:
    """Whether the task predicts a continuous target (linear regression)."""
    return definition.get("algorithm") == "linear_regression"


@dataclass(frozen=True)
class ContributionSettings:
    """How the aggregator values each participant's contribution."""

    method: str
    rounds: str
    permutations: int


def contribution(definition: dict[str, Any]) -> ContributionSettings | None:
    """The contribution assessment the definition asks for, or None."""
    p = parameters(definition)
    if p.contribution is None:
        return None
    return ContributionSettings(p.contribution, p.contribution_rounds, p.contribution_permutations)
