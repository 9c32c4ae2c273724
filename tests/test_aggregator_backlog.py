"""The backlog records rounds one at a time, in order, the last possibly in the background
(aggregator.run.Backlog): each record starts only once the one before has ended, a failure
comes out of the next add or settle, and waiting records at once."""

from __future__ import annotations

import threading

import pytest

from aggregator.run import Backlog, RoundResult


def result(round_no: int) -> RoundResult:
    return RoundResult(round_no, ["john"], {"john": 1}, {}, {}, f"sha-{round_no}", 0.1)


def test_records_run_in_order_and_never_two_at_once() -> None:
    """Round 2's record does not start until round 1's, held back, has ended."""
    backlog, events, release = Backlog(), [], threading.Event()

    def record(round_no: int, hold: bool = False) -> RoundResult:
        events.append(f"start {round_no}")
        if hold:
            assert release.wait(10)
        events.append(f"end {round_no}")
        return result(round_no)

    backlog.add(lambda: record(1, hold=True))
    threading.Timer(0.2, release.set).start()
    backlog.add(lambda: record(2))  # waits for round 1 first
    backlog.settle()

    assert events == ["start 1", "end 1", "start 2", "end 2"]
    assert [r.round for r in backlog.results] == [1, 2]


def test_a_failed_record_is_raised_by_the_next_call_and_not_kept() -> None:
    backlog = Backlog()

    def fail() -> RoundResult:
        raise RuntimeError("the API refused round 1")

    backlog.add(fail)
    with pytest.raises(RuntimeError, match="refused round 1"):
        backlog.add(lambda: result(2))
    assert backlog.results == []
    backlog.settle()  # nothing pending any more


def test_wait_records_before_returning() -> None:
    backlog, seen = Backlog(), []
    backlog.add(lambda: (seen.append(threading.current_thread().name), result(1))[1], wait=True)
    assert seen == [threading.current_thread().name] and [r.round for r in backlog.results] == [1]


def test_the_aggregator_caps_glibcs_malloc_arenas() -> None:
    """`aggregate` calls fewer_malloc_arenas() first; on this glibc machine mallopt takes it."""
    from aggregator.cli import fewer_malloc_arenas

    assert fewer_malloc_arenas(1) is True
