"""The aggregator daemon: waits for the quorum, starts the task, runs every round, ends it.

One process per task, run by the task's creator (`musketeer aggregate TASK`). Every round is
recorded through the API with its model stored first, so the log always names a model that
exists; a restarted aggregator resumes after the last recorded round.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from aggregator.broadcast import Broadcaster
from aggregator.checkpoint import restore
from aggregator.collect import Collector
from aggregator.kmeans import run_kmeans
from aggregator.model import build_initial, evaluation_data
from aggregator.quorum import wait_for_quorum
from aggregator.record import Recorder
from aggregator.round import run_round
from aggregator.run import AggregationFailed, AggregatorOptions, Progress, RoundResult, TaskRun
from aggregator.standardise import standardise
from aggregator.verify import Gate
from client import MusketeerClient, Task
from client.profile import Profile
from ml.payload import model_payload
from ml.strategies import server_optimiser_for
from schema import dataplane
from schema.algorithms import KMEANS, LINEAR_MODELS, contribution
from schema.dataplane import ModelMeta
from schema.lifecycle import TaskStatus
from streams.eventlog import EventFeed
from streams.reader import PayloadReader
from streams.writer import ResilientWriter

__all__ = ["AggregationFailed", "Aggregator", "AggregatorOptions", "RoundResult"]


class Aggregator:
    """Runs one task from quorum to final model."""

    def __init__(self, client: MusketeerClient, profile: Profile, task_name: str,
                 options: AggregatorOptions, progress: Progress = print) -> None:
        self.client = client
        self.bootstrap = profile.broker()
        self.events_topic = profile.events_topic
        self.name = task_name
        self.options = options
        self.progress = progress
        self.recorder = Recorder(client, task_name, progress)
        self.results: list[RoundResult] = []

    def run(self) -> list[RoundResult]:
        """Train the task to the end; on an unrecoverable error record TaskFailed and re-raise."""
        task = self.client.get_task(self.name)
        me = self.client.me().username
        if task.creator != me:
            raise AggregationFailed(f"task '{self.name}' belongs to {task.creator}; only its "
                                    "creator runs its aggregator")
        check_options(task, self.options)
        broadcaster = Broadcaster(ResilientWriter(self.bootstrap, on_retry=self.progress), task)
        try:
            with EventFeed(self.bootstrap, self.events_topic) as feed:
                task = wait_for_quorum(self.client, task, feed, self.options.quorum_timeout_s, self.progress)
            resumed = task.status == TaskStatus.STARTED
            if task.status == TaskStatus.CREATED:
                task = self.client.start_task(self.name)
            if task.status != TaskStatus.STARTED:
                raise AggregationFailed(f"task '{self.name}' is {task.status}; nothing to run")
            self._train(task, broadcaster, resumed)
        except BaseException as error:
            self._give_up(broadcaster, failure_reason(error))
            raise
        return self.results

    def _train(self, task: Task, broadcaster: Broadcaster, resumed: bool) -> None:
        participants = sorted(p.username for p in task.participants)
        done = task.rounds_completed
        self.progress(f"task {task.name}: training with {', '.join(participants)}"
                      + (f"; resuming after round {done}" if resumed else ""))
        with PayloadReader(self.bootstrap, [str(task.topics.updates)]) as updates:
            gate = Gate(task.task_id, participants, self.recorder, done if resumed else -1)
            run = TaskRun(task, participants, self.options, self.recorder, broadcaster, gate,
                          Collector(updates, gate, on_reset=lambda: self._resend(run)), self.progress)
            if task.definition.get("algorithm") == KMEANS:
                last_round, final = run_kmeans(run, done, self.results)
            else:
                last_round, final = self._train_model(run, done)
            broadcaster.final(last_round, final)
            stored = self.recorder.store_model(final, final=True)
            self.recorder.complete(stored.sha256)
            run.say(f"COMPLETED, final model sha256 {stored.sha256[:12]}…")

    def _train_model(self, run: TaskRun, done: int) -> tuple[int, bytes]:
        """Every round after `done` of a Keras model; the last round and the final model."""
        model, meta, weights = self._restore(run) if done > 0 else self._start(run)
        evaluation = evaluation_data(self.options, meta, run.mean, run.std)
        for round_no in range(done + 1, meta.rounds + 1):
            weights, result = run_round(run, round_no, meta, weights, model, evaluation)
            self.results.append(result)
        return meta.rounds, model_payload(meta, weights)

    def _start(self, run: TaskRun) -> tuple[Any, ModelMeta, list[np.ndarray[Any, Any]]]:
        """Round 0: standardisation if asked, then the initial model, broadcast."""
        if dataplane.wants_standardisation(run.task.definition):
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


def check_options(task: Task, options: AggregatorOptions) -> None:
    """Refuse, before anything starts, options the task's algorithm cannot use or must have."""
    algorithm = str(task.definition.get("algorithm", "fedavg"))
    if options.model_file and algorithm in LINEAR_MODELS | {KMEANS}:
        raise AggregationFailed(f"task '{task.name}' is {algorithm}: the algorithm is the model, "
                                "so --model does not apply")
    if contribution(task.definition) is not None and not options.eval_data:
        raise AggregationFailed(f"task '{task.name}' values contributions on held-out data: "
                                "pass --eval-data (and --eval-shard if it is shared)")


def failure_reason(error: BaseException) -> str:
    """The reason recorded in TaskFailed for an error that stopped the aggregator."""
    if isinstance(error, KeyboardInterrupt):
        return "the aggregator was interrupted"
    if isinstance(error, AggregationFailed):
        return str(error)
    first_line = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{type(error).__name__}: {first_line}"
