"""One round, in the order it happens: broadcast → collect → verify → fold → record.

The steps live in their own files (broadcast.py, collect.py, verify.py, fold.py, record.py);
this one strings them together and decides what happens at the deadline. The record (the
round's model stored, then RoundCompleted) goes on in the background while the next round is
broadcast and collected: see `Backlog` in run.py.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import numpy as np

from aggregator.collect import deadline_after
from aggregator.contribution import (
    KeptUpdates,
    RoundStart,
    keep_updates_if_valued,
    record_values,
    value_updates,
)
from aggregator.fold import Refused, fold_update
from aggregator.model import Evaluation
from aggregator.run import AggregationFailed, RoundResult, TaskRun
from aggregator.secure import secure_update
from client.daemonlog import log_round
from ml.contribution import Valuation
from ml.payload import checkpoint_pieces, model_payload
from ml.seeds import task_seed
from ml.strategies import ServerOptimiser, Strategy, for_round
from ml.strategies.fedavg import weighted_metrics
from schema import dataplane, privacy
from schema.dataplane import ModelMeta
from schema.definition import TaskDefinition
from streams.codec import EncodedBundle

Weights = list[np.ndarray[Any, Any]]


def run_round(run: TaskRun, round_no: int, meta: ModelMeta, weights: Weights, evaluation: Evaluation | None,
              epsilon: float | None = None) -> Weights:
    """Train round `round_no` from `weights`; return the new weights.

    The round is recorded (its model stored, then RoundCompleted) through `run.backlog`: in the
    background while the next round runs, except in a secure task, whose masked inputs are not
    kept for a rerun of the round.
    """
    run.broadcaster.weights(round_no, partial(model_payload, meta, weights))
    started = time.monotonic()
    valuation = None
    if privacy.secure(run.task.pom):
        aggregate, who, metrics = secure_update(run, round_no, weights, round_timeout(run))
        samples: dict[str, int] = {}  # each member's count is inside the masked sum, unknown here
    else:
        aggregate, samples, metrics, valuation = fold_round(run, round_no, weights, evaluation)
        who = sorted(samples)
    # A server optimiser steps along aggregate − global; without one the aggregate is the model.
    new_weights = next_global(run.optimiser, weights, aggregate)
    del aggregate  # the optimiser's step is the model now; its input need not live through the record
    # Scored (as exported: what a user downloads) and cut into pieces here, in this thread: the
    # evaluation model is not shared, and the pieces are views of arrays no later round changes
    # (each round's weights and optimiser state are new arrays).
    eval_metrics = evaluation.score(new_weights) if evaluation is not None else {}
    state = None if run.optimiser is None else run.optimiser.state()
    record = Record(round_no, meta, checkpoint_pieces(meta, new_weights, state), eval_metrics,
                    Outcome(who, samples, metrics, started, epsilon), valuation, evaluation)
    run.backlog.add(partial(record_round, run, record), wait=privacy.secure(run.task.pom))
    return new_weights


def fold_round(run: TaskRun, round_no: int, weights: Weights, evaluation: Evaluation | None
               ) -> tuple[Weights, dict[str, int], dict[str, float], Valuation | None]:
    """Collect and fold the round's updates: the aggregate, samples, metrics and valuation.

    Its own function so that the strategy's running sums (float64: twice the model) are freed
    when it returns, before the round's model is stored.
    """
    definition = run.task.definition
    strategy = keep_updates_if_valued(definition, round_no, for_round(definition, weights))
    average, samples, reports = collect_and_fold(run, round_no, strategy)
    aggregate = average.result()
    seed = task_seed(run.task.task_id, definition) + round_no
    valuation = value_updates(RoundStart(definition, weights, run.optimiser, seed), strategy, evaluation)
    return aggregate, samples, weighted_metrics(reports), valuation


@dataclass
class Outcome:
    """What a round's collection produced, for the record."""

    participants: list[str]
    samples: dict[str, int]
    metrics: dict[str, float]
    started: float
    epsilon: float | None


@dataclass
class Record:
    """Everything a round's record needs: its model's pieces, scores and who took part."""

    round_no: int
    meta: ModelMeta
    pieces: EncodedBundle
    eval_metrics: dict[str, float]
    outcome: Outcome
    valuation: Valuation | None
    evaluation: Evaluation | None


