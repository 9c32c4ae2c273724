"""Each reason the aggregator refuses an update, one fast test apiece (the six that had none and the
six the slow end-to-end test in test_hostile_updates.py covers), through the public
functions of aggregator/verify.py (`Gate`, `envelope_problem`) and aggregator/fold.py
(`fold_update`). The recorder is a stand-in that keeps what it would send to the API."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest

from aggregator.fold import Refused, fold_update
from aggregator.verify import Accepted, Gate, envelope_problem
from ml.strategies import for_round
from schema import dataplane
from schema.dataplane import UpdateMeta
from streams.codec import ArrayBundle, encode_bundle, keras_weights_to_bundle
from streams.framing import Payload
from streams.reader import Received, Rejected

TASK = "task-1"
PEOPLE = ["jack", "john"]
GLOBAL = [np.zeros((3, 2), dtype=np.float32), np.zeros(2, dtype=np.float32)]


@dataclass
class Recorded:
    """Stands in for aggregator.record.Recorder: keeps each refusal instead of calling the API."""

    rejections: list[tuple[int, str, str, str | None]] = field(default_factory=list)

    def reject(self, round_no: int, sender: str, reason: str, message_id: str | None) -> None:
        self.rejections.append((round_no, sender, reason, message_id))


def update(metrics: dict[str, float] | None = None, meta: dict[str, Any] | None = None) -> bytes:
    """A well-formed update of GLOBAL's shapes (with these metrics or this raw metadata)."""
    weights = [np.ones_like(w) for w in GLOBAL]
    body = meta if meta is not None else UpdateMeta(
        samples=10, test_samples=2, metrics=metrics or {"accuracy": 0.5}).model_dump()
    return encode_bundle(keras_weights_to_bundle(weights, body))


def delivery(data: bytes, *, task_id: str = TASK, round_no: int = 1, kind: str = dataplane.UPDATE,
             sender: str = "john", message_id: str = "m-1") -> Received:
    payload = Payload(task_id=task_id, round=round_no, kind=kind, sender=sender, message_id=message_id,
                      payload_size=len(data), payload_sha256=hashlib.sha256(data).hexdigest(), data=data)
    return Received(payload=payload, topic="updates", partition=0, offset=0)


def gate() -> tuple[Gate, Recorded]:
    recorder = Recorded()
    return Gate(TASK, PEOPLE, recorder), recorder  # type: ignore[arg-type]


def only_reason(recorder: Recorded) -> str:
    assert len(recorder.rejections) == 1, recorder.rejections
    return recorder.rejections[0][2]


def test_a_valid_update_passes_the_gate_and_is_folded() -> None:
    """The control case: the same helpers with nothing wrong give an accepted, folded update."""
    checker, recorder = gate()
    average = for_round({}, GLOBAL)

    accepted = checker.accept(delivery(update()), 1, dataplane.UPDATE, done=set())
    assert accepted is not None
    outcome = fold_update(average, accepted)

    assert recorder.rejections == []
    assert isinstance(outcome, UpdateMeta) and outcome.samples == 10
    assert all(np.all(w == 1) for w in average.result())


def test_a_message_for_another_task_is_refused() -> None:
    """An update carrying another task's id: "message for another task", recorded, not taken."""
    checker, recorder = gate()

    assert checker.accept(delivery(update(), task_id="task-2"), 1, dataplane.UPDATE, set()) is None
    assert only_reason(recorder) == "message for another task (task-2)"


def test_an_update_for_a_future_round_is_refused() -> None:
    """Round 3's update while round 1 is open: "update for future round", recorded."""
    checker, recorder = gate()

    assert checker.accept(delivery(update(), round_no=3), 1, dataplane.UPDATE, set()) is None
    assert only_reason(recorder) == "update for future round 3 (now round 1)"
    assert recorder.rejections[0][0] == 3


def test_an_unexpected_message_kind_is_refused() -> None:
    """Statistics sent while the round collects updates: "unexpected message kind", recorded."""
    checker, recorder = gate()

    assert checker.accept(delivery(update(), kind=dataplane.STATS), 1, dataplane.UPDATE, set()) is None
    assert only_reason(recorder) == f"unexpected message kind '{dataplane.STATS}' (expected '{dataplane.UPDATE}')"


