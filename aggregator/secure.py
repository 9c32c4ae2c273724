"""Secure aggregation on the aggregator's side: one secure sum, step by step over the topics.

The four steps (advertise → shares → masked inputs → reveals) each wait until every member
expected at that step has answered, or the round's timeout passes; whoever is missing then is
left out of the rest, and the sum is still exact as long as at least `threshold` members take
part in each step. The aggregator only ever holds masked inputs and their running sum.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np

from aggregator.collect import deadline_after
from aggregator.run import AggregationFailed, TaskRun
from aggregator.verify import Accepted
from ml.secagg.encoding import ModelLayout, StatsLayout
from ml.secagg.protocol import ProtocolError, ServerRound, context
from ml.standardise import standard_deviation
from schema import dataplane, privacy

Array = np.ndarray[Any, Any]


def secure_sum(run: TaskRun, round_no: int, instance: str, length: int | None,
               timeout_s: float) -> tuple[Array, list[str]]:
    """The sum of the members' inputs for (round, instance), and who is in it. Every input has
    `length` values (None: as many as the first member announces, the same for all)."""
    t = privacy.threshold(run.task.definition, len(run.participants))
    server = ServerRound(context(run.task.task_id, round_no, instance), t, length or 0)
    step = _Step(run, round_no, instance, t, timeout_s)

    def advertise(accepted: Accepted) -> None:
        announced = int(accepted.bundle.meta["length"])
        if server.length and announced != server.length:
            raise ProtocolError(f"an input of {announced} values, not {server.length}")
        server.length = announced
        server.add_advertise(accepted.sender, accepted.bundle.meta["keys"])

    advertised = step.collect(dataplane.ADVERTISE, run.participants, "advertised keys", advertise)
    run.broadcaster.control(dataplane.ROSTER, round_no, {"instance": instance, "roster": server.roster(),
                                                         "threshold": t})
    shared = step.collect(dataplane.SHARES, advertised, "shared their secrets",
                          lambda a: server.add_shares(a.sender, a.bundle.meta["shares"]))
    run.broadcaster.control(dataplane.SHARE_LIST, round_no, {"instance": instance, "shares": server.share_list()})
    masked = step.collect(dataplane.UPDATE, shared, "sent a masked input",
                          lambda a: server.add_masked(a.sender, np.asarray(a.bundle.arrays["masked"])))
    run.broadcaster.control(dataplane.UNMASK, round_no, {"instance": instance, **server.unmask_request()})
    step.collect(dataplane.REVEAL, masked, "revealed their shares",
                 lambda a: server.add_reveal(a.sender, a.bundle.meta))
    try:
        return server.total(), sorted(masked)
    except ProtocolError as exc:
        raise AggregationFailed(f"round {round_no}: secure aggregation failed: {exc}") from exc


class _Step:
    """Collects one kind of message from the members expected at this step."""

    def __init__(self, run: TaskRun, round_no: int, instance: str, threshold: int, timeout_s: float) -> None:
        self.run, self.round_no, self.instance = run, round_no, instance
        self.threshold, self.timeout_s = threshold, timeout_s

    def collect(self, kind: str, expected: list[str], doing: str, take: Callable[[Accepted], None]) -> list[str]:
        done: dict[str, None] = {}
        for accepted in self.run.collector.gather(self.round_no, kind, done, len(expected),
                                                  deadline_after(self.timeout_s)):
            problem = self._problem(accepted, expected)
            if problem is None:
                try:
                    take(accepted)
                except (ProtocolError, KeyError, TypeError, ValueError) as exc:
                    problem = f"malformed {kind}: {exc}"
            if problem:
                self.run.recorder.reject(self.round_no, accepted.sender, problem, accepted.message_id)
            else:
                done[accepted.sender] = None
        if len(done) < self.threshold:
            missing = ", ".join(p for p in expected if p not in done)
            raise AggregationFailed(
                f"round {self.round_no}: only {len(done)} of {len(expected)} members {doing} within "
                f"{self.timeout_s:g} s, under the secure aggregation threshold of {self.threshold}; "
                f"missing: {missing}")
        if len(done) < len(expected):
            self.run.say(f"round {self.round_no} ({self.instance}): goes on without "
                         f"{', '.join(p for p in expected if p not in done)}")
        return [p for p in expected if p in done]

    def _problem(self, accepted: Accepted, expected: list[str]) -> str | None:
        if accepted.bundle.meta.get("instance") != self.instance:
            return f"for another secure sum ({accepted.bundle.meta.get('instance')!r}, now {self.instance!r})"
        if accepted.sender not in expected:
            return f"{accepted.sender} is not in this step of the secure sum (it missed an earlier one)"
        return None


def secure_update(run: TaskRun, round_no: int, weights: list[Array], timeout_s: float
                  ) -> tuple[list[Array], list[str], dict[str, float]]:
    """A model round's secure sum: the next weights, who is in it, the mean local metrics."""
    layout = ModelLayout.of(weights, run.task.definition, run.task.pom, len(run.participants))
    total, members = secure_sum(run, round_no, "update", layout.length, timeout_s)
    new_weights, weight, count, metrics = layout.decode(total, weights)
    if count != len(members) or weight <= 0:
        raise AggregationFailed(f"round {round_no}: the unmasked sum holds {count} inputs of total "
                                f"weight {weight:g}, not the {len(members)} masked ones")
    needed = int(run.task.definition.get("min_updates") or len(run.participants))
    missing = [p for p in run.participants if p not in members]
    if len(members) < needed:
        raise AggregationFailed(f"round {round_no}: {len(members)} of {len(run.participants)} updates "
                                f"({needed} needed); missing: {', '.join(missing)}")
    if missing:
        run.recorder.missed(round_no, missing)
    return new_weights, members, metrics


def secure_standardise(run: TaskRun, timeout_s: float) -> None:
    """Federated standardisation by two secure sums (round 0): the mean, then the variance."""
    cap = run.task.definition.get("max_samples", run.task.definition.get("training_size"))
    total, _ = secure_sum(run, 0, "mean", None, timeout_s)
    layout = StatsLayout(len(total) - 1, int(cap or 1), len(run.participants))
    mean, count = layout.mean(total)
    run.broadcaster.control(dataplane.STANDARDISE, 0, {"phase": "mean"}, {"mean": mean})
    squares, _ = secure_sum(run, 0, "var", layout.features, timeout_s)
    run.mean, run.std = mean, standard_deviation(mean, layout.variance(squares, count))
    run.broadcaster.statistics(run.mean, run.std)
    run.say(f"broadcast global mean and std of {count} samples (by secure aggregation)")
