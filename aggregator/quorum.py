"""Waiting for the quorum: woken by `ParticipantJoined` events, but the API says who joined."""

from __future__ import annotations

import time

from aggregator.collect import deadline_after
from aggregator.run import Progress, QuorumNotReached
from client import MusketeerClient, Task
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
