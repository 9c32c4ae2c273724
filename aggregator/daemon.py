"""The aggregator daemon: waits for the quorum, starts the task, runs every round, ends it.

One process per task, run by the task's creator (`musketeer aggregate TASK`). Every round is
recorded through the API with its model stored first, so the log always names a model that
exists; a restarted aggregator resumes after the last recorded round.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from aggregator.broadcast import Broadcaster
from aggregator.checkpoint import restore
from aggregator.collect import Collector
from aggregator.kmeans import run_kmeans
from aggregator.model import build_initial, check_before_start, evaluation_data
from aggregator.quorum import start_when_keyed, wait_for_quorum
from aggregator.record import Recorder
from aggregator.round import round_timeout, run_round
from aggregator.run import (
    AggregationFailed,
    AggregatorOptions,
    Progress,
    QuorumNotReached,
    RoundResult,
    TaskRun,
)
from aggregator.secure import secure_standardise
from aggregator.standardise import standardise
from aggregator.verify import Gate
from client import MusketeerClient, Task
from client.keys import KeyRing, fingerprint_of
from client.keys_api import ensure_registered
from client.profile import Profile
from ml.export import exported_model, keras_file_bytes
from ml.payload import model_payload
from ml.secagg.dp import Budget
from ml.strategies import server_optimiser_for
from schema import dataplane, privacy
from schema.algorithms import KMEANS
from schema.dataplane import ModelMeta
from schema.lifecycle import TaskStatus
from streams.config import Broker, KafkaSecurity
from streams.eventlog import EventFeed
from streams.reader import PayloadReader
from streams.signing import Signer, Verifier
from streams.writer import ResilientWriter

__all__ = ["AggregationFailed", "Aggregator", "AggregatorOptions", "QuorumNotReached", "RoundResult"]


@dataclass
class _Ended:
    """How training ended: the final broadcast and model, why it stopped early, the `.keras` file."""

    last_round: int
    final: bytes
    stopped: str | None = None
    keras_file: bytes | None = None


class Aggregator:
    """Runs one task from quorum to final model."""

    def __init__(self, client: MusketeerClient, profile: Profile, task_name: str,
                 options: AggregatorOptions, progress: Progress = print) -> None:
        self.client = client
        self.broker = Broker(profile.broker_address(), KafkaSecurity.from_mapping(profile.kafka_settings()))
        self.events_topic = profile.events_topic
        self.name = task_name
        self.options = options
        self.progress = progress
        self.recorder = Recorder(client, task_name, progress)
        self.keys_dir = profile.keys_dir()
        self.results: list[RoundResult] = []

    def run(self) -> list[RoundResult]:
        """Train the task to the end; on an unrecoverable error record TaskFailed and re-raise."""
        task = self.client.get_task(self.name)
        me = self.client.me().username
        if task.creator != me:
            raise AggregationFailed(f"task '{self.name}' belongs to {task.creator}; only its "
                                    "creator runs its aggregator")
        # Before anything is waited for or started: a bad model file fails now, not the task.
        check_before_start(task, self.options)
        self.keys = KeyRing(self.keys_dir, me)
        key = ensure_registered(self.client, self.keys)
        self.progress(f"task {self.name}: signing as {me} with key {fingerprint_of(key)[:16]}…")
        writer = ResilientWriter(self.broker, on_retry=self.progress)
        broadcaster = Broadcaster(writer, task)
        try:
            with EventFeed(self.broker, self.events_topic) as feed:
                task = wait_for_quorum(self.client, task, feed, self.options.quorum_timeout_s, self.progress)
                resumed = task.status == TaskStatus.STARTED
                if task.status == TaskStatus.CREATED:
                    task = start_when_keyed(self.client, task, feed, self.options.quorum_timeout_s, self.progress)
            if task.status != TaskStatus.STARTED:
                raise AggregationFailed(f"task '{self.name}' is {task.status}; nothing to run")
            # The key the task recorded for its creator signs every broadcast, even after a rotation.
            writer.sign_as(Signer(self.keys.recorded(task.keys, self.name)))
            self._train(task, broadcaster, resumed)
        except QuorumNotReached as error:
            # Nobody trains yet: the task stays open for joins unless the creator asked otherwise.
            if self.options.fail_on_quorum_timeout:
                self._give_up(broadcaster, str(error))
            raise
        except BaseException as error:
            self._give_up(broadcaster, failure_reason(error))
            raise
        return self.results

    def _train(self, task: Task, broadcaster: Broadcaster, resumed: bool) -> None:
        participants = sorted(p.username for p in task.participants)
        done = task.rounds_completed
        self.progress(f"task {task.name}: training with {', '.join(participants)}"
                      + (f"; resuming after round {done}" if resumed else ""))
        verifier = Verifier(self.client.task_member_keys(self.name))
        with PayloadReader(self.broker, [str(task.topics.updates)], verifier=verifier) as updates:
            gate = Gate(task.task_id, participants, self.recorder, done if resumed else -1, updates.forget)
            run = TaskRun(task, participants, self.options, self.recorder, broadcaster, gate,
                          Collector(updates, gate, on_reset=lambda: self._resend(run)), self.progress)
            if task.definition.get("algorithm") == KMEANS:
                ended = _Ended(*run_kmeans(run, done, self.results))
            else:
                ended = self._train_model(run, done, verifier)
            broadcaster.final(ended.last_round, ended.final)
            stored = self.recorder.store_model(ended.final, final=True)
            said = f"COMPLETED, final model sha256 {stored.sha256[:12]}…"
            keras_sha256 = None
            if ended.keras_file is not None:
                # The model users take away: a .keras file with the standardisation inside.
                keras_sha256 = self.recorder.store_model(ended.keras_file, final=True).sha256
                said += f", .keras sha256 {keras_sha256[:12]}…"
            self.recorder.complete(stored.sha256, ended.stopped, keras_sha256=keras_sha256)
            run.say(said)

    def _train_model(self, run: TaskRun, done: int, verifier: Verifier) -> _Ended:
        """Every round after `done` of a Keras model, until the last or the privacy budget's end."""
        _, meta, weights = self._restore(run) if done > 0 else self._start(run)
        evaluation = evaluation_data(self.options, meta)
        budget, stopped = Budget.of(run.task.definition), None
        try:
            for round_no in range(done + 1, meta.rounds + 1):
                if budget is not None and (stopped := budget.stop_before(round_no)):
                    run.say(stopped)
                    break
                # Keys are read again each round: a member's revocation counts from the next one.
                verifier.update(self.client.task_member_keys(self.name))
                epsilon = budget.after(round_no) if budget is not None else None
                weights = run_round(run, round_no, meta, weights, evaluation, epsilon)
            # The last round is recorded before the final model goes out.
            run.backlog.settle()
        finally:
            # However the rounds ended, a round still being recorded is in the log before the
            # failure (if any) is, and in the results.
            with contextlib.suppress(Exception):
                run.backlog.settle()
            self.results.extend(run.backlog.results)
        return _Ended(meta.rounds, model_payload(meta, weights), stopped,
                      keras_file_bytes(exported_model(meta, weights)))

    def _start(self, run: TaskRun) -> tuple[Any, ModelMeta, list[np.ndarray[Any, Any]]]:
        """Round 0: standardisation if asked, then the initial model, broadcast."""
        if dataplane.wants_standardisation(run.task.definition):
            if privacy.secure(run.task.pom):
                secure_standardise(run, round_timeout(run))
            else:
                standardise(run)
        model, meta = build_initial(run.task, self.options, run.mean, run.std)
        weights = [np.asarray(w) for w in model.get_weights()]
        run.optimiser = server_optimiser_for(run.task.definition, weights)
        run.broadcaster.architecture(model_payload(meta, weights))
        return model, meta, weights

    def _restore(self, run: TaskRun) -> tuple[Any, ModelMeta, list[np.ndarray[Any, Any]]]:
        """The model as the last recorded round left it (its digest is in RoundCompleted)."""
        checkpoint = restore(self.client, self.name)
        run.mean, run.std = checkpoint.mean, checkpoint.std
        if run.mean is not None and run.std is not None:
            run.broadcaster.statistics(run.mean, run.std)
        run.broadcaster.keep_architecture(model_payload(checkpoint.meta, checkpoint.weights))
        run.say(f"restored the round {checkpoint.round} checkpoint (sha256 {checkpoint.sha256[:12]}…)")
        run.optimiser = server_optimiser_for(run.task.definition, checkpoint.weights)
        if run.optimiser is not None and checkpoint.server_state is not None:
            run.optimiser.load_state(*checkpoint.server_state)
            run.say(f"restored the {run.optimiser.settings.name} server optimiser's state "
                    f"after {run.optimiser.steps} steps")
        elif run.optimiser is not None:
            run.say("the checkpoint holds no server optimiser state: the optimiser starts afresh")
        return checkpoint.model, checkpoint.meta, checkpoint.weights

    def _resend(self, run: TaskRun) -> None:
        run.say("the broker lost the task's topics; recreating them and broadcasting the "
                "current round again")
        run.broadcaster.resend()

    def _give_up(self, broadcaster: Broadcaster, reason: str) -> None:
        """Tell participants to stop and record TaskFailed; best effort, never masks the error."""
        for what, attempt in (("stop broadcast", broadcaster.stop), ("record failure", self.recorder.fail)):
            try:
                attempt(reason)
            except Exception as exc:  # the original error is what matters
                self.progress(f"  (could not {what}: {exc})")


def failure_reason(error: BaseException) -> str:
    """The reason recorded in TaskFailed for an error that stopped the aggregator."""
    if isinstance(error, KeyboardInterrupt):
        return "the aggregator was interrupted"
    if isinstance(error, AggregationFailed):
        return str(error)
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}: {first_line}"
