"""Ctrl-C and SIGTERM for the daemons: the first asks for an orderly stop, the second quits."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from client.cli.stopping import orderly_stop


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_the_first_signal_sets_the_event_and_is_reported(signum: int) -> None:
    said: list[str] = []
    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    event = threading.Event()
    with orderly_stop(event, said.append) as stop:
        assert stop.exit_code is None
        os.kill(os.getpid(), signum)
        assert event.wait(5), "the signal did not set the stop event"
    assert stop.exit_code == 128 + signum
    assert said == [f"{signal.Signals(signum).name}: stopping after the current step "
                    "(send it again to quit at once)"]
    # The handlers are the ones from before: Ctrl-C outside raises KeyboardInterrupt again.
    assert {s: signal.getsignal(s) for s in before} == before


def test_a_second_signal_quits_at_once() -> None:
    """Work that never looks at the event (a long step) still ends on the second signal."""
    script = """
import os, signal, sys, threading, time
from client.cli.stopping import orderly_stop
with orderly_stop(threading.Event(), print) as stop:
    print("ready", flush=True)
    time.sleep(60)
sys.exit(3)
"""
    process = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                               cwd=Path(__file__).resolve().parent.parent)
    assert process.stdout is not None
    assert process.stdout.readline().strip() == "ready"
    process.send_signal(signal.SIGINT)
    assert "SIGINT: stopping after the current step" in process.stdout.readline()
    assert process.poll() is None, "one signal must not end the process"
    process.send_signal(signal.SIGTERM)
    # Within 30 s, so not after the 60 s step: the exit code is the second signal's.
    assert process.wait(30) == 128 + signal.SIGTERM
