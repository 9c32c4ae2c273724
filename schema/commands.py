"""Bodies of the commands the API accepts."""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from schema import privacy
from schema.definition import MAX_ROUNDS, TaskDefinition, check_storable_text
from schema.keys import decode_public_key

Username = Annotated[
    str,
    StringConstraints(min_length=3, max_length=64, pattern=r"^[A-Za-z0-9._-]+$"),
    Field(description="3-64 of letters, digits, '.', '_' and '-'"),
]
TaskName = Annotated[
    str,
    StringConstraints(min_length=1, max_length=100, pattern=r"^[A-Za-z0-9._-]+$"),
    Field(description="1-100 of letters, digits, '.', '_' and '-'"),
]


class RegisterUser(BaseModel):
    """Create an account."""

    model_config = ConfigDict(extra="forbid")

    username: Username
    password: str = Field(min_length=8, max_length=1024, description="at least 8 characters")
    organization: str = Field(min_length=1, max_length=200)


class Credentials(BaseModel):
    """A username and password, to get a token."""

    model_config = ConfigDict(extra="forbid")

    username: str = Field(max_length=64)
    password: str = Field(max_length=1024)


class CreateTask(BaseModel):
    """Define a federated task."""

    model_config = ConfigDict(extra="forbid")

    name: TaskName
    definition: TaskDefinition
    topology: Literal["STAR"] = "STAR"
    pom: int = Field(default=1, ge=1, le=6, description="privacy operation mode (seed POM 1-6)")
    description: str | None = Field(default=None, max_length=4000)

    @field_validator("description")
    @classmethod
    def _storable_description(cls, value: str | None) -> str | None:
        check_storable_text(value, "description")
        return value

    @model_validator(mode="after")
    def _privacy_mode_is_implemented(self) -> CreateTask:
        privacy.check(self.pom, self.definition)
        return self


Sha256 = Annotated[str, StringConstraints(pattern=r"^[0-9a-f]{64}$"), Field(description="hex sha256")]
MetricName = Annotated[str, StringConstraints(min_length=1, max_length=64)]
FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]


class RecordRound(BaseModel):
    """The aggregator reports a completed round."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=1, le=MAX_ROUNDS)
    participants: list[Username] = Field(max_length=10_000)
    samples: dict[Username, Annotated[int, Field(ge=0)]] = Field(default_factory=dict)
    metrics: dict[MetricName, FiniteFloat] = Field(default_factory=dict, max_length=50)
    eval_metrics: dict[MetricName, FiniteFloat] = Field(default_factory=dict, max_length=50)
    model_sha256: Sha256
    duration_s: float | None = Field(default=None, ge=0, allow_inf_nan=False)
    epsilon: float | None = Field(default=None, ge=0, allow_inf_nan=False,
                                  description="differential privacy spent so far, after this round")


class RecordRejection(BaseModel):
    """The aggregator reports an update it refused."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=0, le=MAX_ROUNDS)
    sender: str = Field(min_length=1, max_length=200)
    reason: str = Field(min_length=1, max_length=2000)
    message_id: str | None = Field(default=None, max_length=200)


class CompleteTask(BaseModel):
    """The aggregator finished; the final model (already uploaded) has this digest."""

    model_config = ConfigDict(extra="forbid")

    model_sha256: Sha256
    reason: str | None = Field(default=None, min_length=1, max_length=2000,
                               description="why it ends before its last round (the privacy budget)")
    keras_sha256: Sha256 | None = Field(
        default=None, description="digest of the final model's .keras export (already uploaded)")


class FailTask(BaseModel):
    """The aggregator gave up, with the reason."""

    model_config = ConfigDict(extra="forbid")

    reason: str = Field(min_length=1, max_length=4000)


class RecordMissed(BaseModel):
    """The aggregator reports who a round closed without."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=1, le=MAX_ROUNDS)
    participants: list[Username] = Field(min_length=1, max_length=10_000)


class RegisterKey(BaseModel):
    """A member's Ed25519 public key, to sign what they send on the data plane."""

    model_config = ConfigDict(extra="forbid")

    public_key: str = Field(min_length=1, max_length=100, description="base64 of the 32 raw bytes")

    @field_validator("public_key")
    @classmethod
    def _is_ed25519(cls, value: str) -> str:
        decode_public_key(value)
        return value


class RecordContributions(BaseModel):
    """The aggregator reports what each participant's update was worth to a recorded round."""

    model_config = ConfigDict(extra="forbid")

    round: int = Field(ge=1, le=MAX_ROUNDS)
    method: Literal["leave_one_out", "shapley_exact", "shapley_monte_carlo"]
    metric: MetricName
    values: dict[Username, FiniteFloat] = Field(min_length=1, max_length=10_000)
    baseline: FiniteFloat
    total: FiniteFloat
    data: str = Field(min_length=1, max_length=500, description="the evaluation data used")
    permutations: int | None = Field(default=None, ge=1, le=100_000)

    @field_validator("data", "metric")
    @classmethod
    def _storable(cls, value: str, info: ValidationInfo) -> str:
        check_storable_text(value, str(info.field_name))
        return value
