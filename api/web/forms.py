"""Dashboard forms: raw fields in, a validated command out, or errors keyed by the field at fault."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from schema.commands import CreateTask, RegisterUser
from schema.definition import ALGORITHMS

# The create-task form's definition fields, in the order the form shows them.
NUMBER_FIELDS: tuple[str, ...] = ("quorum", "rounds", "epochs", "batch_size", "learning_rate",
                                  "training_size", "test_size", "max_participants",
                                  "round_timeout_s", "min_updates")
TEXT_FIELDS: tuple[str, ...] = ("model", "algorithm")
# Suggestions for the model field (tests/test_dashboard.py checks them against ml.registry).
MODEL_SUGGESTIONS: tuple[str, ...] = ("digits-mlp", "mnist-cnn", "welding-mlp")
POMS: tuple[int, ...] = (1, 2, 3, 4, 5, 6)


@dataclass
class FormResult:
    """What a submitted form gave: the command if valid, else errors by field, and the values."""

    values: dict[str, str]
    errors: dict[str, str] = field(default_factory=dict)
    command: Any = None


def algorithms() -> list[str]:
    """The aggregation algorithms a definition may name."""
    return sorted(ALGORITHMS)


def _field_errors(error: ValidationError, prefix: tuple[str, ...] = ()) -> dict[str, str]:
    """{form field: message} from pydantic's errors; model-wide ones under `_form`."""
    found: dict[str, str] = {}
    for item in error.errors():
        loc = tuple(str(part) for part in item.get("loc", ()))
        inner = loc[len(prefix):] if loc[:len(prefix)] == prefix else loc
        name = inner[0] if inner else "_form"
        message = str(item.get("msg", "invalid")).removeprefix("Value error, ")
        if item.get("type") == "string_pattern_mismatch":
            message = "use only letters, digits, “.”, “_” and “-” (no spaces)"
        found.setdefault(name, message)
    return found


def task_form(raw: dict[str, str]) -> FormResult:
    """The create-task form as a CreateTask command, or the errors to show beside each field."""
    values = {k: str(v).strip() for k, v in raw.items()}
    definition: dict[str, Any] = {}
    for name in (*NUMBER_FIELDS, *TEXT_FIELDS):
        if values.get(name):
            definition[name] = values[name]
    if values.get("standardise"):
        definition["standardise"] = True
    body: dict[str, Any] = {"name": values.get("name", ""), "definition": definition,
                            "pom": values.get("pom") or "1"}
    if values.get("description"):
        body["description"] = values["description"]
    try:
        return FormResult(values, command=CreateTask.model_validate(body))
    except ValidationError as error:
        errors = _field_errors(error, ("definition",))
        if "definition" in errors:  # a whole-definition check (e.g. quorum vs max_participants)
            errors["_form"] = errors.pop("definition")
        return FormResult(values, errors)


def registration_form(raw: dict[str, str]) -> FormResult:
    """The registration form as a RegisterUser command, or the errors by field."""
    values = {k: str(v) for k, v in raw.items()}
    body = {"username": values.get("username", "").strip(), "password": values.get("password", ""),
            "organization": values.get("organization", "").strip()}
    try:
        return FormResult(values, command=RegisterUser.model_validate(body))
    except ValidationError as error:
        return FormResult(values, _field_errors(error))
