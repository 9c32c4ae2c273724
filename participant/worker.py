"""One task on this machine: follow the aggregator's broadcasts, train each round, send the update.

The worker reads the task's broadcast topic by assignment (so it sees every broadcast),
trains each round's model on the local training split, and sends back the weights with the
sample count and its local test metrics. After a restart it replays the broadcasts and trains
only the open round.
"""

from __future__ import annotations

import hashlib
import json
import mmap
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from client import ClientError, MusketeerClient, Task
from client.daemonlog import log_round
from client.keys import KeyRing
from ml.data import split_and_sample
from ml.secagg.encoding import StatsLayout
from ml.seeds import task_seed
from participant.data import DataOptions
from participant.kmeans import LocalKMeans
from participant.linear import LocalLinear
from participant.secure import SecureInputs
from participant.training import LocalTraining
from schema import dataplane, privacy
from schema.algorithms import KMEANS, LINEAR_MODELS, is_regression
from schema.keys import MemberKey
from schema.lifecycle import TaskStatus
from streams.codec import ArrayBundle, CodecError, decode_bundle
from streams.config import Broker
from streams.framing import Payload
from streams.reader import PayloadReader, Received, Rejected
from streams.signing import Signer, Verifier
from streams.writer import ResilientWriter

Progress = Callable[[str], None]
_STATUS_CHECK_S = 10.0
_RESET_CHECK_S = 3.0


class TaskStopped(RuntimeError):
    """The task ended without a final model (failed, deleted, or stopped by the aggregator)."""


class WorkerInterrupted(RuntimeError):
    """The daemon is stopping: the worker left its task between steps (a restart resumes it)."""


@dataclass
class WorkerResult:
    """What a participant keeps: the final model and its local metrics."""

    task: str
    rounds_trained: list[int]
    final_sha256: str
    model_path: Path
    local_metrics: dict[str, float]


@dataclass
class _Sent:
    """An update sent, kept for two rounds: a broker that lost it gets it again, and so does an
    aggregator that restarts while it records the round before the one it last broadcast."""

    payload: bytes
    message_id: str


