"""Round 0: one message from every participant before training starts (statistics, candidates)."""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

from aggregator.collect import deadline_after
from aggregator.fold import Refused
from aggregator.run import AggregationFailed, TaskRun
from aggregator.verify import Accepted

T = TypeVar("T")


def collect_from_everyone(run: TaskRun, kind: str, read: Callable[[Accepted], T | Refused],
                          what: str) -> dict[str, T]:
    """Each participant's round-0 message of `kind`, read; a refused one is recorded with why.

    Round 0 has no deadline-and-go-on: training cannot start without everyone's part, so
    the task fails, naming who is missing, if one does not come in time.
    """
    found: dict[str, T] = {}
    deadline = deadline_after(run.options.round_timeout_s)
    for accepted in run.collector.gather(0, kind, found, len(run.participants), deadline):
        outcome = read(accepted)
        if isinstance(outcome, Refused):
            run.recorder.reject(0, accepted.sender, outcome.reason, None)
        else:
            found[accepted.sender] = outcome
    if len(found) < len(run.participants):
        missing = ", ".join(p for p in run.participants if p not in found)
        raise AggregationFailed(f"round 0 timed out after {run.options.round_timeout_s:g} s "
                                f"waiting for {what} from {missing}")
    return found
