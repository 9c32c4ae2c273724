"""Retention: remove the data-plane topics of finished tasks after a grace period.

Completed and failed tasks, and deleted tasks that had started, keep their topics
for `MUSKETEER_TOPIC_RETENTION_S` (late readers may still fetch the final
broadcast; daemons of a deleted task notice and stop first); then the topics
go. The sweep runs in the relay's leader, so one process does it.
"""

from __future__ import annotations

import logging
from typing import Any, Protocol

import psycopg

log = logging.getLogger("musketeer.retention")


class TopicDeleter(Protocol):
    def delete(self, names: list[str]) -> None: ...


def sweep_interval_s(retention_s: float) -> float:
    """How often to look: often enough to honour short retentions, at most every 30 s."""
    return min(30.0, max(0.5, retention_s / 10))


def sweep(conn: psycopg.Connection[Any], topics: TopicDeleter, retention_s: float) -> list[str]:
    """Delete the topics of tasks finished more than `retention_s` ago; return their ids."""
    rows = conn.execute(
        "SELECT task_id, broadcast_topic, updates_topic FROM tasks"
        " WHERE status IN ('COMPLETED', 'FAILED', 'DELETED')"
        " AND updated_at < now() - make_interval(secs => %s)"
        " AND task_id NOT IN (SELECT task_id FROM topic_retention)",
        (retention_s,),
    ).fetchall()
    done = []
    for task_id, broadcast, updates in rows:
        topics.delete([broadcast, updates])
        conn.execute("INSERT INTO topic_retention (task_id) VALUES (%s) ON CONFLICT DO NOTHING",
                     (task_id,))
        log.info("retention: removed the topics of task %s", task_id)
        done.append(task_id)
    return done
