"""Unit tests of the formats in schema/: definitions, lifecycle, events."""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import pytest
from pydantic import ValidationError

from schema.commands import CreateTask, RegisterUser
from schema.definition import USER_MODEL, TaskDefinition, known_model_names
from schema.events import EVENT_TYPES, UnknownEventType, parse_event
from schema.lifecycle import VALID_TRANSITIONS, TaskStatus, can_transition

FIXTURES = Path(__file__).parent / "fixtures" / "events"


# The smallest valid definition: each invalid case below breaks exactly one thing in it.
VALID = {"quorum": 1, "rounds": 1, "model": "digits-mlp"}


def test_seed_spelling_is_normalised() -> None:
    """`round`, `epoch`, `aggregator` and `participant` in the seed's spelling become our names."""
    seed = {"quorum": 2, "round": 5, "epoch": 2, "batch_size": 128, "learning_rate": 0.001,
            "training_size": 4000, "test_size": 1000, "aggregator": "neural_network.Aggregator",
            "participant": "neural_network.Participant", "model": "mnist-cnn"}
    definition = TaskDefinition.model_validate(seed).to_json()
    assert definition == {"quorum": 2, "rounds": 5, "epochs": 2, "batch_size": 128,
                          "learning_rate": 0.001, "training_size": 4000, "test_size": 1000,
                          "algorithm": "fedavg", "aggregation": "fedavg", "model": "mnist-cnn"}


def test_extra_algorithm_fields_are_kept() -> None:
    """Algorithm-specific fields such as the seed's `point` survive validation."""
    definition = TaskDefinition.model_validate({**VALID, "point": [1, 2]})
    assert definition.to_json()["point"] == [1, 2]


@pytest.mark.parametrize(("raw", "field"), [
    ({**VALID, "quorum": 0}, "quorum"), ({**VALID, "rounds": 0}, "rounds"),
    ({**VALID, "epochs": 0}, "epochs"), ({**VALID, "batch_size": 0}, "batch_size"),
    ({**VALID, "learning_rate": 0}, "learning_rate"), ({**VALID, "learning_rate": -1}, "learning_rate"),
    ({**VALID, "training_size": 0}, "training_size"), ({**VALID, "test_size": 0}, "test_size"),
    ({**VALID, "quorum": 3, "max_participants": 2}, "max_participants"),
    ({**VALID, "algorithm": "builtins.eval"}, "unknown algorithm"),
    ({**VALID, "round": 2, "rounds": 3}, "both 'round' and 'rounds'"),
    ({**VALID, "model": "resnet-9000"}, "unknown model 'resnet-9000'"),
    ({"quorum": 1, "rounds": 1}, "no model"),
])
def test_invalid_definitions_are_refused(raw: dict[str, Any], field: str) -> None:
    """Every bound is enforced, and the error names what was wrong."""
    with pytest.raises(ValidationError, match=field):
        TaskDefinition.model_validate(raw)


def test_a_refused_model_lists_the_known_ones() -> None:
    """An unknown or missing model is refused naming every model a definition may use."""
    for raw in ({**VALID, "model": "nosuch"}, {"quorum": 1, "rounds": 1}):
        with pytest.raises(ValidationError) as caught:
            TaskDefinition.model_validate(raw)
        assert all(name in str(caught.value) for name in known_model_names())


def test_user_model_is_a_known_model() -> None:
    """"model": "user" says the creator trains a Keras file of their own (aggregate --model)."""
    assert TaskDefinition.model_validate({**VALID, "model": USER_MODEL}).model == "user"


def test_max_participants_equal_to_quorum_is_fine() -> None:
    """The cap may equal the quorum."""
    definition = TaskDefinition.model_validate({**VALID, "quorum": 2, "max_participants": 2})
    assert (definition.quorum, definition.max_participants) == (2, 2)