def test_an_undecodable_payload_is_refused() -> None:
    """Bytes that are no array bundle pass the envelope checks but not decoding: recorded."""
    checker, recorder = gate()

    assert checker.accept(delivery(b"\x00not a bundle\xff"), 1, dataplane.UPDATE, set()) is None
    assert only_reason(recorder).startswith("undecodable payload: ")


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_non_finite_local_metrics_are_refused(bad: float) -> None:
    """A NaN or infinite local accuracy would poison the averaged metrics: refused, unfolded."""
    checker, _ = gate()
    average = for_round({}, GLOBAL)
    accepted = checker.accept(delivery(update(metrics={"accuracy": bad, "loss": 0.1})), 1,
                              dataplane.UPDATE, set())
    assert accepted is not None

    outcome = fold_update(average, accepted)

    assert outcome == Refused("non-finite local metrics: accuracy")
    assert average.count == 0


@pytest.mark.parametrize("meta", [{"samples": 0, "test_samples": 1}, {"test_samples": 1},
                                  {"samples": 5, "test_samples": 1, "smuggled": "x"}])
def test_malformed_update_metadata_is_refused(meta: dict[str, Any]) -> None:
    """No sample count, a zero one, or an unknown field: "malformed update metadata", unfolded."""
    average = for_round({}, GLOBAL)
    accepted = Accepted("john", "m-1", ArrayBundle(arrays={}, meta=meta))

    outcome = fold_update(average, accepted)

    assert isinstance(outcome, Refused) and outcome.reason.startswith("malformed update metadata: ")
    assert average.count == 0


def test_a_stale_update_is_refused() -> None:
    """Round 1's update while round 2 is open: "stale update", recorded."""
    checker, recorder = gate()

    assert checker.accept(delivery(update(), round_no=1), 2, dataplane.UPDATE, set()) is None
    assert only_reason(recorder) == "stale update for round 1 (now round 2)"


def test_a_second_update_from_a_sender_is_refused_as_a_duplicate() -> None:
    """john already counted this round: his next update is "duplicate update", recorded."""
    checker, recorder = gate()

    assert checker.accept(delivery(update(), message_id="m-2"), 1, dataplane.UPDATE, {"john"}) is None
    assert only_reason(recorder) == "duplicate update from john for round 1"


def test_an_unknown_sender_is_refused() -> None:
    """mallory is no participant: "unknown sender", recorded under her name."""
    checker, recorder = gate()

    assert checker.accept(delivery(update(), sender="mallory"), 1, dataplane.UPDATE, set()) is None
    assert only_reason(recorder) == "unknown sender 'mallory' (not a participant of this task)"
    assert recorder.rejections[0][1] == "mallory"


def test_a_refused_frame_is_recorded_with_the_readers_reason() -> None:
    """Garbage on the topic reaches the gate as a Rejected delivery: recorded as it was refused."""
    checker, recorder = gate()
    garbage = Rejected(reason="frame without envelope headers", envelope=None, topic="updates",
                       partition=0, offset=7)

    assert checker.accept(garbage, 1, dataplane.UPDATE, set()) is None
    assert recorder.rejections == [(1, "unknown", "frame without envelope headers", None)]


def test_weights_of_the_wrong_shape_are_refused() -> None:
    """A flattened array where a matrix belongs: refused naming the array and both shapes."""
    average = for_round({}, GLOBAL)
    weights = [np.ones(6, dtype=np.float32), np.ones(2, dtype=np.float32)]
    bundle = keras_weights_to_bundle(weights, UpdateMeta(samples=5, test_samples=1).model_dump())

    outcome = fold_update(average, Accepted("john", "m-1", bundle))

    assert outcome == Refused("array 0 has shape (6,), expected (3, 2)")
    assert average.count == 0


def test_non_finite_weights_are_refused() -> None:
    """A NaN in the weights would poison the average: refused, unfolded."""
    average = for_round({}, GLOBAL)
    weights = [np.full((3, 2), np.nan, dtype=np.float32), np.ones(2, dtype=np.float32)]
    bundle = keras_weights_to_bundle(weights, UpdateMeta(samples=5, test_samples=1).model_dump())

    outcome = fold_update(average, Accepted("john", "m-1", bundle))

    assert outcome == Refused("array 0 holds NaN or infinite values")
    assert average.count == 0


