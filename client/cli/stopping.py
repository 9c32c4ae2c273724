"""Ctrl-C and SIGTERM for a long-running command: the first asks for an orderly stop, the second quits."""

from __future__ import annotations

import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import FrameType

_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass
class Stop:
    """Set by the first signal; the work looks at `event` between its steps and winds down."""

    event: threading.Event
    signals: list[int] = field(default_factory=list)

    @property
    def exit_code(self) -> int | None:
        """128 + the first signal's number (as a shell reports it), or None if none came."""
        return 128 + self.signals[0] if self.signals else None


@contextmanager
def orderly_stop(event: threading.Event, say: Callable[[str], None]) -> Iterator[Stop]:
    """Inside, the first SIGINT or SIGTERM sets `event`; a second one exits at once.

    An orderly stop lets every thread close its own broker connections: a process that exits
    while a thread is still inside the Kafka client can hang in the interpreter's shutdown.
    Signal handlers belong to the main thread, so enter this from it.
    """
    stop = Stop(event)

    def handle(signum: int, frame: FrameType | None) -> None:
        stop.signals.append(signum)
        if len(stop.signals) > 1:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(128 + signum)  # asked twice: no more waiting for steps to end
        stop.event.set()
        say(f"{signal.Signals(signum).name}: stopping after the current step "
            "(send it again to quit at once)")

    previous = {signum: signal.signal(signum, handle) for signum in _SIGNALS}
    try:
        yield stop
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
