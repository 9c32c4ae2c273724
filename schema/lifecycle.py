"""Task lifecycle as data: the states and the one table of allowed transitions."""

from __future__ import annotations

from enum import StrEnum


class TaskStatus(StrEnum):
    """Where a task is in its life."""

    CREATED = "CREATED"
    STARTED = "STARTED"
    COMPLETED = "COMPLETED"
    FAILED = "FAILED"
    DELETED = "DELETED"


# Every command that moves a task checks this table and nothing else
# (Flower's VALID_RUN_STATUS_TRANSITIONS is the model).
VALID_TRANSITIONS: frozenset[tuple[TaskStatus, TaskStatus]] = frozenset(
    {
        (TaskStatus.CREATED, TaskStatus.STARTED),
        (TaskStatus.CREATED, TaskStatus.FAILED),
        (TaskStatus.CREATED, TaskStatus.DELETED),
        (TaskStatus.STARTED, TaskStatus.COMPLETED),
        (TaskStatus.STARTED, TaskStatus.FAILED),
        (TaskStatus.STARTED, TaskStatus.DELETED),
        (TaskStatus.COMPLETED, TaskStatus.DELETED),
        (TaskStatus.FAILED, TaskStatus.DELETED),
    }
)

LIVE_STATES: frozenset[TaskStatus] = frozenset({TaskStatus.CREATED, TaskStatus.STARTED})


def can_transition(current: TaskStatus, target: TaskStatus) -> bool:
    """Whether a task in `current` may move to `target`."""
    return (current, target) in VALID_TRANSITIONS