@pytest.mark.parametrize("current", list(TaskStatus))
@pytest.mark.parametrize("target", list(TaskStatus))
def test_every_transition_pair_follows_the_table(current: TaskStatus, target: TaskStatus) -> None:
    """can_transition answers from the one table, over every pair."""
    expected = (current, target) in VALID_TRANSITIONS
    assert can_transition(current, target) is expected
    if current in (TaskStatus.COMPLETED, TaskStatus.FAILED, TaskStatus.DELETED):
        assert not can_transition(current, TaskStatus.STARTED)
    if current == TaskStatus.DELETED:
        assert not can_transition(current, target)


def test_usernames_and_passwords_are_checked() -> None:
    """The registration body enforces the name pattern and password length."""
    RegisterUser(username="john.doe-1", password="12345678", organization="o")
    for bad in ("ab", "a b c", "x" * 65, "émile"):
        with pytest.raises(ValidationError):
            RegisterUser(username=bad, password="12345678", organization="o")
    with pytest.raises(ValidationError):
        RegisterUser(username="john", password="1234567", organization="o")


def test_create_task_rejects_unknown_fields_and_topologies() -> None:
    """Only STAR topology and the documented fields are accepted."""
    with pytest.raises(ValidationError):
        CreateTask.model_validate({"name": "t", "definition": VALID, "topology": "RING"})
    with pytest.raises(ValidationError):
        CreateTask.model_validate({"name": "t", "definition": VALID, "extra": 1})
    assert CreateTask.model_validate({"name": "t", "definition": VALID}).topology == "STAR"


def _random_value(annotation: str, rng: random.Random) -> Any:
    text = "".join(rng.choice("abcxyz-_.") for _ in range(rng.randint(1, 12)))
    if annotation.startswith("dict[str, int]"):
        return {f"k{i}": rng.randint(0, 9) for i in range(rng.randint(0, 3))}
    if annotation.startswith("dict[str, str]"):
        return {f"k{i}": text + str(i) for i in range(rng.randint(0, 3))}
    if annotation.startswith("dict[str, float]"):
        return {f"k{i}": rng.random() for i in range(rng.randint(0, 3))}
    if annotation.startswith("dict"):
        return {"quorum": rng.randint(1, 9), "rounds": rng.randint(1, 9)}
    if annotation.startswith("list"):
        return [text + str(i) for i in range(rng.randint(0, 3))]
    if annotation.startswith("bool"):
        return rng.random() < 0.5
    if annotation.startswith("int"):
        return rng.randint(1, 6)
    if annotation.startswith("float"):
        return rng.random() * 100
    return text


def _random_event(cls: type, rng: random.Random) -> Any:
    values = {}
    for name, field in cls.model_fields.items():
        annotation = getattr(field.annotation, "__name__", None) or str(field.annotation)
        annotation = str(field.annotation) if "[" in str(field.annotation) else annotation
        values[name] = _random_value(annotation.replace("typing.", ""), rng)
    return cls(**values)


def test_every_event_round_trips_through_its_stored_form() -> None:
    """to_data / parse_event are paired: a seeded random event survives JSON storage."""
    rng = random.Random(824988)
    for cls in EVENT_TYPES.values():
        for _ in range(20):
            event = _random_event(cls, rng)
            stored = json.loads(json.dumps(event.to_data()))
            assert parse_event(cls.type_name(), stored, cls.schema_version) == event


def test_stored_fixtures_of_every_event_version_still_parse() -> None:
    """One stored sample per event type and schema version parses with today's code."""
    found = sorted(FIXTURES.glob("*.json"))
    types = {path.name.split(".v")[0] for path in found}
    assert types == set(EVENT_TYPES), "add a fixture for every event type"
    for path in found:
        stored = json.loads(path.read_text())
        event = parse_event(stored["type"], stored["data"], stored["schema_version"])
        assert event.type_name() == stored["type"]


def test_unknown_event_types_are_refused() -> None:
    """A type this code does not know is an error, not a silent skip."""
    with pytest.raises(UnknownEventType):
        parse_event("TaskTeleported", {})
