"""One round, in the order it happens: broadcast → collect → verify → fold → record.

The steps live in their own files (broadcast.py, collect.py, verify.py, fold.py, record.py);
this one strings them together and decides what happens at the deadline.
"""

from __future__ import annotations

import time
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
from aggregator.run import AggregationFailed, RoundResult, TaskRun
from ml.data import Dataset
from ml.keras_model import evaluate
from ml.payload import checkpoint_payload, model_payload
from ml.seeds import task_seed
from ml.strategies import ServerOptimiser, Strategy, for_round
from ml.strategies.fedavg import weighted_metrics
from schema import dataplane
from schema.dataplane import ModelMeta

Weights = list[np.ndarray[Any, Any]]


def run_round(run: TaskRun, round_no: int, meta: ModelMeta, weights: Weights, model: Any,
              evaluation: Dataset | None) -> tuple[Weights, RoundResult]:
    """Train round `round_no` from `weights`; return the new weights and what was recorded."""
    run.broadcaster.weights(round_no, model_payload(meta, weights))
    started = time.monotonic()
    definition = run.task.definition
    strategy = keep_updates_if_valued(definition, round_no, for_round(definition, weights))
    average, samples, reports = collect_and_fold(run, round_no, strategy)
    aggregate = average.result()
    seed = task_seed(run.task.task_id, definition) + round_no
    valuation = value_updates(RoundStart(definition, weights, run.optimiser, seed), strategy, model, evaluation)
    # A server optimiser steps along aggregate − global; without one the aggregate is the model.
    new_weights = next_global(run.optimiser, weights, aggregate)
    metrics = weighted_metrics(reports)
    eval_metrics: dict[str, float] = {}
    if evaluation is not None:
        model.set_weights(new_weights)
        eval_metrics = evaluate(model, evaluation)
    state = None if run.optimiser is None else run.optimiser.state()
    stored = run.recorder.store_model(checkpoint_payload(meta, new_weights, state), round_no=round_no)
    duration = time.monotonic() - started
    who = sorted(samples)
    run.recorder.round(round_no, participants=who, model_sha256=stored.sha256, samples=samples,
                       metrics=metrics, eval_metrics=eval_metrics, duration_s=duration)
    run.progress(round_line(run.task.name, round_no, meta.rounds, metrics, eval_metrics, duration))
    record_values(run, round_no, valuation, meta, evaluation)
    return new_weights, RoundResult(round_no, who, samples, metrics, eval_metrics, stored.sha256, duration)


def next_global(optimiser: ServerOptimiser | None, weights: Weights, aggregate: Weights) -> Weights:
    """The next global model: the server optimiser's step from `weights`, or the aggregate itself."""
    return aggregate if optimiser is None else optimiser.step(weights, aggregate)


def collect_and_fold(run: TaskRun, round_no: int, average: Strategy
                      ) -> tuple[Strategy, dict[str, int], list[tuple[dict[str, float], int]]]:
    samples: dict[str, int] = {}
    reports: list[tuple[dict[str, float], int]] = []
    timeout_s = float(run.task.definition.get("round_timeout_s") or run.options.round_timeout_s)
    run.gate.new_round()
    updates = run.collector.gather(round_no, dataplane.UPDATE, samples, len(run.participants),
                                   deadline_after(timeout_s))
    for accepted in updates:
        outcome = fold_update(average, accepted)
        if isinstance(outcome, Refused):
            run.recorder.reject(round_no, accepted.sender, outcome.reason, None)
            continue
        run.gate.counted(accepted)
        if isinstance(average, KeptUpdates):
            average.claim(accepted.sender)
        samples[accepted.sender] = outcome.samples
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