class TaskWorker:
    """Takes part in one task until its final model arrives."""

    def __init__(self, client: MusketeerClient, broker: Broker, task: Task, keys: KeyRing,
                 data: DataOptions, output: Path, progress: Progress = print,
                 stop: threading.Event | None = None) -> None:
        self.client = client
        self.broker = broker
        self.task = task
        self.keys = keys
        self.me = keys.username
        self.data = data
        self.output = output
        self.progress = progress
        # Looked at between steps (a training step in progress runs to its end).
        self.stop = stop or threading.Event()
        self.rounds_trained: list[int] = []
        # The last two updates sent, by round.
        self._sent: dict[int, _Sent] = {}
        self.training: LocalTraining | LocalKMeans | None = None
        self.secure: SecureInputs | None = None

    def run(self) -> WorkerResult:
        """Train every round; save and return the final model."""
        try:
            return self._run()
        finally:
            # However the task ended here, its model trains no more in this process.
            if self.training is not None:
                self.training.close()

    def _run(self) -> WorkerResult:
        self.training = self._local_training()
        # Signed with the key the task recorded for us; broadcasts believed only from its creator.
        signer = Signer(self.keys.recorded(self.task.keys, self.task.name))
        writer = ResilientWriter(self.broker, on_retry=self.say, signer=signer)
        if privacy.secure(self.task.pom):
            self.secure = SecureInputs(self.task.task_id, self.me, self.task.definition, self.task.pom,
                                       len(self.task.participants),
                                       lambda kind, r, data: self._send(writer, kind, r, data), self.say)
        if dataplane.wants_standardisation(self.task.definition):
            self._send_statistics(writer)
        else:
            self._open(writer)
        self.verifier = Verifier(self._creator_key())
        with PayloadReader(self.broker, [str(self.task.topics.broadcast)], verifier=self.verifier) as broadcasts:
            self.say("following the aggregator's broadcasts")
            return self._follow(broadcasts, writer)

    def say(self, text: str) -> None:
        """Progress, prefixed with the task's name."""
        self.progress(f"{self.task.name}: {text}")

    def _send_statistics(self, writer: ResilientWriter) -> None:
        assert self.training is not None
        if self.secure is not None:
            self.secure.start(0, "mean", self._stats_layout().mean_input(self.training.train_features()))
        else:
            self._send(writer, dataplane.STATS, 0, self.training.statistics())
        self.say(f"sent feature statistics of {len(self.training.train_raw)} samples")

    def _stats_layout(self) -> StatsLayout:
        assert self.training is not None
        definition = self.task.definition
        cap = definition.get("max_samples", definition.get("training_size")) or 1
        return StatsLayout(self.training.train_features().shape[1], int(cap), len(self.task.participants))

    def _creator_key(self) -> list[MemberKey]:
        return [k for k in self.client.task_member_keys(self.task.name) if k.username == self.task.creator]

    def _local_training(self) -> LocalTraining | LocalKMeans:
        definition = self.task.definition
        raw = self.data.load(regression=is_regression(definition))
        self.data.check_for(self.task.name, definition)
        train, test = split_and_sample(raw, definition.get("training_size"),
                                       definition.get("test_size"), self.data.seed)
        self.say(f"local data: {len(train)} training and {len(test)} test samples ({raw.name})")
        # The participant's place in the task (not its name) seeds its training, so re-runs
        # of a seeded task are identical even when the people in it have other names.
        members = sorted(p.username for p in self.task.participants)
        place = members.index(self.me) if self.me in members else task_seed(self.me)
        algorithm = definition.get("algorithm")
        if algorithm == KMEANS:
            return LocalKMeans(train, test, self.task.task_id, definition, place)
        learner = LocalLinear if algorithm in LINEAR_MODELS else LocalTraining
        return learner(train, test, self.task.task_id, definition, place)

    def _open(self, writer: ResilientWriter) -> None:
        """Send what the algorithm needs before round 1 (K-means: candidate centres), once."""
        assert self.training is not None
        # A restarted participant of a task already training must not send it again.
        if self.task.rounds_completed > 0:
            return
        opening = self.training.opening()
        if opening is not None:
            self._send(writer, dataplane.CANDIDATES, 0, opening)
            self.say("sent local cluster means for the initial centroids")

    # -- the broadcast loop

    def _follow(self, broadcasts: PayloadReader, writer: ResilientWriter) -> WorkerResult:
        next_check = time.monotonic() + _STATUS_CHECK_S
        next_reset_check = time.monotonic() + _RESET_CHECK_S
        while not self.stop.is_set():
            # Not while broadcast frames flow (see Collector.gather): the check is several round trips.
            if time.monotonic() > next_reset_check and time.monotonic() - broadcasts.last_frame_at > _RESET_CHECK_S:
                if broadcasts.detect_reset():
                    self.say("the broker lost the task's topics; following the re-broadcast")
                    writer.renew()
                next_reset_check = time.monotonic() + _RESET_CHECK_S
            deliveries = broadcasts.poll(1.0)
            for refused in (d for d in deliveries if isinstance(d, Rejected)):
                self.say(f"ignored a broadcast: {refused.reason}")
            messages = [d.payload for d in deliveries if isinstance(d, Received)
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
        raise WorkerInterrupted("left the task as the daemon stops; a restarted daemon resumes it")

    def _handle(self, payload: Payload, writer: ResilientWriter, skip_training: bool) -> WorkerResult | None:
        assert self.training is not None
        try:
            bundle = decode_bundle(payload.data)
        except CodecError as exc:
            self.say(f"ignored an undecodable broadcast ({exc})")
            return None
        kind = payload.kind
        if kind == dataplane.STANDARDISE and bundle.meta.get("phase") == "mean" and self.secure is not None:
            # Secure standardisation's second sum: squared deviations from the global mean.
            squares = self._stats_layout().var_input(self.training.train_features(), bundle.arrays["mean"])
            self.secure.start(0, "var", squares)
        elif kind == dataplane.STANDARDISE:
            self.training.set_statistics(bundle)
            self.say("received the global mean and standard deviation")
            self._open(writer)
        elif kind in dataplane.SECURE_BROADCASTS and self.secure is not None:
            self.secure.on_broadcast(kind, payload.round, bundle)
        elif kind in (dataplane.ARCHITECTURE, dataplane.WEIGHTS, dataplane.FINAL):
            self.training.load(bundle, dataplane.wants_standardisation(self.task.definition))
            if kind == dataplane.FINAL:
                return self._finish(bundle, payload.data)
            if kind == dataplane.WEIGHTS:
                self._on_weights(payload.round, writer, skip_training)
        elif kind == dataplane.STOP:
            raise TaskStopped(f"the aggregator stopped the task: {bundle.meta.get('reason')}")
        return None

    def _on_weights(self, round_no: int, writer: ResilientWriter, skip_training: bool) -> None:
        sent = self._sent.get(round_no)
        if sent is not None and not self._already_recorded(round_no):
            self._send(writer, dataplane.UPDATE, round_no, sent.payload, sent.message_id)
            self.say(f"round {round_no}: sent the same update again (it was broadcast again)")
        elif round_no not in self.rounds_trained:
            if skip_training or self._already_recorded(round_no):
                self.say(f"skipped round {round_no}: a newer round is already out")
            else:
                self._train_round(round_no, writer)

    def _train_round(self, round_no: int, writer: ResilientWriter) -> None:
        assert self.training is not None
        trained = self.training.train_round(round_no)
        if self.secure is not None:
            self.secure.start(round_no, "update", self.secure.model_input(trained))
        else:
            payload = trained.payload()
            self._sent = {r: kept for r, kept in self._sent.items() if r == round_no - 1}
            self._sent[round_no] = _Sent(payload, self._send(writer, dataplane.UPDATE, round_no, payload))
        self.rounds_trained.append(round_no)
        shown = ", ".join(f"{k} {v:.4f}" for k, v in trained.metrics.items())
        tested = f"local test {shown}" if shown else "no local test (the task sets no test_size)"
        log_round(self.progress, f"{self.task.name}: round {round_no}: trained in {trained.seconds:.1f} s; "
                  f"{tested}", task=self.task.name, round=round_no, participant=self.me,
                  metrics=trained.metrics, duration_s=round(trained.seconds, 3))

    def _send(self, writer: ResilientWriter, kind: str, round_no: int, payload: bytes,
              message_id: str | None = None) -> str:
        return writer.send(
            str(self.task.topics.updates), task_id=self.task.task_id, round=round_no, kind=kind,
            sender=self.me, payload=payload, key=self.me, message_id=message_id)

    # -- the end

    def _finish(self, bundle: ArrayBundle, data: bytes | mmap.mmap) -> WorkerResult:
        assert self.training is not None
        digest = hashlib.sha256(data).hexdigest()
        folder = self.output / self.task.name
        folder.mkdir(parents=True, exist_ok=True)
        model_path = self.training.save(folder)
        (folder / "model.bundle").write_bytes(data)
        metrics = self.training.evaluate()
        report = {"task": self.task.name, "final_sha256": digest, "rounds_trained":
                  self.rounds_trained, "local_test_metrics": metrics}
        (folder / "report.json").write_text(json.dumps(report, indent=2) + "\n")
        # The digest is the bundle's (as TaskCompleted records it), not the .keras file's.
        self.say(f"final model saved to {model_path}; {folder / 'model.bundle'}, as broadcast, "
                 f"has sha256 {digest[:12]}… (the task's final digest)")
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
            creator_key = self._creator_key()
        except ClientError as exc:
            self.say(f"could not check the task's status: {exc.message}")
            return
        if status in (TaskStatus.FAILED, TaskStatus.DELETED):
            raise TaskStopped(f"task '{self.task.name}' is {status}")
        # A revoked creator key stops being believed within one status check.
        self.verifier.update(creator_key)
