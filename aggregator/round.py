"""One round, in the order it happens: broadcast → collect → verify → fold → record.

The steps live in their own files (broadcast.py, collect.py, verify.py, fold.py, record.py);
this one strings them together and decides what happens at the deadline.
"""

from __future__ import annotations

import time
from typing import Any

import numpy as np

from aggregator.collect import deadline_after
from aggregator.fold import Refused, fold_update
from aggregator.model import Evaluation
from aggregator.run import AggregationFailed, RoundResult, TaskRun
from client.daemonlog import log_round
from ml.payload import model_payload
from ml.strategies import Strategy, for_round
from ml.strategies.fedavg import weighted_metrics
from schema import dataplane
from schema.dataplane import ModelMeta

Weights = list[np.ndarray[Any, Any]]


def run_round(run: TaskRun, round_no: int, meta: ModelMeta, weights: Weights,
              evaluation: Evaluation | None) -> tuple[Weights, RoundResult]:
    """Train round `round_no` from `weights`; return the new weights and what was recorded."""
    run.broadcaster.weights(round_no, model_payload(meta, weights))
    started = time.monotonic()
    average, samples, reports = _collect_and_fold(run, round_no, for_round(run.task.definition, weights))
    new_weights = average.result()
    metrics = weighted_metrics(reports)
    # The exported model (what a user downloads) is what gets scored.
    eval_metrics = evaluation.score(new_weights) if evaluation is not None else {}
    stored = run.recorder.store_model(model_payload(meta, new_weights), round_no=round_no)
    duration = time.monotonic() - started
    who = sorted(samples)
    run.recorder.round(round_no, participants=who, model_sha256=stored.sha256, samples=samples,
                       metrics=metrics, eval_metrics=eval_metrics, duration_s=duration)
    log_round(run.progress, round_line(run.task.name, round_no, meta.rounds, metrics, eval_metrics, duration),
              task=run.task.name, round=round_no, rounds=meta.rounds, participants=who,
              metrics=metrics, eval_metrics=eval_metrics, duration_s=round(duration, 3),
              model_sha256=stored.sha256)
    return new_weights, RoundResult(round_no, who, samples, metrics, eval_metrics, stored.sha256, duration)


def _collect_and_fold(run: TaskRun, round_no: int, average: Strategy
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


def round_line(name: str, round_no: int, rounds: int, metrics: dict[str, float],
               eval_metrics: dict[str, float], duration: float) -> str:
    """The progress line of a completed round."""
    parts = [f"task {name}: round {round_no}/{rounds}"]
    if "loss" in metrics:
        parts.append(f"loss {metrics['loss']:.4f}")
    if "accuracy" in metrics:
        parts.append(f"accuracy {metrics['accuracy']:.4f}")
    if "accuracy" in eval_metrics:
        parts.append(f"eval accuracy {eval_metrics['accuracy']:.4f}")
    parts.append(f"{duration:.1f} s")
    return ", ".join(parts)
