"""The participant daemon: trains each joined task on local data that never leaves this machine.

`TaskWorker` runs one task: it reads the task's broadcast topic (by assignment,
so it sees every broadcast), trains each round's model on the local training
split, and sends back the weights with the sample count and its local test
metrics. `ParticipantDaemon` starts a worker for every task this user has
joined, now or later, when its `TaskStarted` arrives.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from api.client import ClientError, MusketeerClient, Task
from api.profile import Profile
from schema import dataplane
from schema.dataplane import ModelMeta, UpdateMeta
from streams.codec import (
    ArrayBundle,
    CodecError,
    bundle_to_weights,
    decode_bundle,
    encode_bundle,
    keras_weights_to_bundle,
)
from streams.events import EventFeed
from streams.transport import PayloadReader, Received, ResilientWriter

Progress = Callable[[str], None]
_STATUS_CHECK_S = 10.0
_RESET_CHECK_S = 3.0


class TaskStopped(RuntimeError):
    """The task ended without a final model (failed, deleted, or stopped by the aggregator)."""


@dataclass
class DataOptions:
    """Where this participant's local data comes from."""

    dataset: str
    data_dir: str | None = None
    shard: str | None = None
    seed: int = 0
    options: dict[str, Any] = field(default_factory=dict)


@dataclass
class WorkerResult:
    """What a participant keeps: the final model and its local metrics."""

    task: str
    rounds_trained: list[int]
    final_sha256: str
    model_path: Path
    local_metrics: dict[str, float]


