"""Collect: read the updates topic until every participant has sent, or the deadline passes."""

from __future__ import annotations

import time
from collections.abc import Callable, Collection, Iterator

from aggregator.verify import Accepted, Gate
from streams.reader import PayloadReader

# How often the reader asks the broker whether it lost the task's topics.
RESET_CHECK_S = 3.0


class Collector:
    """Turns the updates topic into a stream of messages that passed the gate."""

    def __init__(self, reader: PayloadReader, gate: Gate, on_reset: Callable[[], None]) -> None:
        self.reader = reader
        self.gate = gate
        # Called when the broker lost the topics (the reader reads them anew by itself).
        self.on_reset = on_reset

    def gather(self, round_no: int, kind: str, done: Collection[str], expected: int,
               deadline: float) -> Iterator[Accepted]:
        """Accepted messages of this step until `done` holds `expected` senders or time is up.

        The caller adds each sender it counts to `done`; the gate refuses a second message
        from a sender already there.
        """
        next_check = time.monotonic() + RESET_CHECK_S
        while len(done) < expected:
            # Asked only once frames stop for a while: the check is several broker
            # round trips, and while frames flow the topic is evidently there.
            if time.monotonic() > next_check and time.monotonic() - self.reader.last_frame_at > RESET_CHECK_S:
                if self.reader.detect_reset():
                    self.on_reset()
                next_check = time.monotonic() + RESET_CHECK_S
            deliveries = self.reader.poll(1.0)
            while deliveries:
                # Popped, and the name cleared after the yield: a folded update's bytes are
                # freed before the next poll reassembles another, not kept alongside it.
                accepted = self.gate.accept(deliveries.pop(0), round_no, kind, done)
                if accepted is not None:
                    yield accepted
                accepted = None
            if time.monotonic() > deadline:
                return


def deadline_after(timeout_s: float | None) -> float:
    """The monotonic time `timeout_s` from now (never, for None or 0)."""
    return time.monotonic() + timeout_s if timeout_s else float("inf")
