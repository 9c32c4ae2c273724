"""Collect and fold: each update is folded as it comes and dropped before the next is read."""

from __future__ import annotations

import time
import weakref
from types import SimpleNamespace
from typing import Any

import numpy as np

from aggregator.collect import Collector
from aggregator.round import collect_and_fold
from aggregator.verify import Accepted
from ml.strategies.fedavg import RunningAverage, template_of
from streams.codec import ArrayBundle

SENDERS = ["p0", "p1", "p2", "p3"]


class OneAtATimeReader:
    """Hands over one update per poll, as a large payload comes; notes how many of the updates
    already handed over are still alive each time it is asked for the next."""

    def __init__(self, gate: PassingGate) -> None:
        self.gate = gate
        self.last_frame_at = time.monotonic()
        self.alive_at_poll: list[int] = []
        self.left = list(SENDERS)

    def poll(self, _timeout_s: float) -> list[str]:
        self.alive_at_poll.append(sum(ref() is not None for ref in self.gate.handed))
        return [self.left.pop(0)] if self.left else []

    def detect_reset(self) -> bool:
        return False


class PassingGate:
    """Accepts every delivery (a sender's name) as that sender's update of 1000 float32s."""

    def __init__(self) -> None:
        self.handed: list[weakref.ref[Accepted]] = []

    def new_round(self) -> None: ...

    def counted(self, _accepted: Accepted) -> None: ...

    def accept(self, sender: str, *_: Any) -> Accepted:
        weights = np.full(1000, SENDERS.index(sender) + 1, dtype=np.float32)
        meta = {"samples": 10 * (SENDERS.index(sender) + 1), "test_samples": 1}
        accepted = Accepted(sender, f"id-{sender}", ArrayBundle({"w000": weights}, meta))
        self.handed.append(weakref.ref(accepted))
        return accepted


def test_a_folded_update_is_dropped_before_the_next_one_is_read() -> None:
    """While the round reads the next update, no update already folded is still held (by the
    collector, or by the loop that folds): memory holds one update, not two. The fold is the
    exact sample-weighted mean."""
    gate = PassingGate()
    reader = OneAtATimeReader(gate)
    run = SimpleNamespace(gate=gate, collector=Collector(reader, gate, on_reset=lambda: None),  # type: ignore[arg-type]
                          participants=SENDERS,
                          task=SimpleNamespace(definition={"quorum": 4, "rounds": 1, "model": "user"}),
                          options=SimpleNamespace(round_timeout_s=30.0))
    average = RunningAverage(template_of([np.zeros(1000, dtype=np.float32)]))

    _, samples, _ = collect_and_fold(run, 1, average)  # type: ignore[arg-type]

    assert samples == {"p0": 10, "p1": 20, "p2": 30, "p3": 40}
    assert reader.alive_at_poll == [0, 0, 0, 0]
    expected = np.float32((1 * 10 + 2 * 20 + 3 * 30 + 4 * 40) / 100)
    assert np.array_equal(average.result()[0], np.full(1000, expected, dtype=np.float32))
