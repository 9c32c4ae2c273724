"""What every step of one task's run shares: the task, its people, and the daemon's tools."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from aggregator.broadcast import Broadcaster
from aggregator.collect import Collector
from aggregator.record import Recorder
from aggregator.verify import Gate
from client import Task
from ml.strategies import ServerOptimiser

Progress = Callable[[str], None]


class AggregationFailed(RuntimeError):
    """Training cannot go on; the message is recorded as the task's failure reason."""


class QuorumNotReached(AggregationFailed):
    """The quorum did not join within --quorum-timeout; the task stays open unless asked to fail."""


@dataclass
class AggregatorOptions:
    """How the aggregator runs a task."""

    eval_data: str | None = None
    eval_data_dir: str | None = None
    eval_shard: str | None = None
    eval_label_column: str | None = None
    model_file: str | None = None
    round_timeout_s: float = 900.0
    quorum_timeout_s: float | None = None
    # At the quorum timeout: False leaves the task open for joins, True records TaskFailed.
    fail_on_quorum_timeout: bool = False
    seed: int = 0


@dataclass
class RoundResult:
    """What one round produced."""

    round: int
    participants: list[str]
    samples: dict[str, int]
    metrics: dict[str, float]
    eval_metrics: dict[str, float]
    model_sha256: str
    duration_s: float
    rejected: list[str] = field(default_factory=list)


@dataclass
class TaskRun:
    """One task being trained: shared by the steps of every round."""

    task: Task
    participants: list[str]
    options: AggregatorOptions
    recorder: Recorder
    broadcaster: Broadcaster
    gate: Gate
    collector: Collector
    progress: Progress
    # The global feature statistics, when the task standardises (seed §3.4.2).
    mean: np.ndarray[Any, Any] | None = None
    std: np.ndarray[Any, Any] | None = None
    # The server optimiser (fedavgm, fedadam, ...), whose state lives across rounds.
    optimiser: ServerOptimiser | None = None

    def say(self, text: str) -> None:
        """Progress, prefixed with the task's name."""
        self.progress(f"task {self.task.name}: {text}")
