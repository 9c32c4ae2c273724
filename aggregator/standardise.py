"""Federated standardisation (seed §3.4.2): sum every participant's feature moments, broadcast
the global mean and standard deviation. Samples never leave their sites."""

from __future__ import annotations

from aggregator.fold import read_moments
from aggregator.opening import collect_from_everyone
from aggregator.run import TaskRun
from ml.standardise import combine
from schema import dataplane


def standardise(run: TaskRun) -> None:
    """Collect every participant's statistics (round 0), combine them, broadcast the result."""
    run.say("collecting feature statistics for standardisation")
    moments = collect_from_everyone(run, dataplane.STATS, read_moments, "feature statistics")
    run.mean, run.std = combine([moments[p] for p in sorted(moments)])
    run.broadcaster.statistics(run.mean, run.std)
    run.say(f"broadcast global mean and std of {sum(m.count for m in moments.values())} samples")