def test_envelope_problem_finds_nothing_wrong_with_a_fitting_envelope() -> None:
    """The control for the envelope checks: the right task, sender, kind and round pass."""
    payload = delivery(b"x").payload

    assert envelope_problem(payload, TASK, 1, dataplane.UPDATE, PEOPLE, set()) is None
    assert envelope_problem(payload, TASK, 1, dataplane.STATS, PEOPLE, set()) is not None


def _nan_update(template: Any, samples: int = 10) -> Accepted:
    """An update of the template's shapes and dtypes whose first array holds a NaN."""
    arrays = [np.ones(spec.shape, dtype=spec.dtype) for spec in template]
    arrays[0].reshape(-1)[-1] = np.nan
    meta = UpdateMeta(samples=samples, test_samples=0, metrics={}).model_dump()
    return Accepted("john", "m-1", keras_weights_to_bundle(arrays, meta))


@pytest.mark.parametrize("definition", [
    {}, {"aggregation": "median"}, {"aggregation": "trimmed_mean", "trim": 0.2}, {"clip_norm": 1.0},
    {"clip_norm": 1.0, "noise_multiplier": 0.5}, {"algorithm": "linear_regression"},
])
def test_every_strategy_refuses_a_non_finite_update_itself(definition: dict[str, Any]) -> None:
    """fold_update leaves the content check to the strategy: each one refuses NaN, folds nothing."""
    average = for_round(definition, GLOBAL)

    outcome = fold_update(average, _nan_update(average.template))

    assert outcome == Refused("array 0 holds NaN or infinite values")
    assert average.count == 0


def test_k_means_refuses_a_non_finite_update_itself() -> None:
    """The K-means strategy checks its statistics too (a NaN sum would poison every centroid)."""
    from ml.kmeans import ClusterSums, update_template

    folded = ClusterSums(update_template(1, 2, 2))
    outcome = fold_update(folded, _nan_update(folded.template, samples=40))

    assert outcome == Refused("array 0 holds NaN or infinite values")
    assert folded.count == 0


def test_an_update_is_checked_for_finiteness_once(monkeypatch: pytest.MonkeyPatch) -> None:
    """Each array is scanned once on its way into the average (it was twice: fold_update, then
    RunningAverage.add), and the folded result is the update's."""
    from ml.strategies import fedavg

    scanned: list[int] = []
    real = fedavg.all_finite

    def counting(array: np.ndarray) -> bool:
        scanned.append(array.size)
        return real(array)

    monkeypatch.setattr(fedavg, "all_finite", counting)
    average = for_round({}, GLOBAL)
    checker, _ = gate()
    accepted = checker.accept(delivery(update()), 1, dataplane.UPDATE, done=set())
    assert accepted is not None

    assert isinstance(fold_update(average, accepted), UpdateMeta)
    assert scanned == [w.size for w in GLOBAL]
    assert all(np.all(w == 1) for w in average.result())


def test_a_restarted_aggregator_puts_aside_the_updates_left_for_the_round_after_its_first() -> None:
    """Resumed after round 2 (round 3 not recorded, round 4's weights maybe out): in round 3 a
    round 4 update is put aside quietly and its id handed to `forget`, so its copy sent again
    in round 4 is delivered. In any other case it is a future round's update, refused."""
    recorder, forgotten = Recorded(), []
    resumed = Gate(TASK, PEOPLE, recorder, resume_point=2, forget=forgotten.append)  # type: ignore[arg-type]

    assert resumed.accept(delivery(update(), round_no=4, message_id="m-4"), 3, dataplane.UPDATE, set()) is None
    assert recorder.rejections == [] and forgotten == ["m-4"]
    later = resumed.accept(delivery(update(), round_no=4, message_id="m-4"), 4, dataplane.UPDATE, set())
    assert later is not None and later.message_id == "m-4"

    assert resumed.accept(delivery(update(), round_no=5), 3, dataplane.UPDATE, set()) is None
    assert "future round 5" in only_reason(recorder)
    fresh, fresh_recorder = gate()  # no restart: nothing can be left over
    assert fresh.accept(delivery(update(), round_no=2), 1, dataplane.UPDATE, set()) is None
    assert "future round 2" in only_reason(fresh_recorder)