class TaskWorker:
    """Takes part in one task until its final model arrives."""

    def __init__(self, client: MusketeerClient, bootstrap: str, task: Task, me: str,
                 data: DataOptions, output: Path, progress: Progress = print) -> None:
        self.client = client
        self.bootstrap = bootstrap
        self.task = task
        self.me = me
        self.data = data
        self.output = output
        self.progress = progress
        self.rounds_trained: list[int] = []
        self._model: Any = None
        self._meta: ModelMeta | None = None
        self._mean: np.ndarray | None = None
        self._std: np.ndarray | None = None
        self._sent: tuple[int, bytes, str] | None = None
        self._fresh: list[tuple[Any, np.ndarray]] = []

    def run(self) -> WorkerResult:
        """Train every round; save and return the final model."""
        from participant.data import load_dataset, split_and_sample

        definition = self.task.definition
        raw = load_dataset(self.data.dataset, data_dir=self.data.data_dir, shard=self.data.shard,
                           seed=self.data.seed, **self.data.options)
        self.train_raw, self.test_raw = split_and_sample(
            raw, definition.get("training_size"), definition.get("test_size"), self.data.seed)
        self.say(f"local data: {len(self.train_raw)} training and {len(self.test_raw)} test "
                 f"samples ({raw.name})")
        # TensorFlow loads now, while the aggregator starts up, not once round 1 is
        # under way and its deadline running.
        import participant.keras_model  # noqa: F401

        writer = ResilientWriter(self.bootstrap, on_retry=self.say)
        if dataplane.wants_standardisation(definition):
            self._send_statistics(writer)
        with PayloadReader(self.bootstrap, [str(self.task.topics.broadcast)]) as broadcasts:
            self.say("following the aggregator's broadcasts")
            return self._follow(broadcasts, writer)

    def say(self, text: str) -> None:
        """Progress, prefixed with the task's name."""
        self.progress(f"{self.task.name}: {text}")

    # -- the broadcast loop

    def _follow(self, broadcasts: PayloadReader, writer: ResilientWriter) -> WorkerResult:
        next_check = time.monotonic() + _STATUS_CHECK_S
        next_reset_check = time.monotonic() + _RESET_CHECK_S
        while True:
            if time.monotonic() > next_reset_check:
                if broadcasts.detect_reset():
                    self.say("the broker lost the task's topics; following the re-broadcast")
                    writer.renew()
                next_reset_check = time.monotonic() + _RESET_CHECK_S
            messages = [d.payload for d in broadcasts.poll(1.0) if isinstance(d, Received)
                        and d.payload.task_id == self.task.task_id]
            for index, payload in enumerate(messages):
                newer = any(m.kind == dataplane.WEIGHTS and m.round > payload.round
                            for m in messages[index + 1:])
                result = self._handle(payload, writer, skip_training=newer)
                if result is not None:
                    return result
            if time.monotonic() > next_check:
                self._check_still_running()
                next_check = time.monotonic() + _STATUS_CHECK_S

    def _handle(self, payload: Any, writer: ResilientWriter,
                skip_training: bool) -> WorkerResult | None:
        try:
            bundle = decode_bundle(payload.data)
        except CodecError as exc:
            self.say(f"ignored an undecodable broadcast ({exc})")
            return None
        kind = payload.kind
        if kind == dataplane.STANDARDISE:
            self._mean = np.asarray(bundle.arrays["mean"], dtype=np.float64)
            self._std = np.asarray(bundle.arrays["std"], dtype=np.float64)
            self.say("received the global mean and standard deviation")
        elif kind in (dataplane.ARCHITECTURE, dataplane.WEIGHTS, dataplane.FINAL):
            self._load_model(bundle)
            if kind == dataplane.FINAL:
                return self._finish(bundle, payload.data)
            if kind == dataplane.WEIGHTS and self._sent is not None \
                    and self._sent[0] == payload.round and not self._already_recorded(payload.round):
                self._resend(writer)
            elif kind == dataplane.WEIGHTS and payload.round not in self.rounds_trained:
                if skip_training or self._already_recorded(payload.round):
                    self.say(f"skipped round {payload.round}: a newer round is already out")
                else:
                    self._train_round(payload.round, writer)
        elif kind == dataplane.STOP:
            raise TaskStopped(f"the aggregator stopped the task: {bundle.meta.get('reason')}")
        return None

    # -- model and data

    def _load_model(self, bundle: ArrayBundle) -> None:
        from participant.keras_model import compile_model, keras, local_state, model_from_json

        meta = ModelMeta.model_validate(bundle.meta)
        if self._model is None or self._meta is None or meta.architecture != self._meta.architecture:
            # Seeded before the layers exist: their random generators (dropout) take it up.
            keras.utils.set_random_seed(self._seed(0))
            self._model = compile_model(model_from_json(meta.architecture), meta.learning_rate)
            self._fresh = local_state(self._model)
            self._meta = meta
            self._prepare_data(meta)
        self._model.set_weights(bundle_to_weights(bundle))

    def _seed(self, round_no: int) -> int:
        """Seeded per task, participant and round: a re-run trains the same way."""
        from aggregator.daemon import task_seed

        # The participant's place in the task (not its name) keeps re-runs of a seeded
        # task identical even when the people in it have other names.
        members = sorted(p.username for p in self.task.participants)
        place = members.index(self.me) if self.me in members else task_seed(self.me)
        base = task_seed(self.task.task_id, self.task.definition)
        return (base + 1000 * place + round_no) % 2**32

    def _prepare_data(self, meta: ModelMeta) -> None:
        from participant.prepare import prepare

        if dataplane.wants_standardisation(self.task.definition) and self._mean is None:
            raise TaskStopped("the model arrived before the global statistics")
        self.train = prepare(self.train_raw, meta.input_shape, self._mean, self._std)
        self.test = prepare(self.test_raw, meta.input_shape, self._mean, self._std)

    def _send_statistics(self, writer: ResilientWriter) -> None:
        from participant.prepare import feature_moments

        moments = feature_moments(self.train_raw)
        bundle = ArrayBundle(arrays={"sums": moments.sums, "sums_sq": moments.sums_sq},
                             meta={"count": moments.count})
        self._send(writer, dataplane.STATS, 0, encode_bundle(bundle))
        self.say(f"sent feature statistics of {moments.count} samples")

    # -- a round

    def _train_round(self, round_no: int, writer: ResilientWriter) -> None:
        from participant.keras_model import evaluate, keras, restore_state

        assert self._meta is not None
        started = time.monotonic()
        # Every round starts from the global weights with a fresh optimizer and the
        # round's seed: the update depends on nothing this process did before.
        keras.utils.set_random_seed(self._seed(round_no))
        restore_state(self._fresh)
        self._model.fit(self.train.x, self.train.y, epochs=self._meta.epochs,
                        batch_size=self._meta.batch_size, verbose=0, shuffle=True)
        metrics = evaluate(self._model, self.test) if len(self.test) else {}
        weights = [np.asarray(w) for w in self._model.get_weights()]
        meta = UpdateMeta(samples=len(self.train), test_samples=len(self.test), metrics=metrics)
        update = encode_bundle(keras_weights_to_bundle(weights, meta.model_dump()))
        message_id = self._send(writer, dataplane.UPDATE, round_no, update)
        # Kept until the next round: a broker that loses it gets the very same update again.
        self._sent = (round_no, update, message_id)
        self.rounds_trained.append(round_no)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items())
        self.say(f"round {round_no}: trained in {time.monotonic() - started:.1f} s; local test {shown}")

    def _send(self, writer: ResilientWriter, kind: str, round_no: int, payload: bytes,
              message_id: str | None = None) -> str:
        return writer.send(
            str(self.task.topics.updates), task_id=self.task.task_id, round=round_no, kind=kind,
            sender=self.me, payload=payload, key=self.me, message_id=message_id)

    def _resend(self, writer: ResilientWriter) -> None:
        assert self._sent is not None
        round_no, update, message_id = self._sent
        self._send(writer, dataplane.UPDATE, round_no, update, message_id)
        self.say(f"round {round_no}: sent the same update again (it was broadcast again)")

    # -- the end

    def _finish(self, bundle: ArrayBundle, data: bytes) -> WorkerResult:
        import hashlib

        from participant.keras_model import evaluate

        digest = hashlib.sha256(data).hexdigest()
        folder = self.output / self.task.name
        folder.mkdir(parents=True, exist_ok=True)
        model_path = folder / "model.keras"
        self._model.save(model_path)
        (folder / "model.bundle").write_bytes(data)
        metrics = evaluate(self._model, self.test) if len(self.test) else {}
        report = {"task": self.task.name, "final_sha256": digest, "rounds_trained":
                  self.rounds_trained, "local_test_metrics": metrics}
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        self.say(f"final model saved to {model_path} (sha256 {digest[:12]}…)")
        return WorkerResult(self.task.name, self.rounds_trained, digest, model_path, metrics)

    def _already_recorded(self, round_no: int) -> bool:
        # After a restart the broadcast topic replays every round: train only the open one.
        try:
            return self.client.get_task(self.task.name).rounds_completed >= round_no
        except ClientError:
            return False

    def _check_still_running(self) -> None:
        try:
            status = self.client.get_task(self.task.name).status
        except ClientError as exc:
            self.say(f"could not check the task's status: {exc.message}")
            return
        if status in ("FAILED", "DELETED"):
            raise TaskStopped(f"task '{self.task.name}' is {status}")


