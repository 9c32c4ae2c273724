"""Record: everything the aggregator writes to the log goes through the API, from here."""

from __future__ import annotations

from collections.abc import Callable

from client import MusketeerClient, StoredModel, Task
from ml.contribution import Valuation
from schema.lifecycle import TaskStatus
from streams.codec import EncodedBundle

Progress = Callable[[str], None]


class Recorder:
    """The task's side of the API: models stored, rounds recorded, refusals, the end."""

    def __init__(self, client: MusketeerClient, task_name: str, progress: Progress) -> None:
        self.client = client
        self.name = task_name
        self.progress = progress

    def reject(self, round_no: int, sender: str, reason: str, message_id: str | None) -> None:
        """Record an update (or frame) refused, with the reason; the round goes on without it."""
        self.progress(f"  rejected an update from {sender} (round {round_no}): {reason}")
        self.client.reject_update(self.name, max(round_no, 0), sender[:200] or "unknown",
                                  reason[:2000], message_id)

    def store_model(self, payload: bytes | EncodedBundle, *, round_no: int | None = None,
                    final: bool = False) -> StoredModel:
        """Upload a model (its bytes, or its pieces: sent a piece at a time) before any event names its digest."""
        return self.client.upload_model(self.name, payload, round=round_no, final=final)

    def round(self, round_no: int, *, participants: list[str], model_sha256: str,
              samples: dict[str, int], metrics: dict[str, float], eval_metrics: dict[str, float],
              duration_s: float, epsilon: float | None = None) -> None:
        """Record RoundCompleted (its model stored first)."""
        self.client.record_round(self.name, round_no, participants=participants,
                                 model_sha256=model_sha256, samples=samples, metrics=metrics,
                                 eval_metrics=eval_metrics, duration_s=round(duration_s, 3), epsilon=epsilon)

    def contributions(self, round_no: int, valuation: Valuation, metric: str, data: str) -> None:
        """Record ContributionsAssessed for a recorded round."""
        self.client.record_contributions(
            self.name, round_no, method=valuation.method, metric=metric, values=valuation.values,
            baseline=valuation.baseline, total=valuation.total, data=data[:500],
            permutations=valuation.permutations)

    def missed(self, round_no: int, participants: list[str]) -> None:
        """Record who the round now closing goes without."""
        self.client.record_missed(self.name, round_no, participants)

    def complete(self, model_sha256: str, reason: str | None = None, keras_sha256: str | None = None) -> None:
        """Record TaskCompleted with the final model's digest, its `.keras` export's, and why, if it
        ends before its last round."""
        self.client.complete_task(self.name, model_sha256, reason, keras_sha256=keras_sha256)

    def fail(self, reason: str) -> None:
        """Record TaskFailed, unless the task already ended."""
        current: Task = self.client.get_task(self.name)
        if current.status in (TaskStatus.CREATED, TaskStatus.STARTED):
            self.client.fail_task(self.name, reason)
            self.progress(f"task {self.name}: FAILED: {reason}")
