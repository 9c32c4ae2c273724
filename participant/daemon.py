"""The participant daemon: which of this user's joined tasks to serve, one worker thread each.

A worker starts for every joined task, now or later, as its `TaskStarted` arrives; the events
topic only wakes the daemon, the API says which tasks started.
"""

from __future__ import annotations

import threading
import time
from math import prod
from pathlib import Path

from client import MusketeerClient, Task
from client.keys import KeyRing, fingerprint_of
from client.keys_api import ensure_registered
from client.profile import Profile
from participant.data import DataOptions
from participant.worker import Progress, TaskStopped, TaskWorker, WorkerInterrupted, WorkerResult
from schema.lifecycle import TaskStatus
from streams.config import Broker, KafkaSecurity
from streams.eventlog import EventFeed

__all__ = ["DataOptions", "ParticipantDaemon", "TaskStopped", "TaskWorker", "WorkerResult"]

_ENDED = (TaskStatus.FAILED, TaskStatus.DELETED, TaskStatus.COMPLETED)
# How often a waiting daemon looks again at what it waits for (it says so only on a change).
_WAITING_CHECK_S = 10.0


class ParticipantDaemon:
    """Runs a worker for every joined task as it starts; `only` limits it to one task."""

    def __init__(self, client: MusketeerClient, profile: Profile, data: DataOptions,
                 output: Path, only: str | None = None, progress: Progress = print,
                 stop: threading.Event | None = None) -> None:
        self.client = client
        # Set it (from a signal handler, say) to stop: workers leave their tasks at their next step.
        self.stop = stop or threading.Event()
        self.broker = Broker(profile.broker_address(), KafkaSecurity.from_mapping(profile.kafka_settings()))
        self.events_topic = profile.events_topic
        self.data = data
        self.output = output
        self.only = only
        self.progress = progress
        self.me = client.me().username
        self.keys = KeyRing(profile.keys_dir(), self.me)
        key = ensure_registered(client, self.keys)
        progress(f"signing as {self.me} with key {fingerprint_of(key)[:16]}…")
        self.workers: dict[str, threading.Thread] = {}
        self.results: dict[str, WorkerResult] = {}
        self.errors: dict[str, str] = {}
        self._waiting: tuple[float, str] = (0.0, "")

    def check_data(self) -> None:
        """Load the local data now, and check it against TASK's model: DataError before anything is sent."""
        dataset = self.data.load()
        self.progress(f"local data: {len(dataset)} samples of {dataset.name} "
                      f"({prod(dataset.x.shape[1:])} features, {dataset.num_classes} classes)")
        if self.only:
            task = self.client.get_task(self.only)
            if self.me not in {p.username for p in task.participants}:
                raise TaskStopped(f"you ({self.me}) have not joined task '{self.only}': "
                                  f"run `musketeer tasks join {self.only}` first")
            self.data.check_for(task.name, task.definition)

    def run(self) -> int:
        """Serve until `stop` is set (or, with `only`, until that task ends); 0 if all went well.

        Stopping is orderly: every worker leaves its task at its next step and closes its own
        broker connections before this returns, so the process never exits under a worker that
        is still inside the Kafka client.
        """
        self.check_data()
        with EventFeed(self.broker, self.events_topic) as feed:
            while not self.stop.is_set():
                self._start_workers()
                if self.only and self._only_done():
                    break
                if not any(thread.is_alive() for thread in self.workers.values()):
                    self._say_what_we_wait_for()
                # Events only wake us early; the API says which tasks started.
                feed.poll(timeout_s=1.0)
        busy = [name for name, thread in self.workers.items() if thread.is_alive()]
        if self.stop.is_set() and busy:
            self.progress(f"stopping: waiting for {len(busy)} task(s) to finish their current step "
                          f"({', '.join(busy)})")
        for thread in self.workers.values():
            thread.join()
        return 1 if self.errors else 0

    def _only_done(self) -> bool:
        thread = self.workers.get(self.only or "")
        return thread is not None and not thread.is_alive()

    def _start_workers(self) -> None:
        for task in self._started_tasks():
            if task.name in self.workers:
                continue
            worker = TaskWorker(self.client, self.broker, task, self.keys, self.data,
                                self.output, self.progress, stop=self.stop)
            thread = threading.Thread(target=self._work, args=(worker,), name=f"task-{task.name}",
                                      daemon=True)
            self.workers[task.name] = thread
            self.progress(f"{task.name}: started, joining training")
            thread.start()

    def _started_tasks(self) -> list[Task]:
        if self.only:
            task = self.client.get_task(self.only)
            if task.status in _ENDED and self.only not in self.workers:
                raise TaskStopped(f"task '{self.only}' is {task.status}")
            return [task] if task.status == TaskStatus.STARTED else []
        return list(self.client.iter_tasks(joined=True, status=TaskStatus.STARTED.value))

    def _say_what_we_wait_for(self) -> None:
        """A line saying which tasks the daemon waits for, printed when it changes."""
        checked, said = self._waiting
        if time.monotonic() - checked < _WAITING_CHECK_S:
            return
        if self.only:
            waiting = [self.client.get_task(self.only)]
        else:
            waiting = list(self.client.iter_tasks(joined=True, status=TaskStatus.CREATED.value))
        if not waiting:
            line = ("waiting: you have joined no task that has yet to start; join one with "
                    "`musketeer tasks join NAME` (this daemon serves it once it starts)")
        else:
            shown = ", ".join(f"{t.name} ({t.participant_count} of {t.effective_quorum} joined, "
                              f"creator {t.creator})" for t in waiting if t.status == TaskStatus.CREATED)
            line = (f"waiting for {shown or self.only} to start: the creator's `musketeer aggregate` "
                    "starts a task once its quorum has joined")
        if line != said:
            self.progress(line)
        self._waiting = (time.monotonic(), line)

    def _work(self, worker: TaskWorker) -> None:
        try:
            self.results[worker.task.name] = worker.run()
        except WorkerInterrupted as exc:
            worker.say(str(exc))
        except Exception as exc:  # one task's failure must not stop the others
            self.errors[worker.task.name] = str(exc)
            worker.say(f"stopped: {exc}")
