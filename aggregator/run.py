"""What every step of one task's run shares: the task, its people, and the daemon's tools."""

from __future__ import annotations

import threading
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


class Backlog:
    """Rounds recorded one at a time and in order, the last of them possibly in the background.

    Storing a round's model (40 MB for 10M parameters: most of it PostgreSQL writing the
    artifact) took about 40 % of a large model's round. In the background it runs while the
    next round's weights go out and its updates come in, and only the round's own record waits
    for it. The window this opens (round N+1's weights out, RoundCompleted(N) not yet in the
    log) is one a restarted aggregator resumes from: it runs round N again from the stored
    round N-1, whose updates are still on the updates topic (or sent again by participants,
    who keep their last two), and the earlier round N+1 updates are left over (see `Gate`).
    """

    def __init__(self) -> None:
        self.results: list[RoundResult] = []
        self._thread: threading.Thread | None = None
        self._outcome: RoundResult | BaseException | None = None

    def add(self, record: Callable[[], RoundResult], *, wait: bool = False) -> None:
        """Record a round once the one before is recorded: now (`wait`) or in the background."""
        self.settle()
        if wait:
            self.results.append(record())
            return

        def run() -> None:
            try:
                self._outcome = record()
            except BaseException as error:  # raised again, in the caller's thread, by settle()
                self._outcome = error

        # A daemon thread, not a ThreadPoolExecutor: an executor's threads are joined at exit, so
        # a second Ctrl-C during an upload to an API that is down would wait out its retries.
        self._thread = threading.Thread(target=run, name="record-round", daemon=True)
        self._thread.start()

    def settle(self) -> None:
        """Wait until the round in the background is recorded; raise what stopped it, if anything did."""
        if self._thread is None:
            return
        self._thread.join()
        self._thread, outcome, self._outcome = None, self._outcome, None
        if isinstance(outcome, BaseException):
            raise outcome
        assert outcome is not None
        self.results.append(outcome)


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
    # The rounds recorded so far, and the one being recorded while the next runs.
    backlog: Backlog = field(default_factory=Backlog)

    def say(self, text: str) -> None:
        """Progress, prefixed with the task's name."""
        self.progress(f"task {self.task.name}: {text}")