class ParticipantDaemon:
    """Runs a worker for every joined task as it starts; `only` limits it to one task."""

    def __init__(self, client: MusketeerClient, profile: Profile, data: DataOptions,
                 output: Path, only: str | None = None, progress: Progress = print) -> None:
        if not profile.kafka_bootstrap_servers:
            raise TaskStopped("no broker address: run `musketeer platform up` or set "
                              "KAFKA_BOOTSTRAP_SERVERS")
        self.client = client
        self.bootstrap = profile.kafka_bootstrap_servers
        self.events_topic = f"{profile.topic_prefix}.events"
        self.data = data
        self.output = output
        self.only = only
        self.progress = progress
        self.me = client.me().username
        self.workers: dict[str, threading.Thread] = {}
        self.results: dict[str, WorkerResult] = {}
        self.errors: dict[str, str] = {}

    def run(self, stop: threading.Event | None = None) -> int:
        """Serve until stopped (or, with `only`, until that task ends); 0 if all went well."""
        stop = stop or threading.Event()
        with EventFeed(self.bootstrap, self.events_topic) as feed:
            while not stop.is_set():
                self._start_workers()
                if self.only and self._only_done():
                    break
                # Events only wake us early; the API says which tasks started.
                feed.poll(timeout_s=2.0)
        for thread in self.workers.values():
            thread.join()
        return 1 if self.errors else 0

    def _only_done(self) -> bool:
        thread = self.workers.get(self.only or "")
        return thread is not None and not thread.is_alive()

    def _start_workers(self) -> None:
        for task in self._started_tasks():
            if task.name in self.workers:
                continue
            worker = TaskWorker(self.client, self.bootstrap, task, self.me, self.data,
                                self.output, self.progress)
            thread = threading.Thread(target=self._work, args=(worker,), name=f"task-{task.name}",
                                      daemon=True)
            self.workers[task.name] = thread
            self.progress(f"{task.name}: started, joining training")
            thread.start()

    def _started_tasks(self) -> list[Task]:
        if self.only:
            task = self.client.get_task(self.only)
            if task.status in ("FAILED", "DELETED", "COMPLETED") and self.only not in self.workers:
                raise TaskStopped(f"task '{self.only}' is {task.status}")
            return [task] if task.status == "STARTED" else []
        return [t for t in self.client.iter_tasks(joined=True, status="STARTED")]

    def _work(self, worker: TaskWorker) -> None:
        try:
            self.results[worker.task.name] = worker.run()
        except Exception as exc:  # one task's failure must not stop the others
            self.errors[worker.task.name] = str(exc)
            worker.say(f"stopped: {exc}")
