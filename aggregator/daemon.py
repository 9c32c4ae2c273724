"""The aggregator daemon: waits for the quorum, broadcasts, folds updates (FedAvg), records rounds.

One process per task, run by the task's creator (`musketeer aggregate TASK`).
Every round is recorded through the API with its model stored first, so the log
always names a model that exists.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from api.client import MusketeerClient, Task
from api.profile import Profile
from schema import dataplane
from schema.dataplane import ModelMeta, StatsMeta, UpdateMeta
from streams.codec import (
    ArrayBundle,
    CodecError,
    bundle_to_weights,
    decode_bundle,
    encode_bundle,
    keras_weights_to_bundle,
)
from streams.events import EventFeed
from streams.framing import Payload
from streams.transport import PayloadReader, Received, Rejected, ResilientWriter

Progress = Callable[[str], None]
_RESET_CHECK_S = 3.0


class AggregationFailed(RuntimeError):
    """Training cannot go on; the message is recorded as the task's failure reason."""


@dataclass
class AggregatorOptions:
    """How the aggregator runs a task."""

    eval_data: str | None = None
    eval_data_dir: str | None = None
    eval_shard: str | None = None
    model_file: str | None = None
    round_timeout_s: float = 900.0
    quorum_timeout_s: float | None = None
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


def model_payload(meta: ModelMeta, weights: list[np.ndarray]) -> bytes:
    """A self-contained model: architecture and training settings in meta, weights as arrays."""
    contiguous = [np.ascontiguousarray(w) for w in weights]
    return encode_bundle(keras_weights_to_bundle(contiguous, meta.model_dump()))


