"""Seeds every process derives the same way, so seeded runs (and restarted ones) repeat exactly."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

# Python's, NumPy's and TensorFlow's seeds are process-wide: held while seeded work runs.
_SEEDED = threading.Lock()


def task_seed(task_id: str, definition: dict[str, Any] | None = None) -> int:
    """The definition's `seed`, else one derived from the task: the same in every process."""
    seed = (definition or {}).get("seed")
    if isinstance(seed, int) and not isinstance(seed, bool) and seed >= 0:
        return seed % 2**32
    return int(hashlib.sha256(task_id.encode()).hexdigest()[:8], 16)


def participant_seed(task_id: str, definition: dict[str, Any], place: int, round_no: int) -> int:
    """The seed of one participant's local training in one round.

    `place` is the participant's index among the task's members sorted by name: a re-run of a
    seeded task trains identically even when the people in it have other names.
    """
    return (task_seed(task_id, definition) + 1000 * place + round_no) % 2**32


@contextmanager
def seeded(seed: int) -> Iterator[None]:
    """Seed Python, NumPy and TensorFlow and keep the seeds to this block until it ends.

    The seeds are global to the process. A participant daemon trains each task in its own
    thread: without the lock, one task could build or train with another task's seed, and a
    re-run of a seeded task would no longer repeat. Seeded work therefore runs one at a time.
    """
    import keras  # late: the seed functions above serve processes that never load TensorFlow

    with _SEEDED:
        keras.utils.set_random_seed(seed)
        yield