def record_round(run: TaskRun, record: Record) -> RoundResult:
    """Store the round's model (with the server optimiser's state), record RoundCompleted, then
    the round's contributions if they were valued."""
    round_no, outcome, eval_metrics = record.round_no, record.outcome, record.eval_metrics
    stored = run.recorder.store_model(record.pieces, round_no=round_no)
    duration = time.monotonic() - outcome.started
    who, metrics = outcome.participants, outcome.metrics
    run.recorder.round(round_no, participants=who, model_sha256=stored.sha256, samples=outcome.samples,
                       metrics=metrics, eval_metrics=eval_metrics, duration_s=duration, epsilon=outcome.epsilon)
    log_round(run.progress, round_line(run.task.name, round_no, record.meta.rounds, metrics, eval_metrics, duration),
              task=run.task.name, round=round_no, rounds=record.meta.rounds, participants=who,
              metrics=metrics, eval_metrics=eval_metrics, duration_s=round(duration, 3),
              model_sha256=stored.sha256, epsilon=outcome.epsilon)
    record_values(run, round_no, record.valuation, record.meta, record.evaluation)
    return RoundResult(round_no, who, outcome.samples, metrics, eval_metrics, stored.sha256, duration)


def round_timeout(run: TaskRun) -> float:
    """How long a round (or each step of a secure one) waits for updates."""
    return float(run.task.definition.get("round_timeout_s") or run.options.round_timeout_s)


def next_global(optimiser: ServerOptimiser | None, weights: Weights, aggregate: Weights) -> Weights:
    """The next global model: the server optimiser's step from `weights`, or the aggregate itself."""
    return aggregate if optimiser is None else optimiser.step(weights, aggregate)


def collect_and_fold(run: TaskRun, round_no: int, average: Strategy
                      ) -> tuple[Strategy, dict[str, int], list[tuple[dict[str, float], int]]]:
    samples: dict[str, int] = {}
    reports: list[tuple[dict[str, float], int]] = []
    timeout_s = round_timeout(run)
    run.gate.new_round()
    updates = run.collector.gather(round_no, dataplane.UPDATE, samples, len(run.participants),
                                   deadline_after(timeout_s))
    cap = TaskDefinition.model_validate(run.task.definition).sample_cap
    for accepted in updates:
        outcome = fold_update(average, accepted, cap)
        sender = accepted.sender
        if not isinstance(outcome, Refused):
            run.gate.counted(accepted)
        # Folded (or refused): drop the update's bytes now, not when the next one is here.
        del accepted
        if isinstance(outcome, Refused):
            run.recorder.reject(round_no, sender, outcome.reason, None)
            continue
        if isinstance(average, KeptUpdates):
            average.claim(sender)
        samples[sender] = outcome.samples
        reports.append((outcome.metrics, max(outcome.test_samples, 1)))
    if len(samples) < len(run.participants):
        _close_without(run, round_no, samples, timeout_s)
    return average, samples, reports


def _close_without(run: TaskRun, round_no: int, samples: dict[str, int], timeout_s: float) -> None:
    """At the deadline: go on without the missing if enough updates came, else fail."""
    missing = [p for p in run.participants if p not in samples]
    needed = int(run.task.definition.get("min_updates") or len(run.participants))
    if len(samples) < needed:
        raise AggregationFailed(
            f"round {round_no} closed at its {timeout_s:g} s deadline with {len(samples)} of "
            f"{len(run.participants)} updates ({needed} needed); missing: {', '.join(missing)}")
    run.recorder.missed(round_no, missing)
    run.say(f"round {round_no} goes on without {', '.join(missing)} (deadline {timeout_s:g} s)")


# The metrics a progress line shows, when a round has them (loss first; it is not shown for eval).
_SHOWN = ("loss", "accuracy", "r2", "inertia_per_sample")


def round_line(name: str, round_no: int, rounds: int, metrics: dict[str, float],
               eval_metrics: dict[str, float], duration: float) -> str:
    """The progress line of a completed round."""
    parts = [f"task {name}: round {round_no}/{rounds}"]
    parts += [f"{key} {metrics[key]:.4f}" for key in _SHOWN if key in metrics]
    parts += [f"eval {key} {eval_metrics[key]:.4f}" for key in _SHOWN[1:] if key in eval_metrics]
    parts.append(f"{duration:.1f} s")
    return ", ".join(parts)