class Aggregator:
    """Runs one task from quorum to final model."""

    def __init__(self, client: MusketeerClient, profile: Profile, task_name: str,
                 options: AggregatorOptions, progress: Progress = print) -> None:
        if not profile.kafka_bootstrap_servers:
            raise AggregationFailed("no broker address: run `musketeer platform up` or set "
                                    "KAFKA_BOOTSTRAP_SERVERS")
        self.client = client
        self.bootstrap = profile.kafka_bootstrap_servers
        self.events_topic = f"{profile.topic_prefix}.events"
        self.name = task_name
        self.options = options
        self.progress = progress
        self.results: list[RoundResult] = []
        self._task_id = ""
        self._resumed = False
        self._resume_point = -1
        # What a broker that lost its topics must be sent again.
        self._architecture: bytes | None = None
        self._current: tuple[int, bytes] | None = None
        self._writer: ResilientWriter | None = None
        self._accepted_ids: dict[str, str] = {}
        self._last_message_id = ""
        # Global feature statistics, when the task standardises (seed §3.4.2).
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None

    # -- the run

    def run(self) -> list[RoundResult]:
        """Train the task to the end; on an unrecoverable error record TaskFailed and re-raise."""
        task = self.client.get_task(self.name)
        me = self.client.me().username
        if task.creator != me:
            raise AggregationFailed(f"task '{self.name}' belongs to {task.creator}; only its "
                                    "creator runs its aggregator")
        writer = ResilientWriter(self.bootstrap, on_retry=self.progress)
        self._writer = writer
        try:
            task = self._wait_for_quorum(task)
            self._resumed = task.status == "STARTED"
            if task.status == "CREATED":
                task = self.client.start_task(self.name)
            if task.status != "STARTED":
                raise AggregationFailed(f"task '{self.name}' is {task.status}; nothing to run")
            self._train(task, writer)
        except BaseException as error:
            reason = _reason(error)
            self._give_up(task, writer, reason)
            raise
        return self.results

    def _train(self, task: Task, writer: ResilientWriter) -> None:
        participants = sorted(p.username for p in task.participants)
        self._task_id = task.task_id
        done = task.rounds_completed
        # A task already STARTED means an earlier aggregator ran it: resume from the log.
        self._resume_point = done if self._resumed else -1
        self.progress(f"task {task.name}: training with {', '.join(participants)}"
                      + (f"; resuming after round {done}" if self._resumed else ""))
        with PayloadReader(self.bootstrap, [topics_of(task)[1]]) as updates:
            if done > 0:
                model, meta, weights = self._from_checkpoint(task)
                if meta.feature_mean is not None:
                    self._broadcast_statistics(task, writer)
            else:
                if dataplane.wants_standardisation(task.definition):
                    self._standardise(task, writer, updates, participants)
                model, meta = self._build(task)
                weights = [np.asarray(w) for w in model.get_weights()]
                self._broadcast(task, writer, dataplane.ARCHITECTURE, 0,
                                model_payload(meta, weights))
            evaluation = self._evaluation_data(meta)
            self._architecture = model_payload(meta, weights)
            for round_no in range(done + 1, meta.rounds + 1):
                payload = model_payload(meta, weights)
                self._current = (round_no, payload)
                self._broadcast(task, writer, dataplane.WEIGHTS, round_no, payload)
                weights, result = self._round(task, updates, participants, meta, weights,
                                              round_no, model, evaluation)
                self.results.append(result)
            final = model_payload(meta, weights)
            self._broadcast(task, writer, dataplane.FINAL, meta.rounds, final)
            stored = self.client.upload_model(self.name, final, final=True)
            self.client.complete_task(self.name, stored.sha256)
            self.progress(f"task {task.name}: COMPLETED, final model sha256 {stored.sha256[:12]}…")

    def _from_checkpoint(self, task: Task) -> tuple[Any, ModelMeta, list[np.ndarray]]:
        """The model as the last recorded round left it (its digest is in RoundCompleted)."""
        from participant.keras_model import compile_model, model_from_json

        last = self.client.rounds(self.name)[-1]
        digest, content = self.client.download_model(self.name, sha256=last.model_sha256)
        bundle = decode_bundle(content)
        meta = ModelMeta.model_validate(bundle.meta)
        model = compile_model(model_from_json(meta.architecture), meta.learning_rate)
        weights = bundle_to_weights(bundle)
        model.set_weights(weights)
        if meta.feature_mean is not None and meta.feature_std is not None:
            self._mean = np.asarray(meta.feature_mean)
            self._std = np.asarray(meta.feature_std)
        self.progress(f"task {task.name}: restored the round {last.round} checkpoint "
                      f"(sha256 {digest[:12]}…)")
        return model, meta, [np.asarray(w) for w in weights]

    # -- quorum and start

    def _wait_for_quorum(self, task: Task) -> Task:
        """Wait until enough participants joined, woken by ParticipantJoined events."""
        quorum = int(task.quorum or task.definition.get("quorum", 1))
        if task.status != "CREATED" or task.participant_count >= quorum:
            return task
        self.progress(f"task {task.name}: waiting for the quorum "
                      f"({task.participant_count}/{quorum} joined)")
        deadline = _deadline(self.options.quorum_timeout_s)
        stream = f"task-{task.task_id}"
        with EventFeed(self.bootstrap, self.events_topic) as feed:
            while True:
                events = feed.poll(timeout_s=2.0)
                # The API is the truth; events only wake us (and a restart has none to replay).
                if any(e.stream_id == stream for e in events) or not events:
                    task = self.client.get_task(self.name)
                    if task.status != "CREATED" or task.participant_count >= quorum:
                        self.progress(f"task {task.name}: quorum reached "
                                      f"({task.participant_count}/{quorum})")
                        return task
                if time.monotonic() > deadline:
                    raise AggregationFailed(f"quorum not reached: {task.participant_count} of "
                                            f"{quorum} participants joined")

    # -- model and evaluation data

    def _build(self, task: Task) -> tuple[Any, ModelMeta]:
        import keras

        from aggregator.models import build_model, load_user_model, model_spec
        from participant.keras_model import compile_model, model_to_json

        # Seeded by the task: a restarted aggregator rebuilds the very same initial model.
        keras.utils.set_random_seed(task_seed(task.task_id, task.definition))
        definition = task.definition
        learning_rate = float(definition.get("learning_rate", 0.001))
        if self.options.model_file:
            model = compile_model(load_user_model(self.options.model_file), learning_rate)
            name, input_shape = "user", list(model.input_shape[1:])
            num_classes = int(model.output_shape[-1])
        else:
            name = str(definition.get("model") or "")
            if not name:
                raise AggregationFailed("the definition names no model: add \"model\" "
                                        "(e.g. mnist-cnn, digits-mlp, welding-mlp) or pass --model")
            spec = model_spec(name)
            input_shape, num_classes = list(spec.input_shape), spec.num_classes
            model = build_model(name, input_shape=tuple(input_shape), num_classes=num_classes,
                                learning_rate=learning_rate)
        meta = ModelMeta(architecture=model_to_json(model), model=name, input_shape=input_shape,
                         num_classes=num_classes, learning_rate=learning_rate,
                         epochs=int(definition.get("epochs", 1)),
                         batch_size=int(definition.get("batch_size", 32)),
                         rounds=int(definition["rounds"]),
                         # The model is only usable with the inputs it was trained on.
                         feature_mean=None if self._mean is None else self._mean.tolist(),
                         feature_std=None if self._std is None else self._std.tolist())
        return model, meta

    def _evaluation_data(self, meta: ModelMeta) -> Any:
        if not self.options.eval_data:
            return None
        from participant.data import load_dataset
        from participant.prepare import prepare

        dataset = load_dataset(self.options.eval_data, data_dir=self.options.eval_data_dir,
                               shard=self.options.eval_shard, seed=self.options.seed)
        return prepare(dataset, meta.input_shape, self._mean, self._std)

    # -- federated standardisation (seed §3.4.2)

    def _standardise(self, task: Task, writer: ResilientWriter, updates: PayloadReader,
                     participants: list[str]) -> None:
        from participant.standardise import Moments, combine

        self.progress(f"task {task.name}: collecting feature statistics for standardisation")
        moments: dict[str, Moments] = {}
        deadline = _deadline(self.options.round_timeout_s)
        while len(moments) < len(participants):
            for delivery in updates.poll(1.0):
                bundle = self._accept(delivery, 0, dataplane.STATS, participants, moments)
                if bundle is None:
                    continue
                sender, meta_raw = bundle
                try:
                    meta = StatsMeta.model_validate(meta_raw.meta)
                    sums = np.asarray(meta_raw.arrays["sums"], dtype=np.float64)
                    sums_sq = np.asarray(meta_raw.arrays["sums_sq"], dtype=np.float64)
                except (ValueError, KeyError) as exc:
                    self._reject(0, sender, f"malformed statistics: {exc}", None)
                    continue
                if not (np.all(np.isfinite(sums)) and np.all(np.isfinite(sums_sq))):
                    self._reject(0, sender, "non-finite statistics", None)
                    continue
                moments[sender] = Moments(count=meta.count, sums=sums, sums_sq=sums_sq)
            self._check_deadline(deadline, participants, moments, 0)
        self._mean, self._std = combine([moments[p] for p in sorted(moments)])
        self._broadcast_statistics(task, writer)
        self.progress(f"task {task.name}: broadcast global mean and std of "
                      f"{sum(m.count for m in moments.values())} samples")

    def _broadcast_statistics(self, task: Task, writer: ResilientWriter) -> None:
        assert self._mean is not None and self._std is not None
        arrays = {"mean": np.asarray(self._mean, dtype=np.float64),
                  "std": np.asarray(self._std, dtype=np.float64)}
        self._broadcast(task, writer, dataplane.STANDARDISE, 0,
                        encode_bundle(ArrayBundle(arrays=arrays, meta={})))

    # -- one round

    def _round(self, task: Task, updates: PayloadReader, participants: list[str],
               meta: ModelMeta, weights: list[np.ndarray], round_no: int, model: Any,
               evaluation: Any) -> tuple[list[np.ndarray], RoundResult]:
        from aggregator.fedavg import (
            RunningAverage,
            check_update,
            template_of,
            weighted_metrics,
        )

        started = time.monotonic()
        template = template_of(weights)
        average = RunningAverage(template)
        samples: dict[str, int] = {}
        reports: list[tuple[dict[str, float], int]] = []
        timeout_s = float(task.definition.get("round_timeout_s") or self.options.round_timeout_s)
        deadline = _deadline(timeout_s)
        next_check = time.monotonic() + _RESET_CHECK_S
        self._accepted_ids = {}
        while len(samples) < len(participants):
            if time.monotonic() > next_check:
                self._recover_lost_topics(task, updates)
                next_check = time.monotonic() + _RESET_CHECK_S
            for delivery in updates.poll(1.0):
                accepted = self._accept(delivery, round_no, dataplane.UPDATE, participants, samples)
                if accepted is None:
                    continue
                sender, bundle = accepted
                try:
                    update_meta = UpdateMeta.model_validate(bundle.meta)
                except ValueError as exc:
                    self._reject(round_no, sender, f"malformed update metadata: {_first_line(exc)}",
                                 None)
                    continue
                try:
                    update = bundle_to_weights(bundle)
                except CodecError as exc:
                    self._reject(round_no, sender, f"malformed update: {exc}", None)
                    continue
                problem = check_update(template, update) or _metrics_problem(update_meta)
                if problem:
                    self._reject(round_no, sender, problem, None)
                    continue
                # Folded at once: memory stays one model, however many participants.
                average.add(update, update_meta.samples)
                self._accepted_ids[sender] = self._last_message_id
                samples[sender] = update_meta.samples
                reports.append((update_meta.metrics, max(update_meta.test_samples, 1)))
            if time.monotonic() > deadline:
                self._close_without(task, round_no, participants, samples, timeout_s)
                break
        new_weights = average.result()
        metrics = weighted_metrics(reports)
        eval_metrics: dict[str, float] = {}
        if evaluation is not None:
            from participant.keras_model import evaluate

            model.set_weights(new_weights)
            eval_metrics = evaluate(model, evaluation)
        payload = model_payload(meta, new_weights)
        stored = self.client.upload_model(self.name, payload, round=round_no)
        duration = time.monotonic() - started
        who = sorted(samples)
        self.client.record_round(self.name, round_no, participants=who,
                                 model_sha256=stored.sha256, samples=samples, metrics=metrics,
                                 eval_metrics=eval_metrics, duration_s=round(duration, 3))
        self.progress(_round_line(task.name, round_no, meta.rounds, metrics, eval_metrics, duration))
        return new_weights, RoundResult(round_no, who, samples, metrics, eval_metrics,
                                        stored.sha256, duration)

    def _close_without(self, task: Task, round_no: int, participants: list[str],
                       samples: dict[str, int], timeout_s: float) -> None:
        """At the deadline: go on without the missing if enough updates came, else fail."""
        missing = [p for p in participants if p not in samples]
        needed = int(task.definition.get("min_updates") or len(participants))
        if len(samples) < needed:
            raise AggregationFailed(
                f"round {round_no} closed at its {timeout_s:g} s deadline with {len(samples)} of "
                f"{len(participants)} updates ({needed} needed); missing: {', '.join(missing)}")
        self.client.record_missed(self.name, round_no, missing)
        self.progress(f"task {task.name}: round {round_no} goes on without {', '.join(missing)} "
                      f"(deadline {timeout_s:g} s)")

    def _accept(self, delivery: Received | Rejected, round_no: int, kind: str,
                participants: list[str], done: dict[str, Any]) -> tuple[str, ArrayBundle] | None:
        """The sender and bundle of a valid message for this step; anything else is recorded."""
        if isinstance(delivery, Rejected):
            sender = delivery.envelope.sender if delivery.envelope else "unknown"
            envelope_round = delivery.envelope.round if delivery.envelope else round_no
            message_id = delivery.envelope.message_id if delivery.envelope else None
            self._reject(envelope_round, sender, delivery.reason, message_id)
            return None
        payload = delivery.payload
        if self._historical(payload, kind) or self._resent(payload):
            return None
        self._last_message_id = payload.message_id
        problem = _envelope_problem(payload, self._task_id, round_no, kind, participants, done)
        if problem:
            self._reject(payload.round, payload.sender, problem, payload.message_id)
            return None
        try:
            return payload.sender, decode_bundle(payload.data)
        except CodecError as exc:
            self._reject(round_no, payload.sender, f"undecodable payload: {exc}", payload.message_id)
            return None

    def _resent(self, payload: Payload) -> bool:
        """A participant sending an update we already counted again (after a broker restart)."""
        return self._accepted_ids.get(payload.sender) == payload.message_id

    def _recover_lost_topics(self, task: Task, updates: PayloadReader) -> None:
        """After a broker restart lost the topics: recreate them and broadcast this round again."""
        if not updates.detect_reset():
            return
        from streams.topics import TopicAdmin

        self.progress(f"task {task.name}: the broker lost the task's topics; recreating them "
                      "and broadcasting the current round again")
        TopicAdmin(self.bootstrap).create(list(topics_of(task)))
        writer = self._writer
        assert writer is not None
        writer.renew()  # a restarted broker forgot our idempotent producer's state
        if self._mean is not None:
            self._broadcast_statistics(task, writer)
        if self._architecture is not None:
            self._broadcast(task, writer, dataplane.ARCHITECTURE, 0, self._architecture)
        if self._current is not None:
            self._broadcast(task, writer, dataplane.WEIGHTS, *self._current)

    def _historical(self, payload: Payload, kind: str) -> bool:
        """Whether a message is one an earlier aggregator of this task already dealt with."""
        # After a restart the updates topic is read from its start: rounds already recorded
        # (and the statistics, once past them) are history, not attacks; skip them quietly.
        if self._resume_point < 0 or payload.task_id != self._task_id:
            return False
        stats_over = kind != dataplane.STATS and payload.kind == dataplane.STATS
        return stats_over or (payload.kind == dataplane.UPDATE and payload.round <= self._resume_point)

    def _reject(self, round_no: int, sender: str, reason: str, message_id: str | None) -> None:
        self.progress(f"  rejected an update from {sender} (round {round_no}): {reason}")
        self.client.reject_update(self.name, max(round_no, 0), sender[:200] or "unknown",
                                  reason[:2000], message_id)

    def _check_deadline(self, deadline: float, participants: list[str], done: dict[str, Any],
                        round_no: int) -> None:
        if time.monotonic() > deadline:
            missing = ", ".join(p for p in participants if p not in done)
            raise AggregationFailed(f"round {round_no} timed out after "
                                    f"{self.options.round_timeout_s:g} s waiting for {missing}")

    # -- broadcasting and giving up

    def _broadcast(self, task: Task, writer: ResilientWriter, kind: str, round_no: int,
                   payload: bytes) -> None:
        writer = self._writer or writer
        writer.send(topics_of(task)[0], task_id=task.task_id, round=round_no, kind=kind,
                    sender=task.creator, payload=payload, key=task.creator)

    def _give_up(self, task: Task, writer: ResilientWriter, reason: str) -> None:
        """Tell participants to stop and record TaskFailed; best effort, never masks the error."""
        for attempt in (self._stop_broadcast, self._record_failure):
            try:
                attempt(task, writer, reason)
            except Exception as exc:  # the original error is what matters
                self.progress(f"  (could not {attempt.__name__.strip('_').replace('_', ' ')}: {exc})")

    def _stop_broadcast(self, task: Task, writer: ResilientWriter, reason: str) -> None:
        payload = encode_bundle(ArrayBundle(arrays={}, meta={"reason": reason}))
        (self._writer or writer).send(topics_of(task)[0], task_id=task.task_id, round=0, kind=dataplane.STOP,
                    sender=task.creator, payload=payload, key=task.creator)

    def _record_failure(self, task: Task, writer: ResilientWriter, reason: str) -> None:
        current = self.client.get_task(self.name)
        if current.status in ("CREATED", "STARTED"):
            self.client.fail_task(self.name, reason)
            self.progress(f"task {task.name}: FAILED: {reason}")


