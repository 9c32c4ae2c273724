"""Federated standardisation (seed §3.4.2): sum every participant's feature moments, broadcast
the global mean and standard deviation. Samples never leave their sites."""

from __future__ import annotations

from aggregator.collect import deadline_after
from aggregator.fold import Refused, read_moments
from aggregator.run import AggregationFailed, TaskRun
from ml.standardise import Moments, combine
from schema import dataplane


def standardise(run: TaskRun) -> None:
    """Collect every participant's statistics (round 0), combine them, broadcast the result."""
    run.say("collecting feature statistics for standardisation")
    moments: dict[str, Moments] = {}
    deadline = deadline_after(run.options.round_timeout_s)
    for accepted in run.collector.gather(0, dataplane.STATS, moments, len(run.participants), deadline):
        outcome = read_moments(accepted)
        if isinstance(outcome, Refused):
            run.recorder.reject(0, accepted.sender, outcome.reason, None)
        else:
            moments[accepted.sender] = outcome
    if len(moments) < len(run.participants):
        missing = ", ".join(p for p in run.participants if p not in moments)
        raise AggregationFailed(f"round 0 timed out after {run.options.round_timeout_s:g} s "
                                f"waiting for {missing}")
    run.mean, run.std = combine([moments[p] for p in sorted(moments)])
    run.broadcaster.statistics(run.mean, run.std)
    run.say(f"broadcast global mean and std of {sum(m.count for m in moments.values())} samples")
