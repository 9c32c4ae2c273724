"""The event store: one contract (`contract.py`), a PostgreSQL backend and an in-memory one."""

from api.store.contract import (
    ANY,
    NO_STREAM,
    ChainReport,
    EventStore,
    NewEvent,
    RebuildReport,
    Session,
    task_stream,
)

__all__ = ["ANY", "NO_STREAM", "ChainReport", "EventStore", "NewEvent", "RebuildReport", "Session", "task_stream"]