def topics_of(task: Task) -> tuple[str, str]:
    """The task's (broadcast, updates) topics."""
    if not task.topics.broadcast or not task.topics.updates:
        raise AggregationFailed(f"task '{task.name}' has no data-plane topics")
    return task.topics.broadcast, task.topics.updates


def task_seed(task_id: str, definition: dict[str, Any] | None = None) -> int:
    """The definition's `seed`, else one derived from the task: the same in every process."""
    seed = (definition or {}).get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
        return seed % 2**32
    return int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16)


def _envelope_problem(payload: Any, task_id: str, round_no: int, kind: str,
                      participants: list[str], done: dict[str, Any]) -> str | None:
    if task_id and payload.task_id != task_id:
        return f"message for another task ({payload.task_id})"
    if payload.sender not in participants:
        return f"unknown sender '{payload.sender}' (not a participant of this task)"
    if payload.kind != kind:
        return f"unexpected message kind '{payload.kind}' (expected '{kind}')"
    if payload.round < round_no:
        return f"stale update for round {payload.round} (now round {round_no})"
    if payload.round > round_no:
        return f"update for future round {payload.round} (now round {round_no})"
    if payload.sender in done:
        return f"duplicate update from {payload.sender} for round {round_no}"
    return None


def _metrics_problem(meta: UpdateMeta) -> str | None:
    bad = sorted(k for k, v in meta.metrics.items() if not np.isfinite(v))
    return f"non-finite local metrics: {', '.join(bad)}" if bad else None


def _round_line(name: str, round_no: int, rounds: int, metrics: dict[str, float],
                eval_metrics: dict[str, float], duration: float) -> str:
    parts = [f"task {name}: round {round_no}/{rounds}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if "accuracy" in metrics:
        parts.append(f"accuracy {metrics['accuracy']:.4f}")
    if "accuracy" in eval_metrics:
        parts.append(f"eval accuracy {eval_metrics['accuracy']:.4f}")
    parts.append(f"{duration:.1f} s")
    return ", ".join(parts)


def _deadline(timeout_s: float | None) -> float:
    return time.monotonic() + timeout_s if timeout_s else float("inf")


def _first_line(error: BaseException) -> str:
    return str(error).splitlines()[0] if str(error) else type(error).__name__


def _reason(error: BaseException) -> str:
    if isinstance(error, KeyboardInterrupt):
        return "the aggregator was interrupted"
    return f"{type(error).__name__}: {_first_line(error)}" if not isinstance(
        error, AggregationFailed) else str(error)


def sha256_hex(data: bytes) -> str:
    """The hex sha256 of bytes."""
    return hashlib.sha256(data).hexdigest()
