"""Waiting for the quorum: woken by `ParticipantJoined` events, but the API says who joined."""

from __future__ import annotations

import time

from aggregator.collect import deadline_after
from aggregator.run import Progress, QuorumNotReached
from client import ConflictError, MusketeerClient, Task
from schema.lifecycle import TaskStatus
from streams.eventlog import EventFeed


def wait_for_quorum(client: MusketeerClient, task: Task, feed: EventFeed, timeout_s: float | None,
                    progress: Progress) -> Task:
    """The task once enough participants joined (or it left CREATED); QuorumNotReached on timeout."""
    quorum = int(task.quorum or task.definition.get("quorum", 1))
    if task.status != TaskStatus.CREATED or task.participant_count >= quorum:
        return task
    progress(f"task {task.name}: waiting for the quorum ({task.participant_count}/{quorum} joined)")
    deadline = deadline_after(timeout_s)
    stream = f"task-{task.task_id}"
    while True:
        events = feed.poll(timeout_s=2.0)
        # The API is the truth; events only wake us (and a restart has none to replay).
        if any(e.stream_id == stream for e in events) or not events:
            task = client.get_task(task.name)
            if task.status != TaskStatus.CREATED or task.participant_count >= quorum:
                progress(f"task {task.name}: quorum reached ({task.participant_count}/{quorum})")
                return task
        if time.monotonic() > deadline:
            raise QuorumNotReached(f"quorum not reached in {timeout_s:g} s: {task.participant_count} "
                                   f"of {quorum} participants joined")


def start_when_keyed(client: MusketeerClient, task: Task, feed: EventFeed, timeout_s: float | None,
                     progress: Progress) -> Task:
    """Record TaskStarted as soon as every member has a signing key (their daemons register one)."""
    deadline = deadline_after(timeout_s)
    shown: list[str] = []
    while True:
        try:
            return client.start_task(task.name)
        except ConflictError as exc:
            missing = exc.details.get("missing_keys") if isinstance(exc.details, dict) else None
            if not missing:
                raise
        if missing != shown:
            progress(f"task {task.name}: waiting for the signing keys of {', '.join(missing)}")
            shown = list(missing)
        if time.monotonic() > deadline:
            # Like a missing quorum: nobody trains yet, so the task stays open unless asked to fail.
            raise QuorumNotReached(f"no signing key from {', '.join(missing)} in {timeout_s:g} s: their "
                                   "daemons register one when they start")
        feed.poll(timeout_s=2.0)
