"""Seeds: derived the same way everywhere, and held by one task at a time in a process."""

from __future__ import annotations

import threading

import numpy as np

from ml.seeds import participant_seed, seeded, task_seed


def draws(seed: int, count: int = 4) -> list[float]:
    """What NumPy's global generator gives right after `seed`, drawn alone."""
    with seeded(seed):
        return [float(np.random.random()) for _ in range(count)]


def test_a_seed_in_the_definition_wins_and_a_derived_one_is_stable() -> None:
    assert task_seed("any", {"seed": 7}) == 7
    assert task_seed("task-a") == task_seed("task-a") != task_seed("task-b")
    assert participant_seed("t", {"seed": 7}, place=2, round_no=3) == 7 + 2000 + 3


def test_a_second_thread_cannot_reseed_while_a_seeded_block_runs() -> None:
    # A daemon serving two tasks trains each in its own thread. Thread "a" draws, lets "b" in,
    # then draws again: without the lock "b" reseeds in between and "a"'s draws change.
    expected_a, expected_b = draws(1), draws(2)
    inside = threading.Event()
    got: dict[str, list[float]] = {}

    def first() -> None:
        with seeded(1):
            values = [float(np.random.random()) for _ in range(2)]
            inside.set()
            threading.Event().wait(0.3)  # room for the other thread to (try to) reseed
            got["a"] = values + [float(np.random.random()) for _ in range(2)]

    def second() -> None:
        inside.wait()
        got["b"] = draws(2)

    threads = [threading.Thread(target=first), threading.Thread(target=second)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert got == {"a": expected_a, "b": expected_b}
