"""Run the real aggregator of several tasks in ONE process, a thread each, for the many-tasks test.

    python -m tests.aggregate_many TASK [TASK ...]   # environment as infra.daemons.daemon_environment

Why not `musketeer aggregate` once per task: each aggregator process imports TensorFlow
(about 6 s of CPU and 740 MB each), so ten of them would cost a minute of CPU and 7 GB on a
two-core machine before any round runs. The CLI takes one task; `aggregator.daemon.Aggregator`
is the whole daemon, so this hosts ten of them. Exit status 1 if any task's aggregator failed.
"""

from __future__ import annotations

import sys
import threading

from aggregator.daemon import Aggregator, AggregatorOptions
from client import MusketeerClient, RetryPolicy
from client.profile import Profile

_PRINTING = threading.Lock()


def say(line: str) -> None:
    """A progress line; one thread's line is never cut by another's."""
    with _PRINTING:
        print(line, flush=True)


def aggregate(task: str, failures: list[str]) -> None:
    """One task's aggregator to the end; a failure is noted, never raised (the others go on)."""
    try:
        # A client per thread: each aggregator waits and retries on its own.
        client = MusketeerClient.from_profile(retry=RetryPolicy(total_wait=300.0), on_wait=say)
        Aggregator(client, Profile.load(), task, AggregatorOptions(round_timeout_s=300.0), say).run()
    except Exception as exc:
        failures.append(task)
        say(f"task {task}: aggregator failed: {type(exc).__name__}: {exc}")


def main(tasks: list[str]) -> int:
    """Aggregate every task at once; 0 if all completed."""
    failures: list[str] = []
    threads = [threading.Thread(target=aggregate, args=(task, failures), name=f"aggregate-{task}")
               for task in tasks]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    say(f"{len(tasks) - len(failures)} of {len(tasks)} tasks completed")
    return 1 if failures else 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
